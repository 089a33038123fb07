//! Remote write 1.0 requests: the `prometheus.WriteRequest` protobuf (prompb's messages,
//! declared here with prost's derive), one `TimeSeries` per Prometheus sample series the way
//! the Collector's translator lays them out (a histogram is `_bucket{le}`…, `_sum`, `_count`),
//! split into requests below `max_batch_size_bytes` and snappy-compressed. A series always goes
//! to the same shard (by a hash of its name and labels), and a shard's requests are sent in
//! order, so requests sent side by side never put a series' samples out of order.

use oxeye_prometheus_series::store::Updated;
use prometheus::proto::MetricType;
use prost::Message;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (samples only: oxeye sends no exemplars or native histograms).
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix ms.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// One request's body, its shard, and how many records (points) it carries.
pub struct Request {
    pub body: Vec<u8>,
    pub shard: usize,
    pub points: u64,
}

/// One shard's request being filled.
#[derive(Default)]
struct Filling {
    request: WriteRequest,
    bytes: usize,
    points: u64,
}

/// Requests being filled.
pub struct Builder {
    max_bytes: usize,
    now_ms: i64,
    shards: Vec<Filling>,
    /// The shard of the series being added.
    shard: usize,
    done: Vec<Request>,
}

impl Builder {
    /// `now_ms` stands for a point that came without a time; `shards` is at least 1.
    pub fn new(max_bytes: usize, now_ms: i64, shards: usize) -> Builder {
        Builder {
            max_bytes,
            now_ms,
            shards: (0..shards.max(1)).map(|_| Filling::default()).collect(),
            shard: 0,
            done: Vec::new(),
        }
    }

    /// Adds the sample series of one updated series.
    pub fn add(&mut self, u: &Updated<'_>) {
        let name = u.family.name();
        self.shard = shard(name, u.series.get_label(), self.shards.len());
        let at = if u.time_ms > 0 {
            u.time_ms
        } else {
            self.now_ms
        };
        let m = u.series;
        let base: Vec<Label> = m
            .get_label()
            .iter()
            .map(|l| Label {
                name: l.name().to_string(),
                value: l.value().to_string(),
            })
            .collect();
        let mut points = u.points;
        let mut push =
            |b: &mut Builder, suffix: &str, extra: Option<(&str, String)>, value: f64| {
                let mut labels = base.clone();
                labels.push(Label {
                    name: "__name__".into(),
                    value: format!("{name}{suffix}"),
                });
                if let Some((k, v)) = extra {
                    labels.push(Label {
                        name: k.into(),
                        value: v,
                    });
                }
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                // The series' records go with its first sample series.
                b.push(
                    TimeSeries {
                        labels,
                        samples: vec![Sample {
                            value,
                            timestamp: at,
                        }],
                    },
                    std::mem::take(&mut points),
                );
            };
        match u.family.get_field_type() {
            MetricType::COUNTER => push(self, "", None, m.get_counter().get_value()),
            MetricType::GAUGE => push(self, "", None, m.get_gauge().get_value()),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                for b in h.get_bucket() {
                    let le = Some(("le", bound(b.upper_bound())));
                    push(self, "_bucket", le, b.cumulative_count() as f64);
                }
                let inf = Some(("le", "+Inf".to_string()));
                push(self, "_bucket", inf, h.get_sample_count() as f64);
                push(self, "_sum", None, h.get_sample_sum());
                push(self, "_count", None, h.get_sample_count() as f64);
            }
            MetricType::SUMMARY => {
                let s = m.get_summary();
                for q in s.get_quantile() {
                    let quantile = Some(("quantile", bound(q.quantile())));
                    push(self, "", quantile, q.value());
                }
                push(self, "_sum", None, s.sample_sum());
                push(self, "_count", None, s.sample_count() as f64);
            }
            _ => {}
        }
    }

    fn push(&mut self, ts: TimeSeries, points: u64) {
        let bytes = prost::encoding::message::encoded_len(1, &ts);
        let shard = self.shard;
        let f = &self.shards[shard];
        if f.bytes > 0 && f.bytes + bytes > self.max_bytes {
            self.finish(shard);
        }
        let f = &mut self.shards[shard];
        f.request.timeseries.push(ts);
        f.bytes += bytes;
        f.points += points;
    }

    fn finish(&mut self, shard: usize) {
        let f = std::mem::take(&mut self.shards[shard]);
        // A fresh encoder a request: it holds a 16 KiB table only while compressing. It fails
        // only above snappy's ~4 GiB input limit, which max_batch_size_bytes keeps far from.
        let body = snap::raw::Encoder::new()
            .compress_vec(&f.request.encode_to_vec())
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
            if !self.shards[shard].request.timeseries.is_empty() {
                self.finish(shard);
            }
        }
        self.done
    }
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
/// the shortest decimal that reads back the same, no exponent.
fn bound(f: f64) -> String {
    if f == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::metrics::{Histogram, HistogramPoint, Number, NumberPoint, Sum};
    use oxeye_api::{Attributes, Metric, MetricData, Resource, Temporality};
    use oxeye_prometheus_series::store::{Settings, Store};
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
            let w = WriteRequest::decode(raw.as_slice()).expect("protobuf");
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
}
