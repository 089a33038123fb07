//! The `kafka` receiver: OTLP messages from Kafka topics (see the crate's README).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    BoxError, BuildContext, ConfigErrors, Factory, Receiver, ReceiverContext, Signal, Telemetry,
};
use oxeye_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use oxeye_kafka::rdkafka::Message as _;
use oxeye_kafka::{creation_error, Context, Encoding};
use oxeye_receiver_otlp::body::{self, Body};
use tracing::{info, warn};

mod config;
mod offsets;

pub use config::KafkaReceiverConfig;
use config::TOPICS;
use offsets::Offsets;

/// How long the brokers have to answer the check at start.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping receiver waits for the pipeline to be done with what it handed out, so
/// that their offsets are committed as it leaves the group (what is not done is read again by
/// the next owner of its partition).
/// Within the engine's default 10 s `shutdown_timeout`, with the exporters' own drain after it.
const DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(4);

/// Registers `kafka`.
pub struct KafkaReceiverFactory;

impl Factory for KafkaReceiverFactory {
    type Config = KafkaReceiverConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "kafka";
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Metrics, Signal::Logs];
    const DESCRIPTION: &'static str =
        "OTLP (protobuf or JSON) messages from Kafka topics, in a consumer group; offsets committed once the pipeline is done";
    const DOCS: &'static str = include_str!("../../../docs/components/receiver-kafka.md");

    fn validate(config: &KafkaReceiverConfig) -> Result<(), ConfigErrors> {
        config.check()
    }

    fn build(
        config: KafkaReceiverConfig,
        ctx: BuildContext,
    ) -> Result<Box<dyn Receiver>, BoxError> {
        let consumer: StreamConsumer<Context> = config
            .consumer_config()
            .create_with_context(Context::new(&ctx.id))
            .map_err(creation_error)?;
        Ok(Box::new(KafkaReceiver {
            config,
            id: ctx.id,
            telemetry: ctx.telemetry,
            consumer: Arc::new(consumer),
        }))
    }
}

oxeye_api::register!(KafkaReceiverFactory);

pub struct KafkaReceiver {
    config: KafkaReceiverConfig,
    id: String,
    telemetry: Telemetry,
    consumer: Arc<StreamConsumer<Context>>,
}

/// Messages that are no OTLP request of their topic's signal: skipped (their offset is
/// committed, or they would stop the partition forever) and counted, per signal, as
/// `oxeye_kafka_malformed_messages_total{source="traces"}`.
const MALFORMED: &str = "kafka_malformed_messages";

impl KafkaReceiver {
    /// (topic, signal, encoding) of every signal a pipeline takes from this receiver.
    fn topics(&self, ctx: &ReceiverContext) -> Vec<(String, Signal, Body)> {
        TOPICS
            .iter()
            .filter(|(s, _, _)| ctx.wants(*s))
            .map(|&(s, _, _)| {
                let body = match self.config.signal_topic(s).encoding {
                    Encoding::OtlpJson => Body::Json,
                    _ => Body::Protobuf,
                };
                (self.config.topic(s).to_string(), s, body)
            })
            .collect()
    }
}

