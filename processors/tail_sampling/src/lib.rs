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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records, Resource,
    Signal, Span, StatusCode, Telemetry, TraceId, Value,
};
use oxeye_processor_sampling::trace_id_ratio_keeps;
// Keyed by what clients send (trace ids, names, packet fields): a hasher with a random seed, so
// crafted keys cannot collide into quadratic lookups.
type KeyedMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type KeyedSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
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
    fn key(self) -> &'static str {
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

fn validate_policy(p: &PolicyConfig, path: &str, e: &mut ConfigErrors) {
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

/// Spans counted against a per-second budget (the second of the decision's wall-clock time).
#[derive(Debug, Default)]
struct Budget {
    limit: f64,
    second: u64,
    spent: f64,
}

impl Budget {
    fn new(limit: f64) -> Budget {
        Budget {
            limit,
            ..Budget::default()
        }
    }

    /// Takes `n` spans from this second's budget if they fit.
    fn take(&mut self, n: usize, now_ns: u64) -> bool {
        let second = now_ns / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.spent = 0.0;
        }
        if self.spent + n as f64 <= self.limit {
            self.spent += n as f64;
            true
        } else {
            false
        }
    }
}

/// A compiled policy.
#[derive(Debug)]
enum Rule {
    Always,
    Probabilistic(f64),
    Latency(u64),
    Status(Vec<StatusCode>),
    StringAttr {
        key: String,
        values: Vec<String>,
        regexes: Option<Vec<regex::Regex>>,
        invert: bool,
    },
    NumericAttr {
        key: String,
        min: i64,
        max: i64,
    },
    RateLimit(Budget),
    And(Vec<Rule>),
    Composite {
        total: Budget,
        /// In `policy_order`: (rule, its own budget).
        order: Vec<(Rule, Budget)>,
    },
}

fn compile(p: &PolicyConfig) -> Result<Rule, String> {
    let missing = || {
        format!(
            "policy `{}`: missing its `{}:` section",
            p.name,
            p.kind.key()
        )
    };
    Ok(match p.kind {
        PolicyType::AlwaysSample => Rule::Always,
        PolicyType::Probabilistic => Rule::Probabilistic(
            p.probabilistic
                .as_ref()
                .ok_or_else(missing)?
                .sampling_percentage
                / 100.0,
        ),
        PolicyType::Latency => {
            Rule::Latency(p.latency.as_ref().ok_or_else(missing)?.threshold_ms * 1_000_000)
        }
        PolicyType::StatusCode => Rule::Status(
            p.status_code
                .as_ref()
                .ok_or_else(missing)?
                .status_codes
                .iter()
                .map(|s| match s {
                    StatusName::Error => StatusCode::Error,
                    StatusName::Ok => StatusCode::Ok,
                    StatusName::Unset => StatusCode::Unset,
                })
                .collect(),
        ),
        PolicyType::StringAttribute => {
            let c = p.string_attribute.as_ref().ok_or_else(missing)?;
            let regexes = if c.enabled_regex_matching {
                Some(
                    c.values
                        .iter()
                        .map(|v| regex::Regex::new(v).map_err(|e| e.to_string()))
                        .collect::<Result<_, _>>()?,
                )
            } else {
                None
            };
            Rule::StringAttr {
                key: c.key.clone(),
                values: c.values.clone(),
                regexes,
                invert: c.invert_match,
            }
        }
        PolicyType::NumericAttribute => {
            let c = p.numeric_attribute.as_ref().ok_or_else(missing)?;
            Rule::NumericAttr {
                key: c.key.clone(),
                min: c.min_value,
                max: c.max_value,
            }
        }
        PolicyType::RateLimiting => Rule::RateLimit(Budget::new(
            p.rate_limiting
                .as_ref()
                .ok_or_else(missing)?
                .spans_per_second as f64,
        )),
        PolicyType::And => Rule::And(
            p.and
                .as_ref()
                .ok_or_else(missing)?
                .and_sub_policy
                .iter()
                .map(compile)
                .collect::<Result<_, _>>()?,
        ),
        PolicyType::Composite => {
            let c = p.composite.as_ref().ok_or_else(missing)?;
            let max = c.max_total_spans_per_second as f64;
            let allocated: f64 = c.rate_allocation.iter().map(|a| a.percent).sum();
            let unlisted = c
                .policy_order
                .iter()
                .filter(|n| !c.rate_allocation.iter().any(|a| &a.policy == *n))
                .count()
                .max(1) as f64;
            let mut order = Vec::new();
            for name in &c.policy_order {
                let sub = c
                    .composite_sub_policy
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| format!("composite policy order names `{name}`"))?;
                let percent = c
                    .rate_allocation
                    .iter()
                    .find(|a| &a.policy == name)
                    .map_or((100.0 - allocated).max(0.0) / unlisted, |a| a.percent);
                order.push((compile(sub)?, Budget::new(max * percent / 100.0)));
            }
            Rule::Composite {
                total: Budget::new(max),
                order,
            }
        }
    })
}

