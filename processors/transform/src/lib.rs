#![doc = include_str!("../README.md")]

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records, Signal,
    Telemetry,
};
use oxeye_ottl::processor::{compile_list, ErrorMode, Errors};
use oxeye_ottl::{Condition, Context, Outcome, Record, RecordMut, ResourceRef, Statement};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// What a statement that fails on a record does.
    pub error_mode: ErrorMode,
    /// Statements for spans.
    pub trace_statements: Vec<Group>,
    /// Statements for flow records.
    pub flow_statements: Vec<Group>,
}

/// One item of a statement list: a lone statement, or statements guarded by conditions.
#[derive(Debug, Default)]
pub struct Group {
    /// `span` or `flow` (must match the list; absent means the list's own).
    pub context: Option<String>,
    /// The statements run when any of these holds (none: always).
    pub conditions: Vec<String>,
    /// The statements, in order.
    pub statements: Vec<String>,
    /// True for the lone-string form.
    single: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFields {
    context: Option<String>,
    #[serde(default)]
    conditions: Vec<String>,
    statements: Vec<String>,
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GroupVisitor;
        impl<'de> Visitor<'de> for GroupVisitor {
            type Value = Group;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a statement (a string) or {context, conditions, statements}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Group, E> {
                Ok(Group {
                    statements: vec![s.to_string()],
                    single: true,
                    ..Group::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Group, A::Error> {
                let g = GroupFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Group {
                    context: g.context,
                    conditions: g.conditions,
                    statements: g.statements,
                    single: false,
                })
            }
        }
        d.deserialize_any(GroupVisitor)
    }
}

/// A compiled group.
struct Compiled {
    conditions: Vec<Condition>,
    statements: Vec<(Statement, String)>,
}

fn compile_groups(
    groups: &[Group],
    list: &str,
    context: Context,
    errors: &mut ConfigErrors,
) -> Vec<Compiled> {
    let mut out = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let base = format!("{list}[{i}]");
        if let Some(c) = &g.context {
            if c != context.as_str() {
                let hint = if c == "resource" {
                    format!(
                        ": write resource.attributes[\"key\"] in {} context",
                        context.as_str()
                    )
                } else {
                    String::new()
                };
                errors.push(
                    format!("{base}.context"),
                    format!(
                        "`{list}` run in context `{}`, not `{c}`{hint}",
                        context.as_str()
                    ),
                );
            }
        }
        let (stmt_path, cond_path) = if g.single {
            (list.to_string(), String::new())
        } else {
            (format!("{base}.statements"), format!("{base}.conditions"))
        };
        let conditions = compile_list(
            &g.conditions,
            &cond_path,
            context,
            Condition::compile,
            errors,
        );
        let statements = if g.single {
            // Report at `list[i]`, not `list[i][0]`.
            let mut e = ConfigErrors::new();
            let s = compile_list(&g.statements, "", context, Statement::compile, &mut e);
            for fe in e.0 {
                errors.push_at(base.clone(), fe.offset.unwrap_or(0), fe.message);
            }
            s
        } else {
            if g.statements.is_empty() {
                errors.push(stmt_path.clone(), "a group needs at least one statement");
            }
            compile_list(
                &g.statements,
                &stmt_path,
                context,
                Statement::compile,
                errors,
            )
        };
        out.push(Compiled {
            conditions,
            statements: statements
                .into_iter()
                .zip(g.statements.iter().cloned())
                .collect(),
        });
    }
    out
}

fn compile(c: &TransformConfig, errors: &mut ConfigErrors) -> (Vec<Compiled>, Vec<Compiled>) {
    if c.trace_statements.is_empty() && c.flow_statements.is_empty() {
        errors.push(
            "",
            "no statements: list some under `trace_statements` or `flow_statements`",
        );
    }
    (
        compile_groups(
            &c.trace_statements,
            "trace_statements",
            Context::Span,
            errors,
        ),
        compile_groups(&c.flow_statements, "flow_statements", Context::Flow, errors),
    )
}

/// The processor.
pub struct Transform {
    spans: Vec<Compiled>,
    flows: Vec<Compiled>,
    spans_write_resource: bool,
    flows_write_resource: bool,
    errors: Errors,
    telemetry: Telemetry,
}

/// Runs every group on one record; `Err` when the batch is to be dropped (propagate).
fn run(
    groups: &[Compiled],
    mut record: RecordMut<'_>,
    resource: &mut ResourceRef<'_>,
    errors: &mut Errors,
) -> Result<Outcome, ()> {
    let mut outcome = Outcome::Skipped;
    for g in groups {
        if !g.conditions.is_empty() {
            let view = match &record {
                RecordMut::Span(s) => Record::Span(s),
                RecordMut::Flow(f) => Record::Flow(f),
            };
            let res = match resource {
                ResourceRef::Shared(r) => &**r,
                ResourceRef::Mut(r) => &**r,
            };
            let mut any = false;
            for c in &g.conditions {
                match c.eval(view, res) {
                    Ok(true) => {
                        any = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        errors.record("conditions", &e);
                        if errors.mode() == ErrorMode::Propagate {
                            return Err(());
                        }
                    }
                }
            }
            if !any {
                continue;
            }
        }
        for (st, text) in &g.statements {
            let rec = match &mut record {
                RecordMut::Span(s) => RecordMut::Span(s),
                RecordMut::Flow(f) => RecordMut::Flow(f),
            };
            match st.apply(rec, resource) {
                Ok(Outcome::Drop) => return Ok(Outcome::Drop),
                Ok(Outcome::Applied) => outcome = Outcome::Applied,
                Ok(Outcome::Skipped) => {}
                Err(e) => {
                    errors.record(text, &e);
                    if errors.mode() == ErrorMode::Propagate {
                        return Err(());
                    }
                }
            }
        }
    }
    Ok(outcome)
}

impl Transform {
    /// Changes the batch in place; the number of records dropped, or `Err` to drop it whole.
    fn transform(&mut self, batch: &mut Batch) -> Result<usize, ()> {
        let Batch { resource, records } = batch;
        let (groups, writes) = match records {
            Records::Spans(_) => (&self.spans, self.spans_write_resource),
            Records::Flows(_) => (&self.flows, self.flows_write_resource),
            // Encoded spans never reach a processor: the engine decodes them.
            _ => return Ok(0),
        };
        if groups.is_empty() {
            return Ok(0);
        }
        let mut res = if writes {
            ResourceRef::Mut(Arc::make_mut(resource))
        } else {
            ResourceRef::Shared(resource)
        };
        let errors = &mut self.errors;
        // Which records `drop()` removed; allocated on the first drop.
        let mut dropped: Vec<bool> = Vec::new();
        let mut mark = |i: usize, n: usize| {
            if dropped.is_empty() {
                dropped = vec![false; n];
            }
            dropped[i] = true;
        };
        match records {
            Records::Spans(v) => {
                let n = v.len();
                for (i, s) in v.iter_mut().enumerate() {
                    if run(groups, RecordMut::Span(s), &mut res, errors)? == Outcome::Drop {
                        mark(i, n);
                    }
                }
            }
            Records::Flows(v) => {
                let n = v.len();
                for (i, f) in v.iter_mut().enumerate() {
                    if run(groups, RecordMut::Flow(f), &mut res, errors)? == Outcome::Drop {
                        mark(i, n);
                    }
                }
            }
            _ => {}
        }
        if dropped.is_empty() {
            return Ok(0);
        }
        let mut verdict = dropped.iter();
        let mut keep = || !verdict.next().copied().unwrap_or(false);
        match records {
            Records::Spans(v) => v.retain(|_| keep()),
            Records::Flows(v) => v.retain(|_| keep()),
            Records::Samples(v) => v.retain(|_| keep()),
            _ => {}
        }
        Ok(dropped.iter().filter(|d| **d).count())
    }
}

#[async_trait]
impl Processor for Transform {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        let result = self.transform(Arc::make_mut(&mut batch));
        self.errors.publish(&self.telemetry);
        match result {
            Ok(dropped) => {
                self.telemetry.add_dropped("transform_drop", dropped as u64);
                if !batch.is_empty() {
                    out.push(batch);
                }
            }
            Err(()) => self
                .telemetry
                .add_dropped("expression_error", batch.len() as u64),
        }
        Ok(())
    }
}

/// Factory for [`Transform`].
pub struct TransformFactory;

impl Factory for TransformFactory {
    type Config = TransformConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "transform";
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Flows];
    const DESCRIPTION: &'static str = "changes spans and flows with OTTL statements";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-transform.md");

    fn validate(config: &TransformConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        compile(config, &mut errors);
        errors.into_result()
    }

    fn build(config: TransformConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut errors = ConfigErrors::new();
        let (spans, flows) = compile(&config, &mut errors);
        errors.into_result()?;
        let writes = |g: &[Compiled]| {
            g.iter()
                .flat_map(|g| &g.statements)
                .any(|(s, _)| s.writes_resource())
        };
        Ok(Box::new(Transform {
            spans_write_resource: writes(&spans),
            flows_write_resource: writes(&flows),
            spans,
            flows,
            errors: Errors::new(config.error_mode, "transform_errors", &ctx.id),
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(TransformFactory);

#[cfg(test)]
mod tests;
