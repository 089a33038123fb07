//! VM tier (root), the kernel matrix: kernel-function spans need kprobes or fentry, which this
//! CI host's kernel lacks, and everything must work on older kernels than the host's 6.18. One
//! boot per kernel — Debian's stock 6.1 and 6.12, from Debian's packages — with virtme-ng under
//! qemu (sharing this filesystem, ~40 s under TCG; boots one at a time) runs one script: oxeye
//! with one `kprobe:` source in fentry mode and one in kprobe mode on functions a workload calls
//! a known number of times; syscall spans (through the raw_syscalls pair) nested in uprobe
//! spans; flows counted exactly in a namespace made inside the VM; request spans from nginx
//! and curl on the VM's loopback; `oxeye doctor`; then the profile workload test (3:1 split,
//! frequency × CPU time). Each test checks its part of the outputs here, once per kernel, with
//! the same oxeye binary. `tests/setup.sh` installs qemu, both kernels and virtme-ng.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use oxeye_tests::netns::require_root;
use oxeye_tests::oxeye_bin;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_oxeye-workload");
const N: u64 = 20;
/// Calls of the nested workload (oxeye_outer → oxeye_inner, each sleeping) and UDP datagrams
/// of the flows part.
const NESTED: u64 = 5;
const DATAGRAMS: u64 = 40;

/// The kernels of the matrix (the host runs a third): Debian's `linux-image-amd64` (6.1) and
/// `linux-image-6.12-amd64`.
const KERNELS: [&str; 2] = ["6.1", "6.12"];

fn vm_kernel(series: &str) -> PathBuf {
    let prefix = format!("vmlinuz-{series}.");
    std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("-amd64"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no /boot/{prefix}*-amd64: run tests/setup.sh (installs Debian's {series} kernel)"
            )
        })
}

fn vng() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let vng = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("vng");
    assert!(
        vng.exists(),
        "{} missing: run tests/setup.sh (pip install virtme-ng)",
        vng.display()
    );
    vng
}

/// The profile test's sampling frequency inside the VM: under qemu's software emulation a
/// 1 ms hrtimer period is often overrun (999 Hz gave 75 % of the samples), 299 Hz keeps up
/// (measured: ±4 %); 2 threads × 8 s give ~4 800 samples, enough for ±0.3 on the 3:1 split.
const FREQUENCY: u64 = 299;

/// What one VM run left: its output folder and vng's own output.
struct VmRun {
    out_dir: PathBuf,
    vng: String,
}

impl VmRun {
    fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.out_dir.join(f)).unwrap_or_default()
    }
}

/// Boots each kernel's VM once for every test of this file, one VM at a time (two emulated
/// machines on two cores would starve each other's timers).
fn vm_run(series: &str) -> &'static VmRun {
    static RUNS: [OnceLock<VmRun>; 2] = [OnceLock::new(), OnceLock::new()];
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let i = KERNELS
        .iter()
        .position(|k| *k == series)
        .expect("kernel of the matrix");
    RUNS[i].get_or_init(|| {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        boot(series)
    })
}

