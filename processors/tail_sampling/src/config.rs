//! The config: policies as the Collector writes them, and their checks.

use std::time::Duration;

use oxeye_api::ConfigErrors;
use serde::Deserialize;

/// Config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailSamplingConfig {
    /// How long spans of a new trace are held before the decision.
    #[serde(with = "oxeye_api::config::duration")]
    pub decision_wait: Duration,
    /// Traces held at once.
    pub num_traces: usize,
    /// Bytes of the batches kept for waiting spans (estimated).
    pub max_bytes: u64,
    /// Remembered decisions, for spans that arrive after them.
    pub decision_cache: DecisionCache,
    /// A trace is kept when any of them samples it.
    pub policies: Vec<PolicyConfig>,
}

impl Default for TailSamplingConfig {
    fn default() -> Self {
        TailSamplingConfig {
            decision_wait: Duration::from_secs(5),
            num_traces: 50_000,
            max_bytes: 64 << 20,
            decision_cache: DecisionCache::default(),
            policies: Vec::new(),
        }
    }
}

/// Sizes of the decision caches (trace ids).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCache {
    /// Kept traces remembered.
    pub sampled_cache_size: usize,
    /// Dropped traces remembered.
    pub non_sampled_cache_size: usize,
}

impl Default for DecisionCache {
    fn default() -> Self {
        DecisionCache {
            sampled_cache_size: 100_000,
            non_sampled_cache_size: 100_000,
        }
    }
}

/// Policy types.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    /// Every trace.
    AlwaysSample,
    /// A share of traces by trace id.
    Probabilistic,
    /// Traces with a span at least this long.
    Latency,
    /// Traces with a span of these statuses.
    StatusCode,
    /// Traces with a span (or resource) string attribute of these values.
    StringAttribute,
    /// Traces with a span numeric attribute in a range.
    NumericAttribute,
    /// Traces while their spans fit a per-second budget.
    RateLimiting,
    /// Traces every sub-policy samples.
    And,
    /// Sub-policies in order, each within a share of a spans/s budget.
    Composite,
}

impl PolicyType {
    pub(crate) fn key(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::Latency => "latency",
            PolicyType::StatusCode => "status_code",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::And => "and",
            PolicyType::Composite => "composite",
        }
    }
}

/// One policy: `name`, `type`, and the section named like the type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name (in metrics and logs).
    pub name: String,
    /// Which policy.
    #[serde(rename = "type")]
    pub kind: PolicyType,
    /// `latency:` section.
    pub latency: Option<LatencyConfig>,
    /// `probabilistic:` section.
    pub probabilistic: Option<ProbabilisticConfig>,
    /// `status_code:` section.
    pub status_code: Option<StatusCodeConfig>,
    /// `string_attribute:` section.
    pub string_attribute: Option<StringAttributeConfig>,
    /// `numeric_attribute:` section.
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// `rate_limiting:` section.
    pub rate_limiting: Option<RateLimitingConfig>,
    /// `and:` section.
    pub and: Option<AndConfig>,
    /// `composite:` section.
    pub composite: Option<CompositeConfig>,
}

/// `latency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// A span at least this long (ms) samples the trace.
    pub threshold_ms: u64,
}

/// `probabilistic`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// Percent of traces, by trace id.
    pub sampling_percentage: f64,
}

/// Status names as the Collector writes them.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum StatusName {
    /// Error.
    #[serde(rename = "ERROR")]
    Error,
    /// Ok.
    #[serde(rename = "OK")]
    Ok,
    /// Unset.
    #[serde(rename = "UNSET")]
    Unset,
}

/// `status_code`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// `ERROR`, `OK`, `UNSET`.
    pub status_codes: Vec<StatusName>,
}

/// `string_attribute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    /// Attribute key (span attributes, then resource attributes).
    pub key: String,
    /// Values (or regexes with `enabled_regex_matching`).
    pub values: Vec<String>,
    /// Treat `values` as regexes.
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Sample the traces that do *not* match.
    #[serde(default)]
    pub invert_match: bool,
}

/// `numeric_attribute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    /// Attribute key.
    pub key: String,
    /// Lowest value that samples.
    pub min_value: i64,
    /// Highest value that samples.
    pub max_value: i64,
}

/// `rate_limiting`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Spans of sampled traces per second.
    pub spans_per_second: u64,
}

/// `and`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    /// All must sample.
    pub and_sub_policy: Vec<PolicyConfig>,
}

/// `composite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    /// Spans/s of all sub-policies together.
    pub max_total_spans_per_second: u64,
    /// Sub-policy names, in the order they are tried.
    pub policy_order: Vec<String>,
    /// The sub-policies.
    pub composite_sub_policy: Vec<PolicyConfig>,
    /// Share of the budget per sub-policy; the rest is shared by those not listed.
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocation>,
}

