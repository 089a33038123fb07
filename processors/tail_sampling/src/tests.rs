//! The processor through the harness: decisions, bounds, late spans, counting.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::store::{slab_bytes, span_bytes, TRACE_BYTES};
use oxeye_api::testing::{check, ProcessorHarness};
use oxeye_api::SpanId;
use oxeye_api::{Batch, Records, Resource, Span, StatusCode, TraceId, Value};
use oxeye_processor_sampling::trace_id_ratio_keeps;
use proptest::prelude::*;

fn span(trace: u128, i: u64, dur_ms: u64, status: StatusCode) -> Span {
    Span {
        trace_id: TraceId(trace.to_be_bytes()),
        span_id: SpanId(
            (trace as u64)
                .wrapping_mul(100)
                .wrapping_add(i + 1)
                .to_be_bytes(),
        ),
        name: format!("op-{i}").into(),
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_000_000_000 + dur_ms * 1_000_000,
        status,
        ..Span::default()
    }
}

fn batch(spans: Vec<Span>) -> Batch {
    Batch::spans(Arc::new(Resource::default()), spans)
}

fn out_spans(out: &[Arc<Batch>]) -> Vec<Span> {
    out.iter()
        .flat_map(|b| match &b.records {
            Records::Spans(s) => s.clone(),
            _ => vec![],
        })
        .collect()
}

fn later(d: Duration) -> SystemTime {
    SystemTime::now() + d
}

const POLICIES: &str = "policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: slow, type: latency, latency: {threshold_ms: 100}}, {name: some, type: probabilistic, probabilistic: {sampling_percentage: 20}}]";

#[test]
fn a_trace_is_decided_whole_after_the_wait_and_late_spans_follow() {
    let mut h =
        ProcessorHarness::new::<TailSamplingFactory>(&format!("{{decision_wait: 1s, {POLICIES}}}"))
            .unwrap();
    // Trace 1: one error span among fine ones; trace 2: all fine and fast, not in 20 %.
    // A trace id outside the 20 % (the decision reads the low 8 bytes).
    let quiet = (2u128..100)
        .map(|t| t * 0x9e37_79b9_7f4a_7c15)
        .find(|t| !trace_id_ratio_keeps(0.2, &TraceId(t.to_be_bytes())))
        .unwrap();
    let mut first = vec![
        span(1, 0, 1, StatusCode::Unset),
        span(quiet, 0, 1, StatusCode::Unset),
    ];
    first.push(span(1, 1, 1, StatusCode::Error));
    assert!(
        h.process(batch(first)).unwrap().is_empty(),
        "held, not decided"
    );
    assert!(h
        .tick(later(Duration::from_millis(500)))
        .unwrap()
        .is_empty());
    let out = out_spans(&h.tick(later(Duration::from_millis(1100))).unwrap());
    assert_eq!(out.len(), 2, "both spans of the error trace");
    assert!(out
        .iter()
        .all(|s| s.trace_id == TraceId(1u128.to_be_bytes())));
    assert_eq!(
        out[0].attributes.get("oxeye.sampling.adjusted_count"),
        Some(&Value::F64(1.0))
    );
    // Late spans follow their trace's decision.
    let late = out_spans(
        &h.process(batch(vec![
            span(1, 2, 1, StatusCode::Unset),
            span(quiet, 1, 1, StatusCode::Unset),
        ]))
        .unwrap(),
    );
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].trace_id, TraceId(1u128.to_be_bytes()));
    assert_eq!(h.telemetry().dropped(), vec![("sampled_out", 2)]);
    let counters = h.telemetry().counters();
    assert!(counters.contains(&("tail_sampling_sampled", "errors".into(), 1)));
    assert!(counters.contains(&("tail_sampling_not_sampled", "errors".into(), 1)));
    assert!(counters.contains(&("tail_sampling_late_spans", "tail_sampling".into(), 2)));
}

#[test]
fn bounds_decide_the_oldest_early_and_never_split() {
    let mut h = ProcessorHarness::new::<TailSamplingFactory>(
        "{decision_wait: 1h, num_traces: 10, policies: [{name: all, type: always_sample}]}",
    )
    .unwrap();
    let spans: Vec<Span> = (1..=50u128)
        .map(|t| span(t, 0, 1, StatusCode::Unset))
        .collect();
    let early = out_spans(&h.process(batch(spans)).unwrap());
    assert_eq!(early.len(), 40, "40 oldest decided at once");
    let rest = out_spans(&h.flush().unwrap());
    assert_eq!(rest.len(), 10);
    assert!(h.telemetry().counters().contains(&(
        "tail_sampling_decided_early",
        "tail_sampling".into(),
        40
    )));
    // A byte cap of two one-span batches: a third decides the oldest early, and so on.
    let s = span(1, 0, 1, StatusCode::Unset);
    let cap = (span_bytes(&s) + TRACE_BYTES + slab_bytes(1)) * 2;
    let mut h = ProcessorHarness::new::<TailSamplingFactory>(&format!(
        "{{decision_wait: 1h, max_bytes: {cap}, decision_cache: {{sampled_cache_size: 0, non_sampled_cache_size: 0}}, policies: [{{name: all, type: always_sample}}]}}"
    ))
    .unwrap();
    let early: usize = (1..=5u128)
        .map(|t| {
            out_spans(
                &h.process(batch(vec![span(t, 0, 1, StatusCode::Unset)]))
                    .unwrap(),
            )
            .len()
        })
        .sum();
    assert_eq!(early, 3);
    assert_eq!(out_spans(&h.flush().unwrap()).len(), 2);
}

