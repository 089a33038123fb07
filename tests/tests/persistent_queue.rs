//! `sending_queue.storage` with the real binary: 1 000 000 spans sent over OTLP/gRPC at 20 000/s
//! to an agent (`acknowledgements: true`) whose backend is down, the agent killed with SIGKILL
//! twice under the load and once in the middle of draining, restarted each time, the backend
//! brought back: every span arrives, duplicates are no more than the batches in flight and are
//! counted. A disk that fills up (a 4 MiB tmpfs)
//! slows the receiver with `block` and is counted with `drop_oldest`.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use oxeye_tests::free_port;

mod common;
use common::load::{
    kill9, metric, received, request, send_until_accepted, stop, wait, Agent, PER_REQUEST,
};
use common::otlp::{sink_endpoint_at, Sink};

fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

struct Ports {
    grpc: u16,
    metrics: u16,
    backend: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            grpc: free_port(),
            metrics: free_port(),
            backend: free_port(),
        }
    }
}

/// An agent: otlp in, otlp out with the queue on disk in `dir` (`storage` and `queue`:
/// more settings of each, `, key: value` each).
fn agent(ports: &Ports, dir: &Path, storage: &str, queue: &str) -> Agent {
    agent_with(ports, dir, "", storage, queue)
}

/// [`agent`] with more receiver settings.
fn agent_with(ports: &Ports, dir: &Path, receiver: &str, storage: &str, queue: &str) -> Agent {
    let yaml = format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}{receiver}
exporters:
  otlp:
    endpoint: http://127.0.0.1:{backend}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 300ms}}
    sending_queue:
      storage: {{directory: {dir}{storage}}}{queue}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp]}}
",
        grpc = ports.grpc,
        backend = ports.backend,
        metrics = ports.metrics,
        dir = dir.display(),
    );
    let config = oxeye_tests::temp_config(&format!("persistent-queue-{}", ports.grpc), &yaml);
    let child = Agent::spawn(&config);
    oxeye_tests::wait_port(ports.grpc);
    oxeye_tests::wait_port(ports.metrics);
    child
}

/// Sends requests `range` (spaced to `per_second` spans, each given 2 s); the ones accepted.
/// Stops after 3 refused in a row (the agent is pushing back).
fn send(
    rt: &tokio::runtime::Runtime,
    port: u16,
    range: std::ops::Range<u64>,
    per_second: u64,
) -> Vec<u64> {
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let gap = Duration::from_secs_f64(PER_REQUEST as f64 / per_second as f64);
        let mut next = tokio::time::Instant::now();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for r in range {
            tokio::time::sleep_until(next).await;
            next += gap;
            let sent = tokio::time::timeout(Duration::from_secs(2), client.export(request(r)));
            if matches!(sent.await, Ok(Ok(_))) {
                accepted.push(r);
                refused = 0;
            } else {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
        accepted
    })
}

