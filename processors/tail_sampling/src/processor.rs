//! The processor: holds spans by trace, decides each trace once, emits what is kept.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::{Batch, BoxError, Output, Processor, Records, Resource, Span, Telemetry, TraceId};

use crate::config::TailSamplingConfig;
use crate::policy::{Rule, TraceView};
use crate::store::*;
use crate::KeyedMap;

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

pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Queues a kept span into the current group of its resource.
pub(crate) fn keep(ready: &mut Vec<(Arc<Resource>, Vec<Span>)>, res: &Arc<Resource>, s: Span) {
    match ready.last_mut() {
        Some((r, spans)) if Arc::ptr_eq(r, res) && spans.len() < MAX_BATCH => spans.push(s),
        _ => ready.push((res.clone(), vec![s])),
    }
}

impl TailSampling {
    pub(crate) fn new(
        c: &TailSamplingConfig,
        policies: Vec<(String, Rule)>,
        telemetry: Telemetry,
    ) -> Self {
        TailSampling {
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
            telemetry,
            keys: [
                Arc::from("oxeye.sampling.probability"),
                Arc::from("oxeye.sampling.adjusted_count"),
            ],
        }
    }

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
