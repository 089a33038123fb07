//! `memory_limiter` processor, in the OpenTelemetry Collector's shape: every `check_interval`
//! it reads the process's resident memory; above the soft limit (`limit_mib` −
//! `spike_limit_mib`) the pipeline's entry refuses new data — receivers that can tell their
//! clients to retry do (OTLP: 429 / RESOURCE_EXHAUSTED with a retry delay), the others wait —
//! until memory is below the soft limit again. Batches already in the pipeline pass through
//! untouched. Put it first in the pipeline, as in the Collector (it gates the entry wherever
//! it is, but only a first processor also avoids decoding what it passes on).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oxeye_api::config::duration;
use oxeye_api::{
    Admission, Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Signal,
    Telemetry,
};
use serde::Deserialize;
use tracing::{error, info, warn};

mod memory;

/// `processors: {memory_limiter: ...}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimiterConfig {
    /// How often memory is read (required; the Collector recommends 1s).
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// The hard limit, MiB of resident memory.
    pub limit_mib: u64,
    /// Headroom below the hard limit for growth between checks; the soft limit is
    /// `limit_mib - spike_limit_mib`. Default: 20 % of `limit_mib`.
    pub spike_limit_mib: u64,
    /// The hard limit as a share of the memory oxeye may use (its cgroup's `memory.max`, else
    /// the machine's); `limit_mib` takes precedence.
    pub limit_percentage: u64,
    /// The spike limit as a share of the same total.
    pub spike_limit_percentage: u64,
    /// Above the soft limit, freed memory is handed back to the system (the allocator's
    /// collect: oxeye's counterpart of the Collector's forced GC) at most this often. Default 10s.
    #[serde(with = "duration")]
    pub min_gc_interval_when_soft_limited: Duration,
    /// The same above the hard limit. Default 0s: every check.
    #[serde(with = "duration")]
    pub min_gc_interval_when_hard_limited: Duration,
}

impl Default for MemoryLimiterConfig {
    fn default() -> Self {
        MemoryLimiterConfig {
            check_interval: Duration::ZERO,
            limit_mib: 0,
            spike_limit_mib: 0,
            limit_percentage: 0,
            spike_limit_percentage: 0,
            min_gc_interval_when_soft_limited: Duration::from_secs(10),
            min_gc_interval_when_hard_limited: Duration::ZERO,
        }
    }
}

/// The limits in bytes: `(soft, hard)`.
fn limits(c: &MemoryLimiterConfig, total: Option<u64>) -> Result<(u64, u64), String> {
    const MIB: u64 = 1 << 20;
    let (hard, spike) = if c.limit_mib > 0 {
        let spike = if c.spike_limit_mib > 0 {
            c.spike_limit_mib
        } else {
            c.limit_mib / 5
        };
        (c.limit_mib * MIB, spike * MIB)
    } else {
        let total = total.ok_or(
            "cannot read the memory available (cgroup memory.max, /proc/meminfo): set limit_mib",
        )?;
        let hard = total / 100 * c.limit_percentage;
        let spike = if c.spike_limit_percentage > 0 {
            total / 100 * c.spike_limit_percentage
        } else {
            hard / 5
        };
        (hard, spike)
    };
    Ok((hard.saturating_sub(spike), hard))
}

/// The gate the pipeline's entry consults, kept current by a thread of its own (so it reads
/// memory even while the pipeline is stalled, which is when it matters).
struct Limiter {
    soft: u64,
    hard: u64,
    every: Duration,
    /// Least time between releases of freed memory: above the soft, the hard limit.
    release_every: (Duration, Duration),
    /// When freed memory was last released.
    released: Mutex<Option<Instant>>,
    refusing: AtomicBool,
    /// Resident bytes at the last check.
    resident: AtomicU64,
    /// Times it started refusing.
    refusals: AtomicU64,
    telemetry: Telemetry,
    checker: OnceLock<()>,
}

