//! Real servers the request-span tests and benchmark run on loopback, each with a config of
//! their own in a directory of the caller's (installed by tests/setup.sh).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{wait_port, KillOnDrop};

/// nginx in the foreground (no master process, one worker) serving on 127.0.0.1:`port`:
/// `/ok` (200 "ok"), `/users/*` (200), `/missing` (404), `/fail` (500), `/big` (a 100 kB file).
/// Killed when the returned value drops.
pub fn nginx(dir: &Path, port: u16) -> KillOnDrop {
    start_nginx(dir, &format!("listen 127.0.0.1:{port};"), port, 1024)
}

/// [`nginx`] that holds up to `connections` connections at once.
pub fn nginx_many(dir: &Path, port: u16, connections: u32) -> KillOnDrop {
    start_nginx(dir, &format!("listen 127.0.0.1:{port};"), port, connections)
}

/// [`nginx`] over TLS (a self-signed certificate for `localhost`, made here with `openssl`).
pub fn nginx_tls(dir: &Path, port: u16) -> KillOnDrop {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (tests/setup.sh installs it)");
    assert!(made.success(), "openssl req failed");
    let listen = format!(
        "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
        cert.display(),
        key.display()
    );
    start_nginx(dir, &listen, port, 1024)
}

fn start_nginx(dir: &Path, listen: &str, port: u16, connections: u32) -> KillOnDrop {
    let conf = nginx_conf(dir, listen, connections);
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx (tests/setup.sh installs it)");
    let child = KillOnDrop(child);
    wait_port(port);
    child
}

/// Writes the config of [`nginx`] (in the foreground, everything under `dir`, `listen` the
/// server's listen directives) and its `/big` file; returns the config's path. For nginx run
/// elsewhere (the VM tier): `nginx -c CONF -p DIR -e DIR/error.log`.
pub fn nginx_conf(dir: &Path, listen: &str, connections: u32) -> std::path::PathBuf {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {files};
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    {listen}
    location = /ok {{ return 200 \"ok\\n\"; }}
    location /users/ {{ return 200 \"user\\n\"; }}
    location = /missing {{ return 404; }}
    location = /fail {{ return 500 \"boom\\n\"; }}
    location = /big {{ alias {d}/big.txt; }}
  }}
}}
",
            d = dir.display(),
            files = connections * 2 + 64,
        ),
    )
    .expect("nginx.conf");
    std::fs::write(dir.join("big.txt"), "x".repeat(100_000)).expect("big.txt");
    conf
}

/// redis-server on 127.0.0.1:`port`, nothing saved; killed when the returned value drops.
pub fn redis(dir: &Path, port: u16) -> KillOnDrop {
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (tests/setup.sh installs it)");
    let server = KillOnDrop(server);
    wait_port(port);
    server
}

/// Opens `n` connections to the port, sends half a request on each (a 900-byte header, no
/// blank line) when `half`, prints `open`, and holds them until its stdin closes.
const FLOOD: &str = r#"
import resource, socket, sys
port, n, half = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "half"
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, n + 256))
head = b"GET /ok HTTP/1.1\r\nHost: flood\r\nX-Pad: " + b"a" * 900 + b"\r\n"
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if half:
        s.sendall(head)
    socks.append(s)
print("open", flush=True)
sys.stdin.read()
"#;

/// Many connections held open to a local server by one Python process (idle, or each with half
/// a request sent); they close when this drops.
pub struct Flood {
    child: KillOnDrop,
}

impl Flood {
    /// Returns once all `n` connections are open.
    pub fn start(port: u16, n: usize, half: bool) -> Flood {
        let mut child = KillOnDrop(
            Command::new("python3")
                .args(["-c", FLOOD, &port.to_string(), &n.to_string()])
                .arg(if half { "half" } else { "idle" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3"),
        );
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.0.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the flood's line");
        assert_eq!(line.trim(), "open", "the flood opened its connections");
        Flood { child }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // Its stdin closing ends it.
        drop(self.child.0.stdin.take());
        let _ = self.child.0.wait();
    }
}
