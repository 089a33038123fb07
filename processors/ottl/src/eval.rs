//! Evaluation: reads borrow from the record and the program; only computed strings allocate.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use oxeye_api::metrics::{MetricData, Number, Sum};
use oxeye_api::{Attributes, LogRecord, Metric, Resource, SpanKind, StatusCode, Value};

use crate::compile::{Call, CmpOp, Editor, Expr, Field, Map, MathOp, Target};
use crate::{EvalError, Outcome, Record, RecordMut, ResourceRef};

pub(crate) struct Env<'a> {
    pub record: Record<'a>,
    pub resource: &'a Resource,
}

/// A value during evaluation.
#[derive(Debug)]
enum Val<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    F64(f64),
    Str(Cow<'a, str>),
    /// A string the record already shares (`name`): set copies the pointer, not the text.
    Arc(&'a Arc<str>),
    Bytes(&'a [u8]),
    /// An attribute or a literal, as stored.
    Value(&'a Value),
    List(Vec<Val<'a>>),
    Map(&'a Attributes),
}

/// A borrowed, normalized view for comparisons and conversions.
enum View<'v> {
    Nil,
    Bool(bool),
    Int(i64),
    F64(f64),
    Str(&'v str),
    Bytes(&'v [u8]),
    List(&'v [Val<'v>]),
    /// An array attribute value, as stored in a record.
    Values(&'v [Value]),
    Map(&'v Attributes),
}

impl<'a> Val<'a> {
    fn view(&self) -> View<'_> {
        match self {
            Val::Nil => View::Nil,
            Val::Bool(b) => View::Bool(*b),
            Val::Int(i) => View::Int(*i),
            Val::F64(f) => View::F64(*f),
            Val::Str(s) => View::Str(s),
            Val::Arc(s) => View::Str(s),
            Val::Bytes(b) => View::Bytes(b),
            Val::Value(v) => value_view(v),
            Val::List(l) => View::List(l),
            Val::Map(m) => View::Map(m),
        }
    }

    /// The value to store in an attribute; `None` for nil (setting nil changes nothing).
    fn into_value(self) -> Result<Option<Value>, EvalError> {
        Ok(Some(match self {
            Val::Nil => return Ok(None),
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Int(i),
            Val::F64(f) => Value::F64(f),
            Val::Str(s) => Value::Str(s.into()),
            Val::Arc(s) => Value::Str(Arc::clone(s)),
            Val::Bytes(b) => Value::Bytes(b.into()),
            Val::Value(v) => v.clone(),
            Val::List(_) | Val::Map(_) => {
                return Err(EvalError("lists and maps cannot be stored".into()))
            }
        }))
    }
}

fn value_view(v: &Value) -> View<'_> {
    match v {
        Value::Str(s) => View::Str(s),
        Value::Int(i) => View::Int(*i),
        Value::F64(f) => View::F64(*f),
        Value::Bool(b) => View::Bool(*b),
        Value::Bytes(b) => View::Bytes(b),
        Value::Array(a) => View::Values(a),
        Value::Map(m) => View::Map(m),
        // Empty, and value types this version does not know.
        _ => View::Nil,
    }
}

fn literal_view(v: &Option<Value>) -> View<'_> {
    v.as_ref().map_or(View::Nil, value_view)
}

impl View<'_> {
    fn kind(&self) -> &'static str {
        match self {
            View::Nil => "nil",
            View::Bool(_) => "a boolean",
            View::Int(_) => "an int",
            View::F64(_) => "a float",
            View::Str(_) => "a string",
            View::Bytes(_) => "bytes",
            View::List(_) | View::Values(_) => "a list",
            View::Map(_) => "a map",
        }
    }

    /// Text of a scalar (`Concat`, `String`, `IsMatch`); `None` for lists and maps.
    fn text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            View::Nil => Cow::Borrowed(""),
            View::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            View::Int(i) => Cow::Owned(i.to_string()),
            View::F64(f) => Cow::Owned(f.to_string()),
            View::Str(s) => Cow::Borrowed(s),
            View::Bytes(b) => Cow::Owned(b.iter().map(|x| format!("{x:02x}")).collect()),
            View::List(_) | View::Values(_) | View::Map(_) => return None,
        })
    }
}

