//! The `kafka` exporter: OTLP requests as Kafka messages (see the crate's README).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt};
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Records, Signal, Telemetry,
};
use oxeye_exporter_otlp::messages::{self, Message, Resources};
use oxeye_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use oxeye_kafka::rdkafka::producer::{
    DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig,
};
use oxeye_kafka::{creation_error, Context, Encoding};
use oxeye_sending::Ledger;
use tokio::sync::mpsc;
use tracing::{info, warn};

mod config;
mod json;

pub use config::KafkaExporterConfig;

/// Records per message at most (spans, data points, log records): fewer when a message would
/// pass `producer.max_message_bytes`.
const MAX_RECORDS: usize = 8192;

/// How long the brokers have to answer the check at start.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for messages still in librdkafka's queue to be delivered: within
/// the engine's default 10 s `shutdown_timeout`, after the receivers' drain.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(4);

/// Registers `kafka`.
pub struct KafkaExporterFactory;

impl Factory for KafkaExporterFactory {
    type Config = KafkaExporterConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "kafka";
    const SIGNALS: &'static [Signal] =
        &[Signal::Traces, Signal::Metrics, Signal::Logs, Signal::Flows];
    const DESCRIPTION: &'static str =
        "OTLP (protobuf or JSON) messages on Kafka topics: traces (keyed by trace id if asked), metrics, logs, flows as metrics";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-kafka.md");

    fn validate(config: &KafkaExporterConfig) -> Result<(), ConfigErrors> {
        config.check()
    }

    fn build(
        config: KafkaExporterConfig,
        ctx: BuildContext,
    ) -> Result<Box<dyn Exporter>, BoxError> {
        Ok(Box::new(KafkaExporter::new(config, ctx)?))
    }
}

oxeye_api::register!(KafkaExporterFactory);

/// A message handed to librdkafka, waiting for its delivery report.
struct InFlight {
    delivery: DeliveryFuture,
    records: u64,
}

pub struct KafkaExporter {
    config: KafkaExporterConfig,
    id: String,
    /// Taken by `Drop`, to be dropped off the async workers (closing it blocks).
    producer: Option<Arc<FutureProducer<Context>>>,
    resources: Resources,
    ledger: Arc<Ledger>,
    telemetry: Telemetry,
    signals: Vec<Signal>,
    /// Records per message at most: [`MAX_RECORDS`], fewer while messages would not fit.
    per_message: usize,
    /// To the task that awaits delivery reports; set by `start`.
    reports: Option<(mpsc::UnboundedSender<InFlight>, tokio::task::JoinHandle<()>)>,
}

impl KafkaExporter {
    pub fn new(config: KafkaExporterConfig, ctx: BuildContext) -> Result<Self, BoxError> {
        let producer: FutureProducer<Context> = config
            .producer_config()
            .create_with_context(Context::new(&ctx.id))
            .map_err(creation_error)?;
        Ok(KafkaExporter {
            id: ctx.id,
            producer: Some(Arc::new(producer)),
            resources: Resources::new(&Default::default()),
            ledger: Arc::new(Ledger::new(ctx.telemetry.clone())),
            telemetry: ctx.telemetry,
            signals: ctx.signals,
            per_message: MAX_RECORDS,
            config,
            reports: None,
        })
    }

    fn producer(&self) -> &Arc<FutureProducer<Context>> {
        self.producer.as_ref().expect("taken only by drop")
    }

    fn topic(&self, signal: Signal) -> &str {
        match signal {
            Signal::Traces => self.config.traces.topic_or("otlp_spans"),
            Signal::Logs => self.config.logs.topic_or("otlp_logs"),
            _ => self.config.metrics.topic_or("otlp_metrics"),
        }
    }

    fn encoding(&self, signal: Signal) -> Encoding {
        match signal {
            Signal::Traces => self.config.traces.encoding,
            Signal::Logs => self.config.logs.encoding,
            _ => self.config.metrics.encoding,
        }
    }

