#![doc = include_str!("../README.md")]

use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records, Signal,
    Telemetry,
};
use oxeye_ottl::processor::{compile_list, ErrorMode, Errors};
use oxeye_ottl::{Condition, Context, Record};
use serde::Deserialize;

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// What a condition that fails on a record does.
    pub error_mode: ErrorMode,
    /// Span conditions.
    pub traces: TraceConditions,
    /// Flow conditions.
    pub flows: FlowConditions,
    /// Metric and data point conditions.
    pub metrics: MetricConditions,
    /// Log record conditions.
    pub logs: LogConditions,
}

/// `metrics:` of the config (the Collector's names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricConditions {
    /// A metric (all its points) is dropped when any of these is true.
    pub metric: Vec<String>,
    /// A data point is dropped when any of these is true; a metric left without points goes
    /// too.
    pub datapoint: Vec<String>,
}

/// `logs:` of the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConditions {
    /// A log record is dropped when any of these is true.
    pub log_record: Vec<String>,
}

/// Conditions of one context, with their texts (for error messages).
#[derive(Default)]
struct Conditions {
    compiled: Vec<Condition>,
    texts: Vec<String>,
}

impl Conditions {
    fn new(texts: &[String], path: &str, context: Context, errors: &mut ConfigErrors) -> Self {
        Conditions {
            compiled: compile_list(texts, path, context, Condition::compile, errors),
            texts: texts.to_vec(),
        }
    }

    fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }
}

/// `traces:` of the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConditions {
    /// A span is dropped when any of these is true.
    pub span: Vec<String>,
}

/// `flows:` of the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConditions {
    /// A flow record is dropped when any of these is true.
    pub flow: Vec<String>,
}

/// Every list compiled: spans, flows, metrics, data points, log records.
fn compile(c: &FilterConfig, errors: &mut ConfigErrors) -> [Conditions; 5] {
    let lists = [
        Conditions::new(&c.traces.span, "traces.span", Context::Span, errors),
        Conditions::new(&c.flows.flow, "flows.flow", Context::Flow, errors),
        Conditions::new(&c.metrics.metric, "metrics.metric", Context::Metric, errors),
        Conditions::new(
            &c.metrics.datapoint,
            "metrics.datapoint",
            Context::DataPoint,
            errors,
        ),
        Conditions::new(&c.logs.log_record, "logs.log_record", Context::Log, errors),
    ];
    let none = [
        &c.traces.span,
        &c.flows.flow,
        &c.metrics.metric,
        &c.metrics.datapoint,
        &c.logs.log_record,
    ]
    .iter()
    .all(|l| l.is_empty());
    if none {
        errors.push(
            "",
            "no conditions: list some under `traces.span`, `flows.flow`, `metrics.metric`, `metrics.datapoint` or `logs.log_record`",
        );
    }
    lists
}

/// The processor.
pub struct Filter {
    spans: Conditions,
    flows: Conditions,
    metrics: Conditions,
    points: Conditions,
    logs: Conditions,
    errors: Errors,
    telemetry: Telemetry,
}