fn boot(series: &str) -> VmRun {
    // Earlier runs' folders (a few MB each) go first.
    let ours = format!("oxeye-vm-{}-", std::process::id());
    for old in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = old.file_name().to_string_lossy().to_string();
        if name.starts_with("oxeye-vm-") && !name.starts_with(&ours) {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    let out_dir = std::env::temp_dir().join(format!("{ours}{series}"));
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let out = out_dir.display().to_string();
    let config = out_dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {kprobe: do_sys_openat2, attach: fentry, comm: oxeye-workload, args: 2, stack: kernel}\n        - {kprobe: do_filp_open, attach: kprobe, comm: oxeye-workload}\nexporters:\n  stdout: {format: json}\nservice:\n  telemetry: {logs: {summary_interval: 0s}}\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [stdout]}\n",
    )
    .expect("config");
    // A start that fails after the fentry source pinned its shared maps (the second source is a
    // function kprobes may not probe, which only attaching finds out): the pins, ring buffer
    // included, must not outlive the failed start.
    let failing = out_dir.join("failing.yaml");
    std::fs::write(
        &failing,
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {kprobe: do_sys_openat2, attach: fentry}\n        - {kprobe: exc_int3, attach: kprobe}\nexporters:\n  nop:\nservice:\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [nop]}\n",
    )
    .expect("failing config");
    // Syscall and uprobe spans: the nested workload's two functions and its sleeps.
    let spans2 = out_dir.join("spans2.yaml");
    std::fs::write(
        &spans2,
        format!("receivers:\n  ebpf:\n    spans:\n      sources:\n        - {{uprobe: '{WORKLOAD}:oxeye_outer'}}\n        - {{uprobe: '{WORKLOAD}:oxeye_inner'}}\n        - {{syscall: clock_nanosleep, comm: oxeye-workload, attach: raw_tracepoint}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"),
    )
    .expect("spans config");
    // Flows on a veth made inside the VM, between two namespaces made there too.
    let flows = out_dir.join("flows.yaml");
    std::fs::write(
        &flows,
        "receivers:\n  ebpf:\n    flows: {interfaces: [oxva], flush_interval: 200ms}\nexporters:\n  stdout: {format: json}\nservice:\n  telemetry: {logs: {summary_interval: 0s}}\n  pipelines:\n    flows: {receivers: [ebpf], exporters: [stdout]}\n",
    )
    .expect("flows config");
    // The profile workload, built here (the VM shares this folder), and its pipeline.
    let burn = oxeye_tests::burn::build_burn(&out_dir);
    let profiles = out_dir.join("profiles.yaml");
    std::fs::write(
        &profiles,
        format!("receivers:\n  ebpf:\n    profiles: {{frequency: {FREQUENCY}, window: 2s, comm: burn}}\nprocessors:\n  symbolization: {{}}\nexporters:\n  stdout: {{format: folded}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    profiles: {{receivers: [ebpf], processors: [symbolization], exporters: [stdout]}}\n"),
    )
    .expect("profiles config");
    // Unwinding: the C tree built with -O2 -fomit-frame-pointer, profiled with unwind tables.
    // By pid, so its tables are loaded before the perf events are attached (a process first
    // sampled without them is walked with frame pointers until they are: about a second for
    // the debug binary under emulation). It runs until stopped, 8 s after the attach, however
    // long the start took (5 s here, more on a slower host).
    let (tree, _) = oxeye_tests::burn::build_trees(&out_dir.join("trees"));
    let unwind = out_dir.join("unwind.yaml");
    std::fs::write(
        &unwind,
        format!("receivers:\n  ebpf:\n    profiles: {{frequency: {FREQUENCY}, window: 2s, pid: ${{env:TREE_PID}}, stacks: user, unwind: tables}}\nprocessors:\n  symbolization: {{}}\nexporters:\n  stdout: {{format: folded}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    profiles: {{receivers: [ebpf], processors: [symbolization], exporters: [stdout]}}\n"),
    )
    .expect("unwind config");
    // Request spans: nginx in the VM (its own loopback), curl as the client.
    let nginx_dir = out_dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let nginx_conf =
        oxeye_tests::peers::nginx_conf(&nginx_dir, &format!("listen 127.0.0.1:{HTTP_PORT};"), 64);
    let requests = out_dir.join("requests.yaml");
    std::fs::write(
        &requests,
        format!("receivers:\n  ebpf:\n    requests: {{ports: [{HTTP_PORT}], routes: ['/users/{{id}}']}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [stdout]}}\n"),
    )
    .expect("requests config");
    let url = |p: &str| format!("http://127.0.0.1:{HTTP_PORT}{p}");
    let oxeye = oxeye_bin();
    // Inside the VM: start oxeye, wait until both sources are attached, let the workload make
    // N openat calls, stop oxeye. Then the profile test: oxeye profiling, the burn workload
    // told to go once the perf events are attached (its stdin held open on fd 3 until it is
    // done: it stops when stdin closes), oxeye stopped after it finished. burn runs one thread
    // (16 CPU s) so a vCPU stays free: with both emulated CPUs busy on a 2-core host, TCG fired
    // the guest's perf timers late and 16 % of the samples were missed (seen in CI).
    let script = format!(
        "set -u; cd {out}; uname -r > kernel.release; mkfifo /tmp/go; {WORKLOAD} openat {N} < /tmp/go > workload.out & \
         {oxeye} run -c {cfg} > spans.json 2> oxeye.err & OX=$!; \
         for i in $(seq 1 600); do [ $(grep -c 'span source attached' oxeye.err) -ge 2 ] && break; grep -q ERROR oxeye.err && break; sleep 0.1; done; \
         echo go > /tmp/go; for i in $(seq 1 300); do grep -q done workload.out && break; sleep 0.1; done; \
         sleep 1; kill -INT $OX; wait $OX; echo $? > oxeye.exit; \
         {oxeye} run -c {failing} > /dev/null 2> failing.err; echo $? > failing.exit; \
         ls /sys/fs/bpf > pins.after; \
         {oxeye} doctor > doctor.out 2>&1; \
         mkfifo /tmp/go3; {WORKLOAD} nested {NESTED} < /tmp/go3 > nested.out & \
         {oxeye} run -c {spans2} > spans2.json 2> spans2.err & OX=$!; \
         for i in $(seq 1 600); do [ $(grep -c 'span source attached' spans2.err) -ge 3 ] && break; grep -q ERROR spans2.err && break; sleep 0.1; done; \
         echo go > /tmp/go3; for i in $(seq 1 300); do grep -q done nested.out && break; sleep 0.1; done; \
         sleep 1; kill -INT $OX; wait $OX; echo $? > spans2.exit; \
         ip netns add oxa && ip netns add oxb && ip link add oxva netns oxa type veth peer name oxvb netns oxb && \
         ip -n oxa addr add 10.9.0.1/24 dev oxva && ip -n oxb addr add 10.9.0.2/24 dev oxvb && \
         ip -n oxa link set oxva up && ip -n oxb link set oxvb up && ip -n oxa link set lo up; echo $? > netns.exit; \
         ip netns exec oxa {oxeye} run -c {flows} > flows.json 2> flows.err & OX=$!; \
         for i in $(seq 1 600); do grep -q 'TC flow program attached' flows.err && break; grep -q ERROR flows.err && break; sleep 0.1; done; \
         echo go | ip netns exec oxb {WORKLOAD} udp@10.9.0.1:9 {DATAGRAMS} > udp.out; \
         sleep 1; kill -INT $OX; wait $OX; echo $? > flows.exit; \
         ip link set lo up; nginx -c {nginx_conf} -p {nginx_dir} -e {nginx_dir}/error.log & NG=$!; \
         for i in $(seq 1 300); do curl -s -o /dev/null {ok} && break; sleep 0.1; done; \
         {oxeye} run -c {requests} > requests.json 2> requests.err & OX=$!; \
         for i in $(seq 1 600); do grep -q 'syscall tracepoints attached' requests.err && break; grep -q ERROR requests.err && break; sleep 0.1; done; \
         curl -s -o /dev/null -o /dev/null -o /dev/null {ok} {missing} {fail}; \
         curl -s -o /dev/null -H 'traceparent: {TRACEPARENT}' {user}; echo $? > curl.exit; \
         sleep 1; kill -INT $OX; wait $OX; echo $? > requests.exit; kill $NG; \
         mkfifo /tmp/go2; {burn} 16 1 < /tmp/go2 > burn.out & exec 3> /tmp/go2; \
         {oxeye} run -c {profiles} > profile.folded 2> profile.err & OX=$!; \
         for i in $(seq 1 600); do grep -q 'perf events attached' profile.err && break; grep -q ERROR profile.err && break; sleep 0.1; done; \
         echo go >&3; for i in $(seq 1 1200); do grep -q done burn.out && break; sleep 0.1; done; \
         exec 3>&-; sleep 1; kill -INT $OX; wait $OX; echo $? > profile.exit; \
         {tree} 600 & T=$!; TREE_PID=$T {oxeye} run -c {unwind} > unwind.folded 2> unwind.err & OX=$!; \
         for i in $(seq 1 600); do grep -q 'perf events attached' unwind.err && break; grep -q ERROR unwind.err && break; sleep 0.1; done; \
         sleep 8; kill $T; wait $T; sleep 1; kill -INT $OX; wait $OX; echo $? > unwind.exit",
        oxeye = oxeye.display(),
        cfg = config.display(),
        failing = failing.display(),
        burn = burn.display(),
        profiles = profiles.display(),
        unwind = unwind.display(),
        tree = tree.display(),
        spans2 = spans2.display(),
        flows = flows.display(),
        nginx_conf = nginx_conf.display(),
        nginx_dir = nginx_dir.display(),
        requests = requests.display(),
        ok = url("/ok"),
        missing = url("/missing"),
        fail = url("/fail"),
        user = url("/users/7"),
    );
    // The script goes in a file: passed inline it would overflow the kernel's command line
    // (2 KiB on x86), where virtme-ng puts it.
    let script_file = out_dir.join("run.sh");
    std::fs::write(&script_file, &script).expect("script");
    let script = format!("sh {}", script_file.display());
    // Now and then (a few CI runs in many) the VM exits at once, before its first command
    // writes `kernel.release`, and vng prints nothing: booted once more, that run is reported.
    let first = start_vm(series, &out_dir, &script);
    if out_dir.join("kernel.release").exists() {
        return VmRun {
            out_dir,
            vng: first,
        };
    }
    eprintln!("the {series} VM ran nothing (vng said: {first:?}); booting it once more");
    let vng = start_vm(series, &out_dir, &script);
    VmRun { out_dir, vng }
}

