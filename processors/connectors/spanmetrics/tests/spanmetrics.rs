//! The connector through the harness, as the engine drives it: counts exact on 100 000 spans,
//! the cardinality limit, temporality, exemplars, dimensions and config errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oxeye_api::metrics::{HistogramPoint, Number, NumberPoint};
use oxeye_api::testing::{check, metrics, ProcessorHarness};
use oxeye_api::{
    Attributes, Batch, Metric, MetricData, Resource, Span, SpanId, SpanKind, StatusCode,
    Temporality, TraceId, Value,
};
use oxeye_connector_spanmetrics::SpanMetricsFactory;

/// `n` spans over `routes` span names, durations 0.5 ms … 20 s, every seventh an error.
fn spans(n: usize, routes: usize, resource: &Arc<Resource>) -> Batch {
    let spans = (0..n)
        .map(|i| {
            let duration_ns = 500_000 + (i as u64 * 7_919_000) % 20_000_000_000;
            let mut attributes = Attributes::new();
            attributes.set(
                "http.request.method",
                if i % 2 == 0 { "GET" } else { "POST" },
            );
            Span {
                trace_id: TraceId((i as u128 + 1).to_be_bytes()),
                span_id: SpanId((i as u64 + 1).to_be_bytes()),
                name: format!("GET /route/{}", i % routes).into(),
                kind: SpanKind::Server,
                status: if i % 7 == 0 {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                },
                start_unix_ns: 1_000_000_000,
                end_unix_ns: 1_000_000_000 + duration_ns,
                attributes,
                ..Span::default()
            }
        })
        .collect();
    Batch::spans(Arc::clone(resource), spans)
}

fn service(name: &str) -> Arc<Resource> {
    let mut a = Attributes::new();
    a.set("service.name", name);
    Arc::new(Resource::new(a))
}

fn sum_points(m: &Metric) -> &[NumberPoint] {
    match &m.data {
        MetricData::Sum(s) => {
            assert!(s.monotonic);
            &s.points
        }
        other => panic!("{} is {other:?}", m.name),
    }
}

fn histogram_points(m: &Metric) -> &[HistogramPoint] {
    match &m.data {
        MetricData::Histogram(h) => &h.points,
        other => panic!("{} is {other:?}", m.name),
    }
}

fn named<'a>(ms: &[&'a Metric], name: &str) -> Vec<&'a Metric> {
    ms.iter().copied().filter(|m| &*m.name == name).collect()
}