impl Filter {
    /// True when any condition holds; an error counts and (unless propagating) means "no".
    fn matches(
        conditions: &Conditions,
        record: Record<'_>,
        resource: &oxeye_api::Resource,
        errors: &mut Errors,
    ) -> Result<bool, ()> {
        for (c, text) in conditions.compiled.iter().zip(&conditions.texts) {
            match c.eval(record, resource) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => {
                    errors.record(text, &e);
                    if errors.mode() == ErrorMode::Propagate {
                        return Err(());
                    }
                }
            }
        }
        Ok(false)
    }

    /// Which records to drop; `Err` when the batch is to be dropped whole (propagate).
    fn verdicts(&mut self, batch: &Batch) -> Result<Vec<bool>, ()> {
        let errors = &mut self.errors;
        let res = &*batch.resource;
        match &batch.records {
            Records::Spans(v) if !self.spans.is_empty() => v
                .iter()
                .map(|s| Self::matches(&self.spans, Record::Span(s), res, errors))
                .collect(),
            Records::Flows(v) if !self.flows.is_empty() => v
                .iter()
                .map(|f| Self::matches(&self.flows, Record::Flow(f), res, errors))
                .collect(),
            Records::Logs(v) if !self.logs.is_empty() => v
                .iter()
                .map(|l| Self::matches(&self.logs, Record::Log(l), res, errors))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    /// Filters a metrics batch in place: whole metrics, then data points (a metric left with
    /// none goes too). The number of data points dropped; `Err` to drop the batch whole.
    fn filter_metrics(&mut self, batch: &mut Arc<Batch>) -> Result<usize, ()> {
        if self.metrics.is_empty() && self.points.is_empty() {
            return Ok(0);
        }
        let errors = &mut self.errors;
        // Verdicts first, on the shared batch: it is copied only when something goes.
        let res = &*batch.resource;
        let Records::Metrics(metrics) = &batch.records else {
            return Ok(0);
        };
        let mut gone_metrics = Vec::with_capacity(metrics.len());
        let mut gone_points: Vec<Vec<bool>> = Vec::with_capacity(metrics.len());
        for m in metrics {
            let gone = !self.metrics.is_empty()
                && Self::matches(&self.metrics, Record::Metric(m), res, errors)?;
            gone_metrics.push(gone);
            let mut points = Vec::new();
            if !gone && !self.points.is_empty() {
                for i in 0..m.points() {
                    points.push(Self::matches(
                        &self.points,
                        Record::DataPoint(m, i),
                        res,
                        errors,
                    )?);
                }
            }
            gone_points.push(points);
        }
        let any = gone_metrics.iter().any(|g| *g) || gone_points.iter().flatten().any(|g| *g);
        if !any {
            return Ok(0);
        }
        let Records::Metrics(metrics) = &mut Arc::make_mut(batch).records else {
            return Ok(0);
        };
        let mut dropped = 0;
        let mut index = 0;
        metrics.retain_mut(|m| {
            let (gone, points) = (gone_metrics[index], &gone_points[index]);
            index += 1;
            if gone {
                dropped += m.points();
                return false;
            }
            let mut verdict = points.iter();
            dropped += m
                .data
                .retain_points(|_| !verdict.next().copied().unwrap_or(false));
            !m.data.is_empty() || points.is_empty()
        });
        Ok(dropped)
    }
}

#[async_trait]
impl Processor for Filter {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        if matches!(batch.records, Records::Metrics(_)) {
            let result = self.filter_metrics(&mut batch);
            self.errors.publish(&self.telemetry);
            match result {
                Ok(n) => self.telemetry.add_dropped("filtered", n as u64),
                Err(()) => {
                    self.telemetry
                        .add_dropped("expression_error", batch.len() as u64);
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                out.push(batch);
            }
            return Ok(());
        }
        let verdicts = self.verdicts(&batch);
        self.errors.publish(&self.telemetry);
        let drop = match verdicts {
            Ok(d) => d,
            Err(()) => {
                self.telemetry
                    .add_dropped("expression_error", batch.len() as u64);
                return Ok(());
            }
        };
        let dropped = drop.iter().filter(|d| **d).count();
        if dropped > 0 {
            self.telemetry.add_dropped("filtered", dropped as u64);
            let b = Arc::make_mut(&mut batch);
            let mut verdict = drop.iter();
            match &mut b.records {
                Records::Spans(v) => v.retain(|_| !verdict.next().copied().unwrap_or(false)),
                Records::Flows(v) => v.retain(|_| !verdict.next().copied().unwrap_or(false)),
                Records::Samples(v) => v.retain(|_| !verdict.next().copied().unwrap_or(false)),
                Records::Logs(v) => v.retain(|_| !verdict.next().copied().unwrap_or(false)),
                // Encoded spans never reach a processor (the engine decodes them).
                _ => {}
            }
        }
        if !batch.is_empty() {
            out.push(batch);
        }
        Ok(())
    }
}

/// Factory for [`Filter`].
pub struct FilterFactory;

impl Factory for FilterFactory {
    type Config = FilterConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "filter";
    const SIGNALS: &'static [Signal] =
        &[Signal::Traces, Signal::Flows, Signal::Metrics, Signal::Logs];
    const DESCRIPTION: &'static str =
        "drops spans, flows, metrics, data points and log records matching OTTL conditions";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-filter.md");

    fn validate(config: &FilterConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        compile(config, &mut errors);
        errors.into_result()
    }

    fn build(config: FilterConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut errors = ConfigErrors::new();
        let [spans, flows, metrics, points, logs] = compile(&config, &mut errors);
        errors.into_result()?;
        Ok(Box::new(Filter {
            spans,
            flows,
            metrics,
            points,
            logs,
            errors: Errors::new(config.error_mode, "filter_errors", &ctx.id),
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(FilterFactory);

#[cfg(test)]
mod tests;