impl Limiter {
    /// Starts the checking thread the first time the gate is consulted (building a component
    /// starts nothing). It ends once the processor and the edges holding the gate are gone.
    fn start(self: &Arc<Self>) {
        self.checker.get_or_init(|| {
            let weak: Weak<Limiter> = Arc::downgrade(self);
            let every = self.every;
            let spawned = std::thread::Builder::new()
                .name("memory_limiter".into())
                .spawn(move || loop {
                    let Some(limiter) = weak.upgrade() else {
                        return;
                    };
                    limiter.check();
                    drop(limiter);
                    std::thread::sleep(every);
                });
            if let Err(e) = spawned {
                error!("memory_limiter: cannot start its checking thread ({e}): it never refuses");
            }
        });
    }

    fn check(&self) {
        let Some(mut rss) = memory::resident() else {
            return;
        };
        if rss > self.soft && self.release_due(rss > self.hard) {
            // Memory freed after a burst may still be held by the allocator: hand it back
            // before deciding, as the Collector forces a GC.
            memory::release();
            rss = memory::resident().unwrap_or(rss);
        }
        self.resident.store(rss, Ordering::Relaxed);
        let mib = |b: u64| b >> 20;
        let was = self.refusing.load(Ordering::Relaxed);
        let now = rss > self.soft;
        if now && !was {
            let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
            self.telemetry
                .set_counter("memory_limiter_refusals", "memory_limiter", n);
            warn!(
                "memory_limiter: resident memory {} MiB is above the soft limit {} MiB: refusing new data",
                mib(rss),
                mib(self.soft)
            );
        } else if was && !now {
            info!(
                "memory_limiter: resident memory {} MiB is below the soft limit {} MiB again: taking data",
                mib(rss),
                mib(self.soft)
            );
        }
        if rss > self.hard {
            // Even after a release: say it, every check while it lasts.
            error!(
                "memory_limiter: resident memory {} MiB is above the hard limit {} MiB",
                mib(rss),
                mib(self.hard)
            );
        }
        self.refusing.store(now, Ordering::Relaxed);
    }

    /// Whether the least interval between releases has passed (and if so, starts a new one).
    fn release_due(&self, hard: bool) -> bool {
        let least = if hard {
            self.release_every.1
        } else {
            self.release_every.0
        };
        let mut last = self.released.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= least);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// The gate: what a receiver sending into the pipeline asks.
struct Gate(Arc<Limiter>);

impl Admission for Gate {
    fn refusing(&self) -> Option<&'static str> {
        self.0.start();
        self.0
            .refusing
            .load(Ordering::Relaxed)
            .then_some("memory_limit")
    }
}

/// The processor: passes every batch on.
pub struct MemoryLimiter {
    limiter: Arc<Limiter>,
}

#[async_trait]
impl Processor for MemoryLimiter {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        self.limiter.start();
        out.push(batch);
        Ok(())
    }

    fn takes_encoded(&self) -> bool {
        true
    }

    fn admission(&self) -> Option<Arc<dyn Admission>> {
        Some(Arc::new(Gate(Arc::clone(&self.limiter))))
    }
}

/// Factory for [`MemoryLimiter`].
pub struct MemoryLimiterFactory;

impl Factory for MemoryLimiterFactory {
    type Config = MemoryLimiterConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "memory_limiter";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str =
        "refuses new data at the pipeline's entry while resident memory is above a soft limit";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-memory-limiter.md");

