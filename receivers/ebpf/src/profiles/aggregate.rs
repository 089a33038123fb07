//! Counting profile samples in user space: identical (thread, span, kernel stack, user stack) in
//! one window become one [`Sample`] with a count.
//!
//! Windows are aligned to wall-clock multiples of `window`. Each open window keeps its stacks in
//! one arena (`Vec<u64>`) and an index from a 64-bit hash to a chain of entries, so a sample
//! whose stack was seen before costs a hash and a comparison, and a new one an append: no
//! allocation per sample. At most `max_stacks` entries per window: samples of further stacks are
//! counted in one overflow record (their stacks are lost, counted; their CPU time is not).
//! A process's executable mappings are snapshotted the first time it is sampled in a window
//! (the caller reads them off the async workers), so its stacks still resolve after it exits.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::Arc;

use oxeye_api::{Attributes, Comm, Mapping, Sample, SpanId, TraceId};
use rustc_hash::{FxHashMap, FxHasher};

/// One sample as it left the kernel.
#[derive(Clone, Copy, Debug)]
pub struct RawSample<'a> {
    /// When it was taken, Unix ns.
    pub unix_ns: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread comm.
    pub comm: [u8; 16],
    /// Trace of the span open on the thread (all zero: none).
    pub trace_id: [u8; 16],
    /// That span's id (0: none).
    pub span_id: u64,
    /// Kernel stack, innermost first.
    pub kernel: &'a [u64],
    /// User stack, innermost first.
    pub user: &'a [u64],
    /// The user stack was walked with unwind tables and cut short: it does not reach the
    /// outermost frame.
    pub truncated: bool,
}

/// One counted stack of a window; its frames live in the window's arena.
struct Entry {
    hash: u64,
    /// Next entry with the same `hash & mask` bucket (u32::MAX: none).
    next: u32,
    pid: u32,
    tid: u32,
    comm: [u8; 16],
    trace_id: [u8; 16],
    span_id: u64,
    /// `arena[at..at + klen]` kernel frames, then `ulen` user frames.
    at: u32,
    klen: u16,
    ulen: u16,
    truncated: bool,
    count: u64,
}

#[derive(Default)]
struct Window {
    /// Hash → first entry of its chain.
    index: FxHashMap<u64, u32>,
    entries: Vec<Entry>,
    arena: Vec<u64>,
    /// Samples of stacks beyond `max_stacks`.
    overflow: u64,
}

/// The executable mappings of a process, read at most once per window.
struct Snapshot {
    mappings: Arc<[Mapping]>,
    /// Start of the window it was last requested for.
    window: u64,
}

/// Per-window counting of samples; see the module docs.
pub struct Aggregator {
    window_ns: u64,
    period_ns: u64,
    max_stacks: usize,
    windows: BTreeMap<u64, Window>,
    /// Windows starting before this are closed; a sample for one counts in the oldest open one.
    closed_before: u64,
    snapshots: FxHashMap<u32, Snapshot>,
    /// Samples counted so far, and samples whose stacks overflowed `max_stacks`.
    samples: u64,
    overflowed: u64,
}

/// The attribute of samples whose user stack was cut short (`unwind: tables`), or walked with
/// frame pointers before its process's tables were loaded: the stack is not known to reach
/// the outermost frame, and exporters say so (folded: a `[truncated]` root).
pub const TRUNCATED: &str = "oxeye.profile.truncated";

fn hash(s: &RawSample<'_>) -> u64 {
    let mut h = FxHasher::default();
    h.write_u64((s.pid as u64) << 32 | s.tid as u64);
    h.write_u64(s.span_id);
    h.write_usize(s.kernel.len() | (s.truncated as usize) << 16);
    for &a in s.kernel.iter().chain(s.user) {
        h.write_u64(a);
    }
    h.finish()
}

impl Aggregator {
    /// Windows of `window_ns`, samples standing for `period_ns` of CPU each.
    pub fn new(window_ns: u64, period_ns: u64, max_stacks: usize) -> Aggregator {
        Aggregator {
            window_ns: window_ns.max(1),
            period_ns,
            max_stacks: max_stacks.max(1),
            windows: BTreeMap::new(),
            closed_before: 0,
            snapshots: FxHashMap::default(),
            samples: 0,
            overflowed: 0,
        }
    }