#[test]
fn spans_survive_an_outage_and_kill_9s_under_load() {
    let _one = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::new();
    const REQUESTS: u64 = 10_000; // 1 000 000 spans at 20 000/s: 50 s
    let total = REQUESTS * PER_REQUEST;
    let ack = "\n    acknowledgements: true";
    let mut resent = 0;

    // The backend is down; the agent answers once spans are on disk, and is killed twice while
    // the load goes on (at 15 s and 32 s of the 50 s).
    let mut a = agent_with(&ports, dir.path(), ack, "", "");
    let grpc = ports.grpc;
    let client = std::thread::spawn(move || send_until_accepted(grpc, 0..REQUESTS, 20_000));
    for after in [15, 17] {
        std::thread::sleep(Duration::from_secs(after));
        resent += metric(ports.metrics, "oxeye_queue_resent_records_total");
        kill9(a);
        a = agent_with(&ports, dir.path(), ack, "", "");
    }
    let again = client.join().expect("client");

    // The backend comes back (20 ms a request), and the agent is killed once more mid-drain.
    let sink = Arc::new(Sink {
        delay: Duration::from_millis(20),
        count_only: true,
        span_ids: Some(Default::default()),
        ..Sink::default()
    });
    sink_endpoint_at(&rt, Arc::clone(&sink), ports.backend);
    wait("a third delivered", Duration::from_secs(120), || {
        sink.spans() as u64 >= total / 3
    });
    resent += metric(ports.metrics, "oxeye_queue_resent_records_total");
    kill9(a);
    let before_restart = sink.spans() as u64;
    assert!(before_restart < total, "killed before the end of the drain");

    let a = agent_with(&ports, dir.path(), ack, "", "");
    let ids = |sink: &Sink| {
        sink.span_ids
            .as_ref()
            .expect("ids")
            .lock()
            .expect("lock")
            .clone()
    };
    wait("every span delivered", Duration::from_secs(120), || {
        ids(&sink).len() as u64 == total
    });
    wait("the queue empty", Duration::from_secs(30), || {
        metric(ports.metrics, "oxeye_queue_disk_records") == 0
    });
    let seen = ids(&sink);
    assert!(
        (1..=total).all(|id| seen.contains_key(&id)),
        "a span id is missing"
    );
    let duplicates: u64 = seen.values().map(|&n| u64::from(n - 1)).sum();
    resent += metric(ports.metrics, "oxeye_queue_resent_records_total");
    // In flight at each kill: at most one chunk (send_batch_size records) per sender, and the
    // client's one request, which it sends again.
    assert!(resent <= 3 * 2 * 1024, "resent {resent}");
    assert!(
        duplicates <= resent + again * PER_REQUEST,
        "{duplicates} duplicates; {resent} counted as resent, {again} requests sent again"
    );
    assert_eq!(
        metric(ports.metrics, "oxeye_queue_corrupt_records_total"),
        0
    );
    let err = stop(a);
    let line = err
        .lines()
        .rfind(|l| l.contains("exporter otlp:"))
        .unwrap_or_else(|| panic!("no exporter line:\n{err}"));
    assert!(
        !line.contains("dropped") && !line.contains("on disk"),
        "{line}"
    );
    eprintln!(
        "{total} spans, 3 kills, {before_restart} delivered before the last, {duplicates} duplicates, {resent} counted as resent, {again} requests sent again by the client"
    );
}

/// With `acknowledgements`, an answered request is on disk: a queue full to `max_size` blocks
/// the exporter, requests wait in the pipeline unanswered, the agent is killed, and every span
/// of every request that was answered arrives once the backend is back. (Without it, the
/// requests answered while their batches waited in the pipeline's queues are lost to the kill.)
#[test]
fn an_answered_request_survives_a_kill_while_the_pipeline_is_full() {
    let _one = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::new();
    let ack = "\n    acknowledgements: true";
    let a = agent_with(&ports, dir.path(), ack, ", max_size: 1MiB", "");
    // Far more than 1 MiB: the queue fills, then requests go unanswered.
    let accepted = send(&rt, ports.grpc, 0..2_000, 50_000);
    assert!(
        !accepted.is_empty() && accepted.len() < 2_000,
        "{} accepted",
        accepted.len()
    );
    kill9(a);
    let sink = Arc::new(Sink::default());
    sink_endpoint_at(&rt, Arc::clone(&sink), ports.backend);
    let a = agent_with(&ports, dir.path(), ack, ", max_size: 1MiB", "");
    wait("the queue drained", Duration::from_secs(60), || {
        metric(ports.metrics, "oxeye_queue_disk_records") == 0 && sink.spans() > 0
    });
    let seen = received(&sink);
    let lost: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|r| (1..=PER_REQUEST).any(|i| !seen.contains_key(&(r * PER_REQUEST + i))))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered requests lost, e.g. {:?}",
        lost.len(),
        accepted.len(),
        &lost[..lost.len().min(5)]
    );
    stop(a);
    eprintln!(
        "{} requests answered before the kill, all delivered",
        accepted.len()
    );
}