fn int(p: &NumberPoint) -> i64 {
    match p.value {
        Some(Number::Int(i)) => i,
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_and_durations_of_100_000_spans_are_exact() {
    let mut h = ProcessorHarness::connector::<SpanMetricsFactory>("").expect("build");
    assert_eq!(h.tick_interval(), Some(Duration::from_secs(60)));
    let resource = service("checkout");
    let mut expected_sum_ms = 0.0;
    let mut expected_buckets = [0u64; 17];
    let bounds = oxeye_connector_spanmetrics::DEFAULT_BUCKETS_MS;
    for chunk in 0..100 {
        let batch = spans(1000, 10, &resource);
        if let oxeye_api::Records::Spans(s) = &batch.records {
            for span in s {
                let ms = (span.end_unix_ns - span.start_unix_ns) as f64 / 1e6;
                expected_sum_ms += ms;
                expected_buckets[bounds.partition_point(|b| *b < ms)] += 1;
            }
        }
        assert!(
            h.process(batch).expect("process").is_empty(),
            "chunk {chunk}"
        );
    }
    assert_eq!(h.held(), 100_000, "counted, not yet emitted");
    let out = h.tick(SystemTime::now()).expect("tick");
    assert_eq!(h.held(), 0);
    assert_eq!(out.len(), 1, "one batch per resource");
    assert_eq!(out[0].resource, resource);
    let ms = metrics(&out);
    let calls = named(&ms, "traces.span.metrics.calls");
    let duration = named(&ms, "traces.span.metrics.duration");
    assert_eq!((calls.len(), duration.len()), (1, 1));
    assert_eq!(duration[0].unit.as_deref(), Some("ms"));
    assert_eq!(
        calls[0].scope.as_ref().expect("scope").name.as_ref(),
        "spanmetricsconnector"
    );
    // 10 routes × (error or not): the default dimensions only.
    let points = sum_points(calls[0]);
    assert_eq!(points.len(), 20);
    assert_eq!(points.iter().map(int).sum::<i64>(), 100_000);
    let p = &points[0];
    let keys: Vec<&str> = p.attributes.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["service.name", "span.name", "span.kind", "status.code"]
    );
    assert_eq!(
        p.attributes.get("service.name"),
        Some(&Value::from("checkout"))
    );
    assert_eq!(
        p.attributes.get("span.kind"),
        Some(&Value::from("SPAN_KIND_SERVER"))
    );
    let errors: i64 = points
        .iter()
        .filter(|p| p.attributes.get("status.code") == Some(&Value::from("STATUS_CODE_ERROR")))
        .map(int)
        .sum();
    assert_eq!(
        errors,
        100 * (0..1000).filter(|i| i % 7 == 0).count() as i64
    );
    let hist = histogram_points(duration[0]);
    assert_eq!(hist.iter().map(|p| p.count).sum::<u64>(), 100_000);
    let sum: f64 = hist.iter().map(|p| p.sum.expect("sum")).sum();
    assert!(
        (sum - expected_sum_ms).abs() < 1e-6 * expected_sum_ms,
        "{sum} vs {expected_sum_ms}"
    );
    let mut buckets = [0u64; 17];
    for p in hist {
        assert_eq!(p.explicit_bounds, bounds);
        assert_eq!(p.count, p.bucket_counts.iter().sum::<u64>());
        for (b, n) in buckets.iter_mut().zip(&p.bucket_counts) {
            *b += n;
        }
    }
    assert_eq!(buckets, expected_buckets);
    // Cumulative: the next flush repeats the totals with the same start.
    h.process(spans(10, 10, &resource)).expect("process");
    let again = h.flush().expect("flush");
    let ms = metrics(&again);
    let points = sum_points(named(&ms, "traces.span.metrics.calls")[0]);
    assert_eq!(points.iter().map(int).sum::<i64>(), 100_010);
    assert_eq!(
        points[0].start_unix_ns,
        sum_points(calls[0])[0].start_unix_ns
    );
    assert_eq!(h.telemetry().merged(), 100_010);
}

#[test]
fn series_past_the_limit_fold_into_one_overflow_series_counted() {
    let mut h = ProcessorHarness::connector::<SpanMetricsFactory>(
        "max_series: 5\nhistogram: {disable: true}",
    )
    .expect("build");
    h.process(spans(1000, 50, &service("a"))).expect("process");
    let out = h.flush().expect("flush");
    let ms = metrics(&out);
    assert_eq!(ms.len(), 1, "calls only");
    let points = sum_points(ms[0]);
    assert_eq!(points.len(), 6, "5 series and the overflow one");
    assert_eq!(
        points.iter().map(int).sum::<i64>(),
        1000,
        "every span counted once"
    );
    let overflow: Vec<&NumberPoint> = points
        .iter()
        .filter(|p| p.attributes.get("otel.metric.overflow") == Some(&Value::Bool(true)))
        .collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(
        overflow[0].attributes.iter().count(),
        1,
        "no other attribute"
    );
    let folded = int(overflow[0]) as u64;
    assert!(folded > 0);
    let counters = h.telemetry().counters();
    assert!(
        counters
            .iter()
            .any(|(name, _, v)| *name == "spanmetrics_overflow_spans" && *v == folded),
        "{counters:?}"
    );
}

#[test]
fn delta_dimensions_exemplars_and_resources() {
    let config = "
aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
namespace: ''
exclude_dimensions: [status.code]
dimensions:
  - name: http.request.method
  - name: deployment.environment
    default: prod
exemplars: {enabled: true, max_per_data_point: 2}
histogram: {unit: s, explicit: {buckets: [1ms, 1s]}}
";
    let mut h = ProcessorHarness::connector::<SpanMetricsFactory>(config).expect("build");
    h.process(spans(100, 1, &service("a"))).expect("process");
    h.process(spans(30, 1, &service("b"))).expect("process");
    let first = h.tick(SystemTime::now()).expect("tick");
    assert_eq!(first.len(), 2, "a batch per resource");
    let ms = metrics(&first);
    let calls = named(&ms, "calls");
    assert_eq!(calls.len(), 2);
    let MetricData::Sum(s) = &calls[0].data else {
        panic!()
    };
    assert_eq!(s.temporality, Temporality::Delta);
    let p = &s.points[0];
    assert!(p.attributes.get("status.code").is_none());
    assert_eq!(
        p.attributes.get("deployment.environment"),
        Some(&Value::from("prod"))
    );
    assert!(p.attributes.get("http.request.method").is_some());
    let d = named(&ms, "duration");
    assert_eq!(d[0].unit.as_deref(), Some("s"));
    let hp = &histogram_points(d[0])[0];
    assert_eq!(hp.explicit_bounds, [0.001, 1.0]);
    assert_eq!(hp.exemplars.len(), 2);
    assert!(hp
        .exemplars
        .iter()
        .all(|e| e.trace_id.is_some() && e.span_id.is_some()));
    // Delta: nothing new, nothing emitted; new spans start afresh.
    assert!(h.tick(SystemTime::now()).expect("tick").is_empty());
    h.process(spans(4, 1, &service("a"))).expect("process");
    let ms_out = h.flush().expect("flush");
    let ms = metrics(&ms_out);
    let total: i64 = named(&ms, "calls")
        .iter()
        .flat_map(|m| sum_points(m))
        .map(int)
        .sum();
    assert_eq!(total, 4);
}

#[test]
fn config_mistakes_are_reported_at_their_fields_all_at_once() {
    let err = check::<SpanMetricsFactory>(
        "
histogram: {explicit: {buckets: [10ms, 5ms, nope]}}
dimensions: [{name: span.name}, {name: x}, {name: x}]
exclude_dimensions: [nope]
metrics_flush_interval: 0s
",
    )
    .expect_err("invalid");
    let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "histogram.explicit.buckets[1]",
            "histogram.explicit.buckets[2]",
            "metrics_flush_interval",
            "dimensions[0].name",
            "dimensions[2].name",
            "exclude_dimensions[0]",
        ],
        "{err:?}"
    );
    assert!(check::<SpanMetricsFactory>("aggregation_temporality: DELTA").is_err());
    assert!(check::<SpanMetricsFactory>("").is_ok());
}

