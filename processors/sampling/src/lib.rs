//! `sampling` processor (traces).
//!
//! - `ratio`: consistent probability sampling by trace id — the same decision as OpenTelemetry's
//!   `TraceIdRatioBased` for the same id (the low 8 bytes, shifted right by one, below
//!   `ratio · 2^63`), so a whole trace is kept or dropped together, here and in SDKs.
//! - `rate_limit`: at most N spans per second per span name (a token bucket on span end time, so
//!   the limit holds on the spans' own clock and tests are exact).
//! - Per-span keep rules, decided first and **off by default**: keep spans at least
//!   `keep_slower_than` long, and error spans (`keep_errors`). They keep one span while the ratio
//!   drops the rest of its trace, so backends show orphan spans; `rate_limit` splits traces the
//!   same way. To keep every error or slow trace whole, use the `tail_sampling` processor.
//!
//! Each kept span carries `oxeye.sampling.probability` and `oxeye.sampling.adjusted_count`
//! (1 / probability) so counts can be re-weighted downstream. Dropped spans are counted as
//! `dropped{reason="sampled_out"}` or `{reason="rate_limited"}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records, Signal, Span,
    StatusCode, Telemetry, TraceId,
};
// Keyed by what clients send (trace ids, names, packet fields): a hasher with a random seed, so
// crafted keys cannot collide into quadratic lookups.
type KeyedMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use serde::Deserialize;

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Keep this fraction of traces, by trace id (absent: keep all).
    pub ratio: Option<f64>,
    /// At most this many spans per second per span name (absent: no limit).
    pub rate_limit: Option<f64>,
    /// Always keep spans at least this long (splits traces; see `tail_sampling`).
    #[serde(default, with = "oxeye_api::config::opt_duration")]
    pub keep_slower_than: Option<Duration>,
    /// Always keep spans with error status (off by default: it splits traces).
    pub keep_errors: bool,
}

/// OpenTelemetry's `TraceIdRatioBased` decision.
pub fn trace_id_ratio_keeps(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let upper = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.0[8..16].try_into().unwrap_or([0; 8]));
    (low >> 1) < upper
}

/// Token bucket per span name, on span time.
struct Bucket {
    tokens: f64,
    last_ns: u64,
    /// Arrivals per second (EWMA), for the kept spans' probability.
    arrival_rate: f64,
}

/// The processor.
pub struct Sampling {
    ratio: Option<f64>,
    rate: Option<f64>,
    slow_ns: Option<u64>,
    keep_errors: bool,
    buckets: KeyedMap<Arc<str>, Bucket>,
    telemetry: Telemetry,
    /// Attribute keys, allocated once (a key per kept span would be an allocation each).
    keys: [Arc<str>; 2],
}

enum Decision {
    Keep(f64),
    Drop(&'static str),
}

impl Sampling {
    fn decide(&mut self, s: &Span) -> Decision {
        if self.keep_errors && s.status == StatusCode::Error {
            return Decision::Keep(1.0);
        }
        if self.slow_ns.is_some_and(|min| s.duration_ns() >= min) {
            return Decision::Keep(1.0);
        }
        let mut p = 1.0;
        if let Some(r) = self.ratio {
            if !trace_id_ratio_keeps(r, &s.trace_id) {
                return Decision::Drop("sampled_out");
            }
            p = r.min(1.0);
        }
        if let Some(rate) = self.rate {
            let now = s.end_unix_ns;
            let b = self.buckets.entry(s.name.clone()).or_insert(Bucket {
                tokens: rate,
                last_ns: now,
                arrival_rate: 0.0,
            });
            if now > b.last_ns {
                let dt = (now - b.last_ns) as f64 / 1e9;
                b.tokens = (b.tokens + dt * rate).min(rate);
                b.arrival_rate *= (-dt).exp();
                b.last_ns = now;
            }
            // Arrivals per second, exponentially weighted with a 1 s time constant.
            b.arrival_rate += 1.0;
            if b.tokens < 1.0 {
                return Decision::Drop("rate_limited");
            }
            b.tokens -= 1.0;
            p *= (rate / b.arrival_rate.max(rate)).min(1.0);
        }
        Decision::Keep(p)
    }
}

#[async_trait]
impl Processor for Sampling {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        // In place: copied only if another pipeline shares the batch.
        let Records::Spans(spans) = &mut Arc::make_mut(&mut batch).records else {
            return Ok(());
        };
        let (mut sampled_out, mut limited) = (0, 0);
        let [prob, adjusted] = self.keys.clone();
        spans.retain_mut(|s| match self.decide(s) {
            Decision::Keep(p) => {
                s.attributes.set(prob.clone(), p);
                s.attributes.set(adjusted.clone(), 1.0 / p);
                true
            }
            Decision::Drop(reason) => {
                if reason == "rate_limited" {
                    limited += 1;
                } else {
                    sampled_out += 1;
                }
                false
            }
        });
        self.telemetry.add_dropped("sampled_out", sampled_out);
        self.telemetry.add_dropped("rate_limited", limited);
        out.push(batch);
        Ok(())
    }
}

