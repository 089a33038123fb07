//! Remote write 1.0 requests: a `prometheus.WriteRequest` protobuf of one `TimeSeries` per
//! Prometheus sample series, laid out as the Collector's translator does (a histogram is
//! `_bucket{le}`…, `_sum`, `_count`), split into requests below `max_batch_size_bytes` and
//! snappy-compressed. A series always goes to the same shard (by a hash of its name and
//! labels), and a shard's requests are sent in order, so requests sent side by side never put a
//! series' samples out of order.
//!
//! Each `TimeSeries` is written straight into its request's buffer (`encode_series`): building
//! prost messages first cost a label list, names and values copied for every sample series
//! (measured: a third of the exporter). [`prompb`] holds the messages generated from
//! Prometheus's own protos; the tests and the `prompb` fuzz target check the bytes against them.

use oxeye_prometheus_series::store::Updated;
use prometheus::proto::MetricType;
use prost::encoding::{encode_varint, encoded_len_varint};

/// The remote-write messages, generated from Prometheus's own `types.proto` and `remote.proto`
/// (`proto/`), for decoding what [`encode_series`] writes.
#[allow(clippy::all, missing_docs)]
pub mod prompb {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Bytes of a length-delimited field holding `n` bytes (tag, length, content).
fn field_len(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

fn label_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(value.len())
}

/// Bytes [`encode_series`] writes for these labels and time.
pub fn series_len(labels: &[(&str, &str)], timestamp: i64) -> usize {
    let labels: usize = labels.iter().map(|(k, v)| field_len(label_len(k, v))).sum();
    field_len(labels + field_len(sample_len(timestamp)))
}

/// A `Sample`: the value (tag 1, fixed 64) and the time (tag 2, varint).
fn sample_len(timestamp: i64) -> usize {
    9 + 1 + encoded_len_varint(timestamp as u64)
}

/// Appends one `WriteRequest.timeseries` entry (field 1): `labels` as given (sorted by name),
/// one sample. What prost would write, default values included (proto3 decoders take both).
pub fn encode_series(buf: &mut Vec<u8>, labels: &[(&str, &str)], value: f64, timestamp: i64) {
    let labels_len: usize = labels.iter().map(|(k, v)| field_len(label_len(k, v))).sum();
    let sample = sample_len(timestamp);
    buf.push(0x0a); // WriteRequest.timeseries
    encode_varint((labels_len + field_len(sample)) as u64, buf);
    for (k, v) in labels {
        buf.push(0x0a); // TimeSeries.labels
        encode_varint(label_len(k, v) as u64, buf);
        buf.push(0x0a); // Label.name
        encode_varint(k.len() as u64, buf);
        buf.extend_from_slice(k.as_bytes());
        buf.push(0x12); // Label.value
        encode_varint(v.len() as u64, buf);
        buf.extend_from_slice(v.as_bytes());
    }
    buf.push(0x12); // TimeSeries.samples
    encode_varint(sample as u64, buf);
    buf.push(0x09); // Sample.value
    buf.extend_from_slice(&value.to_le_bytes());
    buf.push(0x10); // Sample.timestamp
    encode_varint(timestamp as u64, buf);
}

/// One request's body, its shard, and how many records (points) it carries.
pub struct Request {
    pub body: Vec<u8>,
    pub shard: usize,
    pub points: u64,
}

/// One shard's request being filled: the `WriteRequest` encoding so far.
#[derive(Default)]
struct Filling {
    buf: Vec<u8>,
    points: u64,
}

/// Requests being filled.
pub struct Builder {
    max_bytes: usize,
    now_ms: i64,
    shards: Vec<Filling>,
    done: Vec<Request>,
    /// The last histogram's bounds as `le` values (most histograms share their bounds):
    /// (bits, text) by bucket.
    les: Vec<(u64, String)>,
}

/// One series' labels, time and shard, for its sample series.
struct Samples<'a> {
    /// Its labels, sorted by name.
    labels: Vec<(&'a str, &'a str)>,
    /// Where `__name__` goes among them.
    name_at: usize,
    time: i64,
    shard: usize,
    /// Records (points) the series stands for: they go with its first sample series.
    points: u64,
}

impl Builder {
    /// `now_ms` stands for a point that came without a time; `shards` is at least 1.
    pub fn new(max_bytes: usize, now_ms: i64, shards: usize) -> Builder {
        Builder {
            max_bytes,
            now_ms,
            shards: (0..shards.max(1)).map(|_| Filling::default()).collect(),
            done: Vec::new(),
            les: Vec::new(),
        }
    }