fn span_kind(k: SpanKind) -> i64 {
    match k {
        SpanKind::Unspecified => 0,
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status_code(s: StatusCode) -> i64 {
    match s {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn field<'a>(f: Field, record: Record<'a>) -> Val<'a> {
    let opt_int = |v: Option<i64>| v.map_or(Val::Nil, Val::Int);
    match record {
        Record::Span(s) => match f {
            Field::Name => Val::Arc(&s.name),
            Field::Kind => Val::Int(span_kind(s.kind)),
            Field::StatusCode => Val::Int(status_code(s.status)),
            Field::StatusMessage => match &s.status_message {
                Some(m) => Val::Arc(m),
                None => Val::Str(Cow::Borrowed("")),
            },
            Field::Start => Val::Int(s.start_unix_ns as i64),
            Field::End => Val::Int(s.end_unix_ns as i64),
            Field::Duration => Val::Int(s.duration_ns() as i64),
            Field::TraceId => Val::Bytes(&s.trace_id.0),
            Field::SpanId => Val::Bytes(&s.span_id.0),
            Field::ParentSpanId => s
                .parent_span_id
                .as_ref()
                .map_or(Val::Nil, |p| Val::Bytes(&p.0)),
            Field::TraceIdString => Val::Str(Cow::Owned(hex(&s.trace_id.0))),
            Field::SpanIdString => Val::Str(Cow::Owned(hex(&s.span_id.0))),
            Field::ParentSpanIdString => {
                s.parent_span_id.map_or(Val::Str(Cow::Borrowed("")), |p| {
                    Val::Str(Cow::Owned(hex(&p.0)))
                })
            }
            Field::Pid => opt_int(s.task.map(|t| t.pid as i64)),
            Field::Tid => opt_int(s.task.map(|t| t.tid as i64)),
            Field::Cpu => opt_int(s.task.map(|t| t.cpu as i64)),
            Field::Executable => match &s.task {
                Some(t) => Val::Str(t.comm.as_str()),
                None => Val::Nil,
            },
            Field::ReturnValue => opt_int(s.return_value),
            _ => Val::Nil,
        },
        Record::Flow(fl) => match f {
            Field::Start => Val::Int(fl.first_seen_unix_ns as i64),
            Field::End => Val::Int(fl.last_seen_unix_ns as i64),
            Field::Duration => {
                Val::Int(fl.last_seen_unix_ns.saturating_sub(fl.first_seen_unix_ns) as i64)
            }
            Field::SrcAddr if fl.is_ip() => Val::Str(Cow::Owned(fl.src_addr.to_string())),
            Field::DstAddr if fl.is_ip() => Val::Str(Cow::Owned(fl.dst_addr.to_string())),
            Field::SrcPort => Val::Int(fl.src_port as i64),
            Field::DstPort => Val::Int(fl.dst_port as i64),
            Field::Transport => Val::Str(fl.transport.as_str()),
            Field::NetworkType => Val::Str(Cow::Borrowed(fl.network_type())),
            Field::Interface => fl.interface.as_ref().map_or(Val::Nil, Val::Arc),
            Field::Direction => Val::Str(Cow::Borrowed(fl.direction.as_str())),
            Field::Packets => Val::Int(fl.packets as i64),
            Field::Bytes => Val::Int(fl.bytes as i64),
            _ => Val::Nil,
        },
        Record::Log(l) => log_field(f, l),
        Record::Metric(m) => metric_field(f, m),
        Record::DataPoint(m, i) => point_field(f, m, i),
    }
}

/// No attributes (a data point index past the end, a metric's type this version cannot read).
static NO_ATTRIBUTES: Attributes = Attributes::new();

fn attrs<'a>(map: Map, env: &Env<'a>) -> &'a Attributes {
    match map {
        Map::Resource => &env.resource.attributes,
        Map::Record => match env.record {
            Record::Span(s) => &s.attributes,
            Record::Flow(f) => &f.attributes,
            Record::Log(l) => &l.attributes,
            // Refused at compile time: a metric's attributes are its points'.
            Record::Metric(_) => &NO_ATTRIBUTES,
            Record::DataPoint(m, i) => point(m, i).map_or(&NO_ATTRIBUTES, |p| p.attributes()),
        },
    }
}

