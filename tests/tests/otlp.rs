//! The otlp exporter against real peers on loopback:
//! - Arize Phoenix (PyPI, pinned, installed by tests/setup.sh) receives spans over gRPC and
//!   HTTP/protobuf and gives them back through its REST API: names, ids, parent links,
//!   durations and attributes are compared with what oxeye sent (its stdout exporter's JSON).
//! - Phoenix stopped for 5 s in the middle of a run: every span still arrives, retries counted.
//! - Flows as metrics, decoded with the generated OTLP types by a loopback gRPC / HTTP endpoint
//!   run by the test (scripted failures: UNAVAILABLE + RetryInfo, 503 + Retry-After, partial
//!   success), and over TLS with a CA file and a client certificate.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use oxeye_api::{Flow, Records};
use oxeye_tests::{captured, follow, free_port, oxeye_bin, run, temp_config};
use prost::Message;
use serde_json::Value as Json;
use tonic_types::StatusExt;

// ---------------------------------------------------------------------------------------------
// Phoenix

fn phoenix_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OXEYE_PHOENIX") {
        return p.into();
    }
    let home = std::env::var("HOME").expect("HOME");
    PathBuf::from(home).join(".local/share/oxeye/phoenix/bin/phoenix")
}

/// A Phoenix server on 127.0.0.1 with its own working directory (its SQLite database survives a
/// restart, as in the outage test).
struct Phoenix {
    child: Option<Child>,
    dir: PathBuf,
    http: u16,
    grpc: u16,
}

impl Phoenix {
    fn new(tag: &str) -> Phoenix {
        let bin = phoenix_bin();
        assert!(
            bin.exists(),
            "{} is missing: run tests/setup.sh (it installs Arize Phoenix)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("oxeye-phoenix-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("phoenix dir");
        let mut p = Phoenix {
            child: None,
            dir,
            http: free_port(),
            grpc: free_port(),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("phoenix.log"))
            .expect("log");
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(phoenix_bin())
                .arg("serve")
                .env("PHOENIX_HOST", "127.0.0.1")
                .env("PHOENIX_PORT", self.http.to_string())
                .env("PHOENIX_GRPC_PORT", self.grpc.to_string())
                .env("PHOENIX_WORKING_DIR", self.dir.join("wd"))
                .env("PHOENIX_TELEMETRY_ENABLED", "false")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start phoenix")
        };
        self.child = Some(child);
        let started = Instant::now();
        while http_get(self.http, "/healthz").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "phoenix did not start in 120 s; log: {}",
                self.dir.join("phoenix.log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops it gracefully (SIGTERM to its process group, so it finishes pending inserts).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM) };
            let t = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(20) {
                    // SAFETY: as above.
                    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every span of `project`, following `next_cursor`.
    fn spans(&self, project: &str) -> Vec<Json> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/projects/{project}/spans?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let Some(body) = http_get(self.http, &path) else {
                return all; // no such project (yet)
            };
            let v: Json = serde_json::from_str(&body).expect("phoenix JSON");
            all.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return all,
            }
        }
    }