/// Runs `script` in a VM of kernel `series` sharing `out_dir`; vng's own output.
fn start_vm(series: &str, out_dir: &Path, script: &str) -> String {
    let mut vm = Command::new(vng())
        .arg("-r")
        .arg(vm_kernel(series))
        .args(["--disable-kvm", "--memory", "2G", "--rwdir"])
        .arg(out_dir)
        .args(["--", script])
        // The guest's console reads qemu's stdin: a terminal or pipe that never ends (a
        // backgrounded test run) would stall it.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start vng");
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while vm.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = vm.kill();
            panic!("the VM did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let vm_out = vm.wait_with_output().expect("vng output");
    format!(
        "{}\n{}\n{}",
        vm_out.status,
        String::from_utf8_lossy(&vm_out.stdout),
        String::from_utf8_lossy(&vm_out.stderr)
    )
}

/// One `#[test]` per kernel of the matrix for each check.
macro_rules! per_kernel {
    ($check:ident: $($name:ident = $series:literal),+) => {
        $(
            #[test]
            fn $name() {
                require_root();
                $check($series);
            }
        )+
    };
}

per_kernel!(kprobe_and_fentry_spans: kprobe_and_fentry_spans_on_6_1 = "6.1", kprobe_and_fentry_spans_on_6_12 = "6.12");
per_kernel!(syscall_and_uprobe_spans: syscall_and_uprobe_spans_on_6_1 = "6.1", syscall_and_uprobe_spans_on_6_12 = "6.12");
per_kernel!(flows_exact_in_a_namespace: flows_exact_in_a_namespace_on_6_1 = "6.1", flows_exact_in_a_namespace_on_6_12 = "6.12");
per_kernel!(cpu_profiles_split_3_to_1: cpu_profiles_split_3_to_1_on_6_1 = "6.1", cpu_profiles_split_3_to_1_on_6_12 = "6.12");
per_kernel!(stacks_without_frame_pointers: stacks_without_frame_pointers_on_6_1 = "6.1", stacks_without_frame_pointers_on_6_12 = "6.12");
per_kernel!(request_spans_from_nginx_and_curl: request_spans_from_nginx_and_curl_on_6_1 = "6.1", request_spans_from_nginx_and_curl_on_6_12 = "6.12");
per_kernel!(doctor_reports_the_kernel: doctor_reports_the_kernel_on_6_1 = "6.1", doctor_reports_the_kernel_on_6_12 = "6.12");

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

fn kprobe_and_fentry_spans(series: &str) {
    let run = vm_run(series);
    let read = |f: &str| run.read(f);
    let log = read("oxeye.err");
    let context = format!("vng: {}\noxeye: {log}", run.vng);
    assert_eq!(read("oxeye.exit").trim(), "0", "{context}");
    assert!(
        log.contains("source=kprobe:do_sys_openat2 via=\"fentry/fexit\""),
        "{context}"
    );
    assert!(
        log.contains("source=kprobe:do_filp_open via=\"kprobe/kretprobe\""),
        "{context}"
    );
    let spans = json_lines(&read("spans.json"));
    let outer: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["name"] == "do_sys_openat2")
        .collect();
    let inner: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["name"] == "do_filp_open")
        .collect();
    // The workload's runtime may open files before it waits; its N openat calls follow.
    assert!(
        outer.len() as u64 >= N && inner.len() as u64 >= N,
        "{} / {} spans\n{context}",
        outer.len(),
        inner.len()
    );
    let missing: Vec<&&serde_json::Value> = outer
        .iter()
        .filter(|o| o["oxeye.return_value"] == -2)
        .collect();
    assert_eq!(
        missing.len() as u64,
        N,
        "N openat calls on a missing file, ENOENT each\n{context}"
    );
    for o in &missing {
        assert_eq!(o["process.executable.name"], "oxeye-workload");
        assert!(
            o["oxeye.kernel_stack"]
                .as_array()
                .is_some_and(|k| !k.is_empty()),
            "{o}"
        );
        // do_filp_open runs inside do_sys_openat2: the kprobe span is the fentry span's child.
        let child = inner
            .iter()
            .find(|i| i["parent_span_id"] == o["span_id"])
            .unwrap_or_else(|| panic!("no do_filp_open child of {o}"));
        assert_eq!(child["trace_id"], o["trace_id"]);
        assert!(child["duration_ns"].as_u64() <= o["duration_ns"].as_u64());
    }
    let failed = read("failing.err");
    assert_eq!(read("failing.exit").trim(), "1", "{failed}");
    assert!(failed.contains("kprobe:exc_int3"), "{failed}");
    let pins = read("pins.after");
    assert!(
        !pins.contains("oxeye-"),
        "bpffs pins left after a failed start: {pins}\n{failed}"
    );
}

