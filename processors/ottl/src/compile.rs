//! Text → typed tree: parse with the pest grammar, resolve paths and functions, check types.

use std::sync::Arc;

use oxeye_api::Value;
use pest::iterators::Pair;
use pest::Parser as _;
use regex::Regex;

use crate::{CompileError, Context};

#[derive(pest_derive::Parser)]
#[grammar = "ottl.pest"]
struct OttlParser;

/// Static type of an expression; `Any` for attributes (known only at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    Nil,
    List,
    Map,
    Any,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::Int => "an int",
            Ty::Float => "a float",
            Ty::Str => "a string",
            Ty::Bytes => "bytes",
            Ty::Nil => "nil",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Any => "any value",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Any)
    }

    fn stringy(self) -> bool {
        matches!(self, Ty::Str | Ty::Any)
    }

    /// Values of the two types can be equal.
    fn comparable(self, other: Ty) -> bool {
        let num = |t| matches!(t, Ty::Int | Ty::Float);
        self == other
            || matches!(self, Ty::Any | Ty::Nil)
            || matches!(other, Ty::Any | Ty::Nil)
            || (num(self) && num(other))
    }
}

/// A record field (attributes are separate: [`Expr::Attr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Kind,
    StatusCode,
    StatusMessage,
    Start,
    End,
    Duration,
    TraceId,
    SpanId,
    ParentSpanId,
    TraceIdString,
    SpanIdString,
    ParentSpanIdString,
    Pid,
    Tid,
    Executable,
    Cpu,
    ReturnValue,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Transport,
    NetworkType,
    Interface,
    Direction,
    Packets,
    Bytes,
    Body,
    SeverityNumber,
    SeverityText,
    Time,
    ObservedTime,
    EventName,
    Flags,
    Description,
    Unit,
    MetricType,
    Temporality,
    Monotonic,
    ValueInt,
    ValueDouble,
    Count,
    Sum,
    MetricName,
    MetricUnit,
}

const SPAN: u8 = 1;
const FLOW: u8 = 2;
const LOG: u8 = 4;
const METRIC: u8 = 8;
const POINT: u8 = 16;

/// Path, field, type, settable, contexts.
const FIELDS: &[(&str, Field, Ty, bool, u8)] = &[
    ("name", Field::Name, Ty::Str, true, SPAN | METRIC),
    ("description", Field::Description, Ty::Str, true, METRIC),
    ("unit", Field::Unit, Ty::Str, true, METRIC),
    ("type", Field::MetricType, Ty::Int, false, METRIC),
    (
        "aggregation_temporality",
        Field::Temporality,
        Ty::Int,
        false,
        METRIC,
    ),
    ("is_monotonic", Field::Monotonic, Ty::Bool, false, METRIC),
    ("metric.name", Field::MetricName, Ty::Str, false, POINT),
    ("metric.unit", Field::MetricUnit, Ty::Str, false, POINT),
    ("metric.type", Field::MetricType, Ty::Int, false, POINT),
    ("body", Field::Body, Ty::Any, true, LOG),
    ("severity_number", Field::SeverityNumber, Ty::Int, true, LOG),
    ("severity_text", Field::SeverityText, Ty::Str, true, LOG),
    ("event_name", Field::EventName, Ty::Str, true, LOG),
    ("flags", Field::Flags, Ty::Int, false, LOG | POINT),
    ("time_unix_nano", Field::Time, Ty::Int, true, LOG),
    ("time_unix_nano", Field::Time, Ty::Int, false, POINT),
    (
        "observed_time_unix_nano",
        Field::ObservedTime,
        Ty::Int,
        true,
        LOG,
    ),
    ("start_time_unix_nano", Field::Start, Ty::Int, false, POINT),
    ("value_int", Field::ValueInt, Ty::Int, false, POINT),
    ("value_double", Field::ValueDouble, Ty::Float, false, POINT),
    ("count", Field::Count, Ty::Int, false, POINT),
    ("sum", Field::Sum, Ty::Float, false, POINT),
    ("kind", Field::Kind, Ty::Int, true, SPAN),
    ("status", Field::StatusCode, Ty::Int, true, SPAN),
    ("status.code", Field::StatusCode, Ty::Int, true, SPAN),
    ("status.message", Field::StatusMessage, Ty::Str, true, SPAN),
    ("start_time_unix_nano", Field::Start, Ty::Int, true, SPAN),
    ("end_time_unix_nano", Field::End, Ty::Int, true, SPAN),
    ("start_time_unix_nano", Field::Start, Ty::Int, false, FLOW),
    ("end_time_unix_nano", Field::End, Ty::Int, false, FLOW),
    ("duration", Field::Duration, Ty::Int, false, SPAN | FLOW),
    ("trace_id", Field::TraceId, Ty::Bytes, false, SPAN | LOG),
    ("span_id", Field::SpanId, Ty::Bytes, false, SPAN | LOG),
    (
        "parent_span_id",
        Field::ParentSpanId,
        Ty::Bytes,
        false,
        SPAN,
    ),
    (
        "trace_id.string",
        Field::TraceIdString,
        Ty::Str,
        false,
        SPAN | LOG,
    ),
    (
        "span_id.string",
        Field::SpanIdString,
        Ty::Str,
        false,
        SPAN | LOG,
    ),
    (
        "parent_span_id.string",
        Field::ParentSpanIdString,
        Ty::Str,
        false,
        SPAN,
    ),
    ("process.pid", Field::Pid, Ty::Int, false, SPAN),
    ("thread.id", Field::Tid, Ty::Int, false, SPAN),
    (
        "process.executable.name",
        Field::Executable,
        Ty::Str,
        false,
        SPAN,
    ),
    ("cpu.logical_number", Field::Cpu, Ty::Int, false, SPAN),
    ("return_value", Field::ReturnValue, Ty::Int, false, SPAN),
    ("source.address", Field::SrcAddr, Ty::Str, false, FLOW),
    ("destination.address", Field::DstAddr, Ty::Str, false, FLOW),
    ("source.port", Field::SrcPort, Ty::Int, false, FLOW),
    ("destination.port", Field::DstPort, Ty::Int, false, FLOW),
    ("network.transport", Field::Transport, Ty::Str, false, FLOW),
    ("network.type", Field::NetworkType, Ty::Str, false, FLOW),
    (
        "network.interface.name",
        Field::Interface,
        Ty::Str,
        false,
        FLOW,
    ),
    (
        "network.io.direction",
        Field::Direction,
        Ty::Str,
        false,
        FLOW,
    ),
    ("packets", Field::Packets, Ty::Int, false, FLOW),
    ("bytes", Field::Bytes, Ty::Int, false, FLOW),
];