    /// Waits until `project` holds `n` spans (Phoenix inserts in the background), or until the
    /// count stops growing for 15 s.
    fn wait_for(&self, project: &str, n: usize) -> Vec<Json> {
        let mut progress = (0, Instant::now());
        loop {
            let spans = self.spans(project);
            if spans.len() > progress.0 {
                progress = (spans.len(), Instant::now());
            }
            if spans.len() >= n || progress.1.elapsed() > Duration::from_secs(15) {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("OXEYE_KEEP_PHOENIX").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// GET on 127.0.0.1:port; the body of a 200 answer, else None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let response = oxeye_tests::http_get(port, path).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Microseconds since the epoch of `2026-11-25T22:43:23.498348+00:00`.
fn iso_micros(s: &str) -> i64 {
    let (date, rest) = s.split_once('T').expect("date");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let time = rest.trim_end_matches("+00:00").trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().expect("time")).collect();
    let micros: i64 = format!("{frac:0<6}")[..6].parse().expect("fraction");
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    ((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000) + micros
}

/// Runs oxeye with the synthetic receiver into `otlp` and `stdout` (JSON); returns the sent
/// spans by span id and the final log line's counts.
fn send_spans(name: &str, seed: u64, count: u64, otlp: &str) -> (HashMap<String, Json>, String) {
    let cfg = temp_config(
        name,
        &format!(
            "receivers:\n  synthetic: {{seed: {seed}, batch_size: 250, spans: {{count: {count}}}}}\nexporters:\n  otlp: {otlp}\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp, stdout]}}\n"
        ),
    );
    let out = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .env_remove("OXEYE_LOG")
        .output()
        .expect("run oxeye");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let sent: HashMap<String, Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).expect("stdout JSON"))
        .map(|v| (v["span_id"].as_str().expect("span_id").to_string(), v))
        .collect();
    assert_eq!(sent.len() as u64, count);
    (sent, stderr)
}

/// Compares what Phoenix returns with what oxeye sent.
fn assert_same_spans(sent: &HashMap<String, Json>, got: &[Json]) {
    assert_eq!(got.len(), sent.len(), "span count");
    let mut with_parent = 0;
    for g in got {
        let id = g["context"]["span_id"].as_str().expect("span_id");
        let s = sent.get(id).unwrap_or_else(|| panic!("unknown span {id}"));
        assert_eq!(g["name"], s["name"], "{id}");
        assert_eq!(g["context"]["trace_id"], s["trace_id"], "{id}");
        assert_eq!(g["parent_id"], s["parent_span_id"], "{id}");
        with_parent += usize::from(!g["parent_id"].is_null());
        // Phoenix keeps microseconds.
        let start = iso_micros(g["start_time"].as_str().expect("start")) as f64;
        let end = iso_micros(g["end_time"].as_str().expect("end")) as f64;
        let sent_start = s["start_time_unix_nano"].as_u64().expect("start") as f64 / 1e3;
        let sent_dur = s["duration_ns"].as_u64().expect("duration") as f64 / 1e3;
        assert!(
            (start - sent_start).abs() <= 1.0,
            "{id}: start {start} vs {sent_start}"
        );
        assert!(
            ((end - start) - sent_dur).abs() < 2.0,
            "{id}: duration {} vs {sent_dur}",
            end - start
        );
        for key in [
            "process.pid",
            "thread.id",
            "process.executable.name",
            "oxeye.return_value",
        ] {
            assert_eq!(g["attributes"][key], s[key], "{id}: {key}");
        }
        let status = s["status"].as_str().expect("status").to_ascii_uppercase();
        assert_eq!(g["status_code"].as_str(), Some(status.as_str()), "{id}");
    }
    assert!(with_parent > 0, "parent links were compared");
}

#[test]
fn spans_reach_phoenix_intact_over_grpc_and_http() {
    let phoenix = Phoenix::new("roundtrip");
    for (seed, protocol, endpoint) in [
        (101, "grpc", format!("http://127.0.0.1:{}", phoenix.grpc)),
        (
            102,
            "http/protobuf",
            format!("http://127.0.0.1:{}", phoenix.http),
        ),
    ] {
        let project = format!("oxeye-{}", protocol.replace('/', "-"));
        let (sent, stderr) = send_spans(
            &project,
            seed,
            3000,
            &format!("{{protocol: {protocol}, endpoint: '{endpoint}', resource: {{openinference.project.name: {project}}}, batch: {{send_batch_size: 700}}}}"),
        );
        assert_eq!(
            oxeye_tests::final_counts(&stderr),
            Some((3000, 6000, 0)),
            "{protocol}: {stderr}"
        );
        let got = phoenix.wait_for(&project, sent.len());
        assert_same_spans(&sent, &got);
    }
}

/// Polls oxeye's /metrics for `name{...exporter...}`; the last value seen.
fn scrape(port: u16, prefix: &str) -> Option<u64> {
    let body = http_get(port, "/metrics")?;
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .max()
}

#[test]
fn phoenix_outage_loses_no_span_and_counts_retries() {
    let mut phoenix = Phoenix::new("outage");
    let project = "oxeye-outage";
    // Phoenix acknowledges spans before its (SQLite) inserter stores them and drops what is
    // still pending 5 s into its own shutdown: keep the rate well below its insert rate here.
    let count = 1500;
    let metrics_port = free_port();
    // A transform whose setting a reload changes while Phoenix is down: the otlp exporter is
    // kept as it is, with everything it queued and is retrying.
    let http = phoenix.http;
    let yaml = |tag: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 103, batch_size: 100, spans: {{count: {count}, rate: 100}}}}\nprocessors:\n  transform: {{trace_statements: ['set(attributes[\"oxeye.test.phase\"], \"{tag}\")']}}\nexporters:\n  otlp:\n    protocol: http/protobuf\n    endpoint: http://127.0.0.1:{}\n    resource: {{openinference.project.name: {project}}}\n    batch: {{send_batch_size: 200, timeout: 100ms}}\n    retry_on_failure: {{initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 120s}}\nservice:\n  shutdown_timeout: 120s\n  telemetry: {{metrics: {{address: ':{metrics_port}'}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [transform], exporters: [otlp]}}\n",
            http
        )
    };
    let cfg = temp_config("otlp-outage", &yaml("before"));
    let mut child = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .env_remove("OXEYE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxeye");
    let (_lines, stderr) = follow(child.stderr.take().expect("stderr"));
    std::thread::sleep(Duration::from_secs(2));
    phoenix.stop();
    let down = Instant::now();
    let mut retries = 0;
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&cfg, yaml("after")).expect("rewrite config");
    oxeye_tests::signal(&child, libc::SIGHUP);
    while down.elapsed() < Duration::from_secs(5) {
        retries = retries.max(scrape(metrics_port, "oxeye_otlp_retries_total").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    phoenix.start();
    let status = child.wait().expect("oxeye exit");
    let stderr = stderr.join().expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(retries > 0, "retries were counted while Phoenix was down");
    assert!(stderr.contains("export failed; retrying"), "{stderr}");
    assert!(
        stderr.contains("~processors/transform[traces] (2 unchanged)"),
        "reloaded while retrying, the exporter kept: {stderr}"
    );
    assert_eq!(
        oxeye_tests::final_counts(&stderr),
        Some((count, count, 0)),
        "{stderr}"
    );
    let got = phoenix.wait_for(project, count as usize);
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|s| {
            s["context"]["span_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), count as usize, "every span arrived exactly once");
}

// ---------------------------------------------------------------------------------------------
// A loopback OTLP metrics endpoint with scripted answers.

#[derive(Clone, Debug)]
enum Reply {
    Ok,
    /// Accept, reporting this many data points rejected.
    Partial(i64),
    /// gRPC UNAVAILABLE with RetryInfo.
    Unavailable(Duration),
    /// HTTP status with an optional Retry-After.
    Status(u16, Option<&'static str>),
}

/// Accepted requests with their headers.
type Received = Vec<(ExportMetricsServiceRequest, Vec<(String, String)>)>;

#[derive(Default)]
struct Endpoint {
    script: Mutex<VecDeque<Reply>>,
    got: Mutex<Received>,
}

impl Endpoint {
    fn next(&self) -> Reply {
        self.script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Reply::Ok)
    }
    fn accept(&self, req: ExportMetricsServiceRequest, headers: Vec<(String, String)>) {
        self.got.lock().expect("lock").push((req, headers));
    }
}

fn partial(rejected: i64) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected,
            error_message: "test rejects some".into(),
        }),
    }
}