/// One data point of any type, read.
enum Point<'a> {
    Number(&'a oxeye_api::NumberPoint),
    Histogram(&'a oxeye_api::HistogramPoint),
    Exponential(&'a oxeye_api::ExponentialHistogramPoint),
    Summary(&'a oxeye_api::SummaryPoint),
}

impl<'a> Point<'a> {
    fn attributes(&self) -> &'a Attributes {
        match self {
            Point::Number(p) => &p.attributes,
            Point::Histogram(p) => &p.attributes,
            Point::Exponential(p) => &p.attributes,
            Point::Summary(p) => &p.attributes,
        }
    }

    fn times(&self) -> (u64, u64) {
        match self {
            Point::Number(p) => (p.start_unix_ns, p.time_unix_ns),
            Point::Histogram(p) => (p.start_unix_ns, p.time_unix_ns),
            Point::Exponential(p) => (p.start_unix_ns, p.time_unix_ns),
            Point::Summary(p) => (p.start_unix_ns, p.time_unix_ns),
        }
    }
}

/// Point `i` of metric `m`.
fn point(m: &Metric, i: usize) -> Option<Point<'_>> {
    Some(match &m.data {
        MetricData::Gauge(p) | MetricData::Sum(Sum { points: p, .. }) => Point::Number(p.get(i)?),
        MetricData::Histogram(h) => Point::Histogram(h.points.get(i)?),
        MetricData::ExponentialHistogram(h) => Point::Exponential(h.points.get(i)?),
        MetricData::Summary(p) => Point::Summary(p.get(i)?),
        _ => return None,
    })
}

/// The attributes of point `i` of metric `m`, to change.
fn point_attrs_mut(m: &mut Metric, i: usize) -> Option<&mut Attributes> {
    Some(match &mut m.data {
        MetricData::Gauge(p) | MetricData::Sum(Sum { points: p, .. }) => {
            &mut p.get_mut(i)?.attributes
        }
        MetricData::Histogram(h) => &mut h.points.get_mut(i)?.attributes,
        MetricData::ExponentialHistogram(h) => &mut h.points.get_mut(i)?.attributes,
        MetricData::Summary(p) => &mut p.get_mut(i)?.attributes,
        _ => return None,
    })
}

/// OTTL's metric type numbers (`METRIC_DATA_TYPE_*`).
fn metric_type(d: &MetricData) -> i64 {
    match d {
        MetricData::Gauge(_) => 1,
        MetricData::Sum(_) => 2,
        MetricData::Histogram(_) => 3,
        MetricData::ExponentialHistogram(_) => 4,
        MetricData::Summary(_) => 5,
        _ => 0,
    }
}

fn opt_text(s: &Option<Arc<str>>) -> Val<'_> {
    s.as_ref().map_or(Val::Str(Cow::Borrowed("")), Val::Arc)
}

fn log_field(f: Field, l: &LogRecord) -> Val<'_> {
    match f {
        Field::Body => l.body.as_ref().map_or(Val::Nil, Val::Value),
        Field::SeverityNumber => Val::Int(l.severity_number.into()),
        Field::SeverityText => opt_text(&l.severity_text),
        Field::EventName => opt_text(&l.event_name),
        Field::Time => Val::Int(l.time_unix_ns as i64),
        Field::ObservedTime => Val::Int(l.observed_time_unix_ns as i64),
        Field::Flags => Val::Int(l.flags.into()),
        Field::TraceId => l.trace_id.as_ref().map_or(Val::Nil, |t| Val::Bytes(&t.0)),
        Field::SpanId => l.span_id.as_ref().map_or(Val::Nil, |s| Val::Bytes(&s.0)),
        Field::TraceIdString => {
            Val::Str(Cow::Owned(l.trace_id.map_or(String::new(), |t| hex(&t.0))))
        }
        Field::SpanIdString => Val::Str(Cow::Owned(l.span_id.map_or(String::new(), |s| hex(&s.0)))),
        _ => Val::Nil,
    }
}