#[test]
fn idle_series_expire_and_a_nan_resource_is_one_resource() {
    let mut h = ProcessorHarness::connector::<SpanMetricsFactory>(
        "metrics_expiration: 1s\nhistogram: {disable: true}",
    )
    .expect("build");
    // Two batches from resources equal but for being distinct, with a NaN attribute.
    let nan = || {
        let mut a = Attributes::new();
        a.set("service.name", "a");
        a.set("weight", Value::F64(f64::NAN));
        Arc::new(Resource::new(a))
    };
    h.process(spans(10, 2, &nan())).expect("process");
    h.process(spans(10, 2, &nan())).expect("process");
    let now = SystemTime::now();
    let out = h.tick(now).expect("tick");
    assert_eq!(out.len(), 1, "one resource, however many Arcs");
    let ms = metrics(&out);
    assert_eq!(sum_points(ms[0]).iter().map(int).sum::<i64>(), 20);
    // No span for longer than metrics_expiration: the series are no longer emitted.
    assert!(h
        .tick(now + Duration::from_secs(2))
        .expect("tick")
        .is_empty());
    h.process(spans(3, 1, &service("b"))).expect("process");
    let out = h.tick(SystemTime::now()).expect("tick");
    let ms = metrics(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(sum_points(ms[0]).iter().map(int).sum::<i64>(), 3);
}