#[test]
fn attribute_rate_and_composite_policies() {
    let with = |key: &str, v: Value| {
        let mut s = span(7, 0, 1, StatusCode::Unset);
        s.attributes.set(key, v);
        s
    };
    let decide = |yaml: &str, s: Span| -> usize {
        let mut h = ProcessorHarness::new::<TailSamplingFactory>(yaml).unwrap();
        h.process(batch(vec![s])).unwrap();
        out_spans(&h.flush().unwrap()).len()
    };
    let route = "{policies: [{name: r, type: string_attribute, string_attribute: {key: http.route, values: ['^/api/.*'], enabled_regex_matching: true}}]}";
    assert_eq!(decide(route, with("http.route", "/api/users".into())), 1);
    assert_eq!(decide(route, with("http.route", "/health".into())), 0);
    let inverted = "{policies: [{name: r, type: string_attribute, string_attribute: {key: http.route, values: [/health], invert_match: true}}]}";
    assert_eq!(decide(inverted, with("http.route", "/health".into())), 0);
    assert_eq!(decide(inverted, with("http.route", "/api".into())), 1);
    let numeric = "{policies: [{name: n, type: numeric_attribute, numeric_attribute: {key: http.response.status_code, min_value: 500, max_value: 599}}]}";
    assert_eq!(
        decide(numeric, with("http.response.status_code", Value::Int(503))),
        1
    );
    assert_eq!(
        decide(numeric, with("http.response.status_code", Value::Int(200))),
        0
    );
    let and = "{policies: [{name: a, type: and, and: {and_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: s, type: latency, latency: {threshold_ms: 10}}]}}]}";
    assert_eq!(decide(and, span(7, 0, 50, StatusCode::Error)), 1);
    assert_eq!(decide(and, span(7, 0, 5, StatusCode::Error)), 0);

    // Rate limiting: 10 spans/s, 1-span traces decided in one second: 10 kept.
    let mut h = ProcessorHarness::new::<TailSamplingFactory>(
        "{policies: [{name: rl, type: rate_limiting, rate_limiting: {spans_per_second: 10}}]}",
    )
    .unwrap();
    let spans: Vec<Span> = (1..=30u128)
        .map(|t| span(t, 0, 1, StatusCode::Unset))
        .collect();
    h.process(batch(spans)).unwrap();
    let kept = out_spans(&h.flush().unwrap()).len();
    assert!((10..=20).contains(&kept), "{kept}"); // 10, or 20 across a second boundary

    // Composite: errors first with 50 % of 4 spans/s, then everything with the rest.
    let mut h = ProcessorHarness::new::<TailSamplingFactory>(
        "{policies: [{name: c, type: composite, composite: {max_total_spans_per_second: 4, policy_order: [e, all], composite_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: all, type: always_sample}], rate_allocation: [{policy: e, percent: 50}]}}]}",
    )
    .unwrap();
    let spans: Vec<Span> = (1..=10u128)
        .map(|t| span(t, 0, 1, StatusCode::Error))
        .collect();
    h.process(batch(spans)).unwrap();
    let kept = out_spans(&h.flush().unwrap()).len();
    assert!((4..=8).contains(&kept), "{kept}"); // 2 + 2 per second
}

#[test]
fn validation_names_every_problem_with_its_path() {
    let e = check::<TailSamplingFactory>(
        "{decision_wait: 0s, num_traces: 0, policies: [{name: a, type: latency}, {name: a, type: probabilistic, probabilistic: {sampling_percentage: 150}, latency: {threshold_ms: 1}}, {name: r, type: string_attribute, string_attribute: {key: k, values: ['('], enabled_regex_matching: true}}, {name: c, type: composite, composite: {max_total_spans_per_second: 10, policy_order: [x], composite_sub_policy: [{name: y, type: always_sample}]}}]}",
    )
    .unwrap_err();
    let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "decision_wait",
            "num_traces",
            "policies[0]",
            "policies[1].name",
            "policies[1].latency",
            "policies[1].probabilistic.sampling_percentage",
            "policies[2].string_attribute.values[0]",
            "policies[3].composite.policy_order[0]",
        ],
        "{e}"
    );
    assert!(check::<TailSamplingFactory>("{}").is_err(), "no policies");
    assert!(check::<TailSamplingFactory>(
        "{policies: [{name: x, type: status_code, status_code: {status_codes: [BROKEN]}}]}"
    )
    .is_err());
    assert!(check::<TailSamplingFactory>(&format!("{{{POLICIES}}}")).is_ok());
    // The decision caches count against max_bytes: 2 x 100 000 ids need about 8.6 MB.
    let e =
        check::<TailSamplingFactory>(&format!("{{max_bytes: 10000000, {POLICIES}}}")).unwrap_err();
    assert!(
        e.to_string().contains("leaves no room for held traces"),
        "{e}"
    );
    assert!(check::<TailSamplingFactory>(&format!(
        "{{max_bytes: 10000000, decision_cache: {{sampled_cache_size: 10000, non_sampled_cache_size: 10000}}, {POLICIES}}}"
    ))
    .is_ok());
}