struct Grpc(Arc<Endpoint>);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_string()))
                }
                _ => None,
            })
            .collect();
        match self.0.next() {
            Reply::Unavailable(after) => Err(tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                "test outage",
                tonic_types::ErrorDetails::with_retry_info(Some(after)),
            )),
            Reply::Status(..) => Err(tonic::Status::invalid_argument("test rejects")),
            reply => {
                self.0.accept(request.into_inner(), headers);
                let rejected = if let Reply::Partial(n) = reply { n } else { 0 };
                Ok(tonic::Response::new(partial(rejected)))
            }
        }
    }
}

/// The scripted endpoint as a gRPC service (gzip accepted).
fn metrics_service(ep: Arc<Endpoint>) -> MetricsServiceServer<Grpc> {
    MetricsServiceServer::new(Grpc(ep)).accept_compressed(tonic::codec::CompressionEncoding::Gzip)
}

/// Starts the gRPC endpoint on a runtime of its own; returns its port.
fn grpc_endpoint(rt: &tokio::runtime::Runtime, ep: Arc<Endpoint>) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(metrics_service(ep))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

async fn http_answer(
    ep: Arc<Endpoint>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.expect("body").to_bytes();
    let gz = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip");
    let body = if gz {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("gzip body");
        out
    } else {
        body.to_vec()
    };
    let respond = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    if path != "/v1/metrics" {
        return Ok(respond(404, b"wrong path".to_vec()));
    }
    Ok(match ep.next() {
        Reply::Status(code, retry_after) => {
            let mut r = respond(code, b"scripted failure".to_vec());
            if let Some(after) = retry_after {
                r.headers_mut()
                    .insert("retry-after", after.parse().expect("header"));
            }
            r
        }
        Reply::Unavailable(_) => respond(503, Vec::new()),
        reply => {
            let req = ExportMetricsServiceRequest::decode(&body[..]).expect("protobuf body");
            ep.accept(req, headers);
            let rejected = if let Reply::Partial(n) = reply { n } else { 0 };
            respond(200, partial(rejected).encode_to_vec())
        }
    })
}