/// Factory for [`Sampling`].
pub struct SamplingFactory;

impl Factory for SamplingFactory {
    type Config = SamplingConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "sampling";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str =
        "trace-id ratio (OTel-consistent), per-name rate limit, keep slow and error spans";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-sampling.md");

    fn validate(c: &SamplingConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if let Some(r) = c.ratio {
            if !(0.0..=1.0).contains(&r) {
                e.push("ratio", format!("must be within [0, 1], got {r}"));
            }
        }
        if let Some(r) = c.rate_limit {
            if !(r > 0.0 && r.is_finite()) {
                e.push(
                    "rate_limit",
                    format!("must be a positive number of spans per second, got {r}"),
                );
            }
        }
        e.into_result()
    }

    fn build(c: SamplingConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Sampling {
            ratio: c.ratio,
            rate: c.rate_limit,
            slow_ns: c.keep_slower_than.map(|d| d.as_nanos() as u64),
            keep_errors: c.keep_errors,
            buckets: KeyedMap::default(),
            telemetry: ctx.telemetry,
            keys: [
                "oxeye.sampling.probability".into(),
                "oxeye.sampling.adjusted_count".into(),
            ],
        }))
    }
}

oxeye_api::register!(SamplingFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, spans, ProcessorHarness};
    use oxeye_api::SpanId;

    fn span(trace: u128, name: &str, end_ns: u64, dur_ns: u64) -> Span {
        Span {
            trace_id: TraceId(trace.to_be_bytes()),
            span_id: SpanId([1; 8]),
            name: name.into(),
            start_unix_ns: end_ns - dur_ns,
            end_unix_ns: end_ns,
            ..Span::default()
        }
    }

    /// A cheap deterministic stream of 128-bit ids.
    fn ids(seed: u64, n: usize) -> impl Iterator<Item = u128> {
        let mut x = seed;
        (0..n).map(move |_| {
            let mut next = || {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            };
            ((next() as u128) << 64) | next() as u128
        })
    }

    #[test]
    fn ratio_is_tight_on_a_million_spans_and_marks_probability() {
        let mut h = ProcessorHarness::new::<SamplingFactory>("{ratio: 0.1}").unwrap();
        let mut kept = 0usize;
        let all: Vec<u128> = ids(42, 1_000_000).collect();
        for chunk in all.chunks(10_000) {
            let batch = Batch::spans(
                Arc::default(),
                chunk.iter().map(|&t| span(t, "op", 10, 1)).collect(),
            );
            let out = h.process(batch).unwrap();
            for s in spans(&out) {
                assert_eq!(
                    s.attributes.get("oxeye.sampling.probability"),
                    Some(&0.1.into())
                );
                assert_eq!(
                    s.attributes.get("oxeye.sampling.adjusted_count"),
                    Some(&10.0.into())
                );
            }
            kept += spans(&out).len();
        }
        // Binomial(1e6, 0.1): sd = 300; the bound is 5 sd.
        assert!((98_500..=101_500).contains(&kept), "kept {kept}");
        assert_eq!(
            h.telemetry().dropped(),
            vec![("sampled_out", 1_000_000 - kept as u64)]
        );
    }

    #[test]
    fn a_trace_is_kept_or_dropped_whole_like_opentelemetry() {
        use opentelemetry::trace::{SamplingDecision, SpanKind, TraceId as OtelTraceId};
        use opentelemetry_sdk::trace::{Sampler, ShouldSample};
        for ratio in [0.01, 0.25, 0.5, 0.9] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let mut h =
                ProcessorHarness::new::<SamplingFactory>(&format!("{{ratio: {ratio}}}")).unwrap();
            for t in ids(7, 2000) {
                // Five spans of one trace: all or none survive.
                let batch = Batch::spans(
                    Arc::default(),
                    (0..5).map(|i| span(t, &format!("s{i}"), 10, 1)).collect(),
                );
                let n = spans(&h.process(batch).unwrap()).len();
                assert!(n == 0 || n == 5, "trace split: {n} of 5");
                let otel = sdk.should_sample(
                    None,
                    OtelTraceId::from_bytes(t.to_be_bytes()),
                    "s",
                    &SpanKind::Internal,
                    &[],
                    &[],
                );
                let otel_keeps = otel.decision == SamplingDecision::RecordAndSample;
                assert_eq!(
                    n == 5,
                    otel_keeps,
                    "ratio {ratio}, trace {t:032x}: oxeye and the OTel SDK disagree"
                );
            }
        }
    }

    #[test]
    fn rate_limit_is_exact_on_span_time() {
        let mut h = ProcessorHarness::new::<SamplingFactory>("{rate_limit: 100}").unwrap();
        // 1000 spans/s of `a` and 50/s of `b` for 10 s of span time.
        let mut batch = Vec::new();
        for ms in 0..10_000u64 {
            batch.push(span(ms as u128 + 1, "a", 1_000_000_000 + ms * 1_000_000, 1));
            if ms % 20 == 0 {
                batch.push(span(ms as u128 + 1, "b", 1_000_000_000 + ms * 1_000_000, 1));
            }
        }
        let out = h.process(Batch::spans(Arc::default(), batch)).unwrap();
        let kept = spans(&out);
        let a = kept.iter().filter(|s| &*s.name == "a").count();
        let b = kept.iter().filter(|s| &*s.name == "b").count();
        // Burst of 100 at the start, then 100/s for the 9.999 s that follow.
        assert_eq!(a, 100 + 999, "a kept");
        assert_eq!(b, 500, "b under its limit is untouched");
        assert_eq!(
            h.telemetry().dropped(),
            vec![("rate_limited", 10_000 - a as u64)]
        );
        let p = kept
            .iter()
            .rev()
            .find(|s| &*s.name == "a")
            .and_then(|s| s.attributes.get("oxeye.sampling.probability").cloned());
        let Some(oxeye_api::Value::F64(p)) = p else {
            panic!("probability missing")
        };
        assert!(
            (0.09..0.11).contains(&p),
            "steady-state probability of a: {p}"
        );
    }

    #[test]
    fn tail_rules_keep_slow_and_error_spans() {
        let mut h = ProcessorHarness::new::<SamplingFactory>(
            "{ratio: 0.0, keep_slower_than: 5ms, keep_errors: true}",
        )
        .unwrap();
        let mut err = span(1, "e", 10_000_000, 10);
        err.status = StatusCode::Error;
        let batch = Batch::spans(
            Arc::default(),
            vec![
                span(2, "slow", 10_000_000, 6_000_000),
                span(3, "fast", 10_000_000, 10),
                err,
            ],
        );
        let out = h.process(batch).unwrap();
        let names: Vec<String> = spans(&out).iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["slow", "e"]);
        assert_eq!(
            spans(&out)[0]
                .attributes
                .get("oxeye.sampling.adjusted_count"),
            Some(&1.0.into())
        );
        let mut h =
            ProcessorHarness::new::<SamplingFactory>("{ratio: 0.0, keep_errors: false}").unwrap();
        let mut err = span(1, "e", 10, 1);
        err.status = StatusCode::Error;
        assert!(spans(&h.process(Batch::spans(Arc::default(), vec![err])).unwrap()).is_empty());
    }

    #[test]
    fn default_config_never_splits_a_trace() {
        // The case: ratio 0.25, errors and slow spans mixed into traces of 1-8 spans.
        let mut h = ProcessorHarness::new::<SamplingFactory>("{ratio: 0.25}").unwrap();
        let mut input = Vec::new();
        for (i, id) in ids(11, 20_000).enumerate() {
            for j in 0..(1 + i % 8) {
                let mut s = span(id, "op", 1_000_000_000, 1 + (j as u64 * 7_000_000));
                if (i + j) % 5 == 0 {
                    s.status = StatusCode::Error;
                }
                input.push(s);
            }
        }
        fn per_trace<'a>(spans: impl IntoIterator<Item = &'a Span>) -> KeyedMap<TraceId, usize> {
            let mut m: KeyedMap<TraceId, usize> = KeyedMap::default();
            for s in spans {
                *m.entry(s.trace_id).or_default() += 1;
            }
            m
        }
        let before = per_trace(&input);
        let out = h.process(Batch::spans(Arc::default(), input)).unwrap();
        let after = per_trace(spans(&out));
        assert!(after.len() > 4_000, "kept {} of 20 000 traces", after.len());
        let split = after.iter().filter(|(t, n)| before[*t] != **n).count();
        assert_eq!(split, 0, "traces kept only in part");
    }

    #[test]
    fn shared_batches_are_copied_not_changed() {
        let mut h = ProcessorHarness::new::<SamplingFactory>("{ratio: 0.0}").unwrap();
        let shared = Arc::new(Batch::spans(Arc::default(), vec![span(5, "x", 10, 1)]));
        assert!(spans(&h.process_shared(Arc::clone(&shared)).unwrap()).is_empty());
        assert_eq!(shared.len(), 1, "the other pipeline's batch is untouched");
    }

    #[test]
    fn validation() {
        let e = check::<SamplingFactory>("{ratio: 1.5, rate_limit: -1}").unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["ratio", "rate_limit"]);
        assert!(e.to_string().contains("must be within [0, 1], got 1.5"));
        assert!(check::<SamplingFactory>("{keep_slower_than: 5}").is_err());
    }
}