const ENUMS: &[(&str, i64)] = &[
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
    ("STATUS_CODE_UNSET", 0),
    ("STATUS_CODE_OK", 1),
    ("STATUS_CODE_ERROR", 2),
    ("METRIC_DATA_TYPE_NONE", 0),
    ("METRIC_DATA_TYPE_GAUGE", 1),
    ("METRIC_DATA_TYPE_SUM", 2),
    ("METRIC_DATA_TYPE_HISTOGRAM", 3),
    ("METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM", 4),
    ("METRIC_DATA_TYPE_SUMMARY", 5),
    ("AGGREGATION_TEMPORALITY_UNSPECIFIED", 0),
    ("AGGREGATION_TEMPORALITY_DELTA", 1),
    ("AGGREGATION_TEMPORALITY_CUMULATIVE", 2),
    ("SEVERITY_NUMBER_UNSPECIFIED", 0),
    ("SEVERITY_NUMBER_TRACE", 1),
    ("SEVERITY_NUMBER_TRACE2", 2),
    ("SEVERITY_NUMBER_TRACE3", 3),
    ("SEVERITY_NUMBER_TRACE4", 4),
    ("SEVERITY_NUMBER_DEBUG", 5),
    ("SEVERITY_NUMBER_DEBUG2", 6),
    ("SEVERITY_NUMBER_DEBUG3", 7),
    ("SEVERITY_NUMBER_DEBUG4", 8),
    ("SEVERITY_NUMBER_INFO", 9),
    ("SEVERITY_NUMBER_INFO2", 10),
    ("SEVERITY_NUMBER_INFO3", 11),
    ("SEVERITY_NUMBER_INFO4", 12),
    ("SEVERITY_NUMBER_WARN", 13),
    ("SEVERITY_NUMBER_WARN2", 14),
    ("SEVERITY_NUMBER_WARN3", 15),
    ("SEVERITY_NUMBER_WARN4", 16),
    ("SEVERITY_NUMBER_ERROR", 17),
    ("SEVERITY_NUMBER_ERROR2", 18),
    ("SEVERITY_NUMBER_ERROR3", 19),
    ("SEVERITY_NUMBER_ERROR4", 20),
    ("SEVERITY_NUMBER_FATAL", 21),
    ("SEVERITY_NUMBER_FATAL2", 22),
    ("SEVERITY_NUMBER_FATAL3", 23),
    ("SEVERITY_NUMBER_FATAL4", 24),
];

/// Paths readable in `context` (for docs and error messages).
pub fn path_names(context: Context) -> Vec<&'static str> {
    let mask = mask(context);
    let mut names: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.4 & mask != 0)
        .map(|f| f.0)
        .collect();
    names.dedup();
    if context != Context::Metric {
        names.extend(["attributes", "attributes[\"key\"]"]);
    }
    names.extend(["resource.attributes", "resource.attributes[\"key\"]"]);
    names
}

fn mask(context: Context) -> u8 {
    match context {
        Context::Span => SPAN,
        Context::Flow => FLOW,
        Context::Log => LOG,
        Context::Metric => METRIC,
        Context::DataPoint => POINT,
    }
}

/// Which attributes a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Map {
    Record,
    Resource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A typed expression.
#[derive(Debug)]
pub(crate) enum Expr {
    Lit(Value),
    Nil,
    Field(Field),
    Attr(Map, Arc<str>),
    Attrs(Map),
    List(Vec<Expr>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `attributes["k"] <op> literal` (`None`: nil), the commonest condition: compared in place,
    /// without building values.
    AttrCmp(CmpOp, Map, Arc<str>, Option<Value>),
    /// `field <op> literal`.
    FieldCmp(CmpOp, Field, Option<Value>),
    Math(MathOp, Box<Expr>, Box<Expr>),
    Call(Box<Call>),
}

impl CmpOp {
    /// The operator with its sides swapped (`5 < x` is `x > 5`).
    fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            same => same,
        }
    }
}

