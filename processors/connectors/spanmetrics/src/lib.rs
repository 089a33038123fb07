//! `spanmetrics` connector: ends traces pipelines, starts metrics pipelines. Per series of
//! `service.name`, `span.name`, `span.kind`, `status.code` and the configured dimensions, a
//! calls counter (`<namespace>.calls`) and a duration histogram (`<namespace>.duration`), as the
//! Collector's spanmetrics connector names them; emitted every `metrics_flush_interval` and
//! once more at shutdown. Spans are counted in as they come and merged into the series they
//! belong to; those past `aggregation_cardinality_limit` fold into one `otel.metric.overflow`
//! series per resource and are counted (`oxeye_spanmetrics_overflow_spans_total`).

mod config;
mod table;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Connector, Factory, Output, Processor, Records,
    Signal, Telemetry,
};

pub use config::{SpanMetricsConfig, DEFAULT_BUCKETS_MS, DEFAULT_DIMENSIONS};
use table::Table;
pub use table::MAX_DIMENSIONS;

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The factory.
pub struct SpanMetricsFactory;

impl Factory for SpanMetricsFactory {
    type Config = SpanMetricsConfig;
    type Component = Box<dyn Connector>;
    const TYPE: &'static str = "spanmetrics";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const OUTPUT_SIGNALS: &'static [Signal] = &[Signal::Metrics];
    const DESCRIPTION: &'static str =
        "connector: RED metrics from spans (calls and a duration histogram per series)";
    const DOCS: &'static str = include_str!("../../../../docs/components/connector-spanmetrics.md");

    fn validate(config: &SpanMetricsConfig) -> Result<(), ConfigErrors> {
        let mut errors = match config.check() {
            Ok(()) => ConfigErrors::new(),
            Err(e) => e,
        };
        if config.dimensions.len() > MAX_DIMENSIONS {
            errors.push(
                "dimensions",
                format!(
                    "{} dimensions: at most {MAX_DIMENSIONS} beyond the default four",
                    config.dimensions.len()
                ),
            );
        }
        if errors.0.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn build(config: SpanMetricsConfig, ctx: BuildContext) -> Result<Box<dyn Connector>, BoxError> {
        let bounds = config.bounds()?;
        Ok(Box::new(SpanMetrics {
            table: Table::new(&config, bounds, unix_ns(SystemTime::now())),
            every: config.metrics_flush_interval,
            source: ctx.id,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(SpanMetricsFactory);

/// The connector.
pub struct SpanMetrics {
    table: Table,
    every: Duration,
    /// Its id, the source of its counters.
    source: String,
    telemetry: Telemetry,
}

impl SpanMetrics {
    fn emit(&mut self, now: SystemTime, out: &mut Output) {
        self.telemetry.add_merged(self.table.since_flush);
        for batch in self.table.flush(unix_ns(now)) {
            out.push(batch);
        }
        self.telemetry.set_counter(
            "spanmetrics_overflow_spans",
            &self.source,
            self.table.overflowed,
        );
        self.telemetry
            .set_counter("spanmetrics_series", &self.source, self.table.len() as u64);
    }
}

#[async_trait]
impl Processor for SpanMetrics {
    async fn process(&mut self, batch: Arc<Batch>, _out: &mut Output) -> Result<(), BoxError> {
        if let Records::Spans(spans) = &batch.records {
            self.table
                .add(&batch.resource, spans, unix_ns(SystemTime::now()));
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.every)
    }

    async fn tick(&mut self, now: SystemTime, out: &mut Output) -> Result<(), BoxError> {
        self.emit(now, out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Output) -> Result<(), BoxError> {
        self.emit(SystemTime::now(), out);
        Ok(())
    }

    fn held(&self) -> u64 {
        self.table.since_flush
    }
}

impl Connector for SpanMetrics {}