fn metric_field(f: Field, m: &Metric) -> Val<'_> {
    match f {
        Field::Name | Field::MetricName => Val::Arc(&m.name),
        Field::Description => opt_text(&m.description),
        Field::Unit | Field::MetricUnit => opt_text(&m.unit),
        Field::MetricType => Val::Int(metric_type(&m.data)),
        Field::Temporality => m
            .data
            .temporality()
            .map_or(Val::Nil, |t| Val::Int(t.as_i32().into())),
        Field::Monotonic => match &m.data {
            MetricData::Sum(s) => Val::Bool(s.monotonic),
            _ => Val::Bool(false),
        },
        _ => Val::Nil,
    }
}

fn point_field(f: Field, m: &Metric, i: usize) -> Val<'_> {
    if matches!(f, Field::MetricName | Field::MetricUnit | Field::MetricType) {
        return metric_field(f, m);
    }
    let Some(p) = point(m, i) else {
        return Val::Nil;
    };
    let float = |v: Option<f64>| v.map_or(Val::Nil, Val::F64);
    match (f, &p) {
        (Field::Start, _) => Val::Int(p.times().0 as i64),
        (Field::Time, _) => Val::Int(p.times().1 as i64),
        (Field::ValueInt, Point::Number(n)) => match n.value {
            Some(Number::Int(v)) => Val::Int(v),
            _ => Val::Nil,
        },
        (Field::ValueDouble, Point::Number(n)) => match n.value {
            Some(Number::F64(v)) => Val::F64(v),
            _ => Val::Nil,
        },
        (Field::Count, Point::Histogram(h)) => Val::Int(h.count as i64),
        (Field::Count, Point::Exponential(h)) => Val::Int(h.count as i64),
        (Field::Count, Point::Summary(s)) => Val::Int(s.count as i64),
        (Field::Sum, Point::Histogram(h)) => float(h.sum),
        (Field::Sum, Point::Exponential(h)) => float(h.sum),
        (Field::Sum, Point::Summary(s)) => Val::F64(s.sum),
        (Field::Flags, Point::Number(n)) => Val::Int(n.flags.into()),
        (Field::Flags, Point::Histogram(h)) => Val::Int(h.flags.into()),
        (Field::Flags, Point::Exponential(h)) => Val::Int(h.flags.into()),
        (Field::Flags, Point::Summary(s)) => Val::Int(s.flags.into()),
        _ => Val::Nil,
    }
}

