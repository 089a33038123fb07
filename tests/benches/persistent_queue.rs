//! The otlp exporter's queue on disk as users run it: the release `oxeye` binary, synthetic
//! spans → `otlp` exporter (gRPC, gzip: the defaults) → a blackhole TraceService of this
//! benchmark on loopback.
//!
//! 1. Write path: the queue in memory, on disk with `fsync: 1s` (the default) and with
//!    `fsync: every_batch`, runs interleaved, medians: spans/s end to end and oxeye's CPU per
//!    span (its rusage, generator included).
//! 2. Drain: a backlog written while the backend is down (2 GB; 64 MB in quick mode, as
//!    `cargo test` runs it), the page cache dropped, then `dd` reads the segment files, the page
//!    cache is dropped again, and a restarted oxeye sends the backlog: MB/s of each, and
//!    oxeye's peak RSS while it recovers and drains. The drain goes to a gRPC endpoint that
//!    reads each request whole and answers OK without inflating or decoding it, so the figure
//!    is oxeye's (a decoding blackhole on the same 2 cores measured itself: 541 663 spans/s).
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench persistent_queue

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxeye_tests::bench::{median, quick};

#[allow(dead_code)]
#[path = "../tests/common/otlp.rs"]
mod otlp;

/// A gRPC endpoint on loopback that reads each request's body and answers OK (an empty
/// response message, `grpc-status: 0`) without looking inside; returns its port and the
/// request bytes it read.
fn raw_sink(rt: &tokio::runtime::Runtime) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    use http_body_util::BodyExt;
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let counted = Arc::clone(&read);
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // As a server should: its answer's frames go out at once (Nagle would hold the
            // trailers back for the client's delayed ACK).
            let _ = stream.set_nodelay(true);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let counted = Arc::clone(&counted);
                        async move {
                            let mut body = req.into_body();
                            while let Some(frame) = body.frame().await {
                                if let Some(data) = frame?.data_ref() {
                                    counted.fetch_add(
                                        data.len() as u64,
                                        std::sync::atomic::Ordering::Relaxed,
                                    );
                                }
                            }
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert(
                                "grpc-status",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                            let body = http_body_util::Full::new(bytes::Bytes::from_static(&[
                                0, 0, 0, 0, 0,
                            ]))
                            .with_trailers(async move { Some(Ok(trailers)) });
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .expect("response"),
                            )
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (port, read)
}