/// Segment files damaged between runs — one cut short at a random offset, single bytes flipped
/// in another — do not stop the agent: it starts, delivers every intact record, counts the
/// rest, and is done within a bounded time.
#[test]
fn a_damaged_queue_delivers_every_intact_record_and_counts_the_rest() {
    let _one = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::new();
    // Segments of 4 MiB (max_size 64 MiB), batches of 100 spans: a record per request, each
    // synced before it is acknowledged; uncompressed, so that 3 000 requests fill several.
    let storage = ", max_size: 64MiB, fsync: every_batch";
    let queue = "\n    batch: {send_batch_size: 100}\n    compression: none";
    let a = agent(&ports, dir.path(), storage, queue);
    send_until_accepted(ports.grpc, 0..3_000, 30_000);
    wait("all on disk", Duration::from_secs(30), || {
        metric(ports.metrics, "oxeye_queue_disk_records") == 3_000 * PER_REQUEST
    });
    stop_within(a, Duration::from_secs(15));
    let queue_dir = dir.path().join("otlp");
    let mut segments: Vec<_> = std::fs::read_dir(&queue_dir)
        .expect("queue dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "seg") && p.metadata().expect("meta").len() > 0
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    // A pseudo-random but reproducible damage: the last segment cut, the first one flipped.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let last = segments.last().expect("last");
    let len = last.metadata().expect("meta").len();
    let cut = len / 2 + next(len / 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(cut)
        .expect("truncate");
    let mut first = std::fs::read(&segments[0]).expect("read");
    for _ in 0..5 {
        let at = next(first.len() as u64) as usize;
        first[at] ^= 0x40;
    }
    std::fs::write(&segments[0], &first).expect("write");

    let sink = Arc::new(Sink {
        count_only: true,
        span_ids: Some(Default::default()),
        ..Sink::default()
    });
    sink_endpoint_at(&rt, Arc::clone(&sink), ports.backend);
    let t0 = Instant::now();
    let a = agent(&ports, dir.path(), storage, queue);
    wait(
        &format!("the queue drained ({})", queue_dir.display()),
        Duration::from_secs(30),
        || metric(ports.metrics, "oxeye_queue_disk_records") == 0 && sink.spans() > 0,
    );
    let took = t0.elapsed();
    let corrupt = metric(ports.metrics, "oxeye_queue_corrupt_records_total");
    let ids = sink
        .span_ids
        .as_ref()
        .expect("ids")
        .lock()
        .expect("lock")
        .clone();
    // Records are whole requests: a request arrives whole or not at all.
    let whole = (0..3_000u64)
        .filter(|r| (1..=PER_REQUEST).all(|i| ids.contains_key(&(r * PER_REQUEST + i))))
        .count() as u64;
    let partial = (0..3_000u64)
        .filter(|r| {
            let n = (1..=PER_REQUEST)
                .filter(|i| ids.contains_key(&(r * PER_REQUEST + i)))
                .count();
            n > 0 && n < PER_REQUEST as usize
        })
        .count();
    assert_eq!(partial, 0, "a damaged record was delivered in part");
    assert!(corrupt >= 2, "the cut and the flips are counted: {corrupt}");
    // At most 5 flipped records and everything after the cut are missing; all else arrives.
    let after_cut = 3_000 - whole;
    assert!(
        after_cut > 0 && corrupt <= 6,
        "{corrupt} corrupt, {after_cut} missing"
    );
    assert_eq!(
        ids.len() as u64,
        whole * PER_REQUEST,
        "nothing but whole requests"
    );
    assert!(ids.values().all(|&n| n == 1), "nothing twice");
    stop(a);
    eprintln!(
        "damaged queue: {whole} of 3000 requests delivered, {corrupt} corrupt stretches counted, drained in {took:.1?}"
    );
}

/// Stops oxeye with SIGTERM within `limit` (the backend may be down: the queue stays on disk).
fn stop_within(mut a: Agent, limit: Duration) {
    oxeye_tests::signal(&a.child.0, libc::SIGTERM);
    let t0 = Instant::now();
    while !exited(&mut a.child.0) {
        assert!(t0.elapsed() < limit, "oxeye did not stop within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 4 MiB tmpfs mounted on `dir` for the test's length.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn exited(child: &mut Child) -> bool {
    child.try_wait().ok().flatten().is_some()
}

#[test]
fn a_full_disk_blocks_or_drops_the_oldest_and_nothing_panics() {
    let _one = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    const REQUESTS: u64 = 1_500;
    for when_full in ["block", "drop_oldest"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let _fs = Tmpfs::mount(dir.path());
        let ports = Ports::new();
        // max_size above the disk (segments of 1 MiB): the disk fills first.
        let mut a = agent(
            &ports,
            dir.path(),
            ", max_size: 16MiB",
            &format!("\n      when_full: {when_full}\n    compression: none"),
        );
        // ~14 MB of spans into 4 MB of disk (uncompressed: gzip'd they would fit).
        let accepted = send(&rt, ports.grpc, 0..REQUESTS, 100_000);
        assert!(!exited(&mut a.child.0), "{when_full}: oxeye ended");
        let on_disk = metric(ports.metrics, "oxeye_queue_disk_bytes");
        assert!(
            on_disk <= 4 << 20,
            "{when_full}: {on_disk} bytes on a 4 MiB disk"
        );
        let dropped = metric(ports.metrics, "oxeye_component_dropped_records_total");
        match when_full {
            // The receiver was slowed: some requests refused, none accepted and dropped.
            "block" => {
                assert!(
                    accepted.len() < REQUESTS as usize,
                    "block: every request accepted"
                );
                assert_eq!(dropped, 0, "block drops nothing");
            }
            _ => {
                assert_eq!(
                    accepted.len(),
                    REQUESTS as usize,
                    "drop_oldest keeps accepting"
                );
                assert!(dropped > 0, "drop_oldest counts what it dropped");
            }
        }
        // The backend comes back: everything kept arrives.
        let sink = Arc::new(Sink::default());
        sink_endpoint_at(&rt, Arc::clone(&sink), ports.backend);
        wait("the queue drained", Duration::from_secs(60), || {
            metric(ports.metrics, "oxeye_queue_disk_records") == 0
        });
        let seen = received(&sink);
        if when_full == "block" {
            for r in &accepted {
                let id = r * PER_REQUEST + 1;
                assert!(seen.contains_key(&id), "block: accepted request {r} lost");
            }
        } else {
            // Chunks taken from a dropped segment are no longer on disk, but may still be on
            // their way (retrying): wait for them.
            let dropped = || metric(ports.metrics, "oxeye_component_dropped_records_total");
            let expected = accepted.len() as u64 * PER_REQUEST;
            let t0 = Instant::now();
            while received(&sink).len() as u64 + dropped() < expected
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let (seen, dropped) = (received(&sink), dropped());
            assert_eq!(
                seen.len() as u64 + dropped,
                accepted.len() as u64 * PER_REQUEST,
                "drop_oldest: delivered + dropped = accepted"
            );
        }
        let err = stop(a);
        assert!(!err.contains("panicked"), "{err}");
        eprintln!(
            "{when_full}: {} of {REQUESTS} requests accepted, {on_disk} bytes on disk when full, {} spans delivered, {dropped} dropped",
            accepted.len(),
            seen.len()
        );
    }
}

#[test]
fn bad_storage_settings_are_refused_by_validate_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(foreign.join("otlp_c")).expect("mkdir");
    std::fs::write(foreign.join("otlp_c/data.db"), "not a queue").expect("write");
    let yaml = format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
exporters:
  otlp/a:
    endpoint: http://127.0.0.1:1
    sending_queue: {{when_full: drop_oldest}}
  otlp/b:
    endpoint: http://127.0.0.1:1
    sending_queue:
      storage: {{directory: /proc/oxeye-nope, max_size: 1000, fsync: 0s}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp/a, otlp/b]}}
",
        grpc = free_port()
    );
    let config = oxeye_tests::temp_config("persistent-queue-bad", &yaml);
    let path = config.to_str().expect("path");
    for command in ["validate", "run"] {
        let out = std::process::Command::new(oxeye_tests::oxeye_bin())
            .args([command, "-c", path])
            .output()
            .expect("oxeye");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        for want in [
            "8:21: error: exporters.otlp/a.sending_queue.when_full: `drop_oldest` needs `storage`",
            "12:17: error: exporters.otlp/b.sending_queue.storage.directory: /proc: cannot create files in it",
            "12:46: error: exporters.otlp/b.sending_queue.storage.max_size: must be at least 1MiB",
            "12:62: error: exporters.otlp/b.sending_queue.storage.fsync: must be `every_batch` or an interval more than 0",
        ] {
            assert!(err.contains(&format!("{path}:{want}")), "{command}: no `{want}` in\n{err}");
        }
    }

    // A directory holding something else is refused by both, and left as it was.
    let yaml = format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
exporters:
  otlp/c:
    endpoint: http://127.0.0.1:1
    sending_queue: {{storage: {{directory: {dir}}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp/c]}}
",
        grpc = free_port(),
        dir = foreign.display()
    );
    let config = oxeye_tests::temp_config("persistent-queue-foreign", &yaml);
    for command in ["validate", "run"] {
        let out = std::process::Command::new(oxeye_tests::oxeye_bin())
            .args([command, "-c", config.to_str().expect("path")])
            .output()
            .expect("oxeye");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.contains("otlp_c: not an oxeye queue of this version (it holds `data.db`"),
            "{command}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(foreign.join("otlp_c/data.db")).expect("read"),
        "not a queue"
    );

    // Two processes on one queue: the second is refused at start and says why.
    let ports = Ports::new();
    let first = agent(&ports, dir.path(), "", "");
    let second = Ports {
        grpc: free_port(),
        metrics: free_port(),
        backend: ports.backend,
    };
    let config = oxeye_tests::temp_config(
        "persistent-queue-second",
        &format!(
            "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
exporters:
  otlp:
    endpoint: http://127.0.0.1:{backend}
    sending_queue: {{storage: {{directory: {dir}}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp]}}
",
            grpc = second.grpc,
            backend = second.backend,
            dir = dir.path().display()
        ),
    );
    let out = std::process::Command::new(oxeye_tests::oxeye_bin())
        .args(["run", "-c", config.to_str().expect("path")])
        .output()
        .expect("oxeye");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the queue directory is in use by another process"),
        "{err}"
    );
    let _ = stop(first);
}