    /// The topics of the pipelines this exporter is in.
    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .signals
            .iter()
            .map(|&s| self.topic(s).to_string())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Checks the brokers and topics, then starts the task that settles delivery reports.
    async fn start(&mut self) -> Result<(), BoxError> {
        let (producer, brokers, topics) = (
            Arc::clone(self.producer()),
            self.config.brokers.clone(),
            self.topics(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let metadata = |t| producer.client().fetch_metadata(None, t);
            oxeye_kafka::check(metadata, &brokers, &names, CHECK_TIMEOUT)
        })
        .await
        .map_err(|e| e.to_string())?;
        let partitions = checked.map_err(|e| format!("kafka exporter `{}`: {e}", self.id))?;
        info!(exporter = %self.id, brokers = %self.config.brokers.join(","), topics = %self.topics().iter().zip(&partitions).map(|(t, p)| format!("{t} ({p} partitions)")).collect::<Vec<_>>().join(", "), "kafka exporter connected");
        let (tx, mut rx) = mpsc::unbounded_channel::<InFlight>();
        let ledger = Arc::clone(&self.ledger);
        let id = self.id.clone();
        // Reports settle as they come (a message stuck on one partition holds up no other).
        let task = tokio::spawn(async move {
            let mut warned = false;
            let mut inflight = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    m = rx.recv(), if open => match m {
                        Some(m) => inflight.push(async move { (m.delivery.await, m.records) }),
                        None => open = false,
                    },
                    Some((report, n)) = inflight.next(), if !inflight.is_empty() => match report {
                        Ok(Ok(_)) => ledger.settle(n, n, ""),
                        Ok(Err((KafkaError::MessageProduction(
                            RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                        ), _)))
                        | Err(_) => ledger.settle(n, 0, "shutdown_deadline"),
                        Ok(Err((e, _))) => {
                            if !warned {
                                warn!(exporter = %id, error = %e, "kafka: messages not delivered (counted as dropped, `kafka_error`); more are not logged");
                                warned = true;
                            }
                            ledger.settle(n, 0, "kafka_error");
                        }
                    },
                    else => break,
                }
            }
        });
        self.reports = Some((tx, task));
        Ok(())
    }

    /// A request as its message's payload: protobuf, or OTLP/JSON.
    fn payload(&self, m: Message) -> Result<Vec<u8>, BoxError> {
        match self.encoding(m.signal) {
            Encoding::OtlpJson => json::from_protobuf(m.signal, &m.protobuf),
            _ => Ok(m.protobuf),
        }
    }

    /// `batch` as messages. A request that cannot be written as JSON (values nested deeper
    /// than prost reads) has its records counted as dropped, `unencodable`.
    fn encode(&mut self, batch: &Arc<Batch>) -> Vec<Out> {
        let batches = std::slice::from_ref(batch);
        if self.config.partition_traces_by_id && matches!(batch.records, Records::Spans(_)) {
            let messages = messages::requests_per_trace(&mut self.resources, batches);
            return messages
                .into_iter()
                .filter_map(|(key, m)| self.out(Some(key), m))
                .collect();
        }
        // Records per message are learned: cut smaller (in proportion to the overshoot) until
        // every payload fits, and grown back while payloads use under half the limit, so a
        // steady stream is encoded once. A single record that does not fit is sent anyway and
        // its refusal counted.
        let limit = self.config.producer.max_message_bytes as usize;
        loop {
            let max = self.per_message;
            let messages = messages::requests(&mut self.resources, batches, max);
            let full = messages.iter().any(|m| m.records as usize == max);
            let out: Vec<Out> = messages
                .into_iter()
                .filter_map(|m| self.out(None, m))
                .collect();
            let largest = out.iter().map(|o| o.payload.len()).max().unwrap_or(0);
            if largest > limit && max > 1 {
                self.per_message = (max * limit / largest * 9 / 10).clamp(1, max - 1);
                continue;
            }
            if largest < limit / 2 && full {
                self.per_message = (max * 2).min(MAX_RECORDS);
            }
            return out;
        }
    }

    fn out(&self, key: Option<[u8; 16]>, m: Message) -> Option<Out> {
        let (signal, records) = (m.signal, m.records);
        match self.payload(m) {
            Ok(payload) => Some(Out {
                key,
                signal,
                records,
                payload,
            }),
            Err(e) => {
                warn!(exporter = %self.id, records, error = %e, "kafka: a request cannot be written as OTLP/JSON: its records are counted as dropped, `unencodable`");
                self.telemetry.add_dropped("unencodable", records);
                None
            }
        }
    }
}