fn cpu_profiles_split_3_to_1(series: &str) {
    let run = vm_run(series);
    let err = run.read("profile.err");
    let folded = run.read("profile.folded");
    let context = format!("vng: {}\noxeye: {err}\n{folded}", run.vng);
    assert!(
        run.read("kernel.release")
            .starts_with(&format!("{series}.")),
        "{context}"
    );
    assert_eq!(run.read("profile.exit").trim(), "0", "{context}");
    let burn = run.read("burn.out");
    let cpu: f64 = burn
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .and_then(|d| d.split_whitespace().next()?.parse().ok())
        .map(|ns: f64| ns / 1e9)
        .unwrap_or_else(|| panic!("burn did not finish: {burn}\n{context}"));
    let (a, b, all) = oxeye_tests::burn::folded_counts(&folded);
    // Frequency × CPU time within 10 % is the host tier's check (tests/profiles.rs), where
    // timers are real. Here qemu's software emulation delivers the guest's perf hrtimer late
    // now and then, and the kernel skips the periods it missed while the guest's clock (and
    // burn's CPU time) ran on: CI saw 84 % and 90 % of the samples with two vCPUs, 82 % with
    // one. So the VM checks that profiles work on this kernel (nothing lost in oxeye, no
    // sample counted twice, the split right), with room below for the emulator's timers.
    let expected = FREQUENCY as f64 * cpu;
    assert!(
        (0.75 * expected..=1.1 * expected).contains(&(all as f64)),
        "{all} samples for {cpu:.2} CPU s at {FREQUENCY} Hz (expected {expected:.0}, -25 % to +10 %)\n{context}"
    );
    assert!(
        err.contains(" 0 dropped, 0 lost in the kernel"),
        "oxeye lost samples\n{context}"
    );
    // The split is a ratio of two sample counts: besides the emulator's late timers, it moves
    // by chance with about 3·√(1/a + 1/b) (0.1 for 4 600 samples: CI saw 2.69). The host tier
    // holds 3.0 ± 0.3; here the bound is that or four of those deviations, whichever is wider —
    // a wrong attribution (2 : 1, 1 : 1) still fails.
    let ratio = a as f64 / b.max(1) as f64;
    let spread = (4.0 * 3.0 * (1.0 / a.max(1) as f64 + 1.0 / b.max(1) as f64).sqrt()).max(0.3);
    assert!(
        (3.0 - spread..=3.0 + spread).contains(&ratio),
        "hot_a {a} : hot_b {b} = {ratio:.2}, expected 3.0 ± {spread:.2}\n{context}"
    );
}

