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
    /// Statements for metrics (`context: metric`, the default) and their data points
    /// (`context: datapoint`).
    pub metric_statements: Vec<Group>,
    /// Statements for log records.
    pub log_statements: Vec<Group>,
}

/// One item of a statement list: a lone statement, or statements guarded by conditions.
#[derive(Debug, Default)]
pub struct Group {
    /// The group's context: the list's own (`span`, `flow`, `log`, `metric`), or `datapoint` in
    /// `metric_statements`; absent means the list's own.
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
    context: Context,
    conditions: Vec<Condition>,
    statements: Vec<(Statement, String)>,
}

/// Compiles a list whose groups run in `contexts` (the first is the default).
fn compile_groups(
    groups: &[Group],
    list: &str,
    contexts: &[Context],
    errors: &mut ConfigErrors,
) -> Vec<Compiled> {
    let mut out = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let base = format!("{list}[{i}]");
        let mut context = contexts[0];
        if let Some(c) = &g.context {
            match contexts.iter().find(|x| x.as_str() == c) {
                Some(x) => context = *x,
                None => {
                    let hint = if c == "resource" {
                        format!(
                            ": write resource.attributes[\"key\"] in {} context",
                            context.as_str()
                        )
                    } else {
                        String::new()
                    };
                    let names: Vec<_> = contexts
                        .iter()
                        .map(|c| format!("`{}`", c.as_str()))
                        .collect();
                    errors.push(
                        format!("{base}.context"),
                        format!(
                            "`{list}` run in context {}, not `{c}`{hint}",
                            names.join(" or ")
                        ),
                    );
                }
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
            context,
            conditions,
            statements: statements
                .into_iter()
                .zip(g.statements.iter().cloned())
                .collect(),
        });
    }
    out
}

/// Every list compiled: spans, flows, metrics (and data points), log records.
fn compile(c: &TransformConfig, errors: &mut ConfigErrors) -> [Vec<Compiled>; 4] {
    let lists = [
        &c.trace_statements,
        &c.flow_statements,
        &c.metric_statements,
        &c.log_statements,
    ];
    if lists.iter().all(|l| l.is_empty()) {
        errors.push(
            "",
            "no statements: list some under `trace_statements`, `flow_statements`, `metric_statements` or `log_statements`",
        );
    }
    [
        compile_groups(
            &c.trace_statements,
            "trace_statements",
            &[Context::Span],
            errors,
        ),
        compile_groups(
            &c.flow_statements,
            "flow_statements",
            &[Context::Flow],
            errors,
        ),
        compile_groups(
            &c.metric_statements,
            "metric_statements",
            &[Context::Metric, Context::DataPoint],
            errors,
        ),
        compile_groups(&c.log_statements, "log_statements", &[Context::Log], errors),
    ]
}

/// The statements of one signal and whether any writes the resource.
struct Program {
    groups: Vec<Compiled>,
    writes_resource: bool,
}

impl Program {
    fn new(groups: Vec<Compiled>) -> Program {
        let writes_resource = groups
            .iter()
            .flat_map(|g| &g.statements)
            .any(|(s, _)| s.writes_resource());
        Program {
            groups,
            writes_resource,
        }
    }
}

/// The processor.
pub struct Transform {
    spans: Program,
    flows: Program,
    metrics: Program,
    logs: Program,
    errors: Errors,
    telemetry: Telemetry,
}

/// Runs every group on one record; `Err` when the batch is to be dropped (propagate).
fn run<'g>(
    groups: impl IntoIterator<Item = &'g Compiled>,
    mut record: RecordMut<'_>,
    resource: &mut ResourceRef<'_>,
    errors: &mut Errors,
) -> Result<Outcome, ()> {
    let mut outcome = Outcome::Skipped;
    for g in groups {
        if !g.conditions.is_empty() {
            let view: Record<'_> = record.view();
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
            match st.apply(record.reborrow(), resource) {
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
        let program = match records {
            Records::Spans(_) => &self.spans,
            Records::Flows(_) => &self.flows,
            Records::Metrics(_) => &self.metrics,
            Records::Logs(_) => &self.logs,
            // Encoded spans never reach a processor: the engine decodes them.
            _ => return Ok(0),
        };
        let groups = &program.groups;
        if groups.is_empty() {
            return Ok(0);
        }
        let mut res = if program.writes_resource {
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
            Records::Logs(v) => {
                let n = v.len();
                for (i, l) in v.iter_mut().enumerate() {
                    if run(groups, RecordMut::Log(l), &mut res, errors)? == Outcome::Drop {
                        mark(i, n);
                    }
                }
            }
            Records::Metrics(v) => {
                let (mut dropped, mut index) = (0, 0);
                let mut failed = false;
                v.retain_mut(|m| {
                    index += 1;
                    if failed {
                        return true;
                    }
                    match run_metric(groups, m, &mut res, errors) {
                        Ok((keep, n)) => {
                            dropped += n;
                            keep
                        }
                        Err(()) => {
                            failed = true;
                            true
                        }
                    }
                });
                return if failed { Err(()) } else { Ok(dropped) };
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
            Records::Logs(v) => v.retain(|_| keep()),
            _ => {}
        }
        Ok(dropped.iter().filter(|d| **d).count())
    }
}

/// Runs the groups on one metric in order: a `metric` group on the metric, a `datapoint` group
/// on each of its points (points it drops are gone for the groups after it). Whether to keep
/// the metric (not dropped, and some points left if it had any) and how many points went.
fn run_metric(
    groups: &[Compiled],
    m: &mut oxeye_api::Metric,
    res: &mut ResourceRef<'_>,
    errors: &mut Errors,
) -> Result<(bool, usize), ()> {
    let had = m.points();
    let mut dropped = 0;
    for g in groups {
        let one = std::iter::once(g);
        match g.context {
            Context::DataPoint => {
                let mut gone = Vec::new();
                for i in 0..m.points() {
                    let outcome = run(one.clone(), RecordMut::DataPoint(m, i), res, errors)?;
                    gone.push(outcome == Outcome::Drop);
                }
                if gone.iter().any(|g| *g) {
                    let mut verdict = gone.iter();
                    dropped += m
                        .data
                        .retain_points(|_| !verdict.next().copied().unwrap_or(false));
                }
            }
            _ => {
                if run(one, RecordMut::Metric(m), res, errors)? == Outcome::Drop {
                    return Ok((false, dropped + m.points()));
                }
            }
        }
    }
    Ok((had == 0 || !m.data.is_empty(), dropped))
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
    const SIGNALS: &'static [Signal] =
        &[Signal::Traces, Signal::Flows, Signal::Metrics, Signal::Logs];
    const DESCRIPTION: &'static str =
        "changes spans, flows, metrics, data points and log records with OTTL statements";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-transform.md");

    fn validate(config: &TransformConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        compile(config, &mut errors);
        errors.into_result()
    }

    fn build(config: TransformConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut errors = ConfigErrors::new();
        let [spans, flows, metrics, logs] = compile(&config, &mut errors);
        errors.into_result()?;
        Ok(Box::new(Transform {
            spans: Program::new(spans),
            flows: Program::new(flows),
            metrics: Program::new(metrics),
            logs: Program::new(logs),
            errors: Errors::new(config.error_mode, "transform_errors", &ctx.id),
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(TransformFactory);

#[cfg(test)]
mod tests;