/// The sum of a family's samples on oxeye's `/metrics`, or 0.
fn metric(port: u16, name: &str) -> u64 {
    let Ok(page) = oxeye_tests::http_get(port, "/metrics") else {
        return 0;
    };
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Empties the page cache, so reads come from the disk (not in quick mode: `cargo test` runs
/// this beside other tests).
fn drop_caches(quick: bool) {
    if !quick {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes of the segment files under `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `oxeye run -c cfg`, quiet.
fn spawn(bin: &Path, cfg: &Path) -> std::process::Child {
    Command::new(bin)
        .args(["run", "-c"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start oxeye")
}

fn main() {
    let quick = quick();
    let bin = oxeye_tests::bench::release_oxeye(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The blackhole: counts spans, keeps nothing.
    let sink = Arc::new(otlp::Sink {
        count_only: true,
        ..otlp::Sink::default()
    });
    let port = otlp::sink_endpoint(&rt, Arc::clone(&sink));
    let received = || sink.spans() as u64;
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");

    // 1. Write path (`OXEYE_BENCH_ONLY=drain` skips it).
    let drain_only = std::env::var("OXEYE_BENCH_ONLY").is_ok_and(|o| o == "drain");
    let n: u64 = if quick { 20_000 } else { 500_000 };
    let runs = if drain_only {
        0
    } else if quick {
        1
    } else {
        3
    };
    let yaml = |queue: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 7, spans: {{count: {n}}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{port}'{queue}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n"
        )
    };
    let storage = |fsync: &str| {
        format!(
            ", sending_queue: {{storage: {{directory: {}, fsync: {fsync}}}}}",
            dir.path().join("write").display()
        )
    };
    let cases = [
        ("queue in memory", yaml("")),
        ("on disk, fsync: 1s (default)", yaml(&storage("1s"))),
        ("on disk, fsync: every_batch", yaml(&storage("every_batch"))),
    ];
    println!("persistent queue as run: release oxeye, {n} synthetic spans -> otlp (gRPC, gzip) -> loopback blackhole; median of {runs}");
    let mut rows: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); cases.len()];
    for _ in 0..runs {
        for (i, (_, y)) in cases.iter().enumerate() {
            let cfg = oxeye_tests::temp_config("bench-persistent-queue", y);
            let before = received();
            let t0 = Instant::now();
            let child = spawn(&bin, &cfg);
            let (cpu, rss) = oxeye_tests::wait_with_rusage(child, Duration::from_secs(600));
            let wall = t0.elapsed().as_secs_f64();
            assert_eq!(received() - before, n, "{}: every span arrived", cases[i].0);
            rows[i].0.push(n as f64 / wall);
            rows[i].1.push(cpu / n as f64 * 1e6);
            rows[i].2.push(rss);
        }
    }
    for ((what, _), (rate, cpu, rss)) in cases.iter().zip(rows).filter(|_| runs > 0) {
        println!(
            "  {what:<30} {:>9.0} spans/s  {:>5.2} µs/span CPU  peak RSS {:>6.1} MiB",
            median(rate),
            median(cpu),
            median(rss)
        );
    }

    // 2. Drain of a backlog.
    let target: u64 = if quick { 64 << 20 } else { 2 << 30 };
    let backlog = dir.path().join("backlog");
    let metrics = oxeye_tests::free_port();
    let dead = oxeye_tests::free_port();
    let agent = |receiver: &str, endpoint: u16| {
        format!(
            "receivers:\n  {receiver}\nexporters:\n  otlp:\n    endpoint: 'http://127.0.0.1:{endpoint}'\n    sending_queue: {{storage: {{directory: {}, max_size: 4GiB}}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}, metrics: {{address: '127.0.0.1:{metrics}'}}}}\n  pipelines:\n    traces: {{receivers: [{}], exporters: [otlp]}}\n",
            backlog.display(),
            receiver.split(':').next().expect("id")
        )
    };
    let queue_dir = backlog.join("otlp");
    // Written with the backend down, then stopped with SIGKILL once the backlog is big enough.
    let cfg = oxeye_tests::temp_config(
        "bench-persistent-backlog",
        &agent("synthetic: {seed: 9, spans: {rate: 0}}", dead),
    );
    let t0 = Instant::now();
    let mut writer = oxeye_tests::KillOnDrop(spawn(&bin, &cfg));
    wait_until("the backlog written", Duration::from_secs(900), || {
        segment_bytes(&queue_dir) >= target
    });
    let written_in = t0.elapsed().as_secs_f64();
    let _ = writer.0.kill();
    let _ = writer.0.wait();
    let bytes = segment_bytes(&queue_dir);
    // dd reads the same files from the same disk, cold.
    drop_caches(quick);
    let t0 = Instant::now();
    let mut segs: Vec<_> = std::fs::read_dir(&queue_dir)
        .expect("queue dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    for seg in &segs {
        let ok = Command::new("dd")
            .arg(format!("if={}", seg.display()))
            .args(["of=/dev/null", "bs=1M", "status=none"])
            .status()
            .expect("dd");
        assert!(ok.success());
    }
    let dd = bytes as f64 / t0.elapsed().as_secs_f64() / 1e6;
    drop_caches(quick);
    // Restarted with the backend up: recovery, then the drain.
    let (raw_port, raw_read) = raw_sink(&rt);
    let idle_receiver = format!(
        "otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{}'}}}}}}",
        oxeye_tests::free_port()
    );
    let cfg = oxeye_tests::temp_config("bench-persistent-drain", &agent(&idle_receiver, raw_port));
    let t0 = Instant::now();
    let drainer = oxeye_tests::KillOnDrop(spawn(&bin, &cfg));
    let pid = drainer.0.id();
    let peak = std::sync::Mutex::new(0.0f64);
    let cpu = std::sync::Mutex::new(0.0f64);
    wait_until("the backlog drained", Duration::from_secs(1800), || {
        if let Some(p) = oxeye_tests::peak_rss_mib(pid) {
            let mut m = peak.lock().expect("lock");
            *m = m.max(p);
        }
        *cpu.lock().expect("lock") = oxeye_tests::bench::cpu_seconds(pid);
        raw_read.load(std::sync::atomic::Ordering::Relaxed) > 0
            && oxeye_tests::http_get(metrics, "/metrics").is_ok()
            && metric(metrics, "oxeye_queue_disk_records") == 0
    });
    let took = t0.elapsed().as_secs_f64();
    // Spans out, as oxeye counts them (the endpoint does not look inside).
    let spans = oxeye_tests::http_get(metrics, "/metrics")
        .ok()
        .and_then(|page| {
            page.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "oxeye_component_emitted_records_total{kind=\"exporter\",id=\"otlp\"} ",
                    )
                })
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64;
    drop(drainer);
    println!(
        "drain of a {:.2} GB backlog ({spans} spans, written in {written_in:.1} s), {} cache:",
        bytes as f64 / 1e9,
        if quick { "warm (quick)" } else { "cold" }
    );
    println!("  dd of the segment files       {dd:>7.1} MB/s");
    println!(
        "  oxeye drain (recovery + send) {:>7.1} MB/s ({:.0}% of dd), {:.0} spans/s, {:.0} % of a core, peak RSS {:.1} MiB",
        bytes as f64 / took / 1e6,
        bytes as f64 / took / 1e6 / dd * 100.0,
        spans as f64 / took,
        *cpu.lock().expect("lock") / took * 100.0,
        *peak.lock().expect("lock")
    );
}
