//! The `prometheusremotewrite` exporter's cost: data points per second and CPU per point, three
//! ways, interleaved, medians:
//!
//! - `oxeye run` as users run it (the release binary, default settings): the synthetic receiver's
//!   HTTP-service metrics (counter, up-down counter, 15-bucket histogram over `SERIES` attribute
//!   sets; its exponential histogram is counted as dropped) → `prometheusremotewrite` → a real
//!   Prometheus (`--web.enable-remote-write-receiver`) on loopback, which stores every sample;
//! - beside it the same run into `nop`: the difference in oxeye's CPU is the exporter's (naming,
//!   labels, protobuf, snappy, HTTP), per point delivered; Prometheus's own CPU is printed too;
//! - the exporter's encoding alone in the harness (store, requests, snappy), on the same batches.
//!
//! ```sh
//! cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench remotewrite
//! OXEYE_BENCH_RECORDS=2000000 ...   # points per run (default 500 000)
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxeye_api::Batch;
use oxeye_tests::bench::{median, quick, records_and_rounds, release_oxeye};
use oxeye_tests::{captured, free_port, http_get, KillOnDrop};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 1000;

fn cpu(who: i32) -> f64 {
    // SAFETY: getrusage writes into the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of another process so far (utime + stime from /proc).
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn config(n: u64, exporter: &str) -> String {
    format!(
        "receivers:
  synthetic: {{seed: 3, metrics: {{count: {n}, series: {SERIES}}}}}
exporters:
  {exporter}
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  shutdown_timeout: 600s   # Prometheus stores slower than oxeye sends: let it drain
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [{}]}}
",
        exporter.split(':').next().unwrap_or("nop")
    )
}

/// `oxeye run` to its end: (CPU s, wall s, points the exporter delivered, its summary line).
fn run(oxeye: &std::path::Path, file: &std::path::Path, exporter: &str) -> (f64, f64, u64, String) {
    let before = cpu(libc::RUSAGE_CHILDREN);
    let t0 = Instant::now();
    let out = Command::new(oxeye)
        .args(["run", "-c"])
        .arg(file)
        .output()
        .expect("oxeye run");
    let wall = t0.elapsed().as_secs_f64();
    let used = cpu(libc::RUSAGE_CHILDREN) - before;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("exporter {exporter}:")))
        .map(|l| l.split_once("exporter ").map_or(l, |(_, r)| r).to_string())
        .unwrap_or_default();
    // "<id>: N in, M out, D dropped (…)"
    let out_points = line
        .split(", ")
        .find_map(|w| w.strip_suffix(" out"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (used, wall, out_points, line)
}

/// The synthetic receiver's batches, as the runs get them (through oxeye in-process).
fn synthetic_batches(n: u64) -> Vec<Arc<Batch>> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let yaml = format!(
        "receivers:\n  synthetic: {{seed: 3, metrics: {{count: {n}, series: {SERIES}}}}}\nexporters:\n  capture/remotewrite-bench:\nservice:\n  pipelines:\n    metrics: {{receivers: [synthetic], exporters: [capture/remotewrite-bench]}}\n"
    );
    let (_stop, rx) = tokio::sync::mpsc::channel(1);
    rt.block_on(oxeye::run_config("bench.yaml", &yaml, rx))
        .expect("in-process run");
    captured("capture/remotewrite-bench")
}

fn main() {
    let quick = quick();
    let (n, runs) = records_and_rounds(500_000);
    let oxeye = release_oxeye(quick);
    let dir = std::env::temp_dir().join(format!("oxeye-bench-remotewrite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");

    let port = free_port();
    std::fs::write(dir.join("prometheus.yml"), "global: {}\n").expect("prometheus.yml");
    let prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (tests/setup.sh installs Debian's package)"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/-/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "Prometheus did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let prw = dir.join("prw.yaml");
    std::fs::write(
        &prw,
        config(
            n,
            &format!("prometheusremotewrite: {{endpoint: 'http://127.0.0.1:{port}/api/v1/write'}}"),
        ),
    )
    .expect("config");
    let nop = dir.join("nop.yaml");
    std::fs::write(&nop, config(n, "nop:")).expect("config");
    println!(
        "prometheusremotewrite: {n} synthetic points a run ({SERIES} attribute sets a metric), median of {runs}, interleaved"
    );

    let (mut with, mut without, mut walls, mut peer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut delivered, mut line) = (0, String::new());
    for _ in 0..runs {
        let p0 = process_cpu(prometheus.0.id());
        let (c, w, d, l) = run(&oxeye, &prw, "prometheusremotewrite");
        peer.push(process_cpu(prometheus.0.id()) - p0);
        with.push(c);
        walls.push(w);
        (delivered, line) = (d, l);
        without.push(run(&oxeye, &nop, "nop").0);
    }
    assert!(delivered > 0, "nothing delivered: {line}");
    let (with, without, wall, peer) = (median(with), median(without), median(walls), median(peer));
    let per_point = |s: f64| s * 1e9 / delivered as f64;
    println!(
        "  oxeye run, synthetic -> nop                     {:>7.3} CPU-s  {:>7.1} ns/point",
        without,
        per_point(without)
    );
    println!(
        "  oxeye run, synthetic -> prometheusremotewrite   {:>7.3} CPU-s  {:>7.1} ns/point   {:.2} M points/s (wall {:.2} s)   exporter: {:.1} ns/point = {:.1} M points/s per core   ({line})",
        with,
        per_point(with),
        delivered as f64 / wall / 1e6,
        wall,
        per_point(with - without),
        delivered as f64 / (with - without).max(1e-9) / 1e6,
    );
    println!(
        "  the peer: Prometheus storing them               {:>7.3} CPU-s  {:>7.1} ns/point",
        peer,
        per_point(peer)
    );

    let input = synthetic_batches(n);
    let mut took = Vec::new();
    let mut shape = (0, 0, 0);
    for _ in 0..runs {
        let c0 = cpu(libc::RUSAGE_SELF);
        shape = oxeye_exporter_prometheusremotewrite::bench::requests(&input, 5);
        took.push(cpu(libc::RUSAGE_SELF) - c0);
    }
    let took = median(took);
    let (requests, bytes, points) = shape;
    println!(
        "  harness, store + requests + snappy              {:>7.3} CPU-s  {:>7.1} ns/point = {:.1} M points/s per core   ({requests} requests, {:.1} MiB, {points} points)",
        took,
        took * 1e9 / points.max(1) as f64,
        points as f64 / took / 1e6,
        bytes as f64 / (1 << 20) as f64
    );
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
