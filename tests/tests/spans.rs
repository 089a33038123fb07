//! Kernel tests (root): spans from syscall tracepoints and uprobes on a test workload, exact
//! counts, nesting, durations and stacks; kprobe sources fail clearly on a kernel without them.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use oxeye_tests::netns::require_root;
use oxeye_tests::{oxeye_bin, temp_config};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_oxeye-workload");

struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Workload {
    fn start(what: &str, n: u64) -> Workload {
        let mut child = Command::new(WORKLOAD)
            .args([what, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("pid line");
        let pid = line.trim().parse().expect("pid");
        Workload {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Lets it run and waits until it is done; it exits when the returned guard drops.
    fn go(mut self) -> Finished {
        writeln!(self.stdin, "go").expect("go");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("done line");
        assert!(line.starts_with("done"), "{line}");
        Finished(Some(self))
    }
}

/// A workload that has done its work and is still alive (its stacks can be symbolized).
struct Finished(Option<Workload>);

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            drop(w.stdin);
            let mut child = w.child;
            let _ = child.wait();
        }
    }
}

/// Runs oxeye with `yaml` until `sources` sources are attached, runs `work`, stops oxeye and
/// returns its JSON span lines and stderr.
fn with_oxeye(
    name: &str,
    yaml: &str,
    sources: usize,
    work: impl FnOnce() -> Finished,
) -> (Vec<serde_json::Value>, String) {
    require_root();
    let cfg = temp_config(name, yaml);
    let ox = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxeye");
    // Killed if anything below fails, so no probe stays attached.
    let mut ox = oxeye_tests::KillOnDrop(ox);
    let (rx, reader) = oxeye_tests::follow(ox.0.stderr.take().expect("stderr"));
    let mut pipe = ox.0.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut out);
        out
    });
    let mut attached = 0;
    while attached < sources {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("oxeye did not attach its sources"));
        assert!(!line.contains("ERROR"), "{line}");
        if line.contains("span source attached") {
            attached += 1;
        }
    }
    // The workload stays alive until oxeye has stopped.
    let _alive = work();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(ox.0.id() as i32, libc::SIGINT) };
    let status = ox.0.wait().expect("oxeye exit");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let spans = stdout
        .join()
        .expect("stdout reader")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (spans, stderr)
}

#[test]
fn openat_syscall_spans_exact() {
    const N: u64 = 25;
    let w = Workload::start("openat", N);
    let pid = w.pid;
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{syscall: openat, pid: {pid}, args: 2, stack: kernel}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"
    );
    let (spans, stderr) = with_oxeye("sp-openat", &yaml, 1, || w.go());
    assert!(
        stderr.contains(&format!("syscall:openat spans={N}")),
        "{stderr}"
    );
    // The runtime may open files too (e.g. /proc/self/...), but not before `go` here: every
    // span is one of ours.
    let ours: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["oxeye.return_value"] == -2)
        .collect();
    assert_eq!(spans.len() as u64, N, "{spans:#?}");
    assert_eq!(ours.len() as u64, N);
    let mut last_start = 0;
    for s in &spans {
        assert_eq!(s["name"], "openat");
        assert_eq!(s["process.pid"], pid);
        assert_eq!(s["thread.id"], pid);
        assert_eq!(s["process.executable.name"], "oxeye-workload");
        assert_eq!(s["code.function.name"], "openat");
        assert_eq!(s["status"], "error");
        assert!(
            s["status_message"]
                .as_str()
                .is_some_and(|m| m.contains("No such file")),
            "{s}"
        );
        assert!(
            s["parent_span_id"].is_null(),
            "a syscall outside any probed call is a root"
        );
        let (start, end) = (
            s["start_time_unix_nano"].as_u64().expect("start"),
            s["end_time_unix_nano"].as_u64().expect("end"),
        );
        assert!(end > start, "{s}");
        assert!(start >= last_start, "spans in call order");
        last_start = start;
        assert!(
            s["oxeye.kernel_stack"]
                .as_array()
                .is_some_and(|k| !k.is_empty()),
            "kernel stack captured: {s}"
        );
        assert_eq!(s["oxeye.args"].as_array().map(Vec::len), Some(2));
    }
}

