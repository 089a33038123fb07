//! Kernel test (root): request spans. A real nginx on loopback, driven by curl and by a Python
//! `http.client` load (keep-alive, pipelining), gives one SERVER span per request — method,
//! path, route, status, and a duration inside what the client measured — and a request with a
//! `traceparent` joins that trace. A Python `http.server` that calls nginx while it answers
//! gives a CLIENT span that is its SERVER span's child. All through `oxeye run` to JSON lines.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxeye_tests::netns::require_root;
use oxeye_tests::peers::{nginx, nginx_tls, redis};
use oxeye_tests::{free_port, temp_config, wait_port, KillOnDrop, Running};
use serde_json::Value;

/// `oxeye run` with `requests:` on `ports`, spans to JSON lines; returns once attached.
fn oxeye(name: &str, ports: &[u16]) -> Running {
    oxeye_with(name, ports, "")
}

/// [`oxeye`] with more `requests:` settings (`key: value` lines).
fn oxeye_with(name: &str, ports: &[u16], more: &str) -> Running {
    let more: String = more.lines().map(|l| format!("      {l}\n")).collect();
    let cfg = temp_config(
        name,
        &format!(
            "receivers:
  ebpf:
    requests:
      ports: {ports:?}
      routes: ['/users/{{id}}', '/ok']
{more}exporters:
  stdout: {{format: json}}
service:
  pipelines:
    traces: {{receivers: [ebpf], exporters: [stdout]}}
"
        ),
    );
    Running::start(&cfg, "syscall tracepoints attached")
}

/// Stops oxeye once the reader's last drain is through; its spans (JSON lines) and stderr.
fn stop(ox: Running) -> (Vec<Value>, String) {
    // The reader drains every 100 ms.
    std::thread::sleep(Duration::from_millis(400));
    let (out, stderr) = ox.stop();
    let spans = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (spans, stderr)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run client");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python() -> Command {
    Command::new("python3")
}

/// A client load: keep-alive requests over one `http.client` connection, then three requests
/// pipelined in one write; prints one JSON line per request with the client's own times.
const CLIENT: &str = r#"
import http.client, json, socket, sys, time
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(20):
    path = ["/ok", "/users/%d" % i, "/missing", "/fail"][i % 4]
    t0 = time.time_ns()
    c.request("GET", path, headers={"X-Req": str(i)})
    r = c.getresponse()
    r.read()
    t1 = time.time_ns()
    print(json.dumps({"path": path, "status": r.status, "start": t0, "end": t1}))
c.close()
s = socket.create_connection(("127.0.0.1", port))
t0 = time.time_ns()
s.sendall(b"".join(b"GET /users/p%d HTTP/1.1\r\nHost: pipelined\r\n\r\n" % i for i in range(3)))
got = b""
while got.count(b"HTTP/1.1 200") < 3 or not got.endswith(b"user\n"):
    got += s.recv(65536)
t1 = time.time_ns()
s.close()
for i in range(3):
    print(json.dumps({"path": "/users/p%d" % i, "status": 200, "start": t0, "end": t1}))
"#;

fn attr<'a>(s: &'a Value, k: &str) -> &'a Value {
    &s[k]
}