/// tests/workloads/tree.c built with `-O2 -fomit-frame-pointer`, profiled with `unwind:
/// tables`: the walker loads on this kernel and its stacks reach `main`.
fn stacks_without_frame_pointers(series: &str) {
    let run = vm_run(series);
    let err = run.read("unwind.err");
    let folded = run.read("unwind.folded");
    let context = format!("vng: {}\noxeye: {err}\n{folded}", run.vng);
    assert_eq!(run.read("unwind.exit").trim(), "0", "{context}");
    assert!(
        err.contains("profiles: user stacks walked with unwind tables"),
        "{context}"
    );
    let (a, b, all) = oxeye_tests::burn::tree_counts(&folded, "tree-c");
    assert!(all >= 300, "{all} samples\n{context}");
    assert!(
        (a + b) * 100 >= all * 95,
        "{} of {all} samples carry the whole stack to main\n{context}",
        a + b
    );
    // As for burn: 3.0 ± 0.3, or four deviations of the ratio when the emulator gives fewer
    // samples.
    let ratio = a as f64 / b.max(1) as f64;
    let spread = (4.0 * 3.0 * (1.0 / a.max(1) as f64 + 1.0 / b.max(1) as f64).sqrt()).max(0.3);
    assert!(
        (3.0 - spread..=3.0 + spread).contains(&ratio),
        "leaf_a {a} : leaf_b {b} = {ratio:.2}, expected 3.0 ± {spread:.2}\n{context}"
    );
}