    /// Adds the sample series of one updated series.
    pub fn add(&mut self, u: &Updated<'_>) {
        let name = u.family.name();
        let m = u.series;
        let labels: Vec<(&str, &str)> = m
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        let mut s = Samples {
            name_at: labels.partition_point(|(k, _)| *k < "__name__"),
            labels,
            time: if u.time_ms > 0 {
                u.time_ms
            } else {
                self.now_ms
            },
            shard: shard(name, m.get_label(), self.shards.len()),
            points: u.points,
        };
        match u.family.get_field_type() {
            MetricType::COUNTER => self.push(&mut s, name, None, m.get_counter().get_value()),
            MetricType::GAUGE => self.push(&mut s, name, None, m.get_gauge().get_value()),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let (bucket, sum, count) = suffixed(name);
                let mut les = std::mem::take(&mut self.les);
                for (i, b) in h.get_bucket().iter().enumerate() {
                    let bits = b.upper_bound().to_bits();
                    if les.get(i).is_none_or(|(cached, _)| *cached != bits) {
                        les.resize_with(les.len().max(i + 1), Default::default);
                        les[i].0 = bits;
                        bound(&mut les[i].1, b.upper_bound());
                    }
                    let n = b.cumulative_count() as f64;
                    self.push(&mut s, &bucket, Some(("le", &les[i].1)), n);
                }
                self.les = les;
                let n = h.get_sample_count() as f64;
                self.push(&mut s, &bucket, Some(("le", "+Inf")), n);
                self.push(&mut s, &sum, None, h.get_sample_sum());
                self.push(&mut s, &count, None, n);
            }
            MetricType::SUMMARY => {
                let q = m.get_summary();
                let (_, sum, count) = suffixed(name);
                let mut quantile = String::new();
                for x in q.get_quantile() {
                    bound(&mut quantile, x.quantile());
                    self.push(&mut s, name, Some(("quantile", &quantile)), x.value());
                }
                self.push(&mut s, &sum, None, q.sample_sum());
                self.push(&mut s, &count, None, q.sample_count() as f64);
            }
            _ => {}
        }
    }

    /// Writes one sample series of `s`: its labels with `__name__` and `extra` in their places.
    fn push(&mut self, s: &mut Samples<'_>, name: &str, extra: Option<(&str, &str)>, value: f64) {
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(s.labels.len() + 2);
        let (before, after) = s.labels.split_at(s.name_at);
        labels.extend_from_slice(before);
        labels.push(("__name__", name));
        match extra {
            // `le` and `quantile` sort after `__name__`; they replace an attribute of their name.
            Some(l) => {
                let at = after.partition_point(|(k, _)| *k < l.0);
                labels.extend_from_slice(&after[..at]);
                labels.push(l);
                let past = after[at..].iter().take_while(|(k, _)| *k == l.0).count();
                labels.extend_from_slice(&after[at + past..]);
            }
            None => labels.extend_from_slice(after),
        }
        let bytes = series_len(&labels, s.time);
        let f = &self.shards[s.shard];
        if !f.buf.is_empty() && f.buf.len() + bytes > self.max_bytes {
            self.finish(s.shard);
        }
        let f = &mut self.shards[s.shard];
        if f.buf.capacity() == 0 {
            f.buf.reserve(self.max_bytes.min(1 << 20));
        }
        encode_series(&mut f.buf, &labels, value, s.time);
        f.points += std::mem::take(&mut s.points);
    }

    fn finish(&mut self, shard: usize) {
        let f = std::mem::take(&mut self.shards[shard]);
        // A fresh encoder a request: it holds a 16 KiB table only while compressing. It fails
        // only above snappy's ~4 GiB input limit, which max_batch_size_bytes keeps far from.
        let body = snap::raw::Encoder::new()
            .compress_vec(&f.buf)
            .unwrap_or_default();
        self.done.push(Request {
            body,
            shard,
            points: f.points,
        });
    }

    /// The requests, compressed; a shard's in the order they must be sent.
    pub fn requests(mut self) -> Vec<Request> {
        for shard in 0..self.shards.len() {
            if !self.shards[shard].buf.is_empty() {
                self.finish(shard);
            }
        }
        self.done
    }
}

