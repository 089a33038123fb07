//! Harnesses that drive one component in plain `#[test]`s (feature `testing`).
//!
//! ```ignore
//! use oxeye_api::testing::{self, ProcessorHarness};
//! let mut h = ProcessorHarness::new::<MyFactory>("ratio: 0.5").unwrap();
//! let out = h.process(testing::span_batch(1000)).unwrap();
//! assert!(testing::count(&out) <= 1000);
//! assert!(testing::check::<MyFactory>("ratio: 2").is_err());
//! ```
//!
//! Each harness owns a single-threaded tokio runtime, so tests need no async setup.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::component::{
    BatchSink, BoxError, BuildContext, Connector, Exporter, Output, Processor, ReceiverContext,
    Shutdown, Telemetry,
};
use crate::config::ConfigErrors;
use crate::data::{
    Batch, Comm, Direction, Flow, Records, Resource, Sample, Span, SpanId, TraceId, Transport,
};
use crate::factory::{Factory, Instance, Registration};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime always builds")
}

fn yaml(text: &str) -> Result<serde_yaml::Value, ConfigErrors> {
    serde_yaml::from_str(text).map_err(|e| {
        let mut errors = ConfigErrors::new();
        errors.push("", format!("not valid YAML: {e}"));
        errors
    })
}

/// Deserializes and validates a config for `F` given as YAML text, exactly as `oxeye validate`
/// does (paths in the errors are relative to the component's config).
pub fn check<F: Factory>(config_yaml: &str) -> Result<(), ConfigErrors> {
    Registration::of::<F>("test").check(&yaml(config_yaml)?)
}

fn build<F: Factory>(config_yaml: &str, ctx: BuildContext) -> Result<Instance, BoxError> {
    Registration::of::<F>("test").build(&yaml(config_yaml)?, ctx)
}

/// Records in a list of batches.
pub fn count(batches: &[Arc<Batch>]) -> usize {
    batches.iter().map(|b| b.len()).sum()
}

/// `n` simple spans: one trace per 4 spans, 1 ms each, named `op-<i % 3>`.
pub fn span_batch(n: usize) -> Batch {
    let spans = (0..n)
        .map(|i| {
            let trace = (i / 4) as u128 + 1;
            Span {
                trace_id: TraceId(trace.to_be_bytes()),
                span_id: SpanId((i as u64 + 1).to_be_bytes()),
                parent_span_id: (i % 4 != 0)
                    .then(|| SpanId(((i - i % 4) as u64 + 1).to_be_bytes())),
                name: format!("op-{}", i % 3).into(),
                start_unix_ns: 1_000_000_000 + i as u64 * 1_000,
                end_unix_ns: 1_001_000_000 + i as u64 * 1_000,
                ..Span::default()
            }
        })
        .collect();
    Batch::spans(Arc::new(Resource::default()), spans)
}

/// `n` simple flows: 10.0.0.1:(10000+i%50) → 10.0.0.2:443 over TCP, 1 packet of 100 bytes each.
pub fn flow_batch(n: usize) -> Batch {
    let flows = (0..n)
        .map(|i| Flow {
            src_addr: [10, 0, 0, 1].into(),
            dst_addr: [10, 0, 0, 2].into(),
            src_port: 10_000 + (i % 50) as u16,
            dst_port: 443,
            transport: Transport::Tcp,
            ether_type: 0x0800,
            ifindex: 1,
            interface: None,
            direction: Direction::Receive,
            packets: 1,
            bytes: 100,
            tcp_flags: Default::default(),
            first_seen_unix_ns: 1_000_000_000,
            last_seen_unix_ns: 1_000_000_000,
            window_start_unix_ns: 0,
            window_end_unix_ns: 0,
            attributes: Default::default(),
        })
        .collect();
    Batch::flows(Arc::new(Resource::default()), flows)
}

