//! A Kafka-compatible broker for the kafka tests and benchmark: nisshi (tansu's new name, from
//! crates.io, installed by tests/setup.sh), in memory, on a loopback port, plaintext or TLS;
//! killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{free_port, wait_port, KillOnDrop};

pub struct Broker {
    pub port: u16,
    _process: KillOnDrop,
    dir: tempfile::TempDir,
    /// The CA clients trust, for a TLS-only broker.
    ca: Option<PathBuf>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(None)
    }

    /// A broker that speaks TLS only: its certificate and key, and the CA file clients trust.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Broker {
        Broker::start_with(Some((cert, key, ca)))
    }

    fn start_with(tls: Option<(&Path, &Path, &Path)>) -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log");
        let mut command = Command::new("nisshi");
        command.arg("broker");
        if let Some((cert, key, _)) = tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let process = command
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", "oxeye-tests"])
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
            ca: tls.map(|(_, _, ca)| ca.to_path_buf()),
        }
    }

    /// `brokers:` for a config: `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Makes topic `name` with `partitions` partitions, over the Kafka protocol (so over TLS
    /// too: nisshi's `topic create` speaks plaintext only).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        use oxeye_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let mut config = oxeye_kafka::rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        if let Some(ca) = &self.ca {
            config.set("security.protocol", "ssl");
            config.set("ssl.ca.location", ca.to_str().expect("path"));
        }
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let created = rt.block_on(async {
            let admin: AdminClient<_> = config.create().expect("admin client");
            let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1));
            admin.create_topics([&topic], &AdminOptions::new()).await
        });
        let results = created.unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// What the broker logged (the last 100 lines).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(100)..].join("\n")
    }
}