/// The two syscall paths: a source with `attach: raw_tracepoint` goes through the shared
/// `raw_syscalls` pair, one on the same syscall without `attach` through that syscall's
/// tracepoint pair; both count every call exactly and read the same arguments (the raw path
/// reads them from `pt_regs`, the tracepoint from its record).
#[test]
fn raw_and_tracepoint_syscall_paths_agree() {
    const N: u64 = 25;
    let a = Workload::start("openat", N);
    let b = Workload::start("openat", N);
    let (pa, pb) = (a.pid, b.pid);
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{syscall: openat, pid: {pa}, args: 3, attach: raw_tracepoint}}\n        - {{syscall: openat, pid: {pb}, args: 3}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"
    );
    let (spans, stderr) = with_oxeye("sp-paths", &yaml, 2, || {
        let _a = a.go();
        b.go()
    });
    let attached: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("span source attached"))
        .collect();
    assert!(
        attached[0].contains("raw_syscalls raw tracepoints"),
        "{attached:?}"
    );
    assert!(
        attached[1].contains("syscalls tracepoint pair"),
        "{attached:?}"
    );
    let args_of = |pid: u32| -> Vec<Vec<serde_json::Value>> {
        spans
            .iter()
            .filter(|s| s["process.pid"] == pid)
            .map(|s| s["oxeye.args"].as_array().cloned().expect("args"))
            .collect()
    };
    let (raw, tp) = (args_of(pa), args_of(pb));
    assert_eq!((raw.len() as u64, tp.len() as u64), (N, N), "{stderr}");
    // openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC): the same dirfd and flags either way
    // (the path pointers differ between the two processes only by chance).
    for args in raw.iter().chain(&tp) {
        assert_eq!(args[0], raw[0][0], "dirfd");
        assert_eq!(args[2], raw[0][2], "flags");
    }
    // Arguments are rendered in hex; AT_FDCWD is -100 as the kernel's 32-bit int.
    assert_eq!(
        raw[0][0].as_str(),
        Some(format!("{:#x}", libc::AT_FDCWD as u32).as_str()),
        "{raw:?}"
    );
    assert!(raw
        .iter()
        .all(|a| a[1].as_str().is_some_and(|p| p != "0x0")));
    // Both sources counted all their calls in the kernel; sharing a label, they are summed
    // (one source's counters once overwrote the other's).
    assert!(
        stderr.contains(&format!("syscall:openat spans={}", 2 * N)),
        "{stderr}"
    );
}

/// `attach: raw_tracepoint` where the raw pair cannot take the source fails, saying why.
#[test]
fn raw_tracepoint_that_cannot_be_fails_clearly() {
    require_root();
    let cfg = temp_config(
        "sp-raw-dup",
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {syscall: getppid, attach: raw_tracepoint}\n        - {syscall: getppid, comm: nobody-here, attach: raw_tracepoint}\nexporters:\n  nop:\nservice:\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [nop]}\n",
    );
    let mut ox = oxeye_tests::KillOnDrop(
        Command::new(oxeye_bin())
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start oxeye"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = ox.0.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "oxeye kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut ox.0.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("spans.sources[0] already traces `getppid` through raw_syscalls"),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(2), "a configuration error: {stderr}");
    assert!(
        stderr.contains(":6:"),
        "the error points at the second source's line: {stderr}"
    );
}

#[test]
fn spans_lost_in_the_kernel_are_in_the_final_line() {
    const N: u64 = 300_000;
    let w = Workload::start("getppid", N);
    let pid = w.pid;
    // A one-page ring buffer drained once a second: most spans find it full.
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      ring_size: 4096\n      wakeup_bytes: 1048576\n      drain_interval: 1s\n      sources:\n        - {{syscall: getppid, pid: {pid}}}\nexporters:\n  nop:\nservice:\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [nop]}}\n"
    );
    let (_, stderr) = with_oxeye("sp-lost", &yaml, 1, || w.go());
    let (records_in, out, dropped) = oxeye_tests::final_counts(&stderr).expect("final line");
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains("records in,"))
        .expect("final line");
    let lost = oxeye_tests::lost_in_kernel(last).expect("`lost in the kernel` in the final line");
    assert!(lost > 0, "{last}");
    assert!(last.contains(&format!("(ringbuf_full {lost})")), "{last}");
    // Every call is either a span that reached the pipeline or counted as lost.
    assert_eq!(records_in + lost, N, "{last}");
    assert_eq!((out, dropped), (records_in, 0), "{last}");
    // The detach line names each counter once (it printed `spans=` twice).
    let detach = stderr
        .lines()
        .find(|l| l.contains("span sources detached"))
        .expect("detach line");
    assert_eq!(detach.matches("spans=").count(), 1, "{detach}");
    assert!(detach.contains(&format!("ringbuf_full={lost}")), "{detach}");
}