/// `n` profile samples of one 10 s window (Unix 1 000 s): pid 100, threads 100..104, one
/// sample of 10 ms each, user stacks of 3 frames over 8 distinct leaves (`0x1000 + i % 8`),
/// every fourth in span `i` of trace 1.
pub fn sample_batch(n: usize) -> Batch {
    let samples = (0..n)
        .map(|i| Sample {
            pid: 100,
            tid: 100 + (i % 4) as u32,
            comm: Comm::new("app"),
            user_stack: vec![0x1000 + (i % 8) as u64, 0x2000, 0x3000],
            count: 1,
            period_ns: 10_000_000,
            window_start_unix_ns: 1_000_000_000_000,
            window_end_unix_ns: 1_010_000_000_000,
            trace_id: (i % 4 == 0).then_some(TraceId(1u128.to_be_bytes())),
            span_id: (i % 4 == 0).then(|| SpanId((i as u64 + 1).to_be_bytes())),
            ..Sample::default()
        })
        .collect();
    Batch::samples(Arc::new(Resource::default()), samples)
}

/// `n` data points: one of each metric type in turn (`gauge`, `counter`, `updown`,
/// `histogram`, `exp_histogram`, `summary`), one point each with `k = i % 4`, at Unix 1 000 s.
pub fn metric_batch(n: usize) -> Batch {
    use crate::metrics::*;
    let metrics = (0..n)
        .map(|i| {
            let mut attributes = crate::Attributes::new();
            attributes.set("k", (i % 4) as i64);
            let (start_unix_ns, time_unix_ns) = (999_000_000_000, 1_000_000_000_000);
            let number = |v: Number| NumberPoint {
                attributes: attributes.clone(),
                start_unix_ns,
                time_unix_ns,
                value: Some(v),
                ..NumberPoint::default()
            };
            let (name, data) = match i % 6 {
                0 => (
                    "gauge",
                    MetricData::Gauge(vec![number(Number::F64(i as f64))]),
                ),
                1 | 2 => (
                    if i % 6 == 1 { "counter" } else { "updown" },
                    MetricData::Sum(Sum {
                        points: vec![number(Number::Int(i as i64))],
                        temporality: Temporality::Cumulative,
                        monotonic: i % 6 == 1,
                    }),
                ),
                3 => (
                    "histogram",
                    MetricData::Histogram(Histogram {
                        points: vec![HistogramPoint {
                            attributes: attributes.clone(),
                            start_unix_ns,
                            time_unix_ns,
                            count: 3,
                            sum: Some(7.5),
                            bucket_counts: vec![1, 2, 0],
                            explicit_bounds: vec![1.0, 5.0],
                            min: Some(0.5),
                            max: Some(4.0),
                            ..HistogramPoint::default()
                        }],
                        temporality: Temporality::Delta,
                    }),
                ),
                4 => (
                    "exp_histogram",
                    MetricData::ExponentialHistogram(ExponentialHistogram {
                        points: vec![ExponentialHistogramPoint {
                            attributes: attributes.clone(),
                            start_unix_ns,
                            time_unix_ns,
                            count: 4,
                            sum: Some(10.0),
                            scale: 2,
                            zero_count: 1,
                            positive: Buckets {
                                offset: 3,
                                bucket_counts: vec![2, 1],
                            },
                            ..ExponentialHistogramPoint::default()
                        }],
                        temporality: Temporality::Delta,
                    }),
                ),
                _ => (
                    "summary",
                    MetricData::Summary(vec![SummaryPoint {
                        attributes: attributes.clone(),
                        start_unix_ns,
                        time_unix_ns,
                        count: 2,
                        sum: 3.0,
                        quantiles: vec![Quantile {
                            quantile: 0.5,
                            value: 1.0,
                        }],
                        ..SummaryPoint::default()
                    }]),
                ),
            };
            Metric {
                name: name.into(),
                unit: Some("1".into()),
                data,
                ..Metric::default()
            }
        })
        .collect();
    Batch::metrics(Arc::new(Resource::default()), metrics)
}

/// `n` log records: body `message <i>`, INFO, at Unix 1 000 s + i µs, every second one in span
/// `i` of trace 1.
pub fn log_batch(n: usize) -> Batch {
    let logs = (0..n)
        .map(|i| crate::LogRecord {
            time_unix_ns: 1_000_000_000_000 + i as u64 * 1_000,
            observed_time_unix_ns: 1_000_000_000_000 + i as u64 * 1_000,
            severity_number: crate::Severity::INFO,
            severity_text: Some("INFO".into()),
            body: Some(format!("message {i}").into()),
            trace_id: (i % 2 == 0).then_some(TraceId(1u128.to_be_bytes())),
            span_id: (i % 2 == 0).then(|| SpanId((i as u64 + 1).to_be_bytes())),
            ..crate::LogRecord::default()
        })
        .collect();
    Batch::logs(Arc::new(Resource::default()), logs)
}

