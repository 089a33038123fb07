//! librdkafka's errors and logs, through tracing with the component's id. A broker that is down
//! makes librdkafka report the same error many times a second: each distinct message is logged
//! once per [`QUIET`], at warn (librdkafka keeps reconnecting; records are counted elsewhere).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use tracing::{debug, info, warn};

/// How long a repeated message stays quiet.
pub const QUIET: Duration = Duration::from_secs(30);

/// The context of oxeye's Kafka clients.
pub struct Context {
    /// The component, e.g. `exporters/kafka`.
    pub id: String,
    said: Mutex<HashMap<String, Instant>>,
}

impl Context {
    pub fn new(id: impl Into<String>) -> Context {
        Context {
            id: id.into(),
            said: Mutex::default(),
        }
    }

    /// True the first time `message` is said in [`QUIET`].
    fn first(&self, message: &str) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        said.retain(|_, t| now.duration_since(*t) < QUIET);
        if said.contains_key(message) {
            return false;
        }
        said.insert(message.to_string(), now);
        true
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if self.first(message) {
                    warn!(component = %self.id, facility = fac, "librdkafka: {message} (repeats within {QUIET:?} are not logged)");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(component = %self.id, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                debug!(component = %self.id, facility = fac, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let message = format!("{error}: {reason}");
        if self.first(&message) {
            warn!(component = %self.id, "kafka: {message} (librdkafka retries; repeats within {QUIET:?} are not logged)");
        }
    }
}

impl ConsumerContext for Context {
    /// Says which partitions this member got or gave up: what a rebalance moved.
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |l: &rdkafka::TopicPartitionList| {
            l.elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match rebalance {
            Rebalance::Assign(l) => {
                info!(component = %self.id, partitions = %list(l), "kafka: partitions assigned")
            }
            Rebalance::Revoke(l) => {
                info!(component = %self.id, partitions = %list(l), "kafka: partitions revoked")
            }
            Rebalance::Error(e) => {
                warn!(component = %self.id, error = %e, "kafka: rebalance failed")
            }
        }
    }
}
