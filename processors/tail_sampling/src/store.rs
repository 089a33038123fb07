//! What the processor holds — batches as they arrived, traces by id, remembered decisions —
//! and the memory estimate its `max_bytes` bound is checked against.

use std::collections::VecDeque;
use std::sync::Arc;

use oxeye_api::{Resource, Span, TraceId};

use crate::KeyedSet;

/// Remembered decisions, bounded: the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct Remembered {
    ids: KeyedSet<TraceId>,
    order: VecDeque<TraceId>,
    capacity: usize,
}

impl Remembered {
    pub(crate) fn new(capacity: usize) -> Self {
        Remembered {
            ids: KeyedSet::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn insert(&mut self, id: TraceId) {
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

    pub(crate) fn contains(&self, id: &TraceId) -> bool {
        self.ids.contains(id)
    }

    /// Estimated memory: hash table slots (id + control byte, 7/8 full at most) and the order.
    pub(crate) fn bytes(&self) -> u64 {
        (self.ids.capacity() * 8 / 7 * (std::mem::size_of::<TraceId>() + 1)
            + self.order.capacity() * std::mem::size_of::<TraceId>()) as u64
    }

    /// The most [`Self::bytes`] can become with `entries` ids.
    pub(crate) fn max_bytes(entries: usize) -> u64 {
        let buckets = (entries * 8 / 7).next_power_of_two();
        (buckets * (std::mem::size_of::<TraceId>() + 1)
            + entries.next_power_of_two() * std::mem::size_of::<TraceId>()) as u64
    }
}

/// Largest batch the processor emits.
pub(crate) const MAX_BATCH: usize = 4096;

/// A batch as it arrived, kept until every held span in it is decided: spans wait where they
/// are (moving a span costs more than deciding it), and a kept one is moved out once.
pub(crate) struct Slab {
    pub(crate) resource: Arc<Resource>,
    pub(crate) spans: Vec<Span>,
    /// Held spans still waiting for their trace's decision.
    pub(crate) waiting: usize,
    pub(crate) bytes: u64,
}

/// A trace waiting for its decision: where its spans are.
pub(crate) struct Held {
    pub(crate) arrived_ns: u64,
    pub(crate) refs: Vec<(u32, u32)>,
}

/// Heap bytes of a vector's buffer (with the allocator's header), 0 when it has none.
pub(crate) fn vec_bytes(capacity: usize, element: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity * element + 16
    }
}

/// Estimated heap memory a held span owns — strings, attributes, events, links, stacks (its
/// own slot is counted with its batch).
pub(crate) fn span_bytes(s: &Span) -> u64 {
    s.heap_bytes() as u64
}

/// Memory of a kept batch itself: every slot of its buffer stays until its last span is decided.
pub(crate) fn slab_bytes(capacity: usize) -> u64 {
    (vec_bytes(capacity, std::mem::size_of::<Span>()) + std::mem::size_of::<Option<Slab>>()) as u64
}

/// Memory of a held trace besides its spans: map entry, span references, arrival record.
pub(crate) const TRACE_BYTES: u64 = (std::mem::size_of::<(TraceId, Held)>()
    + std::mem::size_of::<(u32, u32)>() * 2
    + std::mem::size_of::<(u64, TraceId)>()) as u64;
