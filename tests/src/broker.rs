//! A Kafka-compatible broker for the kafka tests and benchmark: nisshi (tansu's new name, from
//! crates.io, installed by tests/setup.sh), in memory, on a loopback port; killed when dropped.

use std::process::{Command, Stdio};

use crate::{free_port, wait_port, KillOnDrop};

pub struct Broker {
    pub port: u16,
    _process: KillOnDrop,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log");
        let process = Command::new("nisshi")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "oxeye-tests",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nisshi (installed by tests/setup.sh)");
        wait_port(port);
        Broker {
            port,
            _process: KillOnDrop(process),
            dir,
        }
    }

    /// `brokers:` for a config: `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Makes topic `name` with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new("nisshi")
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("nisshi topic create");
        assert!(status.success(), "nisshi topic create {name}: {status}");
    }

    /// What the broker logged (the last 100 lines).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(100)..].join("\n")
    }
}