/// One message, ready to send.
struct Out {
    key: Option<[u8; 16]>,
    signal: Signal,
    records: u64,
    payload: Vec<u8>,
}

#[async_trait]
impl Exporter for KafkaExporter {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        if self.reports.is_none() {
            self.start().await?;
        }
        for message in self.encode(&batch) {
            let topic = self.topic(message.signal).to_string();
            let (key, payload) = (message.key, message.payload);
            self.ledger.add(message.records);
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(&k[..]);
            }
            // librdkafka's queue full (`producer.max_buffered_mib`): wait for room.
            let delivery = loop {
                match self.producer().send_result(record) {
                    Ok(d) => break Some(d),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        warn!(exporter = %self.id, topic = %topic, bytes = payload.len(), error = %e, "kafka: message refused (its records are counted as dropped, `kafka_error`)");
                        self.ledger.settle(message.records, 0, "kafka_error");
                        break None;
                    }
                }
            };
            if let (Some(delivery), Some((tx, _))) = (delivery, &self.reports) {
                let _ = tx.send(InFlight {
                    delivery,
                    records: message.records,
                });
            }
        }
        Ok(())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }

    /// Checks the brokers and topics soon after start, before any record comes.
    async fn tick(&mut self, _now: std::time::SystemTime) -> Result<(), BoxError> {
        if self.reports.is_none() {
            self.start().await?;
        }
        Ok(())
    }

    fn takes_encoded(&self) -> bool {
        // Received requests go out as they came, unless they must be cut per trace or
        // rewritten as JSON.
        !self.config.partition_traces_by_id
            && [&self.config.traces, &self.config.metrics, &self.config.logs]
                .iter()
                .all(|t| t.encoding == Encoding::OtlpProto)
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        let Some((tx, mut task)) = self.reports.take() else {
            return Ok(());
        };
        drop(tx);
        let producer = Arc::clone(self.producer());
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = producer.flush(FLUSH_AT_SHUTDOWN);
            if flushed.is_err() {
                // What is left is reported as purged: counted `shutdown_deadline`.
                producer.purge(PurgeConfig::default().queue().inflight());
            }
            flushed
        })
        .await
        .map_err(|e| e.to_string())?;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        let left = self.ledger.abandon();
        if flushed.is_err() || left > 0 {
            warn!(exporter = %self.id, "kafka: not all delivered within {FLUSH_AT_SHUTDOWN:?} of shutdown: the rest is counted as dropped (`shutdown_deadline`)");
        }
        Ok(())
    }
}

