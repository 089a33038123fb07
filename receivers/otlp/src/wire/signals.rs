//! The checking walk for metrics and logs: whether a request can be kept as it came and
//! forwarded, without building its records — every field known, every string UTF-8, every
//! data point and record one [`crate::convert`] accepts (histogram buckets that add up, finite
//! sums, ids of the right length). It refuses more, never less: whatever it passes, prost
//! decodes and `convert` takes whole (the `otlp_metrics_logs` fuzz target holds it to that).
//! Anything else — an unknown field, two data fields in one metric, a point `convert` would
//! refuse — leaves the request to decoding, which says what it refused.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_api::{Batch, EncodedLogs, EncodedMetrics, Records, Resource, Scope};
use oxeye_otlp_wire::{I32, I64, LEN, VARINT};
use prost::Message;

use super::check::{any_value, key_value, str};
use super::decode::{self, Ctx};
use super::reader::Reader;
use crate::convert::{self, Converted};

/// Calls `f` for each field of the message in `buf`; `None` when it cannot be read or `f`
/// refuses a field.
#[inline(always)]
fn each<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u32, u8, &mut Reader<'a>) -> Option<()>,
) -> Option<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        let (field, wire) = r.key().ok()?;
        f(field, wire, &mut r)?;
    }
    Some(())
}

fn len<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    r.bytes().ok()
}

fn double(r: &mut Reader<'_>) -> Option<f64> {
    r.fixed64().ok().map(f64::from_bits)
}

/// A request split into one batch per `Resource*` field (the bytes of that field, a request of
/// its own), with only the resources decoded; `walk` checks one and counts its records.
fn split<'a>(
    buf: &'a bytes::Bytes,
    walk: impl Fn(&mut Ctx<'a>, &'a [u8]) -> Option<(Resource, usize)>,
    wrap: impl Fn(bytes::Bytes, usize) -> Records,
) -> Option<Converted> {
    let mut ctx = Ctx::default();
    let mut out = Converted::default();
    let mut r = Reader::new(buf);
    while r.more() {
        let start = r.pos;
        let (field, wire) = r.key().ok()?;
        if (field, wire) != (1, LEN) {
            return None;
        }
        let (resource, n) = walk(&mut ctx, len(&mut r)?)?;
        if n > 0 {
            out.accepted += n as u64;
            out.batches.push(Batch {
                resource: Arc::new(resource),
                records: wrap(buf.slice(start..r.pos), n),
            });
        }
    }
    out.held_bytes = buf.len() as u64;
    Some(out)
}

/// `ResourceMetrics` / `ResourceLogs` (same shape): the resource, and the records `scoped`
/// counts in each scope field.
fn resource_of<'a>(
    ctx: &mut Ctx<'a>,
    buf: &'a [u8],
    scoped: impl Fn(&mut Ctx<'a>, &'a [u8]) -> Option<usize>,
) -> Option<(Resource, usize)> {
    let mut res = Resource::default();
    let mut n = 0usize;
    each(buf, |f, w, r| {
        match (f, w) {
            (1, LEN) => decode::resource(ctx, &mut res, len(r)?).ok()?,
            (2, LEN) => n += scoped(ctx, len(r)?)?,
            (3, LEN) => res.schema_url = decode::optional(len(r)?).ok()?,
            _ => return None,
        }
        Some(())
    })?;
    Some((res, n))
}