fn syscall_and_uprobe_spans(series: &str) {
    let run = vm_run(series);
    let err = run.read("spans2.err");
    let context = format!("vng: {}\noxeye: {err}", run.vng);
    assert_eq!(run.read("spans2.exit").trim(), "0", "{context}");
    let spans = json_lines(&run.read("spans2.json"));
    let named =
        |n: &str| -> Vec<&serde_json::Value> { spans.iter().filter(|s| s["name"] == n).collect() };
    let (outer, inner) = (named("oxeye_outer"), named("oxeye_inner"));
    let sleeps = named("clock_nanosleep");
    assert_eq!(
        (outer.len() as u64, inner.len() as u64),
        (NESTED, NESTED),
        "uprobe spans\n{context}"
    );
    // Each oxeye_outer sleeps 20 ms, then calls oxeye_inner, which sleeps 10 ms.
    assert!(
        sleeps.len() as u64 >= 2 * NESTED,
        "syscall spans\n{context}"
    );
    for i in &inner {
        let parent = outer
            .iter()
            .find(|o| o["span_id"] == i["parent_span_id"])
            .unwrap_or_else(|| panic!("oxeye_inner without its oxeye_outer parent: {i}"));
        assert_eq!(parent["trace_id"], i["trace_id"]);
        assert!(i["duration_ns"].as_u64() >= Some(10_000_000), "{i}");
        let slept = sleeps
            .iter()
            .filter(|s| s["parent_span_id"] == i["span_id"])
            .count();
        assert_eq!(slept, 1, "one clock_nanosleep inside {i}\n{context}");
    }
}