/// A reload that changes the exporter (here its endpoint) hands the queue on disk to the new
/// instance: what the old one held, retrying a dead endpoint, goes to the new endpoint.
#[test]
fn a_reload_hands_the_queue_to_the_new_exporter_which_inflates_what_was_written_gzipd() {
    let _one = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, metrics, dead, live) = (free_port(), free_port(), free_port(), free_port());
    // The first run gzips what it writes; the second does not compress, so it inflates it.
    let yaml = |backend: u16, compression: &str| {
        format!(
            "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
exporters:
  otlp:
    endpoint: http://127.0.0.1:{backend}
    compression: {compression}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 300ms}}
    sending_queue: {{storage: {{directory: {dir}}}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp]}}
",
            dir = dir.path().display()
        )
    };
    let config = oxeye_tests::temp_config("persistent-queue-reload", &yaml(dead, "gzip"));
    let a = Agent::spawn(&config);
    oxeye_tests::wait_port(grpc);
    oxeye_tests::wait_port(metrics);
    let accepted = send(&rt, grpc, 0..100, 20_000);
    assert_eq!(accepted.len(), 100);
    wait("all on disk", Duration::from_secs(30), || {
        metric(metrics, "oxeye_queue_disk_records") == 100 * PER_REQUEST
    });
    let sink = Arc::new(Sink::default());
    sink_endpoint_at(&rt, Arc::clone(&sink), live);
    std::fs::write(&config, yaml(live, "none")).expect("write");
    oxeye_tests::signal(&a.child.0, libc::SIGHUP);
    let t0 = Instant::now();
    while received(&sink).len() as u64 != 100 * PER_REQUEST {
        if t0.elapsed() > Duration::from_secs(30) {
            oxeye_tests::signal(&a.child.0, libc::SIGKILL);
            panic!(
                "{} of {} spans at the new endpoint within 30 s:\n{}",
                received(&sink).len(),
                100 * PER_REQUEST,
                a.log.join().expect("log")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(metrics, "oxeye_config_reloads_total{result=\"applied\"}"),
        1
    );
    wait("the queue empty", Duration::from_secs(10), || {
        metric(metrics, "oxeye_queue_disk_records") == 0
    });
    let err = stop(a);
    assert!(!err.contains("in use by another process"), "{err}");
    let line = err
        .lines()
        .rfind(|l| l.contains("exporter otlp:"))
        .unwrap_or_else(|| panic!("no exporter line:\n{err}"));
    assert!(
        !line.contains("dropped") && !line.contains("on disk"),
        "{line}"
    );
}
