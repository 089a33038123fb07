//! At-least-once: a message's offset is stored for commit only when the pipeline is done with
//! every batch made of it and of every earlier message of its partition. Each batch carries a
//! [`Done`] hold; the engine drops it when the last stage let go of the batch (the exporters'
//! `export` returned, or a processor dropped it). What was handed out and not done when a
//! receiver dies is consumed again by the member that gets its partitions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use oxeye_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use oxeye_kafka::Context;
use tracing::debug;

#[derive(Default)]
struct Partition {
    /// Offsets handed to the pipeline and not done.
    pending: BTreeSet<i64>,
    /// One past the highest offset handed out.
    next: i64,
}

/// The offsets of every partition this receiver consumes.
pub(crate) struct Offsets {
    /// Weak: the receiver owns the consumer and closes it on a blocking thread; a hold dropped
    /// on an async worker must never be the last owner (closing blocks).
    consumer: Weak<StreamConsumer<Context>>,
    partitions: Mutex<HashMap<(Arc<str>, i32), Partition>>,
}

impl Offsets {
    pub(crate) fn new(consumer: Weak<StreamConsumer<Context>>) -> Arc<Offsets> {
        Arc::new(Offsets {
            consumer,
            partitions: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, i32), Partition>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Message `offset` of `topic`/`partition` goes into the pipeline; it is done when the
    /// returned hold (and every clone) is dropped.
    pub(crate) fn start(
        self: &Arc<Self>,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    ) -> Arc<Done> {
        let mut parts = self.lock();
        let p = parts.entry((Arc::clone(&topic), partition)).or_default();
        p.pending.insert(offset);
        // A partition's messages come in order: a lower offset means its log restarted (a
        // reset, a truncation), and nothing past it may be stored as done.
        p.next = offset + 1;
        Arc::new(Done {
            offsets: Arc::clone(self),
            topic,
            partition,
            offset,
        })
    }

    /// Messages handed out and not done yet.
    pub(crate) fn pending(&self) -> usize {
        self.lock().values().map(|p| p.pending.len()).sum()
    }

    /// Everything before the first pending message is done: the last of those (librdkafka
    /// commits the stored offset + 1, the next message to read).
    fn last_done(p: &Partition) -> i64 {
        p.pending.first().map_or(p.next, |&first| first) - 1
    }

    /// The offset stored for `topic`/`partition` so far, if any is done (for tests).
    #[cfg(test)]
    pub(crate) fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        let parts = self.lock();
        let p = parts.get(&(Arc::from(topic), partition))?;
        Some(Self::last_done(p)).filter(|&o| o >= 0)
    }

    fn done(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let mut parts = self.lock();
        let Some(p) = parts.get_mut(&(Arc::clone(topic), partition)) else {
            return;
        };
        p.pending.remove(&offset);
        let last_done = Self::last_done(p);
        if last_done >= 0 {
            // Fails for a partition no longer assigned (rebalanced away): its new owner reads
            // from the last commit, so this message may come twice, never zero times.
            let Some(consumer) = self.consumer.upgrade() else {
                return; // closed: what was not committed is read again
            };
            if let Err(e) = consumer.store_offset(topic, partition, last_done) {
                debug!(%topic, partition, offset = last_done, error = %e, "kafka: offset not stored");
            }
        }
    }
}

/// Held by every batch of one message (see the module).
pub(crate) struct Done {
    offsets: Arc<Offsets>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.offsets.done(&self.topic, self.partition, self.offset);
    }
}