#[test]
fn uprobe_spans_nest_with_durations_and_stacks() {
    const N: u64 = 3;
    let w = Workload::start("nested", N);
    let pid = w.pid;
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{uprobe: '{WORKLOAD}:oxeye_outer', pid: {pid}, stack: user, args: 1}}\n        - {{uprobe: '{WORKLOAD}:oxeye_inner', pid: {pid}, stack: user, args: 1}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"
    );
    let (spans, stderr) = with_oxeye("sp-uprobe", &yaml, 2, || w.go());
    let by_name =
        |n: &str| -> Vec<&serde_json::Value> { spans.iter().filter(|s| s["name"] == n).collect() };
    let (outer, inner) = (by_name("oxeye_outer"), by_name("oxeye_inner"));
    assert_eq!(
        (outer.len() as u64, inner.len() as u64),
        (N, N),
        "{stderr}\n{spans:#?}"
    );
    let dur = |s: &serde_json::Value| s["duration_ns"].as_u64().expect("duration") as f64 / 1e6;
    for (o, i) in outer.iter().zip(&inner) {
        // oxeye_outer sleeps 20 ms then calls oxeye_inner, which sleeps 10 ms.
        assert!((29.0..60.0).contains(&dur(o)), "outer took {} ms", dur(o));
        assert!((9.5..40.0).contains(&dur(i)), "inner took {} ms", dur(i));
        assert_eq!(i["parent_span_id"], o["span_id"], "inner's parent is outer");
        assert_eq!(i["trace_id"], o["trace_id"], "one trace");
        assert!(o["parent_span_id"].is_null());
        assert!(i["start_time_unix_nano"].as_u64() >= o["start_time_unix_nano"].as_u64());
        assert!(i["end_time_unix_nano"].as_u64() <= o["end_time_unix_nano"].as_u64());
        assert_eq!(o["oxeye.args"][0], "0x14", "first argument (20 ms)");
        assert_eq!(i["oxeye.return_value"], 11, "inner returns ms + 1");
        for s in [o, i] {
            assert!(
                s["oxeye.user_stack"]
                    .as_array()
                    .is_some_and(|u| u.len() >= 2),
                "user stack: {s}"
            );
        }
    }
    let traces: std::collections::HashSet<&str> = outer
        .iter()
        .filter_map(|o| o["trace_id"].as_str())
        .collect();
    assert_eq!(
        traces.len() as u64,
        N,
        "each outer call starts its own trace"
    );
}

#[test]
fn kprobe_sources_fail_clearly_where_the_kernel_lacks_them() {
    require_root();
    let doctor = Command::new(oxeye_bin())
        .arg("doctor")
        .output()
        .expect("doctor");
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success());
    for line in [
        "tracepoint         ok",
        "uprobe             ok",
        "ring buffer        ok",
        "task storage       ok",
        "raw tracepoint     ok",
        "kernel functions",
    ] {
        assert!(report.contains(line), "{line} missing:\n{report}");
    }
    let kprobes_here = report.contains("kprobe/kretprobe   ok");
    let cfg = temp_config(
        "sp-kprobe",
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {kprobe: vfs_read, attach: auto}\nexporters:\n  nop:\nservice:\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [nop]}\n",
    );
    if kprobes_here {
        eprintln!(
            "this kernel has kprobes; the failure path is checked where it does not (the CI host)"
        );
        return;
    }
    assert!(report.contains("CONFIG_KPROBES is off"), "{report}");
    let mut child = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "oxeye did not stop on the kprobe error"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("kprobe:vfs_read: kernel functions cannot be traced on this kernel"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_KPROBES is off"), "{stderr}");
    assert!(stderr.contains("Use a `syscall:` source"), "{stderr}");
}

#[test]
fn symbolized_stacks_name_kernel_and_user_functions() {
    let w = Workload::start("nested", 1);
    let pid = w.pid;
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{uprobe: '{WORKLOAD}:oxeye_inner', pid: {pid}, stack: user}}\n        - {{syscall: clock_nanosleep, pid: {pid}, stack: both}}\nprocessors:\n  symbolization:\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [ebpf], processors: [symbolization], exporters: [stdout]}}\n"
    );
    let (spans, stderr) = with_oxeye("sp-symbols", &yaml, 2, || w.go());
    let trace = |name: &str| -> Vec<String> {
        spans
            .iter()
            .filter(|s| s["name"] == name)
            .filter_map(|s| s["code.stacktrace"].as_str().map(str::to_string))
            .collect()
    };
    // The uprobe fires at oxeye_inner's first instruction. (Its caller can be missing: at a
    // function's entry the frame-pointer unwinder skips the immediate caller.)
    let inner = trace("oxeye_inner");
    assert_eq!(inner.len(), 1, "{stderr}\n{spans:#?}");
    let first = inner[0].lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("oxeye_inner+0x0 ({WORKLOAD}) at ")),
        "{}",
        inner[0]
    );
    assert!(
        first.contains("oxeye-workload.rs:"),
        "file and line from DWARF: {first}"
    );
    // The sleeps' syscall spans: kernel frames of the syscall entry path, user frames in libc.
    let sleeps = trace("clock_nanosleep");
    assert!(!sleeps.is_empty(), "{spans:#?}");
    let t = &sleeps[0];
    assert!(
        t.contains("[kernel]") && (t.contains("do_syscall_64") || t.contains("entry_SYSCALL_64")),
        "{t}"
    );
    assert!(t.contains("libc.so") || t.contains("oxeye_inner"), "{t}");
}