#[test]
fn probabilistic_keeps_its_share_within_five_standard_deviations() {
    let mut h = ProcessorHarness::new::<TailSamplingFactory>(
        "{policies: [{name: p, type: probabilistic, probabilistic: {sampling_percentage: 25}}]}",
    )
    .unwrap();
    let n = 20_000u128;
    // Spread ids over the whole space (the decision reads the low 8 bytes).
    let spans: Vec<Span> = (1..=n)
        .map(|t| {
            span(
                t.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                0,
                1,
                StatusCode::Unset,
            )
        })
        .collect();
    h.process(batch(spans)).unwrap();
    let out = out_spans(&h.flush().unwrap());
    let (mean, sd) = (n as f64 * 0.25, (n as f64 * 0.25 * 0.75).sqrt());
    assert!(
        (out.len() as f64 - mean).abs() < 5.0 * sd,
        "{} kept of {n}",
        out.len()
    );
    assert_eq!(
        out[0].attributes.get("oxeye.sampling.adjusted_count"),
        Some(&Value::F64(4.0))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random trace shapes arriving out of order in random chunks within decision_wait:
    /// every trace comes out whole or not at all — also when a small `num_traces` forces
    /// early decisions and later spans must follow them — every trace with an error span
    /// is kept while nothing is decided early, and in == out + dropped.
    #[test]
    fn no_trace_is_split(
        shapes in prop::collection::vec((1usize..8, prop::bool::weighted(0.2)), 1..40),
        seed in any::<u64>(),
        chunk in 1usize..16,
        limit in 1usize..60,
        policy in 0usize..6,
    ) {
        let mut spans = Vec::new();
        for (t, (n, error)) in shapes.iter().enumerate() {
            let trace = (t as u128 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15);
            for i in 0..*n {
                let status = if *error && i == n - 1 { StatusCode::Error } else { StatusCode::Unset };
                spans.push(span(trace, i as u64, (seed >> (i % 32)) % 300, status));
            }
        }
        // Shuffle deterministically from the seed.
        let mut x = seed | 1;
        for i in (1..spans.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            spans.swap(i, (x % (i as u64 + 1)) as usize);
        }
        // Under any policy: the errors/slow/probabilistic set, or one of the others.
        let policies = [
            POLICIES,
            "policies: [{name: p, type: probabilistic, probabilistic: {sampling_percentage: 50}}]",
            "policies: [{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 20}}]",
            "policies: [{name: a, type: and, and: {and_sub_policy: [{name: s, type: latency, latency: {threshold_ms: 100}}, {name: p, type: probabilistic, probabilistic: {sampling_percentage: 70}}]}}]",
            "policies: [{name: c, type: composite, composite: {max_total_spans_per_second: 30, policy_order: [e, p], composite_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: p, type: probabilistic, probabilistic: {sampling_percentage: 40}}]}}]",
            "policies: [{name: n, type: string_attribute, string_attribute: {key: none, values: [x], invert_match: true}}]",
        ];
        let mut h = ProcessorHarness::new::<TailSamplingFactory>(&format!("{{decision_wait: 1h, num_traces: {limit}, {}}}", policies[policy])).unwrap();
        let mut out = Vec::new();
        for c in spans.chunks(chunk) {
            out.extend(out_spans(&h.process(batch(c.to_vec())).unwrap()));
        }
        out.extend(out_spans(&h.flush().unwrap()));
        let mut per_trace: KeyedMap<TraceId, usize> = KeyedMap::default();
        for s in &out {
            *per_trace.entry(s.trace_id).or_default() += 1;
        }
        for (t, (n, error)) in shapes.iter().enumerate() {
            let trace = TraceId((t as u128 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15).to_be_bytes());
            let got = per_trace.get(&trace).copied().unwrap_or(0);
            prop_assert!(got == 0 || got == *n, "trace {} split: {} of {}", t, got, n);
            if *error && limit >= shapes.len() && policy == 0 {
                prop_assert_eq!(got, *n, "error trace {} dropped", t);
            }
        }
        prop_assert_eq!(out.len() as u64 + h.telemetry().dropped_total(), spans.len() as u64);
    }
}