/// A comparison, specialized when one side is a literal.
fn comparison(op: CmpOp, l: Expr, r: Expr) -> Expr {
    let literal = |e: Expr| match e {
        Expr::Lit(v) => Ok(Some(v)),
        Expr::Nil => Ok(None),
        other => Err(other),
    };
    match (l, r) {
        (Expr::Attr(m, k), r) => match literal(r) {
            Ok(v) => Expr::AttrCmp(op, m, k, v),
            Err(r) => Expr::Cmp(op, Box::new(Expr::Attr(m, k)), Box::new(r)),
        },
        (Expr::Field(f), r) => match literal(r) {
            Ok(v) => Expr::FieldCmp(op, f, v),
            Err(r) => Expr::Cmp(op, Box::new(Expr::Field(f)), Box::new(r)),
        },
        (l, Expr::Attr(m, k)) => match literal(l) {
            Ok(v) => Expr::AttrCmp(op.flip(), m, k, v),
            Err(l) => Expr::Cmp(op, Box::new(l), Box::new(Expr::Attr(m, k))),
        },
        (l, Expr::Field(f)) => match literal(l) {
            Ok(v) => Expr::FieldCmp(op.flip(), f, v),
            Err(l) => Expr::Cmp(op, Box::new(l), Box::new(Expr::Field(f))),
        },
        (l, r) => Expr::Cmp(op, Box::new(l), Box::new(r)),
    }
}

/// A converter call (functions with a capital letter; they return a value).
#[derive(Debug)]
pub(crate) enum Call {
    Concat(Expr, Expr),
    IsMatch(Expr, Regex),
    HasPrefix(Expr, Expr),
    HasSuffix(Expr, Expr),
    Len(Expr),
    Int(Expr),
    Double(Expr),
    String(Expr),
    ToLowerCase(Expr),
    ToUpperCase(Expr),
    Substring(Expr, Expr, Expr),
}

const CONVERTERS: &[(&str, &str)] = &[
    ("Concat", "Concat([values], separator) -> string"),
    ("IsMatch", "IsMatch(target, \"regex\") -> bool"),
    ("HasPrefix", "HasPrefix(target, prefix) -> bool"),
    ("HasSuffix", "HasSuffix(target, suffix) -> bool"),
    ("Len", "Len(target) -> int"),
    ("Int", "Int(value) -> int or nil"),
    ("Double", "Double(value) -> float or nil"),
    ("String", "String(value) -> string"),
    ("ToLowerCase", "ToLowerCase(target) -> string"),
    ("ToUpperCase", "ToUpperCase(target) -> string"),
    ("Substring", "Substring(target, start, length) -> string"),
];

const EDITORS: &[(&str, &str)] = &[
    ("set", "set(target, value)"),
    ("delete_key", "delete_key(attributes, \"key\")"),
    (
        "delete_matching_keys",
        "delete_matching_keys(attributes, \"regex\")",
    ),
    ("keep_keys", "keep_keys(attributes, [\"key\", ...])"),
    (
        "keep_matching_keys",
        "keep_matching_keys(attributes, \"regex\")",
    ),
    (
        "replace_pattern",
        "replace_pattern(target, \"regex\", \"replacement\")",
    ),
    (
        "replace_all_patterns",
        "replace_all_patterns(attributes, \"key\"|\"value\", \"regex\", \"replacement\")",
    ),
    ("truncate_all", "truncate_all(attributes, limit)"),
    ("drop", "drop()"),
];

/// Converter signatures (for docs and error messages).
pub fn converter_names() -> Vec<&'static str> {
    CONVERTERS.iter().map(|c| c.1).collect()
}

/// Editor signatures (for docs and error messages).
pub fn editor_names() -> Vec<&'static str> {
    EDITORS.iter().map(|e| e.1).collect()
}

/// Something a statement can write.
#[derive(Debug)]
pub(crate) enum Target {
    Field(Field),
    Attr(Map, Arc<str>),
}

/// An editor (functions with a small letter; they change the record).
#[derive(Debug)]
pub(crate) enum Editor {
    Set(Target, Expr),
    DeleteKey(Map, Expr),
    DeleteMatchingKeys(Map, Regex),
    KeepKeys(Map, Vec<Arc<str>>),
    KeepMatchingKeys(Map, Regex),
    ReplacePattern(Target, Regex, String),
    ReplaceAllPatterns(Map, bool, Regex, String),
    TruncateAll(Map, usize),
    Drop,
}

impl Editor {
    pub(crate) fn writes_resource(&self) -> bool {
        match self {
            Editor::Set(t, _) | Editor::ReplacePattern(t, ..) => {
                matches!(t, Target::Attr(Map::Resource, _))
            }
            Editor::DeleteKey(m, _)
            | Editor::DeleteMatchingKeys(m, _)
            | Editor::KeepKeys(m, _)
            | Editor::KeepMatchingKeys(m, _)
            | Editor::ReplaceAllPatterns(m, ..)
            | Editor::TruncateAll(m, _) => *m == Map::Resource,
            Editor::Drop => false,
        }
    }
}

