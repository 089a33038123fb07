//! Real servers the request-span tests and benchmark run on loopback, each with a config of
//! their own in a directory of the caller's (installed by tests/setup.sh).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{wait_port, KillOnDrop};

/// nginx in the foreground (no master process, one worker) serving on 127.0.0.1:`port`:
/// `/ok` (200 "ok"), `/users/*` (200), `/missing` (404), `/fail` (500), `/big` (a 100 kB file).
/// Killed when the returned value drops.
pub fn nginx(dir: &Path, port: u16) -> KillOnDrop {
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
    listen 127.0.0.1:{port};
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
