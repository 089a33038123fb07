//! Span cost (root): a tight loop of getppid in a workload process, untraced, with empty
//! programs attached (a `syscalls:` tracepoint pair, a `raw_syscalls` raw-tracepoint pair: the
//! floor of each hook), and traced by a `syscall: getppid` source through each of oxeye's
//! syscall paths (the `syscalls:` pair, `attach: auto`, and the `raw_syscalls` pair, `attach:
//! raw_tracepoint`: → ring buffer → oxeye in this process → nop exporter); ns added per call,
//! spans/s drained, ring-buffer loss, and what each path adds to a syscall no source traces
//! (getuid); the same loop traced by a C/libbpf reference (tests/reference/span.bpf.c:
//! the tracepoint pair, entry times in a hash, an 80-byte ring-buffer record with the same
//! adaptive wakeup, drained here), measured in the same run; and `oxeye run` (the release
//! binary) tracing a getppid loop, paced at 500 k calls/s and unpaced, to the stdout
//! exporter's JSON lines: spans written and lost. `OXEYE_BENCH_SPANS=programs` prints only the
//! in-program times (BPF run-time statistics). Prints figures only.
//!
//!     cargo bench -p oxeye-tests --bench spans

use oxeye_tests::bench::{median, quick};
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use oxeye_api::Kind;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_oxeye-workload");

/// Runs `getppid` n times in the workload; returns ns per call measured inside it.
fn workload(
    n: u64,
    pid_tx: Option<std::sync::mpsc::Sender<u32>>,
    go: std::sync::mpsc::Receiver<()>,
) -> f64 {
    workload_as("getppid", n, pid_tx, go)
}