    /// Counts one sample. Returns its pid when the process's mappings should be snapshotted
    /// now (first sample of the process in this window): read them and call
    /// [`Aggregator::set_mappings`].
    pub fn add(&mut self, s: &RawSample<'_>) -> Option<u32> {
        let start = (s.unix_ns - s.unix_ns % self.window_ns).max(self.closed_before);
        let max_stacks = self.max_stacks;
        let w = self.windows.entry(start).or_default();
        self.samples += 1;
        let h = hash(s);
        let (klen, ulen) = (s.kernel.len(), s.user.len());
        let mut at = w.index.get(&h).copied().unwrap_or(u32::MAX);
        while at != u32::MAX {
            let e = &mut w.entries[at as usize];
            let frames = &w.arena[e.at as usize..e.at as usize + e.klen as usize + e.ulen as usize];
            if e.hash == h
                && e.pid == s.pid
                && e.tid == s.tid
                && e.span_id == s.span_id
                && e.trace_id == s.trace_id
                && e.klen as usize == klen
                && e.ulen as usize == ulen
                && e.truncated == s.truncated
                && frames[..klen] == *s.kernel
                && frames[klen..] == *s.user
            {
                e.count += 1;
                return None;
            }
            at = e.next;
        }
        if w.entries.len() >= max_stacks {
            w.overflow += 1;
            self.overflowed += 1;
        } else {
            let next = w
                .index
                .insert(h, w.entries.len() as u32)
                .unwrap_or(u32::MAX);
            w.entries.push(Entry {
                hash: h,
                next,
                pid: s.pid,
                tid: s.tid,
                comm: s.comm,
                trace_id: s.trace_id,
                span_id: s.span_id,
                at: w.arena.len() as u32,
                klen: klen as u16,
                ulen: ulen as u16,
                truncated: s.truncated,
                count: 1,
            });
            w.arena.extend_from_slice(s.kernel);
            w.arena.extend_from_slice(s.user);
        }
        match self.snapshots.get_mut(&s.pid) {
            Some(snap) if snap.window == start => None,
            Some(snap) => {
                snap.window = start;
                Some(s.pid)
            }
            None => {
                self.snapshots.insert(
                    s.pid,
                    Snapshot {
                        mappings: Arc::from([]),
                        window: start,
                    },
                );
                Some(s.pid)
            }
        }
    }

    /// Sets the mappings read for `pid`; `None` (the process is gone) keeps the last ones.
    pub fn set_mappings(&mut self, pid: u32, mappings: Option<Vec<Mapping>>) {
        if let (Some(snap), Some(m)) = (self.snapshots.get_mut(&pid), mappings) {
            snap.mappings = Arc::from(m);
        }
    }

    /// Samples counted so far; samples whose stack did not fit in `max_stacks`.
    pub fn totals(&self) -> (u64, u64) {
        (self.samples, self.overflowed)
    }

    /// The windows that ended at or before `now_unix_ns`, as records (oldest first).
    pub fn close(&mut self, now_unix_ns: u64) -> Vec<(u64, Vec<Sample>)> {
        let ended: Vec<u64> = self
            .windows
            .keys()
            .copied()
            .filter(|&start| start + self.window_ns <= now_unix_ns)
            .collect();
        self.take(ended)
    }

    /// Every window, open or not (at shutdown).
    pub fn close_all(&mut self) -> Vec<(u64, Vec<Sample>)> {
        let all: Vec<u64> = self.windows.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, starts: Vec<u64>) -> Vec<(u64, Vec<Sample>)> {
        let mut out = Vec::new();
        for start in starts {
            let Some(w) = self.windows.remove(&start) else {
                continue;
            };
            self.closed_before = self.closed_before.max(start + self.window_ns);
            out.push((start, self.records(start, w)));
        }
        // Processes not sampled in the last two windows are forgotten (bounded memory).
        let keep_from = self.closed_before.saturating_sub(2 * self.window_ns);
        self.snapshots.retain(|_, s| s.window >= keep_from);
        out
    }