/// What a rule says of one trace.
struct Verdict {
    sample: bool,
    /// The probability the trace had of being kept by this rule (1 unless probabilistic).
    probability: f64,
}

/// The spans of one held trace, where they lie: in the batches they arrived in.
struct TraceView<'a> {
    refs: &'a [(u32, u32)],
    slabs: &'a [Option<Slab>],
}

impl<'a> TraceView<'a> {
    fn len(&self) -> usize {
        self.refs.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&'a Resource, &'a Span)> + '_ {
        self.refs.iter().filter_map(|&(b, i)| {
            let slab = self.slabs.get(b as usize)?.as_ref()?;
            Some((&*slab.resource, slab.spans.get(i as usize)?))
        })
    }
}

impl Rule {
    fn evaluate(&mut self, id: &TraceId, spans: &TraceView<'_>, now_ns: u64) -> Verdict {
        let yes = |sample: bool| Verdict {
            sample,
            probability: 1.0,
        };
        match self {
            Rule::Always => yes(true),
            Rule::Probabilistic(ratio) => Verdict {
                sample: trace_id_ratio_keeps(*ratio, id),
                probability: ratio.min(1.0),
            },
            Rule::Latency(min) => yes(spans.iter().any(|(_, s)| s.duration_ns() >= *min)),
            Rule::Status(codes) => yes(spans.iter().any(|(_, s)| codes.contains(&s.status))),
            Rule::StringAttr {
                key,
                values,
                regexes,
                invert,
            } => {
                let (regexes, values) = (&*regexes, &*values);
                let is_match = |v: &str| match regexes {
                    Some(r) => r.iter().any(|r| r.is_match(v)),
                    None => values.iter().any(|x| x == v),
                };
                let found = spans.iter().any(|(res, s)| {
                    [s.attributes.get(key), res.attributes.get(key)]
                        .into_iter()
                        .flatten()
                        .any(|v| matches!(v, Value::Str(text) if is_match(text)))
                });
                yes(found != *invert)
            }
            Rule::NumericAttr { key, min, max } => {
                yes(spans.iter().any(|(_, s)| match s.attributes.get(key) {
                    Some(Value::Int(v)) => (*min..=*max).contains(v),
                    Some(Value::F64(v)) => *v >= *min as f64 && *v <= *max as f64,
                    _ => false,
                }))
            }
            Rule::RateLimit(budget) => yes(budget.take(spans.len(), now_ns)),
            Rule::And(rules) => {
                let mut probability = 1.0;
                for r in rules.iter_mut() {
                    let v = r.evaluate(id, spans, now_ns);
                    if !v.sample {
                        return yes(false);
                    }
                    probability *= v.probability;
                }
                Verdict {
                    sample: true,
                    probability,
                }
            }
            Rule::Composite { total, order } => {
                for (rule, budget) in order.iter_mut() {
                    let v = rule.evaluate(id, spans, now_ns);
                    if v.sample && budget.take(spans.len(), now_ns) {
                        return Verdict {
                            sample: total.take(spans.len(), now_ns),
                            probability: v.probability,
                        };
                    }
                }
                yes(false)
            }
        }
    }
}

/// Remembered decisions, bounded: the oldest is forgotten first.
#[derive(Debug)]
struct Remembered {
    ids: KeyedSet<TraceId>,
    order: VecDeque<TraceId>,
    capacity: usize,
}