/// The uprobe/uretprobe links on the workload binary that process `pid` holds, as the kernel
/// reports them (the fdinfo of each BPF link: `event_type: uprobe`, `name: <file>`).
fn workload_uprobes(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| {
            info.contains("link_type:")
                && info.contains(&format!("name:\t{WORKLOAD}"))
                && (info.contains("event_type:\tuprobe") || info.contains("event_type:\turetprobe"))
        })
        .count()
}

#[test]
fn uprobe_added_removed_and_expired_live_with_watch_config() {
    require_root();
    let mut w = Workload::start("loop", 5);
    writeln!(w.stdin, "go").expect("go");
    let pid = w.pid;
    let yaml = |uprobe: &str| {
        format!(
            "receivers:\n  ebpf:\n    spans:\n      drain_interval: 50ms\n      sources:\n        - {{syscall: getppid}}\n{uprobe}exporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"
        )
    };
    let probe = format!("        - {{uprobe: '{WORKLOAD}:oxeye_inner', pid: {pid}}}\n");
    let with_ttl = format!("        - {{uprobe: '{WORKLOAD}:oxeye_inner', pid: {pid}, ttl: 1s}}\n");
    let cfg = temp_config("spans-live", &yaml(""));
    let ox = Command::new(oxeye_bin())
        .args(["run", "--watch-config", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxeye");
    let mut ox = oxeye_tests::KillOnDrop(ox);
    let (log, reader) = oxeye_tests::follow(ox.0.stderr.take().expect("stderr"));
    // Count the workload's oxeye_inner spans as they come out.
    let inner = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&inner);
    let pipe = ox.0.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains("\"name\":\"oxeye_inner\"") {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let wait_for = |needle: &str, within: Duration| {
        let until = std::time::Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => assert!(!line.contains("ERROR"), "{line}"),
                Err(_) => panic!("no `{needle}` within {within:?}"),
            }
        }
    };
    let count = || inner.load(std::sync::atomic::Ordering::Relaxed);
    wait_for("span source attached", Duration::from_secs(20));
    let oxeye_pid = ox.0.id();
    assert_eq!(workload_uprobes(oxeye_pid), 0);

    // Added by saving the file: spans within a second, the uprobe in the kernel.
    std::fs::write(&cfg, yaml(&probe)).expect("save");
    let saved = std::time::Instant::now();
    let line = wait_for("config reloaded", Duration::from_secs(2));
    assert!(line.contains("~receivers/ebpf (live)"), "{line}");
    while count() == 0 {
        assert!(
            saved.elapsed() < Duration::from_secs(1),
            "no uprobe span within 1 s of the save"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        workload_uprobes(oxeye_pid),
        2,
        "uprobe + uretprobe in the kernel"
    );

    // Removed: detached in the kernel, and its spans stop.
    std::fs::write(&cfg, yaml("")).expect("save");
    wait_for("span source detached", Duration::from_secs(2));
    assert_eq!(
        workload_uprobes(oxeye_pid),
        0,
        "uprobe gone from the kernel"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), after, "spans stopped once the probe was removed");

    // A time to live: attached, then detached by itself.
    std::fs::write(&cfg, yaml(&with_ttl)).expect("save");
    wait_for("span source attached", Duration::from_secs(2));
    let before = count();
    wait_for(
        "span source expired (ttl): detached",
        Duration::from_secs(3),
    );
    assert!(count() > before, "spans while it lived");
    assert_eq!(
        workload_uprobes(oxeye_pid),
        0,
        "expired uprobe gone from the kernel"
    );

    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(ox.0.id() as i32, libc::SIGINT) };
    let status = ox.0.wait().expect("oxeye exit");
    drop(w.stdin);
    let _ = w.child.wait();
    stdout.join().expect("stdout reader");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
}