fn eval<'a>(e: &'a Expr, env: &Env<'a>) -> Result<Val<'a>, EvalError> {
    Ok(match e {
        Expr::Lit(v) => Val::Value(v),
        Expr::Nil => Val::Nil,
        Expr::Field(f) => field(*f, env.record),
        Expr::Attr(m, k) => attrs(*m, env).get(k).map_or(Val::Nil, Val::Value),
        Expr::Attrs(m) => Val::Map(attrs(*m, env)),
        Expr::List(items) => Val::List(
            items
                .iter()
                .map(|i| eval(i, env))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(_)
        | Expr::And(_)
        | Expr::Or(_)
        | Expr::Cmp(..)
        | Expr::AttrCmp(..)
        | Expr::FieldCmp(..) => Val::Bool(truth(e, env)?),
        Expr::Math(op, l, r) => math(*op, &eval(l, env)?, &eval(r, env)?)?,
        Expr::Call(c) => call(c, env)?,
    })
}

/// Evaluates a condition.
pub(crate) fn truth(e: &Expr, env: &Env<'_>) -> Result<bool, EvalError> {
    match e {
        Expr::And(items) => {
            for i in items {
                if !truth(i, env)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Expr::Or(items) => {
            for i in items {
                if truth(i, env)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Expr::Not(inner) => Ok(!truth(inner, env)?),
        Expr::AttrCmp(op, m, k, lit) => {
            let v = attrs(*m, env).get(k).map_or(View::Nil, value_view);
            Ok(compare(*op, v, literal_view(lit)))
        }
        Expr::FieldCmp(op, f, lit) => Ok(compare(
            *op,
            field(*f, env.record).view(),
            literal_view(lit),
        )),
        Expr::Cmp(op, l, r) => Ok(compare(*op, eval(l, env)?.view(), eval(r, env)?.view())),
        other => match eval(other, env)?.view() {
            View::Bool(b) => Ok(b),
            v => Err(EvalError(format!(
                "expected true or false, got {}",
                v.kind()
            ))),
        },
    }
}

fn compare(op: CmpOp, l: View<'_>, r: View<'_>) -> bool {
    let ord = match (l, r) {
        (View::Int(a), View::Int(b)) => Some(a.cmp(&b)),
        (View::Int(a), View::F64(b)) => (a as f64).partial_cmp(&b),
        (View::F64(a), View::Int(b)) => a.partial_cmp(&(b as f64)),
        (View::F64(a), View::F64(b)) => a.partial_cmp(&b),
        (View::Str(a), View::Str(b)) => Some(a.cmp(b)),
        (View::Bytes(a), View::Bytes(b)) => Some(a.cmp(b)),
        (View::Nil, View::Nil) => Some(Ordering::Equal),
        // Booleans are equal or not, never ordered.
        (View::Bool(a), View::Bool(b)) => {
            return match op {
                CmpOp::Eq => a == b,
                CmpOp::Ne => a != b,
                _ => false,
            }
        }
        // Different types: never equal, never ordered (as in OTTL).
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Ne, None) => true,
        (_, None) => false,
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
    }
}

fn math<'a>(op: MathOp, l: &Val<'_>, r: &Val<'_>) -> Result<Val<'a>, EvalError> {
    let float = |a: f64, b: f64| match op {
        MathOp::Add => a + b,
        MathOp::Sub => a - b,
        MathOp::Mul => a * b,
        MathOp::Div => a / b,
    };
    Ok(match (l.view(), r.view()) {
        (View::Int(a), View::Int(b)) => {
            let v = match op {
                MathOp::Add => a.checked_add(b),
                MathOp::Sub => a.checked_sub(b),
                MathOp::Mul => a.checked_mul(b),
                MathOp::Div if b == 0 => return Err(EvalError("division by zero".into())),
                MathOp::Div => a.checked_div(b),
            };
            Val::Int(v.ok_or_else(|| EvalError("integer overflow".into()))?)
        }
        (View::Int(a), View::F64(b)) => Val::F64(float(a as f64, b)),
        (View::F64(a), View::Int(b)) => Val::F64(float(a, b as f64)),
        (View::F64(a), View::F64(b)) => Val::F64(float(a, b)),
        (a, b) => {
            return Err(EvalError(format!(
                "arithmetic needs numbers, got {} and {}",
                a.kind(),
                b.kind()
            )))
        }
    })
}

fn text_of<'v>(v: &'v Val<'_>) -> Result<Cow<'v, str>, EvalError> {
    let view = v.view();
    match view {
        View::List(_) | View::Values(_) | View::Map(_) => {
            Err(EvalError(format!("expected a string, got {}", view.kind())))
        }
        View::Str(s) => Ok(Cow::Borrowed(s)),
        other => Ok(Cow::Owned(other.text().unwrap_or_default().into_owned())),
    }
}

fn call<'a>(c: &'a Call, env: &Env<'a>) -> Result<Val<'a>, EvalError> {
    Ok(match c {
        Call::Concat(list, sep) => {
            let list = eval(list, env)?;
            let sep = eval(sep, env)?;
            let sep = text_of(&sep)?;
            let View::List(items) = list.view() else {
                return Err(EvalError("Concat takes a list".into()));
            };
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&sep);
                }
                out.push_str(&text_of(item)?);
            }
            Val::Str(Cow::Owned(out))
        }
        Call::IsMatch(target, re) => {
            let t = eval(target, env)?;
            match t.view() {
                View::Nil => Val::Bool(false),
                _ => Val::Bool(re.is_match(&text_of(&t)?)),
            }
        }
        Call::HasPrefix(target, affix) | Call::HasSuffix(target, affix) => {
            let t = eval(target, env)?;
            let a = eval(affix, env)?;
            match (t.view(), a.view()) {
                (View::Str(t), View::Str(a)) => Val::Bool(if matches!(c, Call::HasPrefix(..)) {
                    t.starts_with(a)
                } else {
                    t.ends_with(a)
                }),
                (View::Nil, _) => Val::Bool(false),
                (t, _) => return Err(EvalError(format!("expected a string, got {}", t.kind()))),
            }
        }
        Call::Len(target) => {
            let t = eval(target, env)?;
            Val::Int(match t.view() {
                View::Str(s) => s.chars().count() as i64,
                View::Bytes(b) => b.len() as i64,
                View::List(l) => l.len() as i64,
                View::Values(l) => l.len() as i64,
                View::Map(m) => m.len() as i64,
                other => return Err(EvalError(format!("Len of {}", other.kind()))),
            })
        }
        Call::Int(v) => {
            let v = eval(v, env)?;
            match v.view() {
                View::Int(i) => Val::Int(i),
                View::F64(f) if f.is_finite() => Val::Int(f.trunc() as i64),
                View::Bool(b) => Val::Int(b as i64),
                View::Str(s) => s.trim().parse().map_or(Val::Nil, Val::Int),
                _ => Val::Nil,
            }
        }
        Call::Double(v) => {
            let v = eval(v, env)?;
            match v.view() {
                View::Int(i) => Val::F64(i as f64),
                View::F64(f) => Val::F64(f),
                View::Bool(b) => Val::F64(b as i64 as f64),
                View::Str(s) => s.trim().parse().map_or(Val::Nil, Val::F64),
                _ => Val::Nil,
            }
        }
        Call::String(v) => {
            let v = eval(v, env)?;
            Val::Str(Cow::Owned(text_of(&v)?.into_owned()))
        }
        Call::ToLowerCase(v) | Call::ToUpperCase(v) => {
            let v = eval(v, env)?;
            let s = text_of(&v)?;
            Val::Str(Cow::Owned(if matches!(c, Call::ToLowerCase(_)) {
                s.to_lowercase()
            } else {
                s.to_uppercase()
            }))
        }
        Call::Substring(t, start, len) => {
            let t = eval(t, env)?;
            let (start, len) = (eval(start, env)?, eval(len, env)?);
            let (View::Int(start), View::Int(len)) = (start.view(), len.view()) else {
                return Err(EvalError("Substring takes int start and length".into()));
            };
            let s = text_of(&t)?;
            let (start, len) = (start.max(0) as usize, len.max(0) as usize);
            match s.get(start..start.saturating_add(len)) {
                Some(sub) => Val::Str(Cow::Owned(sub.to_string())),
                None => {
                    return Err(EvalError(format!(
                        "Substring({start}, {len}) is outside a string of {} bytes",
                        s.len()
                    )))
                }
            }
        }
    })
}

fn attrs_mut<'r>(
    map: Map,
    record: &'r mut RecordMut<'_>,
    resource: &'r mut ResourceRef<'_>,
) -> Result<&'r mut Attributes, EvalError> {
    match map {
        Map::Record => Ok(match record {
            RecordMut::Span(s) => &mut s.attributes,
            RecordMut::Flow(f) => &mut f.attributes,
            RecordMut::Log(l) => &mut l.attributes,
            RecordMut::Metric(_) => {
                return Err(EvalError(
                    "a metric has no attributes, its data points do".into(),
                ))
            }
            RecordMut::DataPoint(m, i) => {
                let name = Arc::clone(&m.name);
                point_attrs_mut(m, *i)
                    .ok_or_else(|| EvalError(format!("metric `{name}` has no data point {i}")))?
            }
        }),
        Map::Resource => match resource {
            ResourceRef::Mut(r) => Ok(&mut r.attributes),
            ResourceRef::Shared(_) => Err(EvalError(
                "resource attributes are read-only here (the caller passed a shared resource)"
                    .into(),
            )),
        },
    }
}