/// `ScopeMetrics` / `ScopeLogs`: the scope, and what `record` counts in each field 2.
fn scope_of<'a>(
    ctx: &mut Ctx<'a>,
    buf: &'a [u8],
    record: impl Fn(&'a [u8]) -> Option<usize>,
) -> Option<usize> {
    let mut n = 0;
    each(buf, |f, w, r| {
        match (f, w) {
            (1, LEN) => decode::scope(ctx, &mut Scope::default(), len(r)?).ok()?,
            (2, LEN) => n += record(len(r)?)?,
            (3, LEN) => str(len(r)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(n)
}

/// An `ExportMetricsServiceRequest` kept as received, when every metric in it is clean.
pub fn encoded_metrics(buf: &bytes::Bytes) -> Option<Converted> {
    split(
        buf,
        |ctx, b| resource_of(ctx, b, |ctx, b| scope_of(ctx, b, metric)),
        |bytes, n| Records::EncodedMetrics(EncodedMetrics::new(bytes, n, decode_metrics)),
    )
}

/// An `ExportLogsServiceRequest` kept as received, when every record in it is clean.
pub fn encoded_logs(buf: &bytes::Bytes) -> Option<Converted> {
    split(
        buf,
        |ctx, b| resource_of(ctx, b, |ctx, b| scope_of(ctx, b, log_record)),
        |bytes, n| Records::EncodedLogs(EncodedLogs::new(bytes, n, decode_logs)),
    )
}

/// The decoder behind [`EncodedMetrics`]: the metrics of a request [`encoded_metrics`] passed.
fn decode_metrics(buf: &[u8]) -> Result<Vec<oxeye_api::Metric>, oxeye_api::BoxError> {
    let c = convert::metrics::request(ExportMetricsServiceRequest::decode(buf)?);
    if let Some(why) = c.first_error {
        return Err(why.into());
    }
    Ok(c.batches
        .into_iter()
        .flat_map(|b| match b.records {
            Records::Metrics(m) => m,
            _ => Vec::new(),
        })
        .collect())
}

/// The decoder behind [`EncodedLogs`].
fn decode_logs(buf: &[u8]) -> Result<Vec<oxeye_api::LogRecord>, oxeye_api::BoxError> {
    let c = convert::logs::request(ExportLogsServiceRequest::decode(buf)?);
    if let Some(why) = c.first_error {
        return Err(why.into());
    }
    Ok(c.batches
        .into_iter()
        .flat_map(|b| match b.records {
            Records::Logs(l) => l,
            _ => Vec::new(),
        })
        .collect())
}

/// An id: empty, or `n` bytes.
fn id_len(b: &[u8], n: usize) -> Option<()> {
    (b.is_empty() || b.len() == n).then_some(())
}

/// A `LogRecord` `convert` takes: 1.
fn log_record(buf: &[u8]) -> Option<usize> {
    each(buf, |f, w, r| {
        match (f, w) {
            (1 | 11, I64) => drop(r.fixed64().ok()?),
            (2 | 7, VARINT) => drop(r.varint().ok()?),
            (3 | 12, LEN) => str(len(r)?)?,
            (5, LEN) => any_value(len(r)?, 0)?,
            (6, LEN) => key_value(len(r)?, 0)?,
            (8, I32) => drop(r.fixed32().ok()?),
            (9, LEN) => id_len(len(r)?, 16)?,
            (10, LEN) => id_len(len(r)?, 8)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(1)
}

/// A `Metric` whose points `convert` takes: how many.
fn metric(buf: &[u8]) -> Option<usize> {
    let mut points = 0;
    let mut data = 0;
    each(buf, |f, w, r| {
        match (f, w) {
            (1..=3, LEN) => str(len(r)?)?,
            (12, LEN) => key_value(len(r)?, 0)?,
            (5 | 7 | 9 | 10 | 11, LEN) => {
                // Two data fields: prost keeps the last (or merges); left to decoding.
                data += 1;
                if data > 1 {
                    return None;
                }
                points = series(f, len(r)?)?;
            }
            _ => return None,
        }
        Some(())
    })?;
    Some(points)
}

/// A `Gauge` (5), `Sum` (7), `Histogram` (9), `ExponentialHistogram` (10) or `Summary` (11):
/// how many points, all clean.
fn series(kind: u32, buf: &[u8]) -> Option<usize> {
    let mut n = 0;
    each(buf, |f, w, r| {
        match (f, w) {
            (1, LEN) => {
                let p = len(r)?;
                match kind {
                    5 | 7 => number_point(p)?,
                    9 => histogram_point(p)?,
                    10 => exponential_point(p)?,
                    _ => summary_point(p)?,
                }
                n += 1;
            }
            // Temporality (sums and histograms), monotonic (sums).
            (2, VARINT) if kind != 5 && kind != 11 => drop(r.varint().ok()?),
            (3, VARINT) if kind == 7 => drop(r.varint().ok()?),
            _ => return None,
        }
        Some(())
    })?;
    Some(n)
}

fn exemplar(buf: &[u8]) -> Option<()> {
    each(buf, |f, w, r| {
        match (f, w) {
            (7, LEN) => key_value(len(r)?, 0)?,
            (2 | 3 | 6, I64) => drop(r.fixed64().ok()?),
            (4, LEN) => id_len(len(r)?, 8)?,
            (5, LEN) => id_len(len(r)?, 16)?,
            _ => return None,
        }
        Some(())
    })
}

fn number_point(buf: &[u8]) -> Option<()> {
    each(buf, |f, w, r| {
        match (f, w) {
            (7, LEN) => key_value(len(r)?, 0)?,
            (2 | 3 | 4 | 6, I64) => drop(r.fixed64().ok()?),
            (5, LEN) => exemplar(len(r)?)?,
            (8, VARINT) => drop(r.varint().ok()?),
            _ => return None,
        }
        Some(())
    })
}

/// A finite value, or none.
fn finite(v: Option<f64>) -> Option<()> {
    v.is_none_or(f64::is_finite).then_some(())
}

/// Packed (or not) repeated fixed64 / double values of field `f`, each passed to `each`.
fn fixed64s(w: u8, r: &mut Reader<'_>, mut each: impl FnMut(u64)) -> Option<()> {
    match w {
        I64 => each(r.fixed64().ok()?),
        LEN => {
            let b = len(r)?;
            if b.len() % 8 != 0 {
                return None;
            }
            b.chunks_exact(8)
                .for_each(|c| each(u64::from_le_bytes(c.try_into().unwrap_or_default())));
        }
        _ => return None,
    }
    Some(())
}

/// Packed (or not) repeated varints.
fn varints(w: u8, r: &mut Reader<'_>, mut each: impl FnMut(u64)) -> Option<()> {
    match w {
        VARINT => each(r.varint().ok()?),
        LEN => {
            let mut inner = Reader::new(len(r)?);
            while inner.more() {
                each(inner.varint().ok()?);
            }
        }
        _ => return None,
    }
    Some(())
}

/// The rules of `Metric::check` for one explicit-bucket point.
fn histogram_point(buf: &[u8]) -> Option<()> {
    let (mut count, mut buckets, mut n_buckets) = (0u64, 0u64, 0usize);
    let (mut n_bounds, mut last_bound, mut bounds_ok) = (0usize, f64::NEG_INFINITY, true);
    let (mut sum, mut min, mut max) = (None, None, None);
    each(buf, |f, w, r| {
        match (f, w) {
            (9, LEN) => key_value(len(r)?, 0)?,
            (2 | 3, I64) => drop(r.fixed64().ok()?),
            (4, I64) => count = r.fixed64().ok()?,
            (5, I64) => sum = Some(double(r)?),
            (6, I64 | LEN) => fixed64s(w, r, |c| {
                buckets = buckets.saturating_add(c);
                n_buckets += 1;
            })?,
            (7, I64 | LEN) => fixed64s(w, r, |b| {
                let b = f64::from_bits(b);
                bounds_ok &= !b.is_nan() && (n_bounds == 0 || b > last_bound);
                last_bound = b;
                n_bounds += 1;
            })?,
            (8, LEN) => exemplar(len(r)?)?,
            (10, VARINT) => drop(r.varint().ok()?),
            (11, I64) => min = Some(double(r)?),
            (12, I64) => max = Some(double(r)?),
            _ => return None,
        }
        Some(())
    })?;
    let buckets_ok = n_buckets == 0 || (n_buckets == n_bounds + 1 && buckets == count);
    (buckets_ok && bounds_ok).then_some(())?;
    finite(sum)?;
    finite(min)?;
    finite(max)
}

fn bucket_sum(buf: &[u8]) -> Option<u64> {
    let mut total = 0u64;
    each(buf, |f, w, r| {
        match (f, w) {
            (1, VARINT) => drop(r.varint().ok()?),
            (2, VARINT | LEN) => varints(w, r, |c| total = total.saturating_add(c))?,
            _ => return None,
        }
        Some(())
    })?;
    Some(total)
}

/// The rules of `Metric::check` for one exponential-histogram point.
fn exponential_point(buf: &[u8]) -> Option<()> {
    let (mut count, mut zero, mut positive, mut negative) = (0u64, 0u64, 0u64, 0u64);
    let (mut sum, mut min, mut max) = (None, None, None);
    each(buf, |f, w, r| {
        match (f, w) {
            (1, LEN) => key_value(len(r)?, 0)?,
            (2 | 3 | 14, I64) => drop(r.fixed64().ok()?),
            (4, I64) => count = r.fixed64().ok()?,
            (5, I64) => sum = Some(double(r)?),
            (6 | 10, VARINT) => drop(r.varint().ok()?),
            (7, I64) => zero = r.fixed64().ok()?,
            // A repeated message field merges: its buckets add up.
            (8, LEN) => positive = positive.saturating_add(bucket_sum(len(r)?)?),
            (9, LEN) => negative = negative.saturating_add(bucket_sum(len(r)?)?),
            (11, LEN) => exemplar(len(r)?)?,
            (12, I64) => min = Some(double(r)?),
            (13, I64) => max = Some(double(r)?),
            _ => return None,
        }
        Some(())
    })?;
    (positive.saturating_add(negative).saturating_add(zero) == count).then_some(())?;
    finite(sum)?;
    finite(min)?;
    finite(max)
}

/// The rules of `Metric::check` for one summary point.
fn summary_point(buf: &[u8]) -> Option<()> {
    let mut sum = 0.0;
    each(buf, |f, w, r| {
        match (f, w) {
            (7, LEN) => key_value(len(r)?, 0)?,
            (2..=4, I64) => drop(r.fixed64().ok()?),
            (5, I64) => sum = double(r)?,
            (6, LEN) => each(len(r)?, |f, w, r| {
                match (f, w) {
                    (1, I64) => (0.0..=1.0).contains(&double(r)?).then_some(())?,
                    (2, I64) => drop(r.fixed64().ok()?),
                    _ => return None,
                }
                Some(())
            })?,
            (8, VARINT) => drop(r.varint().ok()?),
            _ => return None,
        }
        Some(())
    })?;
    sum.is_finite().then_some(())
}
