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

fn compile(c: &FilterConfig, errors: &mut ConfigErrors) -> (Vec<Condition>, Vec<Condition>) {
    let spans = compile_list(
        &c.traces.span,
        "traces.span",
        Context::Span,
        Condition::compile,
        errors,
    );
    let flows = compile_list(
        &c.flows.flow,
        "flows.flow",
        Context::Flow,
        Condition::compile,
        errors,
    );
    if c.traces.span.is_empty() && c.flows.flow.is_empty() {
        errors.push(
            "",
            "no conditions: list some under `traces.span` or `flows.flow`",
        );
    }
    (spans, flows)
}

/// The processor.
pub struct Filter {
    spans: Vec<Condition>,
    span_texts: Vec<String>,
    flows: Vec<Condition>,
    flow_texts: Vec<String>,
    errors: Errors,
    telemetry: Telemetry,
}

impl Filter {
    /// True when any condition holds; an error counts and (unless propagating) means "no".
    fn matches(
        conditions: &[Condition],
        texts: &[String],
        record: Record<'_>,
        resource: &oxeye_api::Resource,
        errors: &mut Errors,
    ) -> Result<bool, ()> {
        for (c, text) in conditions.iter().zip(texts) {
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
                .map(|s| Self::matches(&self.spans, &self.span_texts, Record::Span(s), res, errors))
                .collect(),
            Records::Flows(v) if !self.flows.is_empty() => v
                .iter()
                .map(|f| Self::matches(&self.flows, &self.flow_texts, Record::Flow(f), res, errors))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl Processor for Filter {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
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
                // Encoded spans never reach a processor: the engine decodes them.
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
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Flows];
    const DESCRIPTION: &'static str = "drops spans and flows matching OTTL conditions";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-filter.md");

    fn validate(config: &FilterConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        compile(config, &mut errors);
        errors.into_result()
    }

    fn build(config: FilterConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut errors = ConfigErrors::new();
        let (spans, flows) = compile(&config, &mut errors);
        errors.into_result()?;
        Ok(Box::new(Filter {
            spans,
            span_texts: config.traces.span,
            flows,
            flow_texts: config.flows.flow,
            errors: Errors::new(config.error_mode, "filter_errors", &ctx.id),
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(FilterFactory);

#[cfg(test)]
mod tests;
