//! Policies compiled into rules, and how a rule judges one held trace.

use oxeye_api::{Resource, Span, StatusCode, TraceId, Value};
use oxeye_processor_sampling::trace_id_ratio_keeps;

use crate::config::*;
use crate::store::Slab;

/// Spans counted against a per-second budget (the second of the decision's wall-clock time).
#[derive(Debug, Default)]
pub(crate) struct Budget {
    limit: f64,
    second: u64,
    spent: f64,
}

impl Budget {
    pub(crate) fn new(limit: f64) -> Budget {
        Budget {
            limit,
            ..Budget::default()
        }
    }

    /// Takes `n` spans from this second's budget if they fit.
    pub(crate) fn take(&mut self, n: usize, now_ns: u64) -> bool {
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
pub(crate) enum Rule {
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

pub(crate) fn compile(p: &PolicyConfig) -> Result<Rule, String> {
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
pub(crate) struct Verdict {
    pub(crate) sample: bool,
    /// The probability the trace had of being kept by this rule (1 unless probabilistic).
    pub(crate) probability: f64,
}

/// The spans of one held trace, where they lie: in the batches they arrived in.
pub(crate) struct TraceView<'a> {
    pub(crate) refs: &'a [(u32, u32)],
    pub(crate) slabs: &'a [Option<Slab>],
}

impl<'a> TraceView<'a> {
    pub(crate) fn len(&self) -> usize {
        self.refs.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a Resource, &'a Span)> + '_ {
        self.refs.iter().filter_map(|&(b, i)| {
            let slab = self.slabs.get(b as usize)?.as_ref()?;
            Some((&*slab.resource, slab.spans.get(i as usize)?))
        })
    }
}

impl Rule {
    pub(crate) fn evaluate(&mut self, id: &TraceId, spans: &TraceView<'_>, now_ns: u64) -> Verdict {
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