impl Drop for KafkaExporter {
    fn drop(&mut self) {
        // Aborted at the engine's deadline (or shut down: nothing left then).
        if let Some((_, task)) = self.reports.take() {
            task.abort();
        }
        let n = self.ledger.abandon();
        if n > 0 {
            tracing::error!(exporter = %self.id, records = n, "shutdown deadline passed with messages not delivered: dropped");
        }
        // Dropping the producer joins its thread and flushes: not on an async worker.
        if let Some(producer) = self.producer.take() {
            std::thread::spawn(move || drop(producer));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use oxeye_api::testing::{check, span_batch};
    use prost::Message as _;

    use super::*;

    fn exporter(yaml: &str) -> KafkaExporter {
        let config: KafkaExporterConfig = serde_yaml::from_str(yaml).unwrap();
        KafkaExporter::new(config, BuildContext::for_test("kafka")).unwrap()
    }

    fn request(m: &Out) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(m.payload.as_slice()).unwrap()
    }

    fn spans_in(m: &Out) -> usize {
        let r = request(m);
        r.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    #[test]
    fn messages_fit_max_message_bytes_and_the_size_is_learned() {
        let mut e = exporter("producer: {max_message_bytes: 20000}");
        let batch = Arc::new(span_batch(10_000));
        for _ in 0..3 {
            let out = e.encode(&batch);
            assert!(out
                .iter()
                .all(|m| m.key.is_none() && m.payload.len() <= 20_000));
            assert_eq!(out.iter().map(spans_in).sum::<usize>(), 10_000);
            assert_eq!(out.iter().map(|m| m.records).sum::<u64>(), 10_000);
        }
        // Learned: fewer than the 8192 default, and not cut to a handful.
        assert!(
            (50..MAX_RECORDS).contains(&e.per_message),
            "{}",
            e.per_message
        );
    }

    #[test]
    fn partition_traces_by_id_makes_one_message_per_trace_keyed_by_its_id() {
        let mut e = exporter("partition_traces_by_id: true");
        let out = e.encode(&Arc::new(span_batch(400))); // 4 spans a trace
        assert_eq!(out.len(), 100);
        let keys: HashSet<[u8; 16]> = out.iter().map(|m| m.key.unwrap()).collect();
        assert_eq!(keys.len(), 100);
        for m in &out {
            let ids: HashSet<Vec<u8>> = request(m)
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.trace_id.clone())
                .collect();
            assert_eq!(ids, HashSet::from([m.key.unwrap().to_vec()]));
            assert_eq!(m.records, 4);
        }
    }

    #[test]
    fn otlp_json_is_the_request_in_json_and_fits_the_limit() {
        let mut e = exporter("traces: {encoding: otlp_json}\nproducer: {max_message_bytes: 20000}");
        let out = e.encode(&Arc::new(span_batch(3)));
        let v: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        let spans = &v["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans.as_array().unwrap().len(), 3);
        // OTLP/JSON ids are hex strings.
        assert_eq!(spans[0]["traceId"], "00000000000000000000000000000001");
        // Sized as sent: JSON is larger than the protobuf it is made from.
        let out = e.encode(&Arc::new(span_batch(5_000)));
        assert!(out.iter().all(|m| m.payload.len() <= 20_000));
        assert_eq!(out.iter().map(|m| m.records).sum::<u64>(), 5_000);
    }

    #[test]
    fn bad_settings_are_refused_with_their_paths() {
        let err = check::<KafkaExporterFactory>(
            "brokers: ['host'] \nproducer: {required_acks: 3, max_message_bytes: 10}\ntimeout: 0s\ntls: {cert_file: /nonexistent.pem}\nlibrdkafka: {message.max.bytes: '5'}",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "brokers[0]",
            "producer.required_acks",
            "producer.max_message_bytes",
            "timeout",
            "tls.cert_file",
            "tls",
            "librdkafka.message.max.bytes",
        ] {
            assert!(paths.contains(&p), "{p} not in {paths:?}");
        }
        let err = check::<KafkaExporterFactory>(
            "producer: {max_message_bytes: 5000000, max_buffered_mib: 1}",
        )
        .unwrap_err();
        assert_eq!(err.0[0].path, "producer.max_message_bytes");
        assert!(check::<KafkaExporterFactory>("{}").is_ok());
    }

    #[test]
    fn an_unknown_librdkafka_property_is_an_error_at_build() {
        let config: KafkaExporterConfig =
            serde_yaml::from_str("librdkafka: {no.such.property: x}").unwrap();
        let err = KafkaExporter::new(config, BuildContext::for_test("kafka"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no.such.property"), "{err}");
    }
}