/// Starts the HTTP endpoint (TLS when `tls` is given); returns its port.
fn http_endpoint(
    rt: &tokio::runtime::Runtime,
    ep: Arc<Endpoint>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let ep = Arc::clone(&ep);
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| http_answer(Arc::clone(&ep), req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        // A failed handshake (the wrong-CA case) just ends the connection.
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await;
                        }
                    }
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    port
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// Checks every flow captured in-process against the decoded data points: same count, the
/// semantic-convention attributes, delta monotonic sums, window as start/time.
fn assert_metrics_match(flows: &[Flow], got: &Received) {
    let mut bytes = HashMap::new();
    let mut packets = HashMap::new();
    for (req, _) in got {
        for rm in &req.resource_metrics {
            let res = &rm.resource.as_ref().expect("resource").attributes;
            assert_eq!(
                str_attr(res, "service.name"),
                Some(&any_value::Value::StringValue("edge-7".into()))
            );
            assert!(str_attr(res, "host.name").is_some());
            for m in &rm.scope_metrics[0].metrics {
                let Some(metric::Data::Sum(sum)) = &m.data else {
                    panic!("{} is not a sum", m.name)
                };
                assert!(sum.is_monotonic);
                assert_eq!(sum.aggregation_temporality, 1, "delta");
                let target = match m.name.as_str() {
                    "network.flow.bytes" => &mut bytes,
                    "network.flow.packets" => &mut packets,
                    other => panic!("unexpected metric {other}"),
                };
                for p in &sum.data_points {
                    let key = (
                        format!("{:?}", str_attr(&p.attributes, "source.address")),
                        format!("{:?}", str_attr(&p.attributes, "source.port")),
                        format!("{:?}", str_attr(&p.attributes, "destination.address")),
                        format!("{:?}", str_attr(&p.attributes, "destination.port")),
                        format!("{:?}", str_attr(&p.attributes, "network.transport")),
                        format!("{:?}", str_attr(&p.attributes, "network.io.direction")),
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                    );
                    assert!(str_attr(&p.attributes, "network.type").is_some());
                    let Some(number_data_point::Value::AsInt(v)) = p.value else {
                        panic!("not an int")
                    };
                    *target.entry(key).or_insert(0i64) += v;
                }
            }
        }
    }
    let mut want_bytes = HashMap::new();
    let mut want_packets = HashMap::new();
    for f in flows {
        let s = |v: String| format!("{:?}", Some(&any_value::Value::StringValue(v)));
        let i = |v: u16| format!("{:?}", Some(&any_value::Value::IntValue(v.into())));
        let key = (
            s(f.src_addr.to_string()),
            i(f.src_port),
            s(f.dst_addr.to_string()),
            i(f.dst_port),
            s(f.transport.as_str().into_owned()),
            s(f.direction.as_str().to_string()),
            if f.window_end_unix_ns > 0 {
                f.window_start_unix_ns
            } else {
                f.first_seen_unix_ns
            },
            if f.window_end_unix_ns > 0 {
                f.window_end_unix_ns
            } else {
                f.last_seen_unix_ns
            },
        );
        *want_bytes.entry(key.clone()).or_insert(0i64) += f.bytes as i64;
        *want_packets.entry(key).or_insert(0i64) += f.packets as i64;
    }
    assert_eq!(bytes, want_bytes, "bytes per flow");
    assert_eq!(packets, want_packets, "packets per flow");
}