pub(crate) fn condition(text: &str, context: Context) -> Result<Expr, CompileError> {
    let c = Compiler { text, context };
    let pair = c.parse(Rule::condition)?;
    let inner = pair
        .into_inner()
        .next()
        .expect("condition has an expression");
    let at = inner.as_span().start();
    let (expr, ty) = c.expr(inner)?;
    c.want_bool(at, ty, text.trim())?;
    Ok(expr)
}

pub(crate) fn statement(
    text: &str,
    context: Context,
) -> Result<(Editor, Option<Expr>), CompileError> {
    let c = Compiler { text, context };
    let pair = c.parse(Rule::statement)?;
    let mut inner = pair.into_inner();
    let editor = c.editor(inner.next().expect("statement has an editor"))?;
    let mut condition = None;
    for p in inner {
        if p.as_rule() == Rule::expr {
            let at = p.as_span().start();
            let src = src_of(&p);
            let (expr, ty) = c.expr(p)?;
            c.want_bool(at, ty, src)?;
            condition = Some(expr);
        }
    }
    Ok((editor, condition))
}

struct Compiler<'t> {
    text: &'t str,
    context: Context,
}

type Typed = (Expr, Ty);

fn rule_name(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of input",
        Rule::editor | Rule::editor_name => "an editor such as set(...)",
        Rule::converter | Rule::converter_name => "a function",
        Rule::arguments => "arguments",
        Rule::expr | Rule::and_expr | Rule::not_expr | Rule::cmp_expr => "an expression",
        Rule::sum | Rule::product => "a value",
        Rule::cmp_op => "a comparison (==, !=, <, <=, >, >=)",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::kw_and | Rule::kw_or => "`and` or `or`",
        Rule::kw_where => "`where`",
        Rule::kw_not => "`not`",
        Rule::string | Rule::string_body => "a string in double quotes",
        Rule::int | Rule::float | Rule::bytes => "a number",
        Rule::boolean => "true or false",
        Rule::nil => "nil",
        Rule::list => "a list",
        Rule::enum_sym => "an enum such as STATUS_CODE_ERROR",
        Rule::path | Rule::segment => "a path such as attributes[\"key\"]",
        Rule::index => "an index such as [\"key\"]",
        _ => return None,
    })
}

impl<'t> Compiler<'t> {
    fn err(&self, byte: usize, message: impl Into<String>) -> CompileError {
        CompileError {
            offset: self.text[..byte.min(self.text.len())].chars().count(),
            message: message.into(),
        }
    }

