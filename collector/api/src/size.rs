//! Estimated memory of records, for components that bound what they hold (`tail_sampling`'s
//! `max_bytes`, a receiver's in-flight budget).
//!
//! A record's heap is counted with everything it owns: strings, attribute keys and values
//! (nested arrays and maps, bytes), events, links, stacks and frames. A string or value shared
//! through an `Arc` (keys interned per request, values repeated span after span) is counted at
//! its share: its size divided by how many hold it, so a batch's total comes out near what the
//! allocator holds, never many times over. Each heap block adds 16 bytes of allocator header.

use std::mem::size_of;
use std::sync::Arc;

use crate::data::{Attributes, Event, Frame, Link, Span, Value};
use crate::logs::LogRecord;
use crate::metrics::{Exemplar, Metric, MetricData};

/// Allocator header and rounding per heap block (an estimate; mimalloc and glibc are near it).
const BLOCK: usize = 16;

fn vec_bytes(capacity: usize, element: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity * element + BLOCK
    }
}

/// An `Arc`'s allocation (two counters, the data), at the share of one holder.
fn arc_share<T: ?Sized>(a: &Arc<T>, data: usize) -> usize {
    (2 * size_of::<usize>() + data + BLOCK) / Arc::strong_count(a).max(1)
}

fn str_bytes(s: &Arc<str>) -> usize {
    arc_share(s, s.len())
}

fn opt_str_bytes(s: &Option<Arc<str>>) -> usize {
    s.as_ref().map_or(0, str_bytes)
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) => str_bytes(s),
        Value::Bytes(b) => arc_share(b, b.len()),
        Value::Array(a) => arc_share(
            a,
            a.len() * size_of::<Value>() + a.iter().map(value_bytes).sum::<usize>(),
        ),
        Value::Map(m) => arc_share(m, size_of::<Attributes>() + attributes_bytes(m)),
        Value::Int(_) | Value::F64(_) | Value::Bool(_) | Value::Empty => 0,
    }
}

/// Heap bytes of an attribute list: its buffer, keys and values.
pub fn attributes_bytes(a: &Attributes) -> usize {
    // Lists grow by doubling from 4.
    let slots = match a.len() {
        0 => 0,
        n => n.next_power_of_two().max(4),
    };
    vec_bytes(slots, size_of::<(Arc<str>, Value)>())
        + a.entries()
            .iter()
            .map(|(k, v)| str_bytes(k) + value_bytes(v))
            .sum::<usize>()
}

fn event_bytes(e: &Event) -> usize {
    str_bytes(&e.name) + attributes_bytes(&e.attributes)
}

fn link_bytes(l: &Link) -> usize {
    opt_str_bytes(&l.trace_state) + attributes_bytes(&l.attributes)
}

fn frame_bytes(f: &Frame) -> usize {
    opt_str_bytes(&f.function)
        + opt_str_bytes(&f.module)
        + opt_str_bytes(&f.file)
        + opt_str_bytes(&f.build_id)
}

impl Span {
    /// Estimated heap memory this span owns (its own `size_of::<Span>()` not included): see
    /// the module documentation.
    pub fn heap_bytes(&self) -> usize {
        str_bytes(&self.name)
            + opt_str_bytes(&self.status_message)
            + opt_str_bytes(&self.trace_state)
            + attributes_bytes(&self.attributes)
            + vec_bytes(self.args.capacity(), 8)
            + vec_bytes(self.kernel_stack.capacity(), 8)
            + vec_bytes(self.user_stack.capacity(), 8)
            + vec_bytes(self.frames.capacity(), size_of::<Frame>())
            + self.frames.iter().map(frame_bytes).sum::<usize>()
            + vec_bytes(self.events.capacity(), size_of::<Event>())
            + self.events.iter().map(event_bytes).sum::<usize>()
            + vec_bytes(self.links.capacity(), size_of::<Link>())
            + self.links.iter().map(link_bytes).sum::<usize>()
            + self.scope.as_ref().map_or(0, |s| arc_share(s, 64))
    }

    /// [`Span::heap_bytes`] plus the span itself.
    pub fn size_bytes(&self) -> usize {
        size_of::<Span>() + self.heap_bytes()
    }
}

fn exemplars_bytes(e: &Vec<Exemplar>) -> usize {
    vec_bytes(e.capacity(), size_of::<Exemplar>())
        + e.iter()
            .map(|e| attributes_bytes(&e.filtered_attributes))
            .sum::<usize>()
}

