//! The `kafka` receiver's config (the Collector's names).

use std::collections::BTreeMap;
use std::time::Duration;

use oxeye_api::config::duration;
use oxeye_api::{ConfigErrors, Signal};
use oxeye_kafka::{Auth, Client, SignalTopic, Tls};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaReceiverConfig {
    #[serde(default = "oxeye_kafka::default_brokers")]
    pub brokers: Vec<String>,
    #[serde(default = "oxeye_kafka::default_client_id")]
    pub client_id: String,
    /// Receivers with the same group share the topics' partitions.
    #[serde(default = "group_id")]
    pub group_id: String,
    /// Where a group with no committed offset starts: `latest` or `earliest`.
    #[serde(default)]
    pub initial_offset: InitialOffset,
    #[serde(default)]
    pub traces: SignalTopic,
    #[serde(default)]
    pub metrics: SignalTopic,
    #[serde(default)]
    pub logs: SignalTopic,
    /// A member silent for this long leaves the group: its partitions go to the others.
    #[serde(default = "session_timeout", with = "duration")]
    pub session_timeout: Duration,
    #[serde(default = "heartbeat_interval", with = "duration")]
    pub heartbeat_interval: Duration,
    /// How often the offsets of what the pipeline is done with are committed.
    #[serde(default = "commit_interval", with = "duration")]
    pub commit_interval: Duration,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    /// librdkafka properties passed through, set last.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn group_id() -> String {
    "oxeye".into()
}
fn session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn heartbeat_interval() -> Duration {
    Duration::from_secs(3)
}
fn commit_interval() -> Duration {
    Duration::from_secs(1)
}

/// `initial_offset`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffset {
    #[default]
    Latest,
    Earliest,
}

/// The signals this receiver takes, each with its topic settings and default topic.
pub const TOPICS: [(Signal, &str, &str); 3] = [
    (Signal::Traces, "traces", "otlp_spans"),
    (Signal::Metrics, "metrics", "otlp_metrics"),
    (Signal::Logs, "logs", "otlp_logs"),
];

impl KafkaReceiverConfig {
    pub fn client(&self) -> Client<'_> {
        Client {
            brokers: &self.brokers,
            client_id: &self.client_id,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
            librdkafka: &self.librdkafka,
        }
    }

    pub fn signal_topic(&self, signal: Signal) -> &SignalTopic {
        match signal {
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
            _ => &self.traces,
        }
    }

    /// The topic of `signal`.
    pub fn topic(&self, signal: Signal) -> &str {
        let default = TOPICS
            .iter()
            .find(|t| t.0 == signal)
            .map_or("otlp_spans", |t| t.2);
        self.signal_topic(signal).topic_or(default)
    }

    pub fn check(&self) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::new();
        self.client().validate(&mut errs);
        if self.group_id.is_empty() {
            errs.push("group_id", "empty: name the consumer group");
        }
        let ms = |d: Duration| d.as_millis();
        if !(1_000..=3_600_000).contains(&ms(self.session_timeout)) {
            errs.push("session_timeout", "must be between 1s and 1h");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            errs.push(
                "heartbeat_interval",
                "must be more than 0s and less than session_timeout (a third of it is usual)",
            );
        }
        for key in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if self.librdkafka.contains_key(key) {
                errs.push(
                    format!("librdkafka.{key}"),
                    "set by the receiver (offsets are stored once the pipeline is done, then committed): use group_id / commit_interval",
                );
            }
        }
        if self.commit_interval.is_zero() {
            errs.push("commit_interval", "must be more than 0s");
        }
        for (i, (signal, field, _)) in TOPICS.iter().enumerate() {
            let topic = self.topic(*signal);
            if topic.is_empty() {
                errs.push(format!("{field}.topic"), "empty: name a topic");
            }
            for (other, other_field, _) in &TOPICS[..i] {
                if self.topic(*other) == topic {
                    errs.push(
                        format!("{field}.topic"),
                        format!("`{topic}` is also {other_field}.topic: each signal needs a topic of its own (a message does not say which signal it holds)"),
                    );
                }
            }
        }
        errs.into_result()
    }

    /// The consumer's librdkafka settings: offsets stored by the receiver once the pipeline
    /// is done with a message, and committed every `commit_interval` and when partitions are
    /// revoked or the receiver stops.
    pub fn consumer_config(&self) -> oxeye_kafka::rdkafka::ClientConfig {
        let mut c = self.client().config();
        c.set("group.id", &self.group_id);
        c.set("enable.auto.commit", "true");
        c.set("enable.auto.offset.store", "false");
        c.set(
            "auto.commit.interval.ms",
            self.commit_interval.as_millis().to_string(),
        );
        c.set(
            "auto.offset.reset",
            match self.initial_offset {
                InitialOffset::Latest => "latest",
                InitialOffset::Earliest => "earliest",
            },
        );
        c.set(
            "session.timeout.ms",
            self.session_timeout.as_millis().to_string(),
        );
        c.set(
            "heartbeat.interval.ms",
            self.heartbeat_interval.as_millis().to_string(),
        );
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        c
    }
}