fn flows_exact_in_a_namespace(series: &str) {
    let run = vm_run(series);
    let err = run.read("flows.err");
    let context = format!("vng: {}\noxeye: {err}", run.vng);
    assert_eq!(
        run.read("netns.exit").trim(),
        "0",
        "namespaces in the VM\n{context}"
    );
    assert_eq!(run.read("flows.exit").trim(), "0", "{context}");
    assert!(run.read("udp.out").contains("done"), "{context}");
    let flows = json_lines(&run.read("flows.json"));
    let ours: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| {
            f["source.address"] == "10.9.0.2"
                && f["destination.address"] == "10.9.0.1"
                && f["destination.port"] == 9
                && f["network.io.direction"] == "receive"
        })
        .collect();
    let packets: u64 = ours.iter().filter_map(|f| f["packets"].as_u64()).sum();
    let bytes: u64 = ours.iter().filter_map(|f| f["bytes"].as_u64()).sum();
    assert_eq!(
        (packets, bytes),
        (DATAGRAMS, DATAGRAMS * (14 + 20 + 8 + 32)),
        "XDP ingress counts\n{context}"
    );
    assert!(
        err.contains(" 0 dropped, 0 lost in the kernel"),
        "oxeye lost records\n{context}"
    );
    // Before tcx (6.6) TC needs a clsact qdisc, which a fresh veth lacks: oxeye adds it.
    if series == "6.1" {
        assert!(err.contains("clsact qdisc added"), "{context}");
    }
}

fn doctor_reports_the_kernel(series: &str) {
    let run = vm_run(series);
    let doctor = run.read("doctor.out");
    for (what, needle) in [
        ("kernel", format!("{series}.")),
        ("BTF", "/sys/kernel/btf/vmlinux".to_string()),
        ("ring buffer", "RINGBUF".to_string()),
        ("task storage", "TASK_STORAGE".to_string()),
        ("raw tracepoint", "raw_syscalls".to_string()),
        ("fentry/fexit", "do_sys_openat2".to_string()),
        ("kprobe/kretprobe", "do_sys_openat2".to_string()),
        ("perf events", "cpu-clock".to_string()),
        ("stack unwinding", "unwind tables".to_string()),
        (
            "processes",
            " native (call-frame information in ".to_string(),
        ),
        ("flow programs", "BPF atomics".to_string()),
        ("request programs", "syscall exit programs".to_string()),
        ("TLS (libssl)", "SSL_read".to_string()),
    ] {
        assert!(
            doctor
                .lines()
                .any(|l| l.starts_with(what) && l.contains(" ok ") && l.contains(&needle)),
            "{what} on {series}:\n{doctor}"
        );
    }
}

/// The port nginx listens on inside the VM (its loopback is its own).
const HTTP_PORT: u16 = 18080;
/// The caller's trace context on the request to /users/7.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// curl's four requests to nginx: one SERVER span each for nginx, one CLIENT span each for
/// curl, with path, status, route and the caller's trace.
fn request_spans_from_nginx_and_curl(series: &str) {
    let run = vm_run(series);
    let log = run.read("requests.err");
    let context = format!("vng: {}\noxeye: {log}", run.vng);
    assert_eq!(run.read("requests.exit").trim(), "0", "{context}");
    assert_eq!(run.read("curl.exit").trim(), "0", "{context}");
    let spans = json_lines(&run.read("requests.json"));
    let side = |comm: &str| -> Vec<(String, i64, String)> {
        let mut v: Vec<(String, i64, String)> = spans
            .iter()
            .filter(|s| s["process.executable.name"] == comm)
            .map(|s| {
                (
                    s["url.path"].as_str().unwrap_or("?").to_string(),
                    s["http.response.status_code"].as_i64().unwrap_or(0),
                    s["kind"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let want = |kind: &str| -> Vec<(String, i64, String)> {
        [
            ("/fail", 500),
            ("/missing", 404),
            ("/ok", 200),
            ("/users/7", 200),
        ]
        .iter()
        .map(|(p, s)| (p.to_string(), *s, kind.to_string()))
        .collect()
    };
    assert_eq!(side("nginx"), want("server"), "{context}");
    assert_eq!(side("curl"), want("client"), "{context}");
    let joined = spans
        .iter()
        .find(|s| s["process.executable.name"] == "nginx" && s["url.path"] == "/users/7")
        .expect("the /users/7 span");
    assert_eq!(
        joined["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{joined}"
    );
    assert_eq!(joined["parent_span_id"], "00f067aa0ba902b7", "{joined}");
    assert_eq!(joined["name"], "GET /users/{id}", "{joined}");
}