/// A vector of data points: its buffer and what each point owns (`own`).
fn points_bytes<P>(points: &Vec<P>, own: impl Fn(&P) -> usize) -> usize {
    vec_bytes(points.capacity(), size_of::<P>()) + points.iter().map(own).sum::<usize>()
}

impl Metric {
    /// Estimated heap memory this metric owns: names, metadata, every data point with its
    /// attributes, buckets and exemplars.
    pub fn heap_bytes(&self) -> usize {
        let data = match &self.data {
            MetricData::Empty => 0,
            MetricData::Gauge(p) => points_bytes(p, |p| {
                attributes_bytes(&p.attributes) + exemplars_bytes(&p.exemplars)
            }),
            MetricData::Sum(s) => points_bytes(&s.points, |p| {
                attributes_bytes(&p.attributes) + exemplars_bytes(&p.exemplars)
            }),
            MetricData::Histogram(h) => points_bytes(&h.points, |p| {
                attributes_bytes(&p.attributes)
                    + exemplars_bytes(&p.exemplars)
                    + vec_bytes(p.bucket_counts.capacity(), 8)
                    + vec_bytes(p.explicit_bounds.capacity(), 8)
            }),
            MetricData::ExponentialHistogram(h) => points_bytes(&h.points, |p| {
                attributes_bytes(&p.attributes)
                    + exemplars_bytes(&p.exemplars)
                    + vec_bytes(p.positive.bucket_counts.capacity(), 8)
                    + vec_bytes(p.negative.bucket_counts.capacity(), 8)
            }),
            MetricData::Summary(p) => points_bytes(p, |p| {
                attributes_bytes(&p.attributes) + vec_bytes(p.quantiles.capacity(), 16)
            }),
        };
        str_bytes(&self.name)
            + opt_str_bytes(&self.description)
            + opt_str_bytes(&self.unit)
            + attributes_bytes(&self.metadata)
            + data
            + self.scope.as_ref().map_or(0, |s| arc_share(s, 64))
    }

    /// [`Metric::heap_bytes`] plus the metric itself.
    pub fn size_bytes(&self) -> usize {
        size_of::<Metric>() + self.heap_bytes()
    }
}

impl LogRecord {
    /// Estimated heap memory this record owns: body, attributes, strings.
    pub fn heap_bytes(&self) -> usize {
        self.body.as_ref().map_or(0, value_bytes)
            + attributes_bytes(&self.attributes)
            + opt_str_bytes(&self.severity_text)
            + opt_str_bytes(&self.event_name)
            + self.scope.as_ref().map_or(0, |s| arc_share(s, 64))
    }

    /// [`LogRecord::heap_bytes`] plus the record itself.
    pub fn size_bytes(&self) -> usize {
        size_of::<LogRecord>() + self.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_events_links_and_nested_values_count() {
        let bare = Span::default().heap_bytes();
        let mut s = Span {
            name: "GET /".into(),
            ..Span::default()
        };
        s.attributes.set("payload", "x".repeat(10_000));
        let with_string = s.heap_bytes();
        assert!(with_string >= bare + 10_000, "{with_string}");
        s.events.push(Event {
            name: "e".into(),
            attributes: {
                let mut a = Attributes::new();
                a.set("big", "y".repeat(5_000));
                a
            },
            ..Event::default()
        });
        s.links.push(Link {
            trace_state: Some("z".repeat(3_000).into()),
            ..Link::default()
        });
        let nested: Arc<[Value]> = (0..3).map(|_| Value::from("w".repeat(2_000))).collect();
        s.attributes.set("list", Value::Array(nested));
        assert!(s.heap_bytes() >= with_string + 5_000 + 3_000 + 6_000);
    }

    #[test]
    fn shared_strings_count_at_their_share() {
        let key: Arc<str> = Arc::from("k".repeat(1000));
        let spans: Vec<Span> = (0..10)
            .map(|_| {
                let mut s = Span::default();
                s.attributes.set(Arc::clone(&key), 1i64);
                s
            })
            .collect();
        let one = spans[0].heap_bytes();
        let alone = {
            let mut s = Span::default();
            s.attributes.set("k".repeat(1000), 1i64);
            s.heap_bytes()
        };
        // 11 holders (10 spans and `key`): each span carries about a tenth of the key.
        assert!(one < alone - 800, "{one} vs {alone}");
    }
}