#[test]
fn nginx_requests_become_server_spans_joined_to_their_callers_traces() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oxeye-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let ox = oxeye("requests-nginx", &[port]);
    let _nginx = nginx(&dir, port);

    // curl: one connection, several requests (keep-alive), and one with a traceparent.
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    run(Command::new("curl").args(["-s", "-o", "/dev/null"]).args([
        url("/ok"),
        url("/missing"),
        url("/big"),
    ]));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-H"])
        .arg(format!("traceparent: {tp}"))
        .arg(url("/users/7")));
    let client: Vec<Value> = run(python().args(["-c", CLIENT, &port.to_string()]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("client line"))
        .collect();
    assert_eq!(client.len(), 23);

    let (spans, stderr) = stop(ox);
    let nginx_spans: Vec<&Value> = spans
        .iter()
        .filter(|s| s["process.executable.name"] == "nginx")
        .collect();
    for s in &nginx_spans {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(attr(s, "server.port"), port, "{s}");
        assert_eq!(attr(s, "client.address"), "127.0.0.1", "{s}");
        assert_eq!(attr(s, "network.protocol.version"), "1.1", "{s}");
    }
    // curl's four requests.
    let by_path = |p: &str| -> Vec<&Value> {
        nginx_spans
            .iter()
            .copied()
            .filter(|s| attr(s, "url.path") == p)
            .collect()
    };
    let ok = by_path("/ok");
    assert_eq!(
        ok.len(),
        1 + 5,
        "curl's /ok and the client's five: {stderr}"
    );
    assert!(ok
        .iter()
        .all(|s| s["name"] == "GET /ok" && attr(s, "http.route") == "/ok"));
    let missing = by_path("/missing");
    assert_eq!(missing.len(), 1 + 5);
    assert!(missing
        .iter()
        .all(|s| attr(s, "http.response.status_code") == 404 && s["status"] == "unset"));
    let fail = by_path("/fail");
    assert_eq!(fail.len(), 5);
    assert!(fail
        .iter()
        .all(|s| attr(s, "http.response.status_code") == 500 && s["status"] == "error"));
    let big = by_path("/big");
    assert_eq!(big.len(), 1);
    assert_eq!(attr(big[0], "http.response.status_code"), 200);
    assert!(big[0]["name"] == "GET", "no route for /big: {}", big[0]);
    // The traceparent request joins the caller's trace, as the child of its span.
    let joined = by_path("/users/7");
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(joined[0]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(joined[0]["name"], "GET /users/{id}");
    // Every client request: one span, inside the client's own measured time.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for c in &client {
        let path = c["path"].as_str().expect("path");
        let candidates: Vec<&&Value> = nginx_spans
            .iter()
            .filter(|s| attr(s, "url.path") == path)
            .filter(|s| {
                let (start, end) = (
                    s["start_time_unix_nano"].as_u64().unwrap(),
                    s["end_time_unix_nano"].as_u64().unwrap(),
                );
                // 1 ms for the two clocks' conversion.
                start + 1_000_000 >= c["start"].as_u64().unwrap()
                    && end <= c["end"].as_u64().unwrap() + 1_000_000
            })
            .collect();
        *seen.entry(path.to_string()).or_default() += 1;
        assert!(
            !candidates.is_empty(),
            "no span of {path} inside the client's time {c}: {:?}",
            by_path(path)
        );
        assert!(candidates
            .iter()
            .all(|s| *attr(s, "http.response.status_code") == c["status"]));
    }
    for p in ["/users/p0", "/users/p1", "/users/p2"] {
        let s = by_path(p);
        assert_eq!(s.len(), 1, "pipelined {p}");
        assert_eq!(attr(s[0], "server.address"), "pipelined");
    }
    let total = 4 + 23;
    assert_eq!(
        nginx_spans.len(),
        total,
        "one span per request, no more: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python `http.server` that calls nginx's /ok while it answers.
const SERVER: &str = r#"
import http.client, http.server, sys
upstream = int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        c = http.client.HTTPConnection("127.0.0.1", upstream)
        c.request("GET", "/ok")
        body = c.getresponse().read()
        c.close()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_call_made_while_serving_is_the_server_spans_child() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oxeye-requests-child-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (nginx_port, py_port) = (free_port(), free_port());
    let ox = oxeye("requests-child", &[nginx_port, py_port]);
    let _nginx = nginx(&dir, nginx_port);
    let server: Child = python()
        .args(["-c", SERVER, &py_port.to_string(), &nginx_port.to_string()])
        .spawn()
        .expect("python server");
    let server = KillOnDrop(server);
    wait_port(py_port);
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for _ in 0..3 {
        run(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-H"])
            .arg(format!("traceparent: {tp}"))
            .arg(format!("http://127.0.0.1:{py_port}/front")));
    }
    drop(server);
    let (spans, stderr) = stop(ox);
    let py: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            s["process.executable.name"]
                .as_str()
                .is_some_and(|c| c.starts_with("python"))
        })
        .collect();
    let servers: Vec<&&Value> = py.iter().filter(|s| s["kind"] == "server").collect();
    let clients: Vec<&&Value> = py.iter().filter(|s| s["kind"] == "client").collect();
    assert_eq!(servers.len(), 3, "{stderr}\n{py:#?}");
    assert_eq!(clients.len(), 3, "{py:#?}");
    for c in &clients {
        assert_eq!(attr(c, "url.path"), "/ok");
        assert_eq!(attr(c, "server.port"), nginx_port);
        assert_eq!(attr(c, "http.response.status_code"), 200);
        let parent = servers
            .iter()
            .find(|s| s["span_id"] == c["parent_span_id"])
            .unwrap_or_else(|| panic!("the client span's parent is no server span: {c}"));
        assert_eq!(parent["trace_id"], c["trace_id"]);
        assert_eq!(parent["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent["parent_span_id"], "b7ad6b7169203331");
        assert_eq!(parent["thread.id"], c["thread.id"]);
        let (ps, pe) = (
            parent["start_time_unix_nano"].as_u64().unwrap(),
            parent["end_time_unix_nano"].as_u64().unwrap(),
        );
        let (cs, ce) = (
            c["start_time_unix_nano"].as_u64().unwrap(),
            c["end_time_unix_nano"].as_u64().unwrap(),
        );
        assert!(
            ps <= cs && ce <= pe,
            "the child runs inside its parent: {parent} {c}"
        );
    }
    // nginx saw the three calls as SERVER spans of its own.
    let upstream = spans
        .iter()
        .filter(|s| s["process.executable.name"] == "nginx" && s["kind"] == "server")
        .count();
    assert_eq!(upstream, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// curl over HTTPS to nginx with `tls: true`: the same spans as in plain HTTP, on both sides
/// (nginx and curl both call the system's libssl), marked `tls`.
#[test]
fn https_requests_are_seen_through_libssl() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oxeye-requests-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let ox = oxeye_with("requests-tls", &[port], "tls: true");
    let _nginx = nginx_tls(&dir, port);
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    // One connection, three requests; then one with a traceparent.
    run(Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([url("/ok"), url("/missing"), url("/big")]));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    run(Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-H"])
        .arg(format!("traceparent: {tp}"))
        .arg(url("/users/7")));
    let (spans, stderr) = stop(ox);
    let side = |comm: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s["process.executable.name"] == comm)
            .collect()
    };
    let (server, client) = (side("nginx"), side("curl"));
    let paths = |v: &[&Value]| -> Vec<(String, i64)> {
        let mut p: Vec<(String, i64)> = v
            .iter()
            .map(|s| {
                (
                    attr(s, "url.path").as_str().unwrap_or("?").to_string(),
                    attr(s, "http.response.status_code").as_i64().unwrap_or(0),
                )
            })
            .collect();
        p.sort();
        p
    };
    let want: Vec<(String, i64)> = [
        ("/big", 200),
        ("/missing", 404),
        ("/ok", 200),
        ("/users/7", 200),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), *s))
    .collect();
    assert_eq!(paths(&server), want, "nginx's spans: {stderr}");
    assert_eq!(paths(&client), want, "curl's spans: {stderr}");
    for s in server.iter().chain(&client) {
        assert_eq!(attr(s, "tls.established"), true, "{s}");
    }
    for s in &server {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(attr(s, "url.scheme"), "https", "{s}");
    }
    for s in &client {
        assert_eq!(s["kind"], "client", "{s}");
        let full = attr(s, "url.full").as_str().unwrap_or("");
        assert!(full.starts_with("https://127.0.0.1:"), "{s}");
    }
    let joined: Vec<&&Value> = server
        .iter()
        .filter(|s| attr(s, "url.path") == "/users/7")
        .collect();
    assert_eq!(joined[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(joined[0]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(joined[0]["name"], "GET /users/{id}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tls: true` for a process that does not load libssl: `validate` and `run` both refuse it
/// and say why.
#[test]
fn tls_for_a_process_without_libssl_is_refused() {
    require_root();
    let sleeper = KillOnDrop(Command::new("sleep").arg("30").spawn().expect("sleep"));
    let pid = sleeper.0.id();
    let cfg = temp_config(
        "requests-tls-nolib",
        &format!(
            "receivers:
  ebpf:
    requests: {{pid: {pid}, tls: true}}
exporters:
  nop: {{}}
service:
  pipelines:
    traces: {{receivers: [ebpf], exporters: [nop]}}
"
        ),
    );
    for cmd in ["validate", "run"] {
        let out = Command::new(oxeye_tests::oxeye_bin())
            .args([cmd, "-c"])
            .arg(&cfg)
            .output()
            .expect("oxeye");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(
            err.contains("requests.tls")
                && err.contains(&format!("process {pid} (sleep) does not load libssl")),
            "{cmd}: {err}"
        );
    }
}

/// In a metrics pipeline (and no traces pipeline), the request spans become the semantic
/// conventions' duration histograms: nginx's `http.server.request.duration`, curl's
/// `http.client.request.duration`, redis-cli's `db.client.operation.duration`, one count per
/// request, by route, status and error type.
#[test]
fn requests_give_the_conventions_red_metrics() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oxeye-requests-red-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (web, db) = (free_port(), free_port());
    let cfg = temp_config(
        "requests-red",
        &format!(
            "receivers:
  ebpf:
    requests:
      ports: [{web}, {db}]
      routes: ['/users/{{id}}', '/ok', '/fail']
      metrics: {{interval: 1s}}
exporters:
  stdout: {{format: json}}
service:
  pipelines:
    metrics: {{receivers: [ebpf], exporters: [stdout]}}
"
        ),
    );
    let ox = Running::start(&cfg, "syscall tracepoints attached");
    let _nginx = nginx(&dir, web);
    let _redis = redis(&dir, db);
    let url = |p: &str| format!("http://127.0.0.1:{web}{p}");
    for p in ["/ok", "/users/1", "/users/2", "/fail", "/ok", "/users/3"] {
        run(Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(url(p)));
    }
    for args in [["SET", "k", "v"], ["GET", "k", ""], ["INCR", "k", ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        run(Command::new("redis-cli")
            .args(["-p", &db.to_string()])
            .args(&args));
    }
    // Past one interval, so a periodic flush is seen before the last one at shutdown.
    std::thread::sleep(Duration::from_millis(1500));
    let (points, stderr) = stop(ox);
    assert!(
        points.iter().all(|p| p.get("kind").is_none()),
        "no spans without a traces pipeline"
    );
    // Cumulative: a series' last point has its totals.
    let mut last: HashMap<String, &Value> = HashMap::new();
    for p in &points {
        let mut key = p.as_object().expect("object").clone();
        for k in [
            "count",
            "sum",
            "min",
            "max",
            "bucket_counts",
            "time_unix_nano",
        ] {
            key.remove(k);
        }
        last.insert(Value::Object(key).to_string(), p);
    }
    assert!(points.len() > last.len(), "flushed every second: {stderr}");
    let count = |name: &str, f: &dyn Fn(&Value) -> bool| -> u64 {
        last.values()
            .filter(|p| p["name"] == name && f(p))
            .map(|p| p["count"].as_u64().expect("count"))
            .sum()
    };
    let server = "http.server.request.duration";
    let route = |r: &'static str| move |p: &Value| p["http.route"] == r;
    assert_eq!(count(server, &route("/users/{id}")), 3, "{stderr}");
    assert_eq!(count(server, &route("/ok")), 2);
    assert_eq!(count(server, &route("/fail")), 1);
    assert_eq!(
        count(server, &|p| p["error.type"] == "500"
            && p["http.response.status_code"] == 500),
        1
    );
    let client = "http.client.request.duration";
    assert_eq!(count(client, &|p| p["server.port"] == web), 6);
    let redis_ops = "db.client.operation.duration";
    for op in ["SET", "GET", "INCR"] {
        assert_eq!(
            count(redis_ops, &|p| p["db.operation.name"] == op
                && p["db.system.name"] == "redis"),
            1,
            "{op}"
        );
    }
    assert_eq!(
        count(redis_ops, &|p| p.get("error.type").is_some()),
        1,
        "INCR of a string"
    );
    for p in last.values() {
        assert_eq!(p["type"], "Histogram");
        assert_eq!(p["unit"], "s");
        assert_eq!(p["temporality"], "Cumulative");
        let buckets: u64 = p["bucket_counts"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b.as_u64().unwrap())
            .sum();
        assert_eq!(buckets, p["count"].as_u64().unwrap());
        assert!(p.get("url.path").is_none(), "never the raw path: {p}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_port_filter_that_matches_nothing_says_so() {
    require_root();
    let port = free_port();
    let ox = oxeye("requests-nothing", &[port]);
    // The start warning comes right after the attach line.
    let warned = ox
        .lines
        .recv_timeout(Duration::from_secs(5))
        .expect("a warning after the attach line");
    assert!(
        warned.contains(&format!("nothing on this host listens on port {port} now")),
        "{warned}"
    );
    let (spans, stderr) = stop(ox);
    assert!(spans.is_empty());
    assert!(
        stderr.contains("requests: no connection was opened that the filters let through"),
        "{stderr}"
    );
}

#[test]
fn redis_commands_become_spans_one_per_command() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oxeye-requests-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let ox = oxeye("requests-redis", &[port]);
    let _server = redis(&dir, port);
    let cli = |args: &[&str]| {
        run(Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args))
    };
    cli(&["SET", "greeting", "hello"]);
    assert_eq!(cli(&["GET", "greeting"]).trim(), "hello");
    // An error reply: INCR of a string.
    assert!(cli(&["INCR", "greeting"]).contains("not an integer"));
    // A value far larger than what is captured, then a command after it on the same
    // connection (pipelined through stdin).
    let big = "x".repeat(100_000);
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    {
        use std::io::Write;
        let mut stdin = pipe.stdin.take().expect("stdin");
        writeln!(stdin, "SET big {big}").expect("write");
        writeln!(stdin, "STRLEN big").expect("write");
    }
    assert!(pipe.wait().expect("redis-cli").success());
    // redis-benchmark: 5 connections, 1 000 SETs and 1 000 GETs, 10 pipelined at a time.
    run(Command::new("redis-benchmark").args([
        "-p",
        &port.to_string(),
        "-n",
        "1000",
        "-c",
        "5",
        "-P",
        "10",
        "-t",
        "set,get",
        "-q",
    ]));
    let (spans, stderr) = stop(ox);
    let server: Vec<&Value> = spans
        .iter()
        .filter(|s| s["process.executable.name"] == "redis-server")
        .collect();
    let count = |op: &str| {
        server
            .iter()
            .filter(|s| attr(s, "db.operation.name") == op)
            .count()
    };
    for s in &server {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(attr(s, "db.system.name"), "redis", "{s}");
        assert_eq!(attr(s, "server.port"), port, "{s}");
    }
    // The benchmark's 1 000 of each, and the CLI's.
    assert_eq!(count("SET"), 1000 + 2, "{stderr}");
    assert_eq!(count("GET"), 1000 + 1);
    assert_eq!(count("STRLEN"), 1);
    let incr: Vec<&&Value> = server.iter().filter(|s| s["name"] == "INCR").collect();
    assert_eq!(incr.len(), 1);
    assert_eq!(incr[0]["status"], "error");
    assert_eq!(attr(incr[0], "db.response.status_code"), "ERR");
    assert!(server
        .iter()
        .filter(|s| s["name"] != "INCR")
        .all(|s| s["status"] == "unset"));
    // The clients' side: redis-benchmark's commands as CLIENT spans.
    let client_sets = spans
        .iter()
        .filter(|s| s["process.executable.name"] == "redis-benchmark" && s["name"] == "SET")
        .count();
    assert_eq!(client_sets, 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dns_lookups_become_client_spans_with_their_answers_codes() {
    require_root();
    // dnsmasq on port 53 of a namespace of our own, so nothing of the host's is in the way.
    let ns = oxeye_tests::netns::Netns::new("dns");
    let dir = std::env::temp_dir().join(format!("oxeye-requests-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ox = oxeye("requests-dns", &[53]);
    let dnsmasq = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--port=53",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--address=/example.test/10.1.2.3",
            "--address=/example.test/::1",
            // An empty address: NXDOMAIN for the whole domain.
            "--address=/nx.test/",
        ])
        .arg(format!("--pid-file={}/dnsmasq.pid", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (tests/setup.sh installs dnsmasq-base)");
    let _dnsmasq = KillOnDrop(dnsmasq);
    let dig = |args: &[&str]| {
        let out = ns
            .command("dig")
            .args(["@127.0.0.1", "+tries=1", "+time=2"])
            .args(args)
            .output()
            .expect("dig (tests/setup.sh installs bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Until dnsmasq answers (bounded: 50 tries).
    let mut ready = false;
    for _ in 0..50 {
        if dig(&["+short", "warmup.example.test"]).contains("10.1.2.3") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "dnsmasq did not answer");
    assert!(dig(&["+short", "a.example.test"]).contains("10.1.2.3"));
    assert!(dig(&["-t", "AAAA", "a.example.test"]).contains("status: NOERROR"));
    assert!(dig(&["www.nx.test"]).contains("status: NXDOMAIN"));
    drop(_dnsmasq);
    let (spans, stderr) = stop(ox);
    // dig's lookups run on a thread of its own (`isc-net-0000`): spans carry the thread's name.
    let digs: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == "client" && s["dns.question.name"].is_string())
        .collect();
    let find = |name: &str, t: &str| -> &Value {
        let hits: Vec<&&Value> = digs
            .iter()
            .filter(|s| {
                attr(s, "dns.question.name") == name && attr(s, "oxeye.dns.question.type") == t
            })
            .collect();
        assert_eq!(hits.len(), 1, "{name} {t}: {digs:#?}\n{stderr}");
        hits[0]
    };
    let a = find("a.example.test", "A");
    assert_eq!(a["name"], "DNS A");
    assert_eq!(a["kind"], "client");
    assert_eq!(a["status"], "unset");
    assert_eq!(attr(a, "oxeye.dns.response_code"), "NOERROR");
    assert_eq!(attr(a, "server.port"), 53);
    assert_eq!(attr(a, "network.transport"), "udp");
    let aaaa = find("a.example.test", "AAAA");
    assert_eq!(aaaa["status"], "unset");
    let nx = find("www.nx.test", "A");
    assert_eq!(nx["status"], "error");
    assert_eq!(attr(nx, "error.type"), "NXDOMAIN");
    // The warm-up lookups and these three: one span each, no more.
    let warmups = digs
        .iter()
        .filter(|s| attr(s, "dns.question.name") == "warmup.example.test")
        .count();
    assert_eq!(digs.len(), warmups + 3);
    let _ = std::fs::remove_dir_all(&dir);
}