fn int(v: &Value) -> Result<i64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(EvalError(format!("expected an int, got {other:?}"))),
    }
}

fn text(v: Value) -> Result<Arc<str>, EvalError> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(EvalError(format!("expected a string, got {other:?}"))),
    }
}

fn time(v: &Value) -> Result<u64, EvalError> {
    u64::try_from(int(v)?).map_err(|_| EvalError("timestamps are not negative".into()))
}

/// Sets a field of a log record (compile time checked it is settable).
fn set_log_field(f: Field, l: &mut LogRecord, v: Value) -> Result<(), EvalError> {
    match f {
        Field::Body => l.body = Some(v),
        Field::SeverityNumber => {
            l.severity_number = i32::try_from(int(&v)?)
                .ok()
                .filter(|n| (0..=24).contains(n))
                .ok_or_else(|| EvalError(format!("{v:?} is not a severity number (0-24)")))?
        }
        Field::SeverityText => l.severity_text = Some(text(v)?).filter(|t| !t.is_empty()),
        Field::EventName => l.event_name = Some(text(v)?).filter(|t| !t.is_empty()),
        Field::Time => l.time_unix_ns = time(&v)?,
        Field::ObservedTime => l.observed_time_unix_ns = time(&v)?,
        other => return Err(EvalError(format!("{other:?} is read-only"))),
    }
    Ok(())
}