fn captured_flows(id: &str) -> Vec<Flow> {
    captured(id)
        .iter()
        .flat_map(|b| match &b.records {
            Records::Flows(f) => f.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn component(report: &oxeye::engine::Report, id: &str) -> oxeye_api::Telemetry {
    report
        .registry
        .components()
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.telemetry.clone())
        .unwrap_or_else(|| panic!("no component {id}"))
}

fn counter(t: &oxeye_api::Telemetry, name: &str) -> u64 {
    t.counters()
        .iter()
        .filter(|(n, _, _)| *n == name)
        .map(|(_, _, v)| v)
        .sum()
}

fn flows_pipeline(capture: &str, otlp: &str) -> String {
    format!(
        "receivers:\n  synthetic: {{seed: 5, batch_size: 300, flows: {{count: 2000}}}}\nexporters:\n  otlp: {otlp}\n  capture/{capture}:\nservice:\n  resource: {{service.name: edge-7}}\n  pipelines:\n    flows: {{receivers: [synthetic], exporters: [otlp, capture/{capture}]}}\n"
    )
}

#[test]
fn flows_arrive_as_delta_sums_over_grpc_with_retry_info_and_partial_success() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ep = Arc::new(Endpoint::default());
    ep.script.lock().expect("lock").extend([
        Reply::Unavailable(Duration::from_millis(50)),
        Reply::Unavailable(Duration::from_millis(50)),
        Reply::Partial(3),
    ]);
    let port = grpc_endpoint(&rt, Arc::clone(&ep));
    let report = run(&flows_pipeline(
        "grpc-metrics",
        &format!("{{endpoint: 'http://127.0.0.1:{port}', headers: {{x-tenant: acme}}, batch: {{send_batch_size: 500}}, retry_on_failure: {{initial_interval: 10s}}}}"),
    ));
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let flows = captured_flows("capture/grpc-metrics");
    assert_eq!(flows.len(), 2000);
    let got = ep.got.lock().expect("lock");
    assert_metrics_match(&flows, &got);
    assert!(got
        .iter()
        .all(|(_, h)| h.contains(&("x-tenant".into(), "acme".into()))));
    let t = component(&report, "otlp");
    // RetryInfo (50 ms) was honoured instead of the 10 s initial interval: the run is short.
    assert!(
        report.elapsed < Duration::from_secs(8),
        "{:?}",
        report.elapsed
    );
    assert_eq!(counter(&t, "otlp_retries"), 2);
    assert_eq!(t.dropped(), vec![("rejected_by_backend", 3)]);
    assert_eq!(t.received(), 2000);
    assert_eq!(t.emitted(), 2000 - 3, "out = delivered");
}

#[test]
fn flows_arrive_over_http_gzip_with_retry_after_and_permanent_errors_counted() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ep = Arc::new(Endpoint::default());
    ep.script
        .lock()
        .unwrap()
        .extend([Reply::Status(503, Some("1")), Reply::Status(429, None)]);
    let port = http_endpoint(&rt, Arc::clone(&ep), None);
    let started = Instant::now();
    let report = run(&flows_pipeline(
        "http-metrics",
        &format!("{{protocol: http/protobuf, endpoint: 'http://127.0.0.1:{port}', headers: {{authorization: Bearer t0k}}, batch: {{send_batch_size: 2000, timeout: 1s}}, retry_on_failure: {{initial_interval: 100ms}}}}"),
    ));
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let flows = captured_flows("capture/http-metrics");
    let got = ep.got.lock().expect("lock");
    assert_metrics_match(&flows, &got);
    let headers = &got[0].1;
    for h in [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
        ("authorization", "Bearer t0k"),
    ] {
        assert!(
            headers.contains(&(h.0.into(), h.1.into())),
            "{h:?} in {headers:?}"
        );
    }
    let t = component(&report, "otlp");
    assert_eq!(counter(&t, "otlp_retries"), 2);
    assert_eq!((t.emitted(), t.dropped_total()), (2000, 0));
    drop(got);

    // A permanent error (400) drops the request at once, counted.
    let ep = Arc::new(Endpoint::default());
    ep.script
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Reply::Status(400, None), 100));
    let port = http_endpoint(&rt, Arc::clone(&ep), None);
    let report = run(&flows_pipeline(
        "http-400",
        &format!("{{protocol: http/protobuf, endpoint: 'http://127.0.0.1:{port}'}}"),
    ));
    let t = component(&report, "otlp");
    assert_eq!(t.dropped(), vec![("export_failed", 2000)]);
    assert_eq!(t.emitted(), 0);
    assert_eq!(counter(&t, "otlp_retries"), 0, "400 is not retried");
}

