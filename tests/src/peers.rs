//! Real servers the request-span tests and benchmark run on loopback, each with a config of
//! their own in a directory of the caller's (installed by tests/setup.sh).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{wait_port, KillOnDrop};

/// nginx in the foreground (no master process, one worker) serving on 127.0.0.1:`port`:
/// `/ok` (200 "ok"), `/users/*` (200), `/missing` (404), `/fail` (500), `/big` (a 100 kB file).
/// Killed when the returned value drops.
pub fn nginx(dir: &Path, port: u16) -> KillOnDrop {
    start_nginx(dir, &format!("listen 127.0.0.1:{port};"), port)
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
    start_nginx(dir, &listen, port)
}

fn start_nginx(dir: &Path, listen: &str, port: u16) -> KillOnDrop {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
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
            d = dir.display()
        ),
    )
    .expect("nginx.conf");
    std::fs::write(dir.join("big.txt"), "x".repeat(100_000)).expect("big.txt");
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
