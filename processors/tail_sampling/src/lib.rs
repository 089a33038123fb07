//! `tail_sampling` processor (traces), in the OpenTelemetry Collector's shape: spans are held by
//! trace id for `decision_wait`; then one decision keeps or drops the whole trace, so a trace is
//! never split. A trace is kept when any policy samples it.
//!
//! ```yaml
//! processors:
//!   tail_sampling:
//!     decision_wait: 5s
//!     num_traces: 50000            # traces held at once; beyond, the oldest is decided early
//!     max_bytes: 67108864          # bytes of spans held at once; beyond, the same
//!     decision_cache: {sampled_cache_size: 100000, non_sampled_cache_size: 100000}
//!     policies:
//!       - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
//!       - {name: slow, type: latency, latency: {threshold_ms: 500}}
//!       - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 10}}
//! ```
//!
//! Policies: `always_sample`, `probabilistic` (the same decision as OpenTelemetry's
//! `TraceIdRatioBased`, so SDKs and the head sampler agree), `latency` (any span at least
//! `threshold_ms`), `status_code`, `string_attribute` (exact values or regexes compiled once;
//! `invert_match`), `numeric_attribute` (`min_value..=max_value`), `rate_limiting`
//! (`spans_per_second`), `and` (every sub-policy), `composite` (sub-policies in `policy_order`,
//! each within its `rate_allocation` share of `max_total_spans_per_second`).
//!
//! Spans of a trace already decided follow the decision (bounded decision caches). Kept spans
//! carry `oxeye.sampling.probability` and `oxeye.sampling.adjusted_count`. Dropped spans are
//! counted as `dropped{reason="sampled_out"}`; decisions per policy, traces decided early and
//! late spans are counters on /metrics.

mod config;
mod policy;
mod processor;
mod store;
#[cfg(test)]
mod tests;

use oxeye_api::{BoxError, BuildContext, ConfigErrors, Factory, Processor, Signal};

pub use config::*;
use policy::compile;
pub use processor::TailSampling;
use store::Remembered;

// Keyed by what clients send (trace ids): a hasher with a random seed, so crafted ids cannot
// collide into quadratic lookups.
type KeyedMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type KeyedSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Factory for [`TailSampling`].
pub struct TailSamplingFactory;

impl Factory for TailSamplingFactory {
    type Config = TailSamplingConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "tail_sampling";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str =
        "keeps or drops whole traces after decision_wait (status, latency, attributes, rate, ...)";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-tail-sampling.md");

    fn validate(c: &TailSamplingConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.decision_wait.is_zero() {
            e.push("decision_wait", "must be greater than 0");
        }
        if c.num_traces == 0 {
            e.push("num_traces", "must be at least 1");
        }
        let caches = Remembered::max_bytes(c.decision_cache.sampled_cache_size)
            + Remembered::max_bytes(c.decision_cache.non_sampled_cache_size);
        if c.max_bytes < 2 * caches.max(1) {
            e.push(
                "max_bytes",
                format!(
                    "{} leaves no room for held traces: the decision caches alone may take {caches} bytes ({} + {} ids); use at least {} or shrink decision_cache",
                    c.max_bytes,
                    c.decision_cache.sampled_cache_size,
                    c.decision_cache.non_sampled_cache_size,
                    2 * caches.max(1)
                ),
            );
        }
        if c.policies.is_empty() {
            e.push(
                "policies",
                "list at least one policy, e.g. `- {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}`",
            );
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, p) in c.policies.iter().enumerate() {
            if seen.contains(&p.name.as_str()) {
                e.push(
                    format!("policies[{i}].name"),
                    format!("`{}` is used twice", p.name),
                );
            }
            seen.push(&p.name);
            validate_policy(p, &format!("policies[{i}]"), &mut e);
        }
        e.into_result()
    }

    fn build(c: TailSamplingConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let policies = c
            .policies
            .iter()
            .map(|p| compile(p).map(|r| (p.name.clone(), r)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(TailSampling::new(&c, policies, ctx.telemetry)))
    }
}

oxeye_api::register!(TailSamplingFactory);