#[test]
fn shutdown_deadline_and_full_queue_are_counted_not_lost() {
    // Nothing listens on this port: every attempt fails and is retried until the deadline.
    let dead = free_port();
    let report = run(&format!(
        "receivers:\n  synthetic: {{seed: 9, batch_size: 100, spans: {{count: 1000}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{dead}', retry_on_failure: {{initial_interval: 100ms}}}}\nservice:\n  shutdown_timeout: 1s\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n"
    ));
    let t = component(&report, "otlp");
    assert_eq!(t.received(), 1000);
    assert_eq!(t.emitted(), 0);
    assert_eq!(t.dropped_total(), 1000, "{:?}", t.dropped());
    assert!(
        t.dropped().iter().any(|(r, _)| *r == "shutdown_deadline"),
        "{:?}",
        t.dropped()
    );
    assert!(counter(&t, "otlp_retries") > 0);

    // drop_newest on a one-batch queue while the endpoint hangs (it takes connections and
    // never answers; each attempt times out): refusals are counted.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    let report = run(&format!(
        "receivers:\n  synthetic: {{seed: 9, batch_size: 100, spans: {{count: 1000}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{hang_port}', timeout: 200ms, batch: {{send_batch_size: 100}}, sending_queue: {{queue_size: 1, num_consumers: 1, when_full: drop_newest}}, retry_on_failure: {{enabled: false}}}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n"
    ));
    drop(hang);
    let t = component(&report, "otlp");
    let dropped: HashMap<_, _> = t.dropped().into_iter().collect();
    assert!(dropped.contains_key("sending_queue_full"), "{dropped:?}");
    assert!(dropped.contains_key("retries_exhausted"), "{dropped:?}");
    assert_eq!(t.emitted() + t.dropped_total(), 1000, "{dropped:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// The exporter's `tls:` value trusting the CA and presenting the client certificate.
    fn tls_yaml(&self) -> String {
        let d = self.dir.display();
        format!(
            "{{ca_file: '{d}/ca.pem', cert_file: '{d}/client.pem', key_file: '{d}/client.key'}}"
        )
    }
}

/// The exporter delivered all 2 000 flows of `flows_pipeline` and the endpoint got them right.
fn assert_all_delivered(report: &oxeye::engine::Report, ep: &Endpoint, capture: &str) {
    let t = component(report, "otlp");
    assert_eq!(
        (t.emitted(), t.dropped_total()),
        (2000, 0),
        "{:?}",
        t.dropped()
    );
    assert_metrics_match(&captured_flows(capture), &ep.got.lock().expect("lock"));
}

fn pki(tag: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("oxeye-otlp-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issue = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("sign");
        (cert, key)
    };
    let (server_cert, server_key) = issue("127.0.0.1");
    let (client_cert, client_key) = issue("oxeye-client");
    for (file, pem) in [
        ("ca.pem", ca.pem()),
        ("client.pem", client_cert.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(file), pem).expect("write pem");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .expect("verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("key"),
        )
        .expect("server config");
    Pki {
        dir,
        server: Arc::new(server),
    }
}

#[test]
fn https_with_ca_file_and_client_certificate() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = pki("https");
    let ep = Arc::new(Endpoint::default());
    let port = http_endpoint(&rt, Arc::clone(&ep), Some(Arc::clone(&pki.server)));
    let report = run(&flows_pipeline(
        "https",
        &format!(
            "{{protocol: http/protobuf, endpoint: 'https://127.0.0.1:{port}', tls: {}}}",
            pki.tls_yaml()
        ),
    ));
    assert_all_delivered(&report, &ep, "capture/https");

    // Without the CA the server is not trusted: nothing is sent, the loss is counted.
    let report = run(&flows_pipeline(
        "https-untrusted",
        &format!("{{protocol: http/protobuf, endpoint: 'https://127.0.0.1:{port}', retry_on_failure: {{enabled: false}}}}"),
    ));
    let t = component(&report, "otlp");
    assert_eq!(t.dropped(), vec![("retries_exhausted", 2000)]);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// A server-side TLS stream tonic can serve. (tonic implements `Connected` for rustls streams
/// only with its own TLS features, which would also make its client refuse our connector for
/// `https://`.)
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[test]
fn grpc_over_tls_with_ca_file_and_client_certificate() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = pki("grpcs");
    let mut server = (*pki.server).clone();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(16);
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = tx.send(Ok(TlsIo(tls))).await;
            }
        }
    });
    let ep = Arc::new(Endpoint::default());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(metrics_service(Arc::clone(&ep)))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
    );
    let report = run(&flows_pipeline(
        "grpcs",
        &format!(
            "{{endpoint: 'https://127.0.0.1:{port}', tls: {}}}",
            pki.tls_yaml()
        ),
    ));
    assert_all_delivered(&report, &ep, "capture/grpcs");
    let _ = std::fs::remove_dir_all(&pki.dir);
}