#[async_trait]
impl Receiver for KafkaReceiver {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let topics = self.topics(&ctx);
        let names: Vec<String> = topics.iter().map(|t| t.0.clone()).collect();
        let (consumer, brokers, check_names) = (
            Arc::clone(&self.consumer),
            self.config.brokers.clone(),
            names.clone(),
        );
        let partitions = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = check_names.iter().map(String::as_str).collect();
            oxeye_kafka::check(
                |t| consumer.fetch_metadata(None, t),
                &brokers,
                &refs,
                CHECK_TIMEOUT,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("kafka receiver `{}`: {e}", self.id))?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.consumer.subscribe(&refs).map_err(|e| {
            format!(
                "kafka receiver `{}`: cannot subscribe to {}: {e}",
                self.id,
                names.join(", ")
            )
        })?;
        info!(
            receiver = %self.id,
            group = %self.config.group_id,
            topics = %names.iter().zip(&partitions).map(|(t, p)| format!("{t} ({p} partitions)")).collect::<Vec<_>>().join(", "),
            "kafka receiver consuming"
        );
        let offsets = Offsets::new(Arc::downgrade(&self.consumer));
        let malformed: [AtomicU64; 3] = Default::default();
        let topic_names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
        let mut last_error: Option<(String, std::time::Instant)> = None;
        loop {
            let message = tokio::select! {
                _ = ctx.shutdown().wait() => break,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself; errors here are transient (a broker
                    // down, a rebalance): say so (once per error and QUIET) and go on.
                    let said = e.to_string();
                    if last_error
                        .as_ref()
                        .is_none_or(|(m, t)| *m != said || t.elapsed() > oxeye_kafka::QUIET)
                    {
                        warn!(receiver = %self.id, error = %said, "kafka: consumer error (librdkafka retries; repeats within {:?} are not logged)", oxeye_kafka::QUIET);
                        last_error = Some((said, std::time::Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(i) = names.iter().position(|n| n == message.topic()) else {
                continue;
            };
            let (_, signal, kind) = topics[i];
            let payload = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
            let done = offsets.start(
                Arc::clone(&topic_names[i]),
                message.partition(),
                message.offset(),
            );
            let (partition, offset) = (message.partition(), message.offset());
            drop(message);
            match body::read(signal, &payload, kind, ctx.takes_encoded(signal)) {
                Ok(converted) => {
                    self.telemetry
                        .add_dropped(rejected_reason(signal), converted.rejected);
                    for batch in converted.batches {
                        ctx.emit_holding(batch, Arc::clone(&done) as oxeye_api::Hold)
                            .await;
                    }
                }
                Err(e) => {
                    let n = malformed[i].fetch_add(1, Ordering::Relaxed) + 1;
                    self.telemetry.set_counter(MALFORMED, signal.as_str(), n);
                    if malformed
                        .iter()
                        .map(|m| m.load(Ordering::Relaxed))
                        .sum::<u64>()
                        == 1
                    {
                        warn!(receiver = %self.id, topic = %names[i], partition, offset, error = %e, "kafka: a message is not an OTLP {signal} request: skipped and counted (oxeye_kafka_malformed_messages_total); more are not logged");
                    }
                }
            }
            drop(done);
        }
        // Give the pipeline time to be done with what it holds, so its offsets are committed
        // as this member leaves (the rest is read again by the partition's next owner).
        let t0 = tokio::time::Instant::now();
        while offsets.pending() > 0 && t0.elapsed() < DRAIN_AT_SHUTDOWN {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = offsets.pending();
        if left > 0 {
            warn!(receiver = %self.id, messages = left, "kafka: messages not done by the pipeline at shutdown: their offsets are not committed, the group reads them again");
        }
        // Leaving the group commits the stored offsets (librdkafka's close): it blocks.
        let consumer = Arc::clone(&self.consumer);
        drop(offsets);
        drop(self);
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Why records a request refused are counted as dropped (the otlp receiver's names).
fn rejected_reason(signal: Signal) -> &'static str {
    match signal {
        Signal::Metrics => "malformed_data_point",
        Signal::Logs => "malformed_log_record",
        _ => "malformed_span",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use oxeye_api::testing::check;

    use super::*;

    #[test]
    fn bad_settings_are_refused_with_their_paths() {
        let err = check::<KafkaReceiverFactory>(
            "brokers: []\ngroup_id: ''\nsession_timeout: 5s\nheartbeat_interval: 5s\nlogs: {topic: otlp_spans}\nlibrdkafka: {enable.auto.offset.store: 'true'}",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "brokers",
            "group_id",
            "heartbeat_interval",
            "logs.topic",
            "librdkafka.enable.auto.offset.store",
        ] {
            assert!(paths.contains(&p), "{p} not in {paths:?}");
        }
        assert!(check::<KafkaReceiverFactory>("{}").is_ok());
        assert!(check::<KafkaReceiverFactory>("initial_offset: newest").is_err());
    }

    #[tokio::test]
    async fn offsets_are_committed_only_up_to_the_first_message_not_done() {
        let config: KafkaReceiverConfig = serde_yaml::from_str("{}").unwrap();
        let consumer: StreamConsumer<Context> = config
            .consumer_config()
            .create_with_context(Context::new("test"))
            .unwrap();
        let consumer = Arc::new(consumer);
        let offsets = Offsets::new(Arc::downgrade(&consumer));
        let topic: Arc<str> = Arc::from("t");
        let held: Vec<_> = (10..13)
            .map(|o| offsets.start(Arc::clone(&topic), 0, o))
            .collect();
        assert_eq!(offsets.pending(), 3);
        let mut held = held.into_iter();
        let first = held.next().unwrap();
        drop(held.next()); // 11 done, 10 not: nothing committable past 9
        assert_eq!(offsets.committable("t", 0), Some(9));
        drop(first); // 10 and 11 done, 12 not
        assert_eq!(offsets.committable("t", 0), Some(11));
        drop(held);
        assert_eq!(offsets.committable("t", 0), Some(12));
        assert_eq!(offsets.pending(), 0);
    }
}
