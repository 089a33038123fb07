//! VM tier (root): kernel-function spans need kprobes or fentry, which this CI host's kernel
//! lacks. The test boots the stock Debian 6.1 kernel with virtme-ng under qemu (sharing this
//! filesystem, ~40 s under TCG), runs oxeye there with one `kprobe:` source in fentry mode and
//! one in kprobe mode on functions a workload calls a known number of times, and checks the
//! spans here. `tests/setup.sh` installs qemu, the kernel and virtme-ng.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use oxeye_tests::netns::require_root;
use oxeye_tests::oxeye_bin;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_oxeye-workload");
const N: u64 = 20;

fn vm_kernel() -> PathBuf {
    std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.1.") && n.ends_with("-amd64"))
        })
        .expect("no /boot/vmlinuz-6.1.*-amd64: run tests/setup.sh (installs linux-image-amd64)")
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

#[test]
fn kprobe_and_fentry_spans_in_a_debian_vm() {
    require_root();
    let out_dir = std::env::temp_dir().join(format!("oxeye-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let out = out_dir.display().to_string();
    let config = out_dir.join("pipeline.yaml");
    std::fs::write(
        &config,
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {kprobe: do_sys_openat2, attach: fentry, comm: oxeye-workload, args: 2, stack: kernel}\n        - {kprobe: do_filp_open, attach: kprobe, comm: oxeye-workload}\nexporters:\n  stdout: {format: json}\nservice:\n  telemetry: {logs: {summary_interval: 0s}}\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [stdout]}\n",
    )
    .expect("config");
    // A start that fails after the fentry source pinned its shared maps (the second source is
    // not a syscall): the pins, ring buffer included, must not outlive the failed start.
    let failing = out_dir.join("failing.yaml");
    std::fs::write(
        &failing,
        "receivers:\n  ebpf:\n    spans:\n      sources:\n        - {kprobe: do_sys_openat2, attach: fentry}\n        - {syscall: no_such_syscall}\nexporters:\n  nop:\nservice:\n  pipelines:\n    traces: {receivers: [ebpf], exporters: [nop]}\n",
    )
    .expect("failing config");
    let oxeye = oxeye_bin();
    // Inside the VM: start oxeye, wait until both sources are attached, let the workload make
    // N openat calls, stop oxeye.
    let script = format!(
        "set -u; cd {out}; mkfifo /tmp/go; {WORKLOAD} openat {N} < /tmp/go > workload.out & \
         {oxeye} run -c {cfg} > spans.json 2> oxeye.err & OX=$!; \
         for i in $(seq 1 600); do [ $(grep -c 'span source attached' oxeye.err) -ge 2 ] && break; grep -q ERROR oxeye.err && break; sleep 0.1; done; \
         echo go > /tmp/go; for i in $(seq 1 300); do grep -q done workload.out && break; sleep 0.1; done; \
         sleep 1; kill -INT $OX; wait $OX; echo $? > oxeye.exit; \
         {oxeye} run -c {failing} > /dev/null 2> failing.err; echo $? > failing.exit; \
         ls /sys/fs/bpf > pins.after",
        oxeye = oxeye.display(),
        cfg = config.display(),
        failing = failing.display(),
    );
    let mut vm = Command::new(vng())
        .arg("-r")
        .arg(vm_kernel())
        .args(["--disable-kvm", "--memory", "2G", "--rwdir"])
        .arg(&out_dir)
        .args(["--", &script])
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
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap_or_default();
    let log = read("oxeye.err");
    let context = format!(
        "vng: {}\n{}\noxeye: {log}",
        String::from_utf8_lossy(&vm_out.stdout),
        String::from_utf8_lossy(&vm_out.stderr)
    );
    assert_eq!(read("oxeye.exit").trim(), "0", "{context}");
    assert!(
        log.contains("source=kprobe:do_sys_openat2 via=\"fentry/fexit\""),
        "{context}"
    );
    assert!(
        log.contains("source=kprobe:do_filp_open via=\"kprobe/kretprobe\""),
        "{context}"
    );
    let spans: Vec<serde_json::Value> = read("spans.json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
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
    assert!(
        failed.contains("no tracepoint syscalls:sys_exit_no_such_syscall on this kernel"),
        "{failed}"
    );
    let pins = read("pins.after");
    assert!(
        !pins.contains("oxeye-"),
        "bpffs pins left after a failed start: {pins}\n{failed}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