impl Remembered {
    fn new(capacity: usize) -> Self {
        Remembered {
            ids: KeyedSet::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, id: TraceId) {
        if self.capacity == 0 || !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    fn contains(&self, id: &TraceId) -> bool {
        self.ids.contains(id)
    }

    /// Estimated memory: hash table slots (id + control byte, 7/8 full at most) and the order.
    fn bytes(&self) -> u64 {
        (self.ids.capacity() * 8 / 7 * (std::mem::size_of::<TraceId>() + 1)
            + self.order.capacity() * std::mem::size_of::<TraceId>()) as u64
    }

    /// The most [`Self::bytes`] can become with `entries` ids.
    fn max_bytes(entries: usize) -> u64 {
        let buckets = (entries * 8 / 7).next_power_of_two();
        (buckets * (std::mem::size_of::<TraceId>() + 1)
            + entries.next_power_of_two() * std::mem::size_of::<TraceId>()) as u64
    }
}

/// Largest batch the processor emits.
const MAX_BATCH: usize = 4096;

/// A batch as it arrived, kept until every held span in it is decided: spans wait where they
/// are (moving a span costs more than deciding it), and a kept one is moved out once.
struct Slab {
    resource: Arc<Resource>,
    spans: Vec<Span>,
    /// Held spans still waiting for their trace's decision.
    waiting: usize,
    bytes: u64,
}

/// A trace waiting for its decision: where its spans are.
struct Held {
    arrived_ns: u64,
    refs: Vec<(u32, u32)>,
}

/// Heap bytes of a vector's buffer (with the allocator's header), 0 when it has none.
fn vec_bytes(capacity: usize, element: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity * element + 16
    }
}

/// Estimated heap memory a held span owns — strings, attributes, events, links, stacks (its
/// own slot is counted with its batch).
fn span_bytes(s: &Span) -> u64 {
    s.heap_bytes() as u64
}

/// Memory of a kept batch itself: every slot of its buffer stays until its last span is decided.
fn slab_bytes(capacity: usize) -> u64 {
    (vec_bytes(capacity, std::mem::size_of::<Span>()) + std::mem::size_of::<Option<Slab>>()) as u64
}

/// Memory of a held trace besides its spans: map entry, span references, arrival record.
const TRACE_BYTES: u64 = (std::mem::size_of::<(TraceId, Held)>()
    + std::mem::size_of::<(u32, u32)>() * 2
    + std::mem::size_of::<(u64, TraceId)>()) as u64;

/// The processor.
pub struct TailSampling {
    wait_ns: u64,
    num_traces: usize,
    max_bytes: u64,
    policies: Vec<(String, Rule)>,
    held: KeyedMap<TraceId, Held>,
    /// Trace ids in arrival order (an id already decided early is skipped).
    arrivals: VecDeque<(u64, TraceId)>,
    /// Batches with spans still waiting; `None` slots are reused.
    slabs: Vec<Option<Slab>>,
    free: Vec<u32>,
    /// Estimated bytes of the slabs kept.
    bytes: u64,
    /// Spans waiting for their trace's decision.
    waiting: u64,
    sampled: Remembered,
    not_sampled: Remembered,
    /// Per policy: (sampled, not sampled).
    decisions: Vec<(u64, u64)>,
    decided_early: u64,
    /// When a bound last made a decision early was logged, and how many since.
    early_logged: Option<std::time::Instant>,
    early_unlogged: u64,
    late: u64,
    /// Kept spans, grouped by resource as they come: each group becomes a batch as it is.
    ready: Vec<(Arc<Resource>, Vec<Span>)>,
    /// Spans dropped since the last `emit` (counted once per call, not once per trace).
    dropped: u64,
    telemetry: Telemetry,
    keys: [Arc<str>; 2],
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Queues a kept span into the current group of its resource.
fn keep(ready: &mut Vec<(Arc<Resource>, Vec<Span>)>, res: &Arc<Resource>, s: Span) {
    match ready.last_mut() {
        Some((r, spans)) if Arc::ptr_eq(r, res) && spans.len() < MAX_BATCH => spans.push(s),
        _ => ready.push((res.clone(), vec![s])),
    }
}

impl TailSampling {
    /// Decides one held trace: every span kept (with its probability) or dropped together.
    fn decide(&mut self, id: TraceId, now_ns: u64) {
        let Some(trace) = self.held.remove(&id) else {
            return;
        };
        self.bytes -= TRACE_BYTES;
        let view = TraceView {
            refs: &trace.refs,
            slabs: &self.slabs,
        };
        let mut keep_it = false;
        let mut probability: f64 = 0.0;
        for (i, (_, rule)) in self.policies.iter_mut().enumerate() {
            let v = rule.evaluate(&id, &view, now_ns);
            if v.sample {
                keep_it = true;
                probability = probability.max(v.probability);
                self.decisions[i].0 += 1;
            } else {
                self.decisions[i].1 += 1;
            }
        }
        if keep_it {
            self.sampled.insert(id);
        } else {
            self.not_sampled.insert(id);
            self.dropped += trace.refs.len() as u64;
        }
        let adjusted = 1.0 / probability.max(f64::MIN_POSITIVE);
        self.waiting -= trace.refs.len() as u64;
        for &(b, i) in &trace.refs {
            let Some(slab) = self.slabs.get_mut(b as usize).and_then(Option::as_mut) else {
                continue;
            };
            if keep_it {
                if let Some(slot) = slab.spans.get_mut(i as usize) {
                    // The one move of a kept span; a dropped one is freed with its batch.
                    let mut s = std::mem::take(slot);
                    s.attributes.set(self.keys[0].clone(), probability);
                    s.attributes.set(self.keys[1].clone(), adjusted);
                    keep(&mut self.ready, &slab.resource, s);
                }
            }
            slab.waiting -= 1;
            if slab.waiting == 0 {
                self.bytes -= slab.bytes;
                self.slabs[b as usize] = None;
                self.free.push(b);
            }
        }
    }

