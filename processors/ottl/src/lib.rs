//! OTTL for oxeye: conditions and statements over spans, flows, log records, metrics and
//! metric data points.
//!
//! The syntax is the OpenTelemetry Collector's OTTL (parsed by a [pest] grammar, `ottl.pest`):
//! `set(attributes["env"], "prod") where name == "GET /"`. Text compiles once, at config
//! validation, into a typed tree: paths are resolved to fields, regexes compiled, types checked,
//! so every mistake is reported with its column before anything runs. Evaluation walks the tree
//! and reads records in place (no copies, no per-record allocation for reads and literal sets).
//!
//! What is supported is listed in the crate's README; [`Context`] says which paths exist.

mod compile;
mod eval;
pub mod processor;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;

use oxeye_api::{Flow, LogRecord, Metric, Resource, Span};

pub use compile::{converter_names, editor_names, path_names};

/// Which records a condition or statement reads and changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// Spans (`trace_statements`, `traces.span`).
    Span,
    /// Flow records (`flow_statements`, `flows.flow`).
    Flow,
    /// Log records (`log_statements`, `logs.log_record`).
    Log,
    /// Metrics as a whole: name, description, unit, type (`metric_statements` with
    /// `context: metric`, `metrics.metric`).
    Metric,
    /// One data point of a metric: its attributes, times and values, and its metric's name,
    /// unit and type read-only as `metric.*` (`context: datapoint`, `metrics.datapoint`).
    DataPoint,
}

impl Context {
    /// `span`, `flow`, `log`, `metric` or `datapoint` (the Collector's names).
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Span => "span",
            Context::Flow => "flow",
            Context::Log => "log",
            Context::Metric => "metric",
            Context::DataPoint => "datapoint",
        }
    }
}

/// A syntax or type error, at a character offset of the source text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// 0-based character offset in the statement or condition.
    pub offset: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.offset + 1, self.message)
    }
}

impl std::error::Error for CompileError {}

/// An error while evaluating one record (a type that only shows at run time, a failed
/// conversion, a division by zero). The processor counts it and follows its `error_mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// A record to read.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// A span.
    Span(&'a Span),
    /// A flow record.
    Flow(&'a Flow),
    /// A log record.
    Log(&'a LogRecord),
    /// A metric.
    Metric(&'a Metric),
    /// Data point `.1` of a metric (in the order of its points).
    DataPoint(&'a Metric, usize),
}

/// A record to change.
#[derive(Debug)]
pub enum RecordMut<'a> {
    /// A span.
    Span(&'a mut Span),
    /// A flow record.
    Flow(&'a mut Flow),
    /// A log record.
    Log(&'a mut LogRecord),
    /// A metric.
    Metric(&'a mut Metric),
    /// Data point `.1` of a metric.
    DataPoint(&'a mut Metric, usize),
}

impl RecordMut<'_> {
    /// The record, to read.
    pub fn view(&self) -> Record<'_> {
        self.as_ref()
    }

    /// The same record, borrowed again (to apply several statements in turn).
    pub fn reborrow(&mut self) -> RecordMut<'_> {
        match self {
            RecordMut::Span(s) => RecordMut::Span(s),
            RecordMut::Flow(f) => RecordMut::Flow(f),
            RecordMut::Log(l) => RecordMut::Log(l),
            RecordMut::Metric(m) => RecordMut::Metric(m),
            RecordMut::DataPoint(m, i) => RecordMut::DataPoint(m, *i),
        }
    }

    fn as_ref(&self) -> Record<'_> {
        match self {
            RecordMut::Span(s) => Record::Span(s),
            RecordMut::Flow(f) => Record::Flow(f),
            RecordMut::Log(l) => Record::Log(l),
            RecordMut::Metric(m) => Record::Metric(m),
            RecordMut::DataPoint(m, i) => Record::DataPoint(m, *i),
        }
    }
}

/// The resource of the batch being changed: shared when no statement writes
/// `resource.attributes`, so a batch's resource is copied only by statements that change it.
#[derive(Debug)]
pub enum ResourceRef<'a> {
    /// Read only.
    Shared(&'a Resource),
    /// Writable.
    Mut(&'a mut Resource),
}

impl ResourceRef<'_> {
    fn get(&self) -> &Resource {
        match self {
            ResourceRef::Shared(r) => r,
            ResourceRef::Mut(r) => r,
        }
    }
}

/// A compiled boolean condition (`name == "x" and attributes["k"] != nil`).
#[derive(Debug)]
pub struct Condition {
    expr: compile::Expr,
}

impl Condition {
    /// Compiles `text` for records of `context`.
    pub fn compile(text: &str, context: Context) -> Result<Condition, CompileError> {
        Ok(Condition {
            expr: compile::condition(text, context)?,
        })
    }

    /// True when the condition holds for `record`.
    pub fn eval(&self, record: Record<'_>, resource: &Resource) -> Result<bool, EvalError> {
        eval::truth(&self.expr, &eval::Env { record, resource })
    }
}

/// What a statement did to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The `where` clause was false: nothing changed.
    Skipped,
    /// The editor ran.
    Applied,
    /// `drop()` ran: remove the record.
    Drop,
}

/// A compiled statement: an editor and an optional `where` condition.
#[derive(Debug)]
pub struct Statement {
    editor: compile::Editor,
    condition: Option<compile::Expr>,
}

impl Statement {
    /// Compiles `text` for records of `context`.
    pub fn compile(text: &str, context: Context) -> Result<Statement, CompileError> {
        let (editor, condition) = compile::statement(text, context)?;
        Ok(Statement { editor, condition })
    }

    /// True when the statement changes `resource.attributes` (the caller then passes
    /// [`ResourceRef::Mut`]).
    pub fn writes_resource(&self) -> bool {
        self.editor.writes_resource()
    }

    /// Runs the statement on one record.
    pub fn apply(
        &self,
        mut record: RecordMut<'_>,
        resource: &mut ResourceRef<'_>,
    ) -> Result<Outcome, EvalError> {
        if let Some(c) = &self.condition {
            let env = eval::Env {
                record: record.as_ref(),
                resource: resource.get(),
            };
            if !eval::truth(c, &env)? {
                return Ok(Outcome::Skipped);
            }
        }
        eval::edit(&self.editor, &mut record, resource)
    }
}

#[cfg(test)]
mod tests;