/// Drives one processor: batches in, ticks and a final flush, output and counters out.
pub struct ProcessorHarness {
    processor: Box<dyn Processor>,
    telemetry: Telemetry,
    rt: tokio::runtime::Runtime,
}

impl ProcessorHarness {
    /// Builds `F` from its config as YAML text (`""` for the defaults).
    pub fn new<F: Factory<Component = Box<dyn Processor>>>(
        config_yaml: &str,
    ) -> Result<Self, BoxError> {
        Self::built::<F>(config_yaml)
    }

    /// Builds connector `F` from its config as YAML text: it runs as a processor does, its
    /// output going to the pipelines it starts.
    pub fn connector<F: Factory<Component = Box<dyn Connector>>>(
        config_yaml: &str,
    ) -> Result<Self, BoxError> {
        Self::built::<F>(config_yaml)
    }

    fn built<F: Factory>(config_yaml: &str) -> Result<Self, BoxError> {
        let ctx = BuildContext::for_test(F::TYPE);
        let telemetry = ctx.telemetry.clone();
        let processor: Box<dyn Processor> = match build::<F>(config_yaml, ctx)? {
            Instance::Processor(processor) => processor,
            Instance::Connector(connector) => connector,
            _ => unreachable!("Component = Box<dyn Processor> or Box<dyn Connector>"),
        };
        Ok(ProcessorHarness {
            processor,
            telemetry,
            rt: runtime(),
        })
    }

    /// Feeds one batch; returns what the processor emitted for it.
    pub fn process(&mut self, batch: Batch) -> Result<Vec<Arc<Batch>>, BoxError> {
        self.process_shared(Arc::new(batch))
    }

    /// Feeds a batch that another pipeline also holds (to test copy-on-write).
    pub fn process_shared(&mut self, batch: Arc<Batch>) -> Result<Vec<Arc<Batch>>, BoxError> {
        let mut out = Output::new();
        self.telemetry.add_received(batch.len() as u64);
        // As the engine does: a processor sees encoded spans only if it says it takes them.
        let batch = if self.processor.takes_encoded() {
            batch
        } else {
            Batch::decoded(batch)?
        };
        self.rt.block_on(self.processor.process(batch, &mut out))?;
        Ok(self.emitted(out))
    }

    /// Calls `tick` with the given wall-clock time.
    pub fn tick(&mut self, now: SystemTime) -> Result<Vec<Arc<Batch>>, BoxError> {
        let mut out = Output::new();
        self.rt.block_on(self.processor.tick(now, &mut out))?;
        Ok(self.emitted(out))
    }

    /// Calls `flush`, as at shutdown.
    pub fn flush(&mut self) -> Result<Vec<Arc<Batch>>, BoxError> {
        let mut out = Output::new();
        self.rt.block_on(self.processor.flush(&mut out))?;
        Ok(self.emitted(out))
    }

    /// The processor's requested tick interval.
    pub fn tick_interval(&self) -> Option<Duration> {
        self.processor.tick_interval()
    }

    /// The records the processor says it holds ([`Processor::held`]).
    pub fn held(&self) -> u64 {
        self.processor.held()
    }

    /// The processor's gate on the pipeline's entry ([`Processor::admission`]).
    pub fn admission(&self) -> Option<Arc<dyn crate::Admission>> {
        self.processor.admission()
    }

    /// Counters: received / emitted as the engine would count them, plus the processor's drops.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    fn emitted(&self, mut out: Output) -> Vec<Arc<Batch>> {
        let batches = out.take();
        self.telemetry.add_emitted(count(&batches) as u64);
        batches
    }
}

/// Drives one exporter.
pub struct ExporterHarness {
    exporter: Box<dyn Exporter>,
    telemetry: Telemetry,
    rt: tokio::runtime::Runtime,
}

impl ExporterHarness {
    /// Builds `F` from its config as YAML text.
    pub fn new<F: Factory<Component = Box<dyn Exporter>>>(
        config_yaml: &str,
    ) -> Result<Self, BoxError> {
        let ctx = BuildContext::for_test(F::TYPE);
        let telemetry = ctx.telemetry.clone();
        // Built inside the runtime, as the engine builds: clients may need its reactor.
        let rt = runtime();
        let built = {
            let _inside = rt.enter();
            build::<F>(config_yaml, ctx)?
        };
        match built {
            Instance::Exporter(exporter) => Ok(ExporterHarness {
                exporter,
                telemetry,
                rt,
            }),
            _ => unreachable!("Component = Box<dyn Exporter>"),
        }
    }