    /// Decides the oldest traces until the bounds hold again.
    fn enforce_bounds(&mut self, now_ns: u64) {
        while self.held.len() > self.num_traces || self.memory() > self.max_bytes {
            let Some((_, id)) = self.arrivals.pop_front() else {
                break;
            };
            if self.held.contains_key(&id) {
                self.decided_early += 1;
                self.early_unlogged += 1;
                self.decide(id, now_ns);
            }
        }
        let due = self
            .early_logged
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
        if self.early_unlogged > 0 && due {
            tracing::warn!(
                decided_early = self.early_unlogged,
                total = self.decided_early,
                held_traces = self.held.len(),
                estimated_bytes = self.memory(),
                "tail_sampling is full (num_traces {}, max_bytes {}): the oldest traces were decided before decision_wait; raise the bounds or shorten decision_wait",
                self.num_traces,
                self.max_bytes
            );
            self.early_logged = Some(std::time::Instant::now());
            self.early_unlogged = 0;
        }
    }

    /// Estimated memory held: batches with waiting spans, traces, decision caches.
    fn memory(&self) -> u64 {
        self.bytes + self.sampled.bytes() + self.not_sampled.bytes()
    }

    /// Emits what was kept.
    fn emit(&mut self, out: &mut Output) {
        for (res, spans) in std::mem::take(&mut self.ready) {
            out.push(Batch::spans(res, spans));
        }
        self.telemetry
            .add_dropped("sampled_out", std::mem::take(&mut self.dropped));
        self.publish();
    }