/// Sets a field of a metric.
fn set_metric_field(f: Field, m: &mut Metric, v: Value) -> Result<(), EvalError> {
    match f {
        Field::Name => m.name = text(v)?,
        Field::Description => m.description = Some(text(v)?).filter(|t| !t.is_empty()),
        Field::Unit => m.unit = Some(text(v)?).filter(|t| !t.is_empty()),
        other => return Err(EvalError(format!("{other:?} is read-only"))),
    }
    Ok(())
}

fn set_field(f: Field, record: &mut RecordMut<'_>, v: Value) -> Result<(), EvalError> {
    let s = match record {
        RecordMut::Span(s) => s,
        RecordMut::Log(l) => return set_log_field(f, l, v),
        RecordMut::Metric(m) => return set_metric_field(f, m, v),
        _ => return Err(EvalError("this record's fields are read-only".into())),
    };
    match f {
        Field::Name | Field::StatusMessage => {
            let Value::Str(text) = v else {
                return Err(EvalError(format!("expected a string, got {v:?}")));
            };
            if f == Field::Name {
                s.name = text;
            } else {
                s.status_message = (!text.is_empty()).then_some(text);
            }
        }
        Field::Kind => {
            s.kind = match int(&v)? {
                1 => SpanKind::Internal,
                2 => SpanKind::Server,
                3 => SpanKind::Client,
                4 => SpanKind::Producer,
                5 => SpanKind::Consumer,
                other => return Err(EvalError(format!("{other} is not a span kind"))),
            }
        }
        Field::StatusCode => {
            s.status = match int(&v)? {
                0 => StatusCode::Unset,
                1 => StatusCode::Ok,
                2 => StatusCode::Error,
                other => return Err(EvalError(format!("{other} is not a status code"))),
            }
        }
        Field::Start | Field::End => {
            let t = u64::try_from(int(&v)?)
                .map_err(|_| EvalError("timestamps are not negative".into()))?;
            if f == Field::Start {
                s.start_unix_ns = t;
            } else {
                s.end_unix_ns = t;
            }
        }
        other => return Err(EvalError(format!("{other:?} is read-only"))),
    }
    Ok(())
}

