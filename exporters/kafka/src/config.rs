//! The `kafka` exporter's config (the Collector's names).

use std::collections::BTreeMap;
use std::time::Duration;

use oxeye_api::config::duration;
use oxeye_api::ConfigErrors;
use oxeye_kafka::{Auth, Client, SignalTopic, Tls};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaExporterConfig {
    #[serde(default = "oxeye_kafka::default_brokers")]
    pub brokers: Vec<String>,
    #[serde(default = "oxeye_kafka::default_client_id")]
    pub client_id: String,
    /// Topic `otlp_spans` by default.
    #[serde(default)]
    pub traces: SignalTopic,
    /// Topic `otlp_metrics` by default (flows go there too, as metrics).
    #[serde(default)]
    pub metrics: SignalTopic,
    /// Topic `otlp_logs` by default.
    #[serde(default)]
    pub logs: SignalTopic,
    /// One message per trace, keyed by its trace id: a trace's spans land on one partition.
    #[serde(default)]
    pub partition_traces_by_id: bool,
    /// How long a produce request may wait for the broker.
    #[serde(default = "timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry_on_failure: Retry,
    #[serde(default)]
    pub producer: Producer,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    /// librdkafka properties passed through, set last.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn timeout() -> Duration {
    Duration::from_secs(5)
}

/// `retry_on_failure:` — librdkafka retries a message until it is delivered or
/// `max_elapsed_time` passed (then it is dropped and counted).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "max_elapsed", with = "duration")]
    pub max_elapsed_time: Duration,
}

fn yes() -> bool {
    true
}

fn max_elapsed() -> Duration {
    Duration::from_secs(300)
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            enabled: true,
            max_elapsed_time: max_elapsed(),
        }
    }
}

/// `producer:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Producer {
    /// The largest message; a request that would be larger is cut into smaller ones.
    #[serde(default = "max_message_bytes")]
    pub max_message_bytes: u64,
    /// 0: none, 1: the leader's, -1: all in-sync replicas'.
    #[serde(default = "one")]
    pub required_acks: i8,
    #[serde(default)]
    pub compression: Compression,
    /// Messages per produce request at most.
    #[serde(default = "flush_max_messages")]
    pub flush_max_messages: u64,
    /// How long librdkafka waits for more messages before it sends a produce request.
    #[serde(default = "linger", with = "duration")]
    pub linger: Duration,
    /// Messages held in memory, waiting to be delivered, at most (MiB); `export` waits for
    /// room beyond it.
    #[serde(default = "max_buffered_mib")]
    pub max_buffered_mib: u64,
}

fn max_message_bytes() -> u64 {
    1_000_000
}
fn one() -> i8 {
    1
}
fn flush_max_messages() -> u64 {
    10_000
}
fn linger() -> Duration {
    Duration::from_millis(10)
}
fn max_buffered_mib() -> u64 {
    64
}

impl Default for Producer {
    fn default() -> Self {
        Producer {
            max_message_bytes: max_message_bytes(),
            required_acks: one(),
            compression: Compression::default(),
            flush_max_messages: flush_max_messages(),
            linger: linger(),
            max_buffered_mib: max_buffered_mib(),
        }
    }
}

/// `producer.compression`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaExporterConfig {
    pub fn client(&self) -> Client<'_> {
        Client {
            brokers: &self.brokers,
            client_id: &self.client_id,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
            librdkafka: &self.librdkafka,
        }
    }

    pub fn check(&self) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::new();
        self.client().validate(&mut errs);
        if ![-1, 0, 1].contains(&self.producer.required_acks) {
            errs.push(
                "producer.required_acks",
                format!("{} is not an acks setting: 0 (none), 1 (the leader) or -1 (all in-sync replicas)", self.producer.required_acks),
            );
        }
        if !(1_000..=1_000_000_000).contains(&self.producer.max_message_bytes) {
            errs.push(
                "producer.max_message_bytes",
                "must be between 1000 and 1000000000",
            );
        }
        if !(1..=1_000_000).contains(&self.producer.flush_max_messages) {
            errs.push(
                "producer.flush_max_messages",
                "must be between 1 and 1000000",
            );
        }
        if !(1..=2_097_151 / 1024).contains(&self.producer.max_buffered_mib) {
            errs.push("producer.max_buffered_mib", "must be between 1 and 2047");
        }
        if self.librdkafka.contains_key("message.max.bytes") {
            errs.push(
                "librdkafka.message.max.bytes",
                "set by the exporter from producer.max_message_bytes (messages are cut to it): set that instead",
            );
        }
        if self.producer.max_message_bytes > self.producer.max_buffered_mib << 20 {
            errs.push(
                "producer.max_message_bytes",
                format!("{} is more than producer.max_buffered_mib ({} MiB): such a message could never be queued", self.producer.max_message_bytes, self.producer.max_buffered_mib),
            );
        }
        if self.linger_ms() > 900_000 {
            errs.push("producer.linger", "at most 900s");
        }
        if self.timeout.is_zero() {
            errs.push("timeout", "must be more than 0s");
        }
        if self.retry_on_failure.enabled && self.retry_on_failure.max_elapsed_time.is_zero() {
            errs.push(
                "retry_on_failure.max_elapsed_time",
                "must be more than 0s (or set enabled: false)",
            );
        }
        for (field, t) in [
            ("traces", &self.traces),
            ("metrics", &self.metrics),
            ("logs", &self.logs),
        ] {
            if t.topic.as_deref() == Some("") {
                errs.push(format!("{field}.topic"), "empty: name a topic");
            }
        }
        errs.into_result()
    }

    fn linger_ms(&self) -> u128 {
        self.producer.linger.as_millis()
    }

    /// The producer's librdkafka settings: the client's, then the producer's, then
    /// `librdkafka:` (set again last, so it overrides).
    pub fn producer_config(&self) -> oxeye_kafka::rdkafka::ClientConfig {
        let mut c = self.client().config();
        let p = &self.producer;
        c.set("acks", p.required_acks.to_string());
        c.set("compression.codec", p.compression.as_str());
        c.set("message.max.bytes", p.max_message_bytes.to_string());
        c.set("batch.num.messages", p.flush_max_messages.to_string());
        c.set("linger.ms", self.linger_ms().to_string());
        c.set(
            "queue.buffering.max.kbytes",
            (p.max_buffered_mib * 1024).to_string(),
        );
        c.set("request.timeout.ms", self.timeout.as_millis().to_string());
        if self.retry_on_failure.enabled {
            c.set(
                "message.timeout.ms",
                self.retry_on_failure
                    .max_elapsed_time
                    .as_millis()
                    .to_string(),
            );
        } else {
            c.set("message.send.max.retries", "0");
        }
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        c
    }
}