/// A sub-policy's share of a composite budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocation {
    /// Sub-policy name.
    pub policy: String,
    /// Percent of `max_total_spans_per_second`.
    pub percent: f64,
}

pub(crate) fn validate_policy(p: &PolicyConfig, path: &str, e: &mut ConfigErrors) {
    if p.name.is_empty() {
        e.push(format!("{path}.name"), "must not be empty");
    }
    let sections: [(&str, bool); 8] = [
        ("latency", p.latency.is_some()),
        ("probabilistic", p.probabilistic.is_some()),
        ("status_code", p.status_code.is_some()),
        ("string_attribute", p.string_attribute.is_some()),
        ("numeric_attribute", p.numeric_attribute.is_some()),
        ("rate_limiting", p.rate_limiting.is_some()),
        ("and", p.and.is_some()),
        ("composite", p.composite.is_some()),
    ];
    let wanted = p.kind.key();
    for (key, present) in sections {
        if key == wanted && !present {
            e.push(
                path,
                format!("`type: {wanted}` needs a `{wanted}:` section"),
            );
        } else if key != wanted && present {
            e.push(
                format!("{path}.{key}"),
                format!("does not apply to `type: {wanted}`"),
            );
        }
    }
    if let Some(c) = &p.latency {
        if c.threshold_ms == 0 {
            e.push(
                format!("{path}.latency.threshold_ms"),
                "must be greater than 0",
            );
        }
    }
    if let Some(c) = &p.probabilistic {
        if !(0.0..=100.0).contains(&c.sampling_percentage) {
            e.push(
                format!("{path}.probabilistic.sampling_percentage"),
                format!("must be within 0..=100, got {}", c.sampling_percentage),
            );
        }
    }
    if p.status_code
        .as_ref()
        .is_some_and(|c| c.status_codes.is_empty())
    {
        e.push(
            format!("{path}.status_code.status_codes"),
            "list at least one of ERROR, OK, UNSET",
        );
    }
    if let Some(c) = &p.string_attribute {
        if c.values.is_empty() {
            e.push(
                format!("{path}.string_attribute.values"),
                "list at least one value",
            );
        }
        if c.enabled_regex_matching {
            for (i, v) in c.values.iter().enumerate() {
                if let Err(err) = regex::Regex::new(v) {
                    // regex's message spans lines (pattern, caret, reason): keep the reason.
                    let text = err.to_string();
                    let why = text.lines().last().unwrap_or(&text);
                    e.push(
                        format!("{path}.string_attribute.values[{i}]"),
                        format!(
                            "`{v}` is not a regex: {}",
                            why.trim_start_matches("error: ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(c) = &p.numeric_attribute {
        if c.min_value > c.max_value {
            e.push(
                format!("{path}.numeric_attribute"),
                format!(
                    "min_value {} is above max_value {}",
                    c.min_value, c.max_value
                ),
            );
        }
    }
    if p.rate_limiting
        .as_ref()
        .is_some_and(|c| c.spans_per_second == 0)
    {
        e.push(
            format!("{path}.rate_limiting.spans_per_second"),
            "must be greater than 0",
        );
    }
    if let Some(c) = &p.and {
        if c.and_sub_policy.is_empty() {
            e.push(
                format!("{path}.and.and_sub_policy"),
                "list at least one policy",
            );
        }
        for (i, sub) in c.and_sub_policy.iter().enumerate() {
            validate_policy(sub, &format!("{path}.and.and_sub_policy[{i}]"), e);
        }
    }
    if let Some(c) = &p.composite {
        let names: Vec<&str> = c
            .composite_sub_policy
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        for (i, sub) in c.composite_sub_policy.iter().enumerate() {
            validate_policy(
                sub,
                &format!("{path}.composite.composite_sub_policy[{i}]"),
                e,
            );
        }
        for (i, n) in c.policy_order.iter().enumerate() {
            if !names.contains(&n.as_str()) {
                e.push(
                    format!("{path}.composite.policy_order[{i}]"),
                    format!(
                        "`{n}` is not a composite_sub_policy (have: {})",
                        names.join(", ")
                    ),
                );
            }
        }
        let mut total = 0.0;
        for (i, a) in c.rate_allocation.iter().enumerate() {
            total += a.percent;
            if !names.contains(&a.policy.as_str()) {
                e.push(
                    format!("{path}.composite.rate_allocation[{i}].policy"),
                    format!("`{}` is not a composite_sub_policy", a.policy),
                );
            }
        }
        if total > 100.0 {
            e.push(
                format!("{path}.composite.rate_allocation"),
                format!("percents add up to {total}, more than 100"),
            );
        }
        if c.max_total_spans_per_second == 0 {
            e.push(
                format!("{path}.composite.max_total_spans_per_second"),
                "must be greater than 0",
            );
        }
    }
}