/// `<name>_bucket`, `<name>_sum`, `<name>_count`.
fn suffixed(name: &str) -> (String, String, String) {
    (
        format!("{name}_bucket"),
        format!("{name}_sum"),
        format!("{name}_count"),
    )
}

/// The shard of a series: a hash of its name and labels.
fn shard(name: &str, labels: &[prometheus::proto::LabelPair], shards: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    if shards == 1 {
        return 0;
    }
    // Fixed seed: a series keeps its shard for the exporter's life.
    let mut h = foldhash::fast::FixedState::with_seed(0x006f_7865_7965).build_hasher();
    h.write(name.as_bytes());
    for l in labels {
        h.write(l.name().as_bytes());
        h.write_u8(0xff);
        h.write(l.value().as_bytes());
        h.write_u8(0xfe);
    }
    (h.finish() % shards as u64) as usize
}

/// A bucket bound or quantile as the Collector writes it (Go's `FormatFloat(f, 'f', -1, 64)`):
/// the shortest decimal that reads back the same, no exponent; into `out`, replacing it.
fn bound(out: &mut String, f: f64) {
    use std::fmt::Write;
    out.clear();
    if f == f64::INFINITY {
        out.push_str("+Inf");
    } else if f == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{f}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::metrics::{Histogram, HistogramPoint, Number, NumberPoint, Sum};
    use oxeye_api::{Attributes, Metric, MetricData, Resource, Temporality};
    use oxeye_prometheus_series::store::{Settings, Store};
    use prost::Message;
    use std::time::{Duration, Instant};

    fn store() -> Store {
        Store::new(Settings {
            namespace: String::new(),
            const_labels: vec![("cluster".into(), "eu-1".into())],
            resource_labels: false,
            suffixes: true,
            expiration: Duration::from_secs(60),
            track_updates: true,
        })
    }

    fn attrs(kv: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::new();
        for (k, v) in kv {
            a.set(*k, *v);
        }
        a
    }

    /// The requests' series, decompressed and decoded: (labels as `k=v,…`, value, time).
    fn decoded(requests: &[Request]) -> Vec<(String, f64, i64)> {
        let mut out = Vec::new();
        for r in requests {
            let raw = snap::raw::Decoder::new()
                .decompress_vec(&r.body)
                .expect("snappy");
            let w = prompb::WriteRequest::decode(raw.as_slice()).expect("protobuf");
            for ts in w.timeseries {
                let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
                let mut sorted = names.clone();
                sorted.sort();
                assert_eq!(names, sorted, "labels sorted by name");
                let labels: Vec<String> = ts
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                assert_eq!(ts.samples.len(), 1);
                out.push((
                    labels.join(","),
                    ts.samples[0].value,
                    ts.samples[0].timestamp,
                ));
            }
        }
        out
    }

    #[test]
    fn histograms_and_delta_counters_become_sorted_cumulative_series() {
        let mut store = store();
        let resource = Resource::new(attrs(&[("service.name", "checkout")]));
        let counter = |v: i64, t: u64| Metric {
            name: "http.requests".into(),
            data: MetricData::Sum(Sum {
                points: vec![NumberPoint {
                    attributes: attrs(&[("http.route", "/a")]),
                    time_unix_ns: t,
                    value: Some(Number::Int(v)),
                    ..NumberPoint::default()
                }],
                temporality: Temporality::Delta,
                monotonic: true,
            }),
            ..Metric::default()
        };
        let histogram = Metric {
            name: "latency".into(),
            unit: Some("s".into()),
            data: MetricData::Histogram(Histogram {
                points: vec![HistogramPoint {
                    count: 6,
                    sum: Some(1.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.1, 1.0],
                    time_unix_ns: 2_000_000_000,
                    ..HistogramPoint::default()
                }],
                temporality: Temporality::Cumulative,
            }),
            ..Metric::default()
        };
        store.add(
            &resource,
            &[counter(3, 1_000_000_000), histogram],
            Instant::now(),
        );
        let mut b = Builder::new(3_000_000, 99, 1);
        store.drain_updated(|u| b.add(&u));
        let requests = b.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].points, 2, "a point each (target_info is none)");
        let series = decoded(&requests);
        let expect = [
            ("__name__=target_info,cluster=eu-1,job=checkout", 1.0, 2000),
            (
                "__name__=http_requests_total,cluster=eu-1,http_route=/a,job=checkout",
                3.0,
                1000,
            ),
            (
                "__name__=latency_seconds_bucket,cluster=eu-1,job=checkout,le=0.1",
                1.0,
                2000,
            ),
            (
                "__name__=latency_seconds_bucket,cluster=eu-1,job=checkout,le=1",
                3.0,
                2000,
            ),
            (
                "__name__=latency_seconds_bucket,cluster=eu-1,job=checkout,le=+Inf",
                6.0,
                2000,
            ),
            (
                "__name__=latency_seconds_sum,cluster=eu-1,job=checkout",
                1.5,
                2000,
            ),
            (
                "__name__=latency_seconds_count,cluster=eu-1,job=checkout",
                6.0,
                2000,
            ),
        ];
        let got: Vec<(&str, f64, i64)> = series
            .iter()
            .map(|(l, v, t)| (l.as_str(), *v, *t))
            .collect();
        assert_eq!(got, expect);

        // A second delta adds up; only the series it updated go out.
        store.add(&resource, &[counter(4, 3_000_000_000)], Instant::now());
        let mut b = Builder::new(3_000_000, 99, 1);
        store.drain_updated(|u| b.add(&u));
        let series = decoded(&b.requests());
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(series.contains(&(
            "__name__=http_requests_total,cluster=eu-1,http_route=/a,job=checkout".into(),
            7.0,
            3000
        )));
    }

    #[test]
    fn requests_stay_below_the_size_limit_and_carry_every_point() {
        let mut store = store();
        let gauge = Metric {
            name: "queue.depth".into(),
            data: MetricData::Gauge(
                (0..1000)
                    .map(|i| NumberPoint {
                        attributes: attrs(&[("queue", &format!("q{i}"))]),
                        value: Some(Number::F64(i as f64)),
                        ..NumberPoint::default()
                    })
                    .collect(),
            ),
            ..Metric::default()
        };
        store.add(&Resource::default(), &[gauge], Instant::now());
        let mut b = Builder::new(4096, 42, 3);
        store.drain_updated(|u| b.add(&u));
        let requests = b.requests();
        assert!(requests.len() > 10, "{}", requests.len());
        assert_eq!(requests.iter().map(|r| r.points).sum::<u64>(), 1000);
        for r in &requests {
            let raw = snap::raw::Decoder::new()
                .decompress_vec(&r.body)
                .expect("snappy");
            assert!(raw.len() <= 4096, "{}", raw.len());
        }
        let series = decoded(&requests);
        assert_eq!(series.len(), 1000);
        assert!(
            series.iter().all(|(_, _, t)| *t == 42),
            "no time: the send time"
        );
    }

    #[test]
    fn a_series_keeps_its_shard() {
        let mut store = store();
        let gauge = |v: f64| Metric {
            name: "queue.depth".into(),
            data: MetricData::Gauge(
                (0..100)
                    .map(|i| NumberPoint {
                        attributes: attrs(&[("queue", &format!("q{i}"))]),
                        value: Some(Number::F64(v)),
                        ..NumberPoint::default()
                    })
                    .collect(),
            ),
            ..Metric::default()
        };
        let mut shards = Vec::new();
        for v in [1.0, 2.0] {
            store.add(&Resource::default(), &[gauge(v)], Instant::now());
            let mut b = Builder::new(3_000_000, 42, 4);
            store.drain_updated(|u| b.add(&u));
            let mut of: Vec<(String, usize)> = Vec::new();
            for r in b.requests() {
                for (labels, value, _) in decoded(std::slice::from_ref(&r)) {
                    assert_eq!(value, v);
                    of.push((labels, r.shard));
                }
            }
            of.sort();
            shards.push(of);
        }
        assert_eq!(shards[0].len(), 100);
        assert_eq!(
            shards[0], shards[1],
            "each series in the same shard both times"
        );
        let used: std::collections::BTreeSet<usize> = shards[0].iter().map(|(_, s)| *s).collect();
        assert_eq!(used.len(), 4, "the series spread over every shard");
    }

    /// The bytes written by hand are prost's for the same message when no field holds its
    /// default value, and decode to the same message when one does.
    #[test]
    fn encode_series_writes_what_prost_writes() {
        type Labels<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Labels, f64, i64)] = &[
            (
                &[("__name__", "up"), ("job", "checkout")],
                1.0,
                1_700_000_000_123,
            ),
            (
                &[("__name__", "x"), ("le", "+Inf"), ("région", "été ☃")],
                -2.5,
                1,
            ),
            (&[("__name__", "y"), ("empty", "")], 0.0, 0),
            (&[("__name__", "z")], f64::MAX, -5),
            (&[], 3.0, i64::MAX),
        ];
        for &(labels, value, timestamp) in cases {
            let mut mine = Vec::new();
            encode_series(&mut mine, labels, value, timestamp);
            assert_eq!(mine.len(), series_len(labels, timestamp));
            let theirs = prompb::WriteRequest {
                timeseries: vec![prompb::TimeSeries {
                    labels: labels
                        .iter()
                        .map(|(k, v)| prompb::Label {
                            name: k.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    samples: vec![prompb::Sample { value, timestamp }],
                    ..prompb::TimeSeries::default()
                }],
                ..prompb::WriteRequest::default()
            };
            let defaults =
                value == 0.0 || timestamp == 0 || labels.iter().any(|(_, v)| v.is_empty());
            if !defaults {
                assert_eq!(mine, theirs.encode_to_vec(), "{labels:?}");
            }
            assert_eq!(
                prompb::WriteRequest::decode(mine.as_slice()).expect("decode"),
                theirs
            );
        }
    }

    /// Bucket bounds are cached from one histogram to the next: a histogram with other bounds
    /// (or more of them) gets its own.
    #[test]
    fn each_histogram_has_its_own_bounds() {
        let mut store = store();
        let histogram = |name: &str, bounds: &[f64]| Metric {
            name: name.into(),
            data: MetricData::Histogram(Histogram {
                points: vec![HistogramPoint {
                    count: bounds.len() as u64 + 1,
                    bucket_counts: vec![1; bounds.len() + 1],
                    explicit_bounds: bounds.to_vec(),
                    time_unix_ns: 1_000_000,
                    ..HistogramPoint::default()
                }],
                temporality: Temporality::Cumulative,
            }),
            ..Metric::default()
        };
        let metrics = [
            histogram("a", &[0.1, 1.0]),
            histogram("b", &[0.1, 2.5, 1e21]),
            histogram("c", &[0.5]),
        ];
        store.add(&Resource::default(), &metrics, Instant::now());
        let mut b = Builder::new(3_000_000, 1, 1);
        store.drain_updated(|u| b.add(&u));
        let les: Vec<String> = decoded(&b.requests())
            .into_iter()
            .filter(|(l, _, _)| l.contains("_bucket"))
            .map(|(l, _, _)| l)
            .collect();
        assert_eq!(
            les,
            [
                "__name__=a_bucket,cluster=eu-1,le=0.1",
                "__name__=a_bucket,cluster=eu-1,le=1",
                "__name__=a_bucket,cluster=eu-1,le=+Inf",
                "__name__=b_bucket,cluster=eu-1,le=0.1",
                "__name__=b_bucket,cluster=eu-1,le=2.5",
                "__name__=b_bucket,cluster=eu-1,le=1000000000000000000000",
                "__name__=b_bucket,cluster=eu-1,le=+Inf",
                "__name__=c_bucket,cluster=eu-1,le=0.5",
                "__name__=c_bucket,cluster=eu-1,le=+Inf",
            ]
        );
    }

    /// A point attribute named `le` gives way to the bucket's bound (one label of a name).
    #[test]
    fn le_replaces_an_attribute_of_its_name() {
        let mut store = store();
        let m = Metric {
            name: "h".into(),
            data: MetricData::Histogram(Histogram {
                points: vec![HistogramPoint {
                    attributes: attrs(&[("le", "bogus"), ("z", "1")]),
                    count: 2,
                    bucket_counts: vec![1, 1],
                    explicit_bounds: vec![f64::NEG_INFINITY],
                    time_unix_ns: 1_000_000,
                    ..HistogramPoint::default()
                }],
                temporality: Temporality::Cumulative,
            }),
            ..Metric::default()
        };
        store.add(&Resource::default(), &[m], Instant::now());
        let mut b = Builder::new(3_000_000, 1, 1);
        store.drain_updated(|u| b.add(&u));
        let buckets: Vec<String> = decoded(&b.requests())
            .into_iter()
            .filter(|(l, _, _)| l.contains("_bucket"))
            .map(|(l, _, _)| l)
            .collect();
        assert_eq!(
            buckets,
            [
                "__name__=h_bucket,cluster=eu-1,le=-Inf,z=1",
                "__name__=h_bucket,cluster=eu-1,le=+Inf,z=1",
            ]
        );
    }
}