    fn records(&self, start: u64, w: Window) -> Vec<Sample> {
        let end = start + self.window_ns;
        let mut out = Vec::with_capacity(w.entries.len() + 1);
        for e in &w.entries {
            let frames = &w.arena[e.at as usize..];
            let (k, u) = frames[..e.klen as usize + e.ulen as usize].split_at(e.klen as usize);
            let linked = e.span_id != 0;
            out.push(Sample {
                pid: e.pid,
                tid: e.tid,
                comm: Comm(e.comm),
                kernel_stack: k.to_vec(),
                user_stack: u.to_vec(),
                frames: Vec::new(),
                count: e.count,
                period_ns: self.period_ns,
                window_start_unix_ns: start,
                window_end_unix_ns: end,
                trace_id: linked.then_some(TraceId(e.trace_id)),
                span_id: linked.then(|| SpanId(e.span_id.to_be_bytes())),
                mappings: self
                    .snapshots
                    .get(&e.pid)
                    .map(|s| s.mappings.clone())
                    .unwrap_or_else(|| Arc::from([])),
                attributes: if e.truncated {
                    let mut a = Attributes::new();
                    a.set(TRUNCATED, true);
                    a
                } else {
                    Attributes::new()
                },
            });
        }
        if w.overflow > 0 {
            let mut attributes = Attributes::new();
            attributes.set("oxeye.profile.overflow", true);
            out.push(Sample {
                comm: Comm::new("[overflow]"),
                count: w.overflow,
                period_ns: self.period_ns,
                window_start_unix_ns: start,
                window_end_unix_ns: end,
                attributes,
                ..Sample::default()
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(unix_ns: u64, tid: u32, span: u64, user: &'a [u64]) -> RawSample<'a> {
        RawSample {
            unix_ns,
            pid: 7,
            tid,
            comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
            trace_id: if span != 0 { [1; 16] } else { [0; 16] },
            span_id: span,
            kernel: &[],
            user,
            truncated: false,
        }
    }

    #[test]
    fn identical_samples_merge_and_others_stay_apart() {
        let s = 1_000_000_000;
        let mut a = Aggregator::new(10 * s, s / 19, 100);
        assert_eq!(
            a.add(&raw(10 * s, 1, 0, &[1, 2, 3])),
            Some(7),
            "first: snapshot"
        );
        assert_eq!(a.add(&raw(11 * s, 1, 0, &[1, 2, 3])), None);
        a.add(&raw(12 * s, 2, 0, &[1, 2, 3])); // another thread
        a.add(&raw(12 * s, 1, 5, &[1, 2, 3])); // inside a span
        a.add(&raw(13 * s, 1, 0, &[1, 2])); // a prefix is another stack
        a.add(&raw(21 * s, 1, 0, &[1, 2, 3])); // next window
        a.set_mappings(
            7,
            Some(vec![Mapping {
                start: 0,
                end: 10,
                file_offset: 0,
                path: "/app".into(),
            }]),
        );
        assert!(a.close(19 * s).is_empty(), "the first window ends at 20 s");
        let closed = a.close(20 * s);
        assert_eq!(closed.len(), 1);
        let (start, recs) = &closed[0];
        assert_eq!(*start, 10 * s);
        let counts: Vec<(u32, Option<SpanId>, usize, u64)> = recs
            .iter()
            .map(|r| (r.tid, r.span_id, r.user_stack.len(), r.count))
            .collect();
        assert_eq!(
            counts,
            [
                (1, None, 3, 2),
                (2, None, 3, 1),
                (1, Some(SpanId(5u64.to_be_bytes())), 3, 1),
                (1, None, 2, 1)
            ]
        );
        assert_eq!(recs[0].window_end_unix_ns, 20 * s);
        assert_eq!(recs[0].cpu_ns(), 2 * (s / 19));
        assert_eq!(recs[2].trace_id, Some(TraceId([1; 16])));
        assert_eq!(&*recs[0].mappings[0].path, "/app");
        // A late sample of a closed window counts in the next open one; nothing is lost.
        assert_eq!(
            a.add(&raw(15 * s, 1, 0, &[9])),
            None,
            "snapshot taken for 20 s"
        );
        let rest = a.close_all();
        let total: u64 = rest.iter().flat_map(|(_, r)| r).map(|r| r.count).sum();
        assert_eq!((rest.len(), total), (1, 2));
        assert_eq!(a.totals(), (7, 0));
    }

    #[test]
    fn stacks_beyond_max_stacks_fold_into_one_overflow_record() {
        let mut a = Aggregator::new(1_000, 10, 3);
        for i in 0..10u64 {
            a.add(&raw(0, 1, 0, &[i]));
            a.add(&raw(0, 1, 0, &[i]));
        }
        let recs = &a.close_all()[0].1;
        assert_eq!(recs.len(), 4);
        let over = &recs[3];
        assert_eq!(over.count, 14);
        assert_eq!(
            over.attributes.get("oxeye.profile.overflow"),
            Some(&true.into())
        );
        assert_eq!(
            recs.iter().map(|r| r.count).sum::<u64>(),
            20,
            "every sample counted"
        );
        assert_eq!(a.totals(), (20, 14));
    }

    #[test]
    fn a_truncated_stack_is_counted_apart_and_marked() {
        let s = 1_000_000_000;
        let mut a = Aggregator::new(10 * s, s / 19, 100);
        a.add(&raw(10 * s, 1, 0, &[1, 2, 3]));
        a.add(&RawSample {
            truncated: true,
            ..raw(10 * s, 1, 0, &[1, 2, 3])
        });
        a.add(&RawSample {
            truncated: true,
            ..raw(10 * s, 1, 0, &[1, 2, 3])
        });
        let recs = &a.close_all()[0].1;
        assert_eq!(recs.len(), 2);
        let marked: Vec<(u64, bool)> = recs
            .iter()
            .map(|r| (r.count, r.attributes.get(TRUNCATED).is_some()))
            .collect();
        assert_eq!(marked, vec![(1, false), (2, true)]);
    }
}