    fn parse(&self, rule: Rule) -> Result<Pair<'t, Rule>, CompileError> {
        match OttlParser::parse(rule, self.text) {
            Ok(mut pairs) => Ok(pairs.next().expect("one top-level pair")),
            Err(e) => {
                let byte = match e.location {
                    pest::error::InputLocation::Pos(p) => p,
                    pest::error::InputLocation::Span((p, _)) => p,
                };
                let mut expected: Vec<&str> = match &e.variant {
                    pest::error::ErrorVariant::ParsingError { positives, .. } => {
                        positives.iter().filter_map(rule_name).collect()
                    }
                    pest::error::ErrorVariant::CustomError { .. } => vec![],
                };
                expected.dedup();
                let found = match self.text[byte..].chars().next() {
                    None => "the end".to_string(),
                    Some(c) => format!("`{c}`"),
                };
                let want = match expected.len() {
                    0 => "a valid OTTL statement".to_string(),
                    1 => expected[0].to_string(),
                    _ => {
                        let (last, rest) = expected.split_last().expect("non-empty");
                        format!("{} or {last}", rest.join(", "))
                    }
                };
                Err(self.err(
                    byte,
                    format!("syntax error: found {found}, expected {want}"),
                ))
            }
        }
    }

    fn want_bool(&self, at: usize, ty: Ty, src: &str) -> Result<(), CompileError> {
        if matches!(ty, Ty::Bool | Ty::Any) {
            return Ok(());
        }
        Err(self.err(
            at,
            format!(
                "`{src}` is {}, not true or false: compare it, e.g. `{src} == ...`",
                ty.name()
            ),
        ))
    }

    fn expr(&self, pair: Pair<'t, Rule>) -> Result<Typed, CompileError> {
        let at = pair.as_span().start();
        match pair.as_rule() {
            Rule::expr | Rule::and_expr => {
                let is_or = pair.as_rule() == Rule::expr;
                let mut items = Vec::new();
                let mut tys = Vec::new();
                for p in pair
                    .into_inner()
                    .filter(|p| !matches!(p.as_rule(), Rule::kw_or | Rule::kw_and))
                {
                    let (pos, src) = (p.as_span().start(), src_of(&p));
                    let (e, t) = self.expr(p)?;
                    tys.push((pos, t, src));
                    items.push(e);
                }
                if items.len() == 1 {
                    return Ok((items.pop().expect("one item"), tys[0].1));
                }
                for (pos, t, src) in tys {
                    self.want_bool(pos, t, src)?;
                }
                Ok((
                    if is_or {
                        Expr::Or(items)
                    } else {
                        Expr::And(items)
                    },
                    Ty::Bool,
                ))
            }
            Rule::not_expr => {
                let mut inner = pair.into_inner();
                let first = inner.next().expect("not_expr has content");
                if first.as_rule() == Rule::kw_not {
                    let operand = inner.next().expect("`not` has an operand");
                    let (pos, src) = (operand.as_span().start(), src_of(&operand));
                    let (e, t) = self.expr(operand)?;
                    self.want_bool(pos, t, src)?;
                    Ok((Expr::Not(Box::new(e)), Ty::Bool))
                } else {
                    self.expr(first)
                }
            }
            Rule::cmp_expr => {
                let mut inner = pair.into_inner();
                let left = inner.next().expect("comparison has a left side");
                let Some(op) = inner.next() else {
                    return self.expr(left);
                };
                let right = inner.next().expect("comparison has a right side");
                let (lsrc, rsrc) = (src_of(&left), src_of(&right));
                let (l, lt) = self.expr(left)?;
                let (r, rt) = self.expr(right)?;
                let op_at = op.as_span().start();
                let op = match op.as_str() {
                    "==" => CmpOp::Eq,
                    "!=" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let ordered = |t: Ty| t.numeric() || t.stringy();
                let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
                if !(equality || ordered(lt) && ordered(rt)) {
                    return Err(self.err(
                        op_at,
                        format!(
                            "`<`, `<=`, `>`, `>=` compare numbers or strings; `{lsrc}` is {} and `{rsrc}` is {}",
                            lt.name(),
                            rt.name()
                        ),
                    ));
                }
                if !lt.comparable(rt) {
                    return Err(self.err(
                        op_at,
                        format!(
                            "`{lsrc}` is {} and `{rsrc}` is {}: they are never equal",
                            lt.name(),
                            rt.name()
                        ),
                    ));
                }
                Ok((comparison(op, l, r), Ty::Bool))
            }
            Rule::sum | Rule::product => {
                let mut inner = pair.into_inner();
                let first = inner.next().expect("operand");
                let mut src = src_of(&first);
                let (mut acc, mut ty) = self.expr(first)?;
                while let Some(op) = inner.next() {
                    let rhs = inner.next().expect("operator has a right operand");
                    let rsrc = src_of(&rhs);
                    let op_at = op.as_span().start();
                    let (r, rt) = self.expr(rhs)?;
                    for (t, s) in [(ty, src), (rt, rsrc)] {
                        if !t.numeric() {
                            let hint = if t == Ty::Str {
                                " (join strings with Concat([a, b], \"\"))"
                            } else {
                                ""
                            };
                            return Err(self.err(
                                op_at,
                                format!(
                                    "`{}` needs numbers; `{s}` is {}{hint}",
                                    op.as_str(),
                                    t.name()
                                ),
                            ));
                        }
                    }
                    let op = match op.as_str() {
                        "+" => MathOp::Add,
                        "-" => MathOp::Sub,
                        "*" => MathOp::Mul,
                        _ => MathOp::Div,
                    };
                    ty = match (ty, rt) {
                        (Ty::Int, Ty::Int) => Ty::Int,
                        (Ty::Any, _) | (_, Ty::Any) => Ty::Any,
                        _ => Ty::Float,
                    };
                    acc = Expr::Math(op, Box::new(acc), Box::new(r));
                    src = "";
                }
                let _ = src;
                Ok((acc, ty))
            }
            Rule::int => {
                let v: i64 = pair.as_str().parse().map_err(|_| {
                    self.err(at, format!("`{}` is too large for an int", pair.as_str()))
                })?;
                Ok((Expr::Lit(Value::Int(v)), Ty::Int))
            }
            Rule::float => {
                let v: f64 = pair
                    .as_str()
                    .parse()
                    .map_err(|_| self.err(at, format!("`{}` is not a number", pair.as_str())))?;
                Ok((Expr::Lit(Value::F64(v)), Ty::Float))
            }
            Rule::bytes => {
                let hex = &pair.as_str()[2..];
                if !hex.len().is_multiple_of(2) {
                    return Err(self.err(at, "bytes need an even number of hex digits"));
                }
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
                    .collect();
                Ok((Expr::Lit(Value::Bytes(bytes.into())), Ty::Bytes))
            }
            Rule::string => Ok((Expr::Lit(Value::Str(self.string(pair)?.into())), Ty::Str)),
            Rule::boolean => Ok((Expr::Lit(Value::Bool(pair.as_str() == "true")), Ty::Bool)),
            Rule::nil => Ok((Expr::Nil, Ty::Nil)),
            Rule::list => {
                let mut items = Vec::new();
                for p in pair.into_inner() {
                    let (e, t) = self.expr(p)?;
                    if matches!(t, Ty::List | Ty::Map) {
                        return Err(self.err(at, "lists hold values, not lists or maps"));
                    }
                    items.push(e);
                }
                Ok((Expr::List(items), Ty::List))
            }
            Rule::enum_sym => {
                let name = pair.as_str();
                match ENUMS.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Ok((Expr::Lit(Value::Int(*v)), Ty::Int)),
                    None => Err(self.err(
                        at,
                        format!(
                            "unknown enum `{name}`; known: {}",
                            ENUMS.iter().map(|e| e.0).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            }
            Rule::path => self.path(pair),
            Rule::converter => self.converter(pair),
            other => unreachable!("rule {other:?} is not an expression"),
        }
    }

    fn string(&self, pair: Pair<'t, Rule>) -> Result<String, CompileError> {
        let body = pair.into_inner().next().expect("string has a body");
        let start = body.as_span().start();
        let mut out = String::with_capacity(body.as_str().len());
        let mut chars = body.as_str().char_indices();
        while let Some((_, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((i, other)) => {
                    return Err(self.err(
                        start + i - 1,
                        format!("unknown escape `\\{other}`: use \\\", \\\\, \\n or \\t"),
                    ))
                }
                None => unreachable!("the grammar pairs every backslash"),
            }
        }
        Ok(out)
    }

    /// Resolves a path to a field, an attribute or an attribute map.
    fn path(&self, pair: Pair<'t, Rule>) -> Result<Typed, CompileError> {
        let at = pair.as_span().start();
        let mut segments = Vec::new();
        let mut indexes = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::segment => segments.push(p.as_str()),
                _ => indexes.push(p),
            }
        }
        // OTTL's context-qualified form: `span.name`, `flow.source.port`.
        if segments.len() > 1 && segments[0] == self.context.as_str() {
            segments.remove(0);
        }
        let dotted = segments.join(".");
        let map = match dotted.as_str() {
            "attributes" if self.context == Context::Metric => {
                return Err(self.err(
                    at,
                    "a metric has no attributes, its data points do: use `metrics.datapoint` (filter) or `context: datapoint` (transform)",
                ));
            }
            "attributes" => Some(Map::Record),
            "resource.attributes" => Some(Map::Resource),
            _ => None,
        };
        if let Some(map) = map {
            return match indexes.len() {
                0 => Ok((Expr::Attrs(map), Ty::Map)),
                1 => {
                    let index = indexes.pop().expect("one index");
                    let key = index.into_inner().next().expect("index has a key");
                    if key.as_rule() != Rule::string {
                        return Err(self.err(
                            key.as_span().start(),
                            "attribute keys are strings: write attributes[\"key\"]",
                        ));
                    }
                    let key: Arc<str> = self.string(key)?.into();
                    Ok((Expr::Attr(map, key), Ty::Any))
                }
                _ => Err(self.err(
                    indexes[1].as_span().start(),
                    "attribute values are not maps or lists: use one index",
                )),
            };
        }
        let mask = mask(self.context);
        match FIELDS.iter().find(|f| f.0 == dotted && f.4 & mask != 0) {
            Some(&(_, field, ty, _, _)) => {
                if let Some(i) = indexes.first() {
                    return Err(self.err(
                        i.as_span().start(),
                        format!("`{dotted}` is {}, it has no index", ty.name()),
                    ));
                }
                Ok((Expr::Field(field), ty))
            }
            None => {
                let elsewhere = FIELDS.iter().any(|f| f.0 == dotted);
                let names = path_names(self.context);
                let why = if elsewhere {
                    format!("`{dotted}` is not a field of a {}", self.context.as_str())
                } else if let Some(near) = closest(&dotted, &names) {
                    format!("unknown path `{dotted}` (did you mean `{near}`?)")
                } else {
                    format!("unknown path `{dotted}`")
                };
                Err(self.err(
                    at,
                    format!(
                        "{why}; {} paths: {}",
                        self.context.as_str(),
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// Arguments of a call, each with its position and source text.
    fn arguments(pair: Pair<'t, Rule>) -> (String, usize, Vec<Pair<'t, Rule>>) {
        let at = pair.as_span().start();
        let mut inner = pair.into_inner();
        let name = inner.next().expect("call has a name").as_str().to_string();
        let args = inner
            .next()
            .map(|a| a.into_inner().collect())
            .unwrap_or_default();
        (name, at, args)
    }

    fn typed_arg(
        &self,
        arg: Pair<'t, Rule>,
        want: &[Ty],
        what: &str,
    ) -> Result<Expr, CompileError> {
        let (pos, src) = (arg.as_span().start(), src_of(&arg));
        let (e, t) = self.expr(arg)?;
        if t == Ty::Any || want.contains(&t) {
            return Ok(e);
        }
        Err(self.err(
            pos,
            format!(
                "{what} must be {}; `{src}` is {}",
                want.iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(" or "),
                t.name()
            ),
        ))
    }

    /// A string literal argument (patterns, keys, replacements).
    fn literal_string(&self, arg: Pair<'t, Rule>, what: &str) -> Result<String, CompileError> {
        let pos = arg.as_span().start();
        // Dig through the expression wrappers down to a lone literal.
        let mut p = arg;
        loop {
            let mut inner = p.clone().into_inner();
            match (p.as_rule(), inner.next(), inner.next()) {
                (Rule::string, ..) => return self.string(p),
                (
                    Rule::expr
                    | Rule::and_expr
                    | Rule::not_expr
                    | Rule::cmp_expr
                    | Rule::sum
                    | Rule::product,
                    Some(only),
                    None,
                ) => p = only,
                _ => {
                    return Err(self.err(
                        pos,
                        format!("{what} must be a string literal in double quotes"),
                    ))
                }
            }
        }
    }

    fn regex(&self, arg: Pair<'t, Rule>) -> Result<Regex, CompileError> {
        let pos = arg.as_span().start();
        let pattern = self.literal_string(arg, "a pattern")?;
        Regex::new(&pattern).map_err(|e| self.err(pos, format!("invalid regex: {e}")))
    }

    fn map_arg(&self, arg: Pair<'t, Rule>) -> Result<Map, CompileError> {
        let (pos, src) = (arg.as_span().start(), src_of(&arg));
        match self.expr(arg)? {
            (Expr::Attrs(m), _) => Ok(m),
            _ => Err(self.err(
                pos,
                format!("expected `attributes` or `resource.attributes`, got `{src}`"),
            )),
        }
    }

    fn converter(&self, pair: Pair<'t, Rule>) -> Result<Typed, CompileError> {
        let (name, at, args) = Self::arguments(pair);
        let mut args = args.into_iter();
        let n = args.len();
        let mut next = || args.next().expect("arity checked");
        let scalar = [Ty::Str, Ty::Int, Ty::Float, Ty::Bool, Ty::Bytes, Ty::Nil];
        let (call, ty) = match name.as_str() {
            "Concat" => {
                self.arity_n(at, &name, n, 2)?;
                let list = self.typed_arg(next(), &[Ty::List], "the first argument")?;
                let sep = self.typed_arg(next(), &[Ty::Str], "the separator")?;
                (Call::Concat(list, sep), Ty::Str)
            }
            "IsMatch" => {
                self.arity_n(at, &name, n, 2)?;
                let target = self.typed_arg(next(), &scalar, "the target")?;
                (Call::IsMatch(target, self.regex(next())?), Ty::Bool)
            }
            "HasPrefix" | "HasSuffix" => {
                self.arity_n(at, &name, n, 2)?;
                let target = self.typed_arg(next(), &[Ty::Str, Ty::Nil], "the target")?;
                let affix = self.typed_arg(next(), &[Ty::Str], "the affix")?;
                let call = if name == "HasPrefix" {
                    Call::HasPrefix(target, affix)
                } else {
                    Call::HasSuffix(target, affix)
                };
                (call, Ty::Bool)
            }
            "Len" => {
                self.arity_n(at, &name, n, 1)?;
                (
                    Call::Len(self.typed_arg(
                        next(),
                        &[Ty::Str, Ty::List, Ty::Map, Ty::Bytes],
                        "the target",
                    )?),
                    Ty::Int,
                )
            }
            "Int" => {
                self.arity_n(at, &name, n, 1)?;
                (
                    Call::Int(self.typed_arg(next(), &scalar, "the value")?),
                    Ty::Any,
                )
            }
            "Double" => {
                self.arity_n(at, &name, n, 1)?;
                (
                    Call::Double(self.typed_arg(next(), &scalar, "the value")?),
                    Ty::Any,
                )
            }
            "String" => {
                self.arity_n(at, &name, n, 1)?;
                (
                    Call::String(self.typed_arg(next(), &scalar, "the value")?),
                    Ty::Str,
                )
            }
            "ToLowerCase" | "ToUpperCase" => {
                self.arity_n(at, &name, n, 1)?;
                let t = self.typed_arg(next(), &[Ty::Str], "the target")?;
                let call = if name == "ToLowerCase" {
                    Call::ToLowerCase(t)
                } else {
                    Call::ToUpperCase(t)
                };
                (call, Ty::Str)
            }
            "Substring" => {
                self.arity_n(at, &name, n, 3)?;
                let t = self.typed_arg(next(), &[Ty::Str], "the target")?;
                let start = self.typed_arg(next(), &[Ty::Int], "the start")?;
                let len = self.typed_arg(next(), &[Ty::Int], "the length")?;
                (Call::Substring(t, start, len), Ty::Str)
            }
            _ => {
                let names: Vec<&str> = CONVERTERS.iter().map(|c| c.0).collect();
                let hint = if EDITORS.iter().any(|e| e.0 == name.to_lowercase()) {
                    " (editors start with a small letter and stand alone)".to_string()
                } else if let Some(near) = closest(&name, &names) {
                    format!(" (did you mean `{near}`?)")
                } else {
                    String::new()
                };
                return Err(self.err(
                    at,
                    format!(
                        "unknown function `{name}`{hint}; functions: {}",
                        CONVERTERS
                            .iter()
                            .map(|c| c.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        Ok((Expr::Call(Box::new(call)), ty))
    }

    fn arity_n(&self, at: usize, name: &str, got: usize, want: usize) -> Result<(), CompileError> {
        if got == want {
            return Ok(());
        }
        let sig = CONVERTERS
            .iter()
            .chain(EDITORS)
            .find(|t| t.0 == name)
            .map(|t| t.1)
            .unwrap_or(name);
        Err(self.err(
            at,
            format!("`{name}` takes {want} argument(s), got {got}: {sig}"),
        ))
    }

    fn target(&self, arg: Pair<'t, Rule>) -> Result<(Target, Ty), CompileError> {
        let (pos, src) = (arg.as_span().start(), src_of(&arg));
        match self.expr(arg)? {
            (Expr::Attr(m, k), _) => Ok((Target::Attr(m, k), Ty::Any)),
            (Expr::Field(f), ty) => {
                let settable = FIELDS
                    .iter()
                    .any(|x| x.1 == f && x.3 && x.4 & mask(self.context) != 0);
                if settable {
                    Ok((Target::Field(f), ty))
                } else {
                    Err(self.err(
                        pos,
                        format!("`{src}` is read-only: set an attribute instead, e.g. attributes[\"my.{}\"]", src.replace('.', "_")),
                    ))
                }
            }
            _ => Err(self.err(
                pos,
                format!("`{src}` cannot be set: the target is a field such as `name` or an attribute such as attributes[\"key\"]"),
            )),
        }
    }

    fn editor(&self, pair: Pair<'t, Rule>) -> Result<Editor, CompileError> {
        let (name, at, args) = Self::arguments(pair);
        let n = args.len();
        let mut args = args.into_iter();
        let mut next = || args.next().expect("arity checked");
        Ok(match name.as_str() {
            "set" => {
                self.arity_n(at, &name, n, 2)?;
                let (target, tty) = self.target(next())?;
                let value = next();
                let (vpos, vsrc) = (value.as_span().start(), src_of(&value));
                let (v, vt) = self.expr(value)?;
                if matches!(vt, Ty::List | Ty::Map) {
                    return Err(self.err(
                        vpos,
                        format!(
                            "`{vsrc}` is {}: attributes and fields hold single values",
                            vt.name()
                        ),
                    ));
                }
                if !tty.comparable(vt) || (tty == Ty::Int && vt == Ty::Float) {
                    return Err(self.err(
                        vpos,
                        format!("the target is {} but `{vsrc}` is {}", tty.name(), vt.name()),
                    ));
                }
                Editor::Set(target, v)
            }
            "delete_key" => {
                self.arity_n(at, &name, n, 2)?;
                let map = self.map_arg(next())?;
                Editor::DeleteKey(map, self.typed_arg(next(), &[Ty::Str], "the key")?)
            }
            "delete_matching_keys" | "keep_matching_keys" => {
                self.arity_n(at, &name, n, 2)?;
                let map = self.map_arg(next())?;
                let re = self.regex(next())?;
                if name == "delete_matching_keys" {
                    Editor::DeleteMatchingKeys(map, re)
                } else {
                    Editor::KeepMatchingKeys(map, re)
                }
            }
            "keep_keys" => {
                self.arity_n(at, &name, n, 2)?;
                let map = self.map_arg(next())?;
                let list = next();
                let pos = list.as_span().start();
                let mut keys = Vec::new();
                let mut p = list;
                while p.as_rule() != Rule::list {
                    let mut inner = p.clone().into_inner();
                    match (inner.next(), inner.next()) {
                        (Some(only), None) => p = only,
                        _ => {
                            return Err(
                                self.err(pos, "keep_keys takes a list of keys: [\"a\", \"b\"]")
                            )
                        }
                    }
                }
                for key in p.into_inner() {
                    keys.push(self.literal_string(key, "each key")?.into());
                }
                Editor::KeepKeys(map, keys)
            }
            "replace_pattern" => {
                self.arity_n(at, &name, n, 3)?;
                let (target, ty) = self.target(next())?;
                if !ty.stringy() {
                    return Err(
                        self.err(at, "replace_pattern changes strings; the target is not one")
                    );
                }
                let re = self.regex(next())?;
                let with = self.literal_string(next(), "the replacement")?;
                Editor::ReplacePattern(target, re, with)
            }
            "replace_all_patterns" => {
                self.arity_n(at, &name, n, 4)?;
                let map = self.map_arg(next())?;
                let mode_arg = next();
                let mode_pos = mode_arg.as_span().start();
                let keys = match self.literal_string(mode_arg, "the mode")?.as_str() {
                    "key" => true,
                    "value" => false,
                    other => {
                        return Err(self.err(
                            mode_pos,
                            format!("mode is \"key\" or \"value\", got \"{other}\""),
                        ))
                    }
                };
                let re = self.regex(next())?;
                let with = self.literal_string(next(), "the replacement")?;
                Editor::ReplaceAllPatterns(map, keys, re, with)
            }
            "truncate_all" => {
                self.arity_n(at, &name, n, 2)?;
                let map = self.map_arg(next())?;
                let limit = next();
                let (pos, src) = (limit.as_span().start(), src_of(&limit));
                match self.expr(limit)? {
                    (Expr::Lit(Value::Int(v)), _) if v >= 0 => Editor::TruncateAll(map, v as usize),
                    _ => {
                        return Err(self.err(
                            pos,
                            format!("the limit must be a non-negative int literal, got `{src}`"),
                        ))
                    }
                }
            }
            "drop" => {
                self.arity_n(at, &name, n, 0)?;
                Editor::Drop
            }
            _ => {
                return Err(self.err(
                    at,
                    format!(
                        "unknown editor `{name}`{}; editors: {}",
                        closest(&name, &EDITORS.iter().map(|e| e.0).collect::<Vec<_>>())
                            .map(|n| format!(" (did you mean `{n}`?)"))
                            .unwrap_or_default(),
                        EDITORS.iter().map(|e| e.0).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        })
    }
}

/// Source text of a node for messages (pest spans keep the whitespace after a node).
fn src_of<'t>(pair: &Pair<'t, Rule>) -> &'t str {
    pair.as_str().trim_end()
}

/// The candidate within edit distance 2 of `name` (a typo), if one is.
fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    candidates
        .iter()
        .map(|c| (distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