fn workload_as(
    what: &str,
    n: u64,
    pid_tx: Option<std::sync::mpsc::Sender<u32>>,
    go: std::sync::mpsc::Receiver<()>,
) -> f64 {
    let mut child = Command::new(WORKLOAD)
        .args([what, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("pid");
    if let Some(tx) = pid_tx {
        tx.send(line.trim().parse().expect("pid"))
            .expect("send pid");
    }
    go.recv().expect("go");
    writeln!(stdin, "go").expect("go");
    line.clear();
    out.read_line(&mut line).expect("done");
    drop(stdin); // the workload exits when its stdin closes
    child.wait().expect("wait");
    let ns: f64 = line.trim().trim_start_matches("done ").parse().expect("ns");
    ns / n as f64
}

fn untraced(n: u64) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(()).expect("go");
    workload(n, None, rx)
}

/// (ns per call, spans received, ring buffer full count, spans/s of the final drain), with the
/// source's `attach` mode.
fn traced(n: u64, wakeup_bytes: u64, attach: &str) -> (f64, u64, u64, f64) {
    let t = traced_with("getppid", n, wakeup_bytes, 16 << 20, "100ms", attach);
    (t.0, t.1, t.2, t.3)
}

/// A program's name, run time (ns) and runs.
type ProgramStats = (String, u64, u64);

/// Run time (ns) and runs of oxeye's loaded syscall-span programs, by name (the kernel keeps
/// them only while BPF run-time statistics are on).
fn span_program_stats() -> Vec<ProgramStats> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            let ours = [
                "oxeye_raw_enter",
                "oxeye_raw_exit",
                "oxeye_sys_enter",
                "oxeye_sys_exit",
            ];
            ours.contains(&name.as_str())
                .then(|| (name, p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

fn traced_with(
    what: &str,
    n: u64,
    wakeup_bytes: u64,
    ring_size: u64,
    drain: &str,
    attach: &str,
) -> (f64, u64, u64, f64, Vec<ProgramStats>) {
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let what = what.to_string();
    let work = std::thread::spawn(move || workload_as(&what, n, Some(pid_tx), go_rx));
    let pid = pid_rx.recv().expect("pid");
    let yaml = format!(
        "receivers:\n  ebpf:\n    spans:\n      wakeup_bytes: {wakeup_bytes}\n      ring_size: {ring_size}\n      drain_interval: {drain}\n      sources:\n        - {{syscall: getppid, pid: {pid}, attach: {attach}}}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{level: warn, summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [nop]}}\n"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    let runner = rt.spawn(async move {
        oxeye::run_config("bench.yaml", &yaml, stop_rx)
            .await
            .expect("config")
    });
    std::thread::sleep(Duration::from_millis(1500)); // attached
    let before = span_program_stats();
    go_tx.send(()).expect("go");
    let per_call = work.join().expect("workload");
    // What the programs spent during the loop (all zeros unless statistics are on).
    let programs: Vec<ProgramStats> = span_program_stats()
        .into_iter()
        .map(|(name, ns, runs)| {
            let (ns0, runs0) = before
                .iter()
                .find(|b| b.0 == name)
                .map_or((0, 0), |b| (b.1, b.2));
            (name, ns - ns0, runs - runs0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500)); // drained
    let stopped = std::time::Instant::now();
    rt.block_on(async {
        stop_tx.send(()).await.expect("stop");
    });
    let report = rt.block_on(runner).expect("run");
    let final_drain = stopped.elapsed().as_secs_f64();
    let spans = report.received(Kind::Exporter, "nop");
    let lost = report
        .registry
        .components()
        .iter()
        .flat_map(|c| c.telemetry.counters())
        .filter(|(name, _, _)| *name == "ebpf_ringbuf_full")
        .map(|(_, _, n)| n)
        .sum();
    (per_call, spans, lost, spans as f64 / final_drain, programs)
}

/// The C reference tracing n getppid calls of the workload, its records drained by a thread
/// polling every millisecond (the adaptive wakeup's timer): (ns per call, records received).
fn c_reference_traced(n: u64) -> (f64, u64) {
    use aya::programs::TracePoint;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let work = std::thread::spawn(move || workload(n, Some(pid_tx), go_rx));
    let pid: u32 = pid_rx.recv().expect("pid");
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("target_tgid", &pid, true)
        .load(&oxeye_tests::bench::c_reference("span.bpf.c"))
        .expect("load the C reference");
    for (name, tp) in [
        ("ref_enter", "sys_enter_getppid"),
        ("ref_exit", "sys_exit_getppid"),
    ] {
        let p: &mut TracePoint = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("tracepoint");
        p.load().expect("verifier (C reference)");
        p.attach("syscalls", tp).expect("attach");
    }
    let mut ring =
        aya::maps::RingBuf::try_from(ebpf.take_map("spans").expect("spans")).expect("ring");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let consumer = std::thread::spawn(move || {
        let mut records = 0u64;
        loop {
            let mut got = 0;
            while let Some(r) = ring.next() {
                std::hint::black_box(&*r);
                got += 1;
            }
            records += got;
            if got == 0 && done.load(Ordering::Relaxed) {
                return records;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    go_tx.send(()).expect("go");
    let per_call = work.join().expect("workload");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let records = consumer.join().expect("consumer");
    drop(ebpf);
    (per_call, records)
}

/// The binary a user runs: release when built (`cargo build --release -p oxeye`), else the
/// debug one (quick mode only checks that the benchmark runs).
fn oxeye_release() -> std::path::PathBuf {
    let release = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/release/oxeye"
    ));
    if release.exists() {
        release.to_path_buf()
    } else {
        assert!(
            quick(),
            "run `cargo build --release -p oxeye` first: this row measures the binary"
        );
        oxeye_tests::oxeye_bin()
    }
}

/// `oxeye run` tracing n getppid calls paced at `rate`/s, JSON lines on a pipe the benchmark
/// reads (`rate` None: as fast as the loop goes): (lines written, lost in the kernel, M calls/s).
fn to_stdout(n: u64, rate: Option<u64>) -> (u64, u64, f64) {
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let what = rate.map_or("getppid".to_string(), |r| format!("getppid@{r}"));
    let work = std::thread::spawn(move || workload_as(&what, n, Some(pid_tx), go_rx));
    let pid = pid_rx.recv().expect("pid");
    let cfg = oxeye_tests::temp_config(
        "bench-stdout",
        &format!(
            "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{syscall: getppid, pid: {pid}}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"
        ),
    );
    let mut ox = Command::new(oxeye_release())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oxeye");
    let out = ox.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || std::io::BufReader::new(out).lines().count() as u64);
    let (rx, stderr) = oxeye_tests::follow(ox.stderr.take().expect("stderr"));
    while !rx
        .recv_timeout(Duration::from_secs(20))
        .expect("oxeye did not attach")
        .contains("span source attached")
    {}
    go_tx.send(()).expect("go");
    let per_call = work.join().expect("workload");
    std::thread::sleep(Duration::from_millis(500));
    oxeye_tests::signal(&ox, libc::SIGINT);
    ox.wait().expect("oxeye");
    let written = lines.join().expect("lines");
    let stderr = stderr.join().expect("stderr");
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains("records in,"))
        .unwrap_or_default()
        .to_string();
    let lost = oxeye_tests::lost_in_kernel(&last).unwrap_or_else(|| panic!("no losses in: {last}"));
    (written, lost, 1e3 / per_call)
}

/// Where a traced call's time goes inside the programs: one more run per path with the
/// kernel's run-time statistics on (they add two clock reads to every program run, so the
/// timed rows run without them).
fn in_programs(n: u64) {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF stats");
    for attach in ["auto", "raw_tracepoint"] {
        let t = traced_with("getppid", n, 256 << 10, 16 << 20, "100ms", attach);
        let parts: Vec<String> =
            t.4.iter()
                .map(|(name, ns, runs)| {
                    format!(
                        "{name} {:.0} ns/span ({runs} runs, {:.0} ns each)",
                        *ns as f64 / n as f64,
                        *ns as f64 / (*runs).max(1) as f64
                    )
                })
                .collect();
        println!(
            "in the programs (attach: {attach}, BPF stats on): {}",
            parts.join(", ")
        );
    }
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = quick();
    let (n, runs) = if quick { (20_000, 1) } else { (2_000_000, 3) };
    // OXEYE_BENCH_SPANS=programs: only the in-program times (for work on the programs).
    if std::env::var("OXEYE_BENCH_SPANS").as_deref() == Ok("programs") {
        in_programs(n);
        return;
    }
    println!("oxeye span benchmark: {n} getppid calls per run, median of {runs}");
    let base = median((0..runs).map(|_| untraced(n)).collect());
    println!("untraced getppid                         {base:>8.0} ns/call");
    // What the attachment alone costs: empty programs, no maps, no ring buffer; then the floor
    // of any span path: the cheapest attachment and the two clock reads a span's times need.
    let mut floor = 0.0;
    for (label, kind) in [
        (
            "empty syscalls: tracepoint pair",
            oxeye_receiver_ebpf::bench::EmptyPair::Tracepoint,
        ),
        (
            "empty raw_syscalls raw-tracepoint pair",
            oxeye_receiver_ebpf::bench::EmptyPair::RawTracepoint,
        ),
        (
            "raw pair + a clock read on each edge",
            oxeye_receiver_ebpf::bench::EmptyPair::RawTracepointClock,
        ),
    ] {
        let attached = oxeye_receiver_ebpf::bench::empty_pair(kind).expect("attach empty pair");
        let ns = median((0..runs).map(|_| untraced(n)).collect());
        drop(attached);
        println!("{label:<40} {ns:>8.0} ns/call  (+{:.0})", ns - base);
        floor = ns - base;
    }
    // The C reference and oxeye's two syscall paths, interleaved run by run.
    let mut reference = Vec::new();
    let mut raw = Vec::new();
    let mut tracepoint = Vec::new();
    for _ in 0..runs {
        reference.push(c_reference_traced(n));
        raw.push(traced(n, 256 << 10, "raw_tracepoint"));
        tracepoint.push(traced(n, 256 << 10, "auto"));
    }
    let c_call = median(reference.iter().map(|r| r.0).collect());
    let c_records: u64 = reference.iter().map(|r| r.1).min().unwrap_or(0);
    println!(
        "C reference (tracepoints, hash, 80-byte ringbuf record, adaptive) {c_call:>8.0} ns/call (+{:.0} ns/span), {c_records}/{n} received",
        c_call - base
    );
    println!(
        "  the floor (raw pair + two clock reads) = {:.2}× the C reference's added cost; the target 0.5× leaves {:.0} ns a span for everything else",
        floor / (c_call - base),
        0.5 * (c_call - base) - floor
    );
    let every: Vec<(f64, u64, u64, f64)> = (0..runs).map(|_| traced(n, 0, "auto")).collect();
    for (label, results, versus) in [
        (
            "syscalls: pair (attach: auto), adaptive wakeup",
            tracepoint,
            true,
        ),
        (
            "raw_syscalls pair (attach: raw_tracepoint), adaptive",
            raw,
            true,
        ),
        ("syscalls: pair, wakeup on every span", every, false),
    ] {
        let per_call = median(results.iter().map(|r| r.0).collect());
        let spans: u64 = results.iter().map(|r| r.1).min().unwrap_or(0);
        let lost: u64 = results.iter().map(|r| r.2).max().unwrap_or(0);
        println!(
            "traced, {label:<50} {per_call:>8.0} ns/call (+{:.0} ns/span), {:.2} M spans/s, {spans}/{n} received, {lost} lost to a full ring",
            per_call - base,
            1e3 / per_call
        );
        if versus {
            println!(
                "  oxeye's added cost per span = {:.2}× the C reference's (target ≤ 0.5×)",
                (per_call - base) / (c_call - base)
            );
        }
    }
    // What a source costs the syscalls it does not trace: getuid in a loop while getppid is
    // traced (the raw pair runs on every syscall; the syscalls: pair only on getppid).
    let untraced_other = |attach: Option<&str>| -> f64 {
        median(
            (0..runs)
                .map(|_| match attach {
                    Some(a) => traced_with("getuid", n, 256 << 10, 16 << 20, "100ms", a).0,
                    None => {
                        let (tx, rx) = std::sync::mpsc::channel();
                        tx.send(()).expect("go");
                        workload_as("getuid", n, None, rx)
                    }
                })
                .collect(),
        )
    };
    let other_base = untraced_other(None);
    println!("untraced getuid                          {other_base:>8.0} ns/call");
    for attach in ["auto", "raw_tracepoint"] {
        let ns = untraced_other(Some(attach));
        println!(
            "getuid while getppid is traced (attach: {attach:<14}) {ns:>8.0} ns/call (+{:.0} on a syscall no source traces)",
            ns - other_base
        );
    }
    in_programs(n);
    // Drain capacity: spans pile up in a 256 MiB ring (no wakeups, no timer drain) and one
    // user-space core drains them all at shutdown into a nop exporter.
    let pile = if quick { 20_000 } else { 1_000_000 };
    let (_, spans, lost, rate, _) = traced_with("getppid", pile, 1 << 40, 256 << 20, "1h", "auto");
    println!(
        "drain capacity, one core: {spans} spans waiting in the ring drained at {:.2} M spans/s ({lost} lost)",
        rate / 1e6
    );
    // What a user runs: the binary, JSON lines to a pipe, the default ring and wakeup.
    let paced = if quick { 20_000 } else { 1_500_000 };
    for (label, rate) in [("paced at 500 k/s", Some(500_000)), ("unpaced", None)] {
        for _ in 0..runs {
            let (written, lost, mcalls) = to_stdout(paced, rate);
            println!(
                "oxeye run, syscall: getppid {label} ({mcalls:.2} M calls/s) -> stdout json: {written}/{paced} spans written, {lost} lost in the kernel"
            );
        }
    }
}