    fn publish(&self) {
        let t = &self.telemetry;
        for ((name, _), (yes, no)) in self.policies.iter().zip(&self.decisions) {
            t.set_counter("tail_sampling_sampled", name, *yes);
            t.set_counter("tail_sampling_not_sampled", name, *no);
        }
        t.set_counter(
            "tail_sampling_decided_early",
            "tail_sampling",
            self.decided_early,
        );
        t.set_counter("tail_sampling_late_spans", "tail_sampling", self.late);
    }
}

#[async_trait]
impl Processor for TailSampling {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        let now_ns = unix_ns(SystemTime::now());
        let resource = batch.resource.clone();
        // Owned spans without a copy unless another pipeline shares the batch.
        let mut spans = match Arc::try_unwrap(batch) {
            Ok(b) => match b.records {
                Records::Spans(s) => s,
                Records::Encoded(e) => e.decode()?,
                // The factory takes traces only.
                _ => return Ok(()),
            },
            Err(shared) => match &shared.records {
                Records::Spans(s) => s.clone(),
                Records::Encoded(e) => e.decode()?,
                _ => return Ok(()),
            },
        };
        let slot = self.free.pop().unwrap_or(self.slabs.len() as u32);
        let mut waiting = 0;
        let mut bytes = 0;
        for (i, s) in spans.iter_mut().enumerate() {
            let id = s.trace_id;
            if let Some(trace) = self.held.get_mut(&id) {
                trace.refs.push((slot, i as u32));
            } else if self.sampled.contains(&id) {
                // After the decision: follows it.
                self.late += 1;
                keep(&mut self.ready, &resource, std::mem::take(s));
                continue;
            } else if self.not_sampled.contains(&id) {
                self.late += 1;
                self.dropped += 1;
                continue;
            } else {
                self.arrivals.push_back((now_ns, id));
                self.bytes += TRACE_BYTES;
                self.held.insert(
                    id,
                    Held {
                        arrived_ns: now_ns,
                        refs: vec![(slot, i as u32)],
                    },
                );
            }
            waiting += 1;
            bytes += span_bytes(s);
        }
        if waiting > 0 {
            self.waiting += waiting as u64;
            let bytes = bytes + slab_bytes(spans.capacity());
            let slab = Slab {
                resource,
                spans,
                waiting,
                bytes,
            };
            self.bytes += bytes;
            match self.slabs.get_mut(slot as usize) {
                Some(free) => *free = Some(slab),
                None => self.slabs.push(Some(slab)),
            }
        } else if (slot as usize) < self.slabs.len() {
            self.free.push(slot);
        }
        self.enforce_bounds(now_ns);
        self.emit(out);
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        // Decisions at most a tenth of the wait late (10 ms to 1 s).
        Some(
            Duration::from_nanos(self.wait_ns / 10)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        )
    }

    async fn tick(&mut self, now: SystemTime, out: &mut Output) -> Result<(), BoxError> {
        let now_ns = unix_ns(now);
        while let Some(&(arrived, id)) = self.arrivals.front() {
            if arrived.saturating_add(self.wait_ns) > now_ns {
                break;
            }
            self.arrivals.pop_front();
            if self.held.get(&id).is_some_and(|h| h.arrived_ns == arrived) {
                self.decide(id, now_ns);
            }
        }
        self.emit(out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Output) -> Result<(), BoxError> {
        let now_ns = unix_ns(SystemTime::now());
        while let Some((_, id)) = self.arrivals.pop_front() {
            self.decide(id, now_ns);
        }
        self.emit(out);
        Ok(())
    }

    fn held(&self) -> u64 {
        // Spans waiting for their trace's decision (kept ones are emitted before a call ends).
        self.waiting
    }
}

/// Factory for [`TailSampling`].
pub struct TailSamplingFactory;

impl Factory for TailSamplingFactory {
    type Config = TailSamplingConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "tail_sampling";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str =
        "keeps or drops whole traces after decision_wait (status, latency, attributes, rate, ...)";

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
        Ok(Box::new(TailSampling {
            wait_ns: c.decision_wait.as_nanos() as u64,
            num_traces: c.num_traces,
            max_bytes: c.max_bytes,
            decisions: vec![(0, 0); policies.len()],
            policies,
            held: KeyedMap::default(),
            arrivals: VecDeque::new(),
            slabs: Vec::new(),
            free: Vec::new(),
            bytes: 0,
            waiting: 0,
            sampled: Remembered::new(c.decision_cache.sampled_cache_size),
            not_sampled: Remembered::new(c.decision_cache.non_sampled_cache_size),
            decided_early: 0,
            early_logged: None,
            early_unlogged: 0,
            late: 0,
            ready: Vec::new(),
            dropped: 0,
            telemetry: ctx.telemetry,
            keys: [
                Arc::from("oxeye.sampling.probability"),
                Arc::from("oxeye.sampling.adjusted_count"),
            ],
        }))
    }
}

oxeye_api::register!(TailSamplingFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, ProcessorHarness};
    use oxeye_api::SpanId;
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
        let mut h = ProcessorHarness::new::<TailSamplingFactory>(&format!(
            "{{decision_wait: 1s, {POLICIES}}}"
        ))
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
        let e = check::<TailSamplingFactory>(&format!("{{max_bytes: 10000000, {POLICIES}}}"))
            .unwrap_err();
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
}