    /// Exports one batch.
    pub fn export(&mut self, batch: Batch) -> Result<(), BoxError> {
        let mut batch = Arc::new(batch);
        // As the engine does: encoded spans decoded unless the exporter takes them.
        if !self.exporter.takes_encoded() {
            batch = Batch::decoded(batch)?;
        }
        self.rt.block_on(self.exporter.export(batch))
    }

    /// Calls [`Exporter::tick`] as the engine would.
    pub fn tick(&mut self, now: SystemTime) -> Result<(), BoxError> {
        self.rt.block_on(self.exporter.tick(now))
    }

    /// The exporter's tick interval.
    pub fn tick_interval(&self) -> Option<Duration> {
        self.exporter.tick_interval()
    }

    /// Shuts the exporter down (flush, close).
    pub fn shutdown(&mut self) -> Result<(), BoxError> {
        self.rt.block_on(self.exporter.shutdown())
    }

    /// The exporter's own counters (drops, errors).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }
}

struct Collect(Mutex<Vec<Batch>>);

#[async_trait]
impl BatchSink for Collect {
    async fn send(&self, batch: Batch) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(batch);
    }
}

/// Runs a receiver built from `config_yaml` until it returns by itself or `limit` passes (then
/// shutdown fires and it must stop within 5 s). Returns every batch it emitted.
pub fn run_receiver<F: Factory<Component = Box<dyn crate::Receiver>>>(
    config_yaml: &str,
    limit: Duration,
) -> Result<Vec<Batch>, BoxError> {
    let ctx = BuildContext::for_test(F::TYPE);
    let receiver = match build::<F>(config_yaml, ctx)? {
        Instance::Receiver(r) => r,
        _ => unreachable!("Component = Box<dyn Receiver>"),
    };
    let sink = Arc::new(Collect(Mutex::new(Vec::new())));
    let (trigger, shutdown) = Shutdown::new();
    let ctx = ReceiverContext::new(sink.clone(), shutdown, crate::Signal::ALL.to_vec());
    runtime().block_on(async move {
        let mut run = std::pin::pin!(receiver.run(ctx));
        tokio::select! {
            r = &mut run => r?,
            _ = tokio::time::sleep(limit) => {
                trigger.trigger();
                tokio::time::timeout(Duration::from_secs(5), run)
                    .await
                    .map_err(|_| "receiver did not stop within 5 s of shutdown")??;
            }
        }
        Ok::<_, BoxError>(())
    })?;
    let batches = std::mem::take(&mut *sink.0.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(batches)
}

/// Spans of a list of batches, in order (panics on a batch of another signal: for tests).
pub fn spans(batches: &[Arc<Batch>]) -> Vec<&Span> {
    batches
        .iter()
        .flat_map(|b| match &b.records {
            Records::Spans(s) => s.iter(),
            other => panic!("expected spans, got {}", other.signal()),
        })
        .collect()
}

/// Metrics of a list of batches, in order (panics on a batch of another signal).
pub fn metrics(batches: &[Arc<Batch>]) -> Vec<&crate::Metric> {
    batches
        .iter()
        .flat_map(|b| match &b.records {
            Records::Metrics(m) => m.iter(),
            other => panic!("expected metrics, got {}", other.signal()),
        })
        .collect()
}

/// Log records of a list of batches, in order (panics on a batch of another signal).
pub fn logs(batches: &[Arc<Batch>]) -> Vec<&crate::LogRecord> {
    batches
        .iter()
        .flat_map(|b| match &b.records {
            Records::Logs(l) => l.iter(),
            other => panic!("expected log records, got {}", other.signal()),
        })
        .collect()
}

/// Profile samples of a list of batches, in order (panics on a batch of another signal).
pub fn samples(batches: &[Arc<Batch>]) -> Vec<&Sample> {
    batches
        .iter()
        .flat_map(|b| match &b.records {
            Records::Samples(s) => s.iter(),
            other => panic!("expected profile samples, got {}", other.signal()),
        })
        .collect()
}