fn read_target<'a>(t: &'a Target, env: &Env<'a>) -> Val<'a> {
    match t {
        Target::Field(f) => field(*f, env.record),
        Target::Attr(m, k) => attrs(*m, env).get(k).map_or(Val::Nil, Val::Value),
    }
}

fn write_target(
    t: &Target,
    v: Value,
    record: &mut RecordMut<'_>,
    resource: &mut ResourceRef<'_>,
) -> Result<(), EvalError> {
    match t {
        Target::Field(f) => set_field(*f, record, v),
        Target::Attr(m, k) => {
            attrs_mut(*m, record, resource)?.set(Arc::clone(k), v);
            Ok(())
        }
    }
}

/// Runs an editor on a record whose condition held.
pub(crate) fn edit(
    editor: &Editor,
    record: &mut RecordMut<'_>,
    resource: &mut ResourceRef<'_>,
) -> Result<Outcome, EvalError> {
    match editor {
        Editor::Set(target, value) => {
            let v = {
                let env = Env {
                    record: record.as_ref(),
                    resource: resource.get(),
                };
                eval(value, &env)?.into_value()?
            };
            if let Some(v) = v {
                write_target(target, v, record, resource)?;
            }
        }
        Editor::DeleteKey(map, key) => {
            let key = {
                let env = Env {
                    record: record.as_ref(),
                    resource: resource.get(),
                };
                text_of(&eval(key, &env)?)?.into_owned()
            };
            attrs_mut(*map, record, resource)?.remove(&key);
        }
        Editor::DeleteMatchingKeys(map, re) => {
            attrs_mut(*map, record, resource)?.retain(|k, _| !re.is_match(k))
        }
        Editor::KeepKeys(map, keys) => {
            attrs_mut(*map, record, resource)?.retain(|k, _| keys.iter().any(|x| &**x == k))
        }
        Editor::KeepMatchingKeys(map, re) => {
            attrs_mut(*map, record, resource)?.retain(|k, _| re.is_match(k))
        }
        Editor::ReplacePattern(target, re, with) => {
            let replaced = {
                let env = Env {
                    record: record.as_ref(),
                    resource: resource.get(),
                };
                match read_target(target, &env).view() {
                    View::Str(s) => match re.replace_all(s, with.as_str()) {
                        Cow::Borrowed(_) => None,
                        Cow::Owned(new) => Some(new),
                    },
                    _ => None,
                }
            };
            if let Some(new) = replaced {
                write_target(target, Value::Str(new.into()), record, resource)?;
            }
        }
        Editor::ReplaceAllPatterns(map, keys, re, with) => {
            let attrs = attrs_mut(*map, record, resource)?;
            if *keys {
                let renamed: Vec<(Arc<str>, Value)> = attrs
                    .iter()
                    .map(|(k, v)| {
                        (
                            Arc::from(re.replace_all(k, with.as_str()).as_ref()),
                            v.clone(),
                        )
                    })
                    .collect();
                *attrs = renamed.into_iter().collect();
            } else {
                attrs.retain(|_, v| {
                    if let Value::Str(s) = v {
                        if let Cow::Owned(new) = re.replace_all(s, with.as_str()) {
                            *v = Value::Str(new.into());
                        }
                    }
                    true
                });
            }
        }
        Editor::TruncateAll(map, limit) => attrs_mut(*map, record, resource)?.retain(|_, v| {
            if let Value::Str(s) = v {
                if s.len() > *limit {
                    let mut end = *limit;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    *v = Value::Str(s[..end].into());
                }
            }
            true
        }),
        Editor::Drop => return Ok(Outcome::Drop),
    }
    Ok(Outcome::Applied)
}