    fn validate(c: &MemoryLimiterConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.check_interval.is_zero() {
            e.push("check_interval", "must be set and longer than 0s, e.g. 1s");
        }
        if c.limit_mib == 0 && c.limit_percentage == 0 {
            e.push(
                "limit_mib",
                "set limit_mib (MiB) or limit_percentage (of the memory available)",
            );
        }
        if c.limit_mib > 1 << 30 {
            e.push(
                "limit_mib",
                format!("must be at most 1073741824 (1 PiB), got {}", c.limit_mib),
            );
        }
        if c.limit_mib > 0 && (c.limit_percentage > 0 || c.spike_limit_percentage > 0) {
            e.push(
                "limit_percentage",
                "set limit_mib and spike_limit_mib, or limit_percentage and spike_limit_percentage, not both kinds",
            );
        }
        if c.limit_mib == 0 && c.spike_limit_mib > 0 {
            e.push(
                "spike_limit_mib",
                "goes with limit_mib: with limit_percentage, give spike_limit_percentage",
            );
        }
        if c.limit_mib > 0 && c.spike_limit_mib >= c.limit_mib {
            e.push(
                "spike_limit_mib",
                format!(
                    "must be below limit_mib ({}), got {}",
                    c.limit_mib, c.spike_limit_mib
                ),
            );
        }
        for (key, v) in [
            ("limit_percentage", c.limit_percentage),
            ("spike_limit_percentage", c.spike_limit_percentage),
        ] {
            if v > 100 {
                e.push(key, format!("must be 0 to 100, got {v}"));
            }
        }
        if c.limit_mib == 0
            && c.limit_percentage > 0
            && c.spike_limit_percentage >= c.limit_percentage
        {
            e.push(
                "spike_limit_percentage",
                format!(
                    "must be below limit_percentage ({}), got {}",
                    c.limit_percentage, c.spike_limit_percentage
                ),
            );
        }
        e.into_result()
    }

    fn build(c: MemoryLimiterConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let (soft, hard) = limits(&c, memory::total())?;
        Ok(Box::new(MemoryLimiter {
            limiter: Arc::new(Limiter {
                soft,
                hard,
                every: c.check_interval,
                release_every: (
                    c.min_gc_interval_when_soft_limited,
                    c.min_gc_interval_when_hard_limited,
                ),
                released: Mutex::new(None),
                refusing: AtomicBool::new(false),
                resident: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                telemetry: ctx.telemetry,
                checker: OnceLock::new(),
            }),
        }))
    }
}

oxeye_api::register!(MemoryLimiterFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{self, check, ProcessorHarness};

    #[test]
    fn soft_limit_is_the_hard_limit_minus_the_spike() {
        let c = |mib, spike, pct, spike_pct| MemoryLimiterConfig {
            check_interval: Duration::from_secs(1),
            limit_mib: mib,
            spike_limit_mib: spike,
            limit_percentage: pct,
            spike_limit_percentage: spike_pct,
            ..MemoryLimiterConfig::default()
        };
        assert_eq!(limits(&c(100, 0, 0, 0), None), Ok((80 << 20, 100 << 20)));
        assert_eq!(limits(&c(100, 30, 50, 0), None), Ok((70 << 20, 100 << 20)));
        let total = 1000 << 20;
        assert_eq!(
            limits(&c(0, 0, 50, 10), Some(total)),
            Ok((total / 100 * 40, total / 100 * 50))
        );
        assert!(limits(&c(0, 0, 50, 0), None).is_err());
    }

    #[test]
    fn every_mistake_at_once() {
        let e = check::<MemoryLimiterFactory>("{limit_mib: 10, spike_limit_mib: 10}")
            .expect_err("invalid");
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["check_interval", "spike_limit_mib"], "{e:?}");
        let e = check::<MemoryLimiterFactory>("{check_interval: 1s, limit_percentage: 120}")
            .expect_err("invalid");
        assert_eq!(e.0[0].path, "limit_percentage");
        assert!(check::<MemoryLimiterFactory>("{check_interval: 1s}").is_err());
        assert!(check::<MemoryLimiterFactory>("{check_interval: 1s, limit_mib: 512}").is_ok());
    }

    #[test]
    fn refuses_above_the_soft_limit_and_passes_batches_through() {
        // A soft limit far below this process's memory: it refuses within a check.
        let mut h =
            ProcessorHarness::new::<MemoryLimiterFactory>("{check_interval: 10ms, limit_mib: 2}")
                .expect("build");
        let out = h.process(testing::span_batch(10)).expect("process");
        assert_eq!(testing::count(&out), 10, "batches pass through");
        let gate = h.admission().expect("a gate");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gate.refusing().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(gate.refusing(), Some("memory_limit"));

        // A limit far above it: never refuses.
        let h = ProcessorHarness::new::<MemoryLimiterFactory>(
            "{check_interval: 10ms, limit_mib: 1048576}",
        )
        .expect("build");
        let gate = h.admission().expect("a gate");
        assert_eq!(gate.refusing(), None);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gate.refusing(), None);
    }
}
