//! Edges: the bounded channels between stages, their counters, a stage's inputs (polled
//! round-robin) and a receiver's fan-out into the pipelines that take its batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::component::BatchSink;
use oxeye_api::{Admission, Batch, Hold, Output, Shutdown, Signal, Telemetry};
use tokio::sync::mpsc;

use super::graph::{RouteTable, Routes};
use crate::config::WhenFull;

/// Counters of one edge (a channel between two stages).
#[derive(Debug)]
pub struct EdgeStats {
    /// Pipeline id.
    pub pipeline: String,
    /// Upstream stage label.
    pub from: String,
    /// Downstream stage label.
    pub to: String,
    /// Capacity in batches.
    pub capacity: usize,
    pub(super) queued_batches: AtomicU64,
    pub(super) queued_records: AtomicU64,
    /// Records ever sent into it (taken, refused or still queued).
    pub(super) sent_records: AtomicU64,
}

impl EdgeStats {
    /// Batches waiting in the queue.
    pub fn depth(&self) -> u64 {
        self.queued_batches.load(Ordering::Relaxed)
    }
    /// Records waiting in the queue.
    pub fn queued_records(&self) -> u64 {
        self.queued_records.load(Ordering::Relaxed)
    }
    /// Records ever sent into the edge: the downstream stage took them, refused them (counted
    /// as its drops) or still has them queued.
    pub fn sent_records(&self) -> u64 {
        self.sent_records.load(Ordering::Relaxed)
    }
    pub(super) fn add(&self, records: usize) {
        self.sent_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.queued_batches.fetch_add(1, Ordering::Relaxed);
        self.queued_records
            .fetch_add(records as u64, Ordering::Relaxed);
    }
    pub(super) fn sub(&self, records: usize) {
        self.queued_batches.fetch_sub(1, Ordering::Relaxed);
        self.queued_records
            .fetch_sub(records as u64, Ordering::Relaxed);
    }
}

/// What moves on an edge: a batch, and what must stay alive while it waits (a receiver's
/// [`Hold`], e.g. a charge on its in-flight byte budget).
pub(super) struct Item {
    pub(super) batch: Arc<Batch>,
    pub(super) hold: Option<Hold>,
}

/// The receiving end of an edge and its counters.
pub(super) type InputEnd = (mpsc::Receiver<Item>, Arc<EdgeStats>);

/// Records sent into a stage's queue that it never took (it stopped first), or that were being
/// sent when their sender was abandoned: counted as the stage's drops.
pub(super) const QUEUED_AT_STOP: &str = "queued_at_stop";

/// The sending end of an edge.
pub(super) struct Edge {
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) when_full: WhenFull,
    pub(super) stats: Arc<EdgeStats>,
    /// The downstream component: records refused by its queue count as its drops.
    pub(super) downstream: Telemetry,
    /// The downstream component takes encoded spans as they are.
    pub(super) takes_encoded: bool,
    /// The pipeline's entry gates (its processors' [`Admission`]s): set on the edges a
    /// receiver sends into, empty on the others.
    pub(super) gates: Vec<Arc<dyn Admission>>,
}

/// Records a stage holds while an await is pending. If the stage stops before `done` (error,
/// panic, abort at the deadline), the drop counts them as dropped for `reason`: nothing is lost
/// silently.
pub(super) struct InFlight<'a> {
    telemetry: &'a Telemetry,
    records: u64,
    reason: &'static str,
}

impl<'a> InFlight<'a> {
    /// Records a stage took and is working on (`component_stopped` if it stops).
    pub(super) fn new(telemetry: &'a Telemetry, records: usize) -> Self {
        InFlight {
            telemetry,
            records: records as u64,
            reason: "component_stopped",
        }
    }
    pub(super) fn done(mut self) {
        self.records = 0;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.telemetry.add_dropped(self.reason, self.records);
    }
}

impl Edge {
    /// Another sending end of the same edge (several receivers feeding one pipeline).
    pub(super) fn clone_sender(&self) -> Edge {
        Edge {
            tx: self.tx.clone(),
            when_full: self.when_full,
            stats: Arc::clone(&self.stats),
            downstream: self.downstream.clone(),
            takes_encoded: self.takes_encoded,
            gates: self.gates.clone(),
        }
    }

    /// `Some(why)` while one of the pipeline's entry gates refuses new data.
    fn refusing(&self) -> Option<&'static str> {
        self.gates.iter().find_map(|g| g.refusing())
    }

    pub(super) async fn send(&self, batch: Arc<Batch>, hold: Option<&Hold>) {
        let n = batch.len();
        self.stats.add(n);
        // If the sender is abandoned while this waits for room, the records never arrive:
        // out of the queue's count, into the downstream stage's drops.
        struct Sending<'a> {
            edge: &'a Edge,
            records: usize,
        }
        impl Drop for Sending<'_> {
            fn drop(&mut self) {
                if self.records > 0 {
                    self.edge.stats.sub(self.records);
                    self.edge
                        .downstream
                        .add_dropped(QUEUED_AT_STOP, self.records as u64);
                }
            }
        }
        let mut in_flight = Sending {
            edge: self,
            records: n,
        };
        let item = Item {
            batch,
            hold: hold.cloned(),
        };
        let result = match self.when_full {
            WhenFull::Block => self.tx.send(item).await.map_err(|_| "downstream_failed"),
            WhenFull::DropNewest => self.tx.try_send(item).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "downstream_failed",
            }),
        };
        in_flight.records = 0;
        if let Err(reason) = result {
            self.stats.sub(n);
            self.downstream.add_dropped(reason, n as u64);
        }
    }
}

/// The receiving ends of all edges into a stage, polled round-robin.
pub(super) struct Inputs {
    pub(super) rxs: Vec<InputEnd>,
    pub(super) next: usize,
    /// The owning stage: what is still queued when it stops early counts as its drops.
    pub(super) owner: Telemetry,
    /// Edges added while running (an exporter fed by a new pipeline); `None` once the engine
    /// has dropped its end: then the stage ends when its current inputs are closed and empty.
    pub(super) adder: Option<mpsc::UnboundedReceiver<InputEnd>>,
}

impl Drop for Inputs {
    fn drop(&mut self) {
        // Only non-empty when the stage failed or was abandoned: count, never lose silently.
        if let Some(mut adder) = self.adder.take() {
            adder.close();
            while let Ok(end) = adder.try_recv() {
                self.rxs.push(end);
            }
        }
        for (rx, stats) in &mut self.rxs {
            rx.close();
            while let Ok(item) = rx.try_recv() {
                let n = item.batch.len();
                stats.sub(n);
                self.owner.add_dropped(QUEUED_AT_STOP, n as u64);
            }
        }
    }
}

impl Inputs {
    /// The next batch from any input; `None` once every input is closed and empty.
    pub(super) async fn recv(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| {
            while let Some(adder) = self.adder.as_mut() {
                match adder.poll_recv(cx) {
                    Poll::Ready(Some(end)) => self.rxs.push(end),
                    Poll::Ready(None) => self.adder = None,
                    Poll::Pending => break,
                }
            }
            let mut i = 0;
            while i < self.rxs.len() {
                let idx = (self.next + i) % self.rxs.len();
                match self.rxs[idx].0.poll_recv(cx) {
                    Poll::Ready(Some(item)) => {
                        self.rxs[idx].1.sub(item.batch.len());
                        self.next = idx + 1;
                        return Poll::Ready(Some(item));
                    }
                    Poll::Ready(None) => {
                        self.rxs.swap_remove(idx);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.rxs.is_empty() && self.adder.is_none() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A receiver's fan-out: every edge of every pipeline that takes the batch's signal.
pub(super) struct FanOut {
    /// Swapped by a reload while the receiver runs; closed when it has stopped.
    pub(super) routes: Arc<Routes>,
    pub(super) telemetry: Telemetry,
    /// The receiver's: a receiver waiting on a refusing gate stops waiting when it stops.
    pub(super) shutdown: Shutdown,
}

/// Records a receiver's task (or a task it left behind) sends after it stopped.
const RECEIVER_STOPPED: &str = "receiver_stopped";

impl FanOut {
    /// The edges that take `signal`; `None` once the receiver has stopped.
    fn edges(&self, signal: Signal) -> Option<(Arc<RouteTable>, Vec<usize>)> {
        let routes = self.routes.get()?;
        let picked = routes
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| *s == signal)
            .map(|(i, _)| i)
            .collect();
        Some((routes, picked))
    }

    /// Sends to every edge of `signal`, reserving a slot in every `block` queue first so the
    /// batch goes to all pipelines or to none (a refused batch is retried by the client and must
    /// not arrive twice). Hands the batch back when a gate refuses, a queue stays full for
    /// `wait`, or the receiver has stopped.
    async fn deliver_within(
        &self,
        batch: Batch,
        wait: Duration,
        hold: Option<Hold>,
    ) -> Result<(), Batch> {
        let Some((routes, picked)) = self.edges(batch.signal()) else {
            return Err(batch);
        };
        let edges: Vec<&Edge> = picked.iter().flat_map(|&i| &routes[i].1).collect();
        if edges.iter().any(|e| e.refusing().is_some()) {
            return Err(batch);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut permits = Vec::with_capacity(edges.len());
        for edge in &edges {
            permits.push(match edge.when_full {
                WhenFull::Block => match tokio::time::timeout_at(deadline, edge.tx.reserve()).await
                {
                    Ok(Ok(permit)) => Some(permit),
                    // A stopped stage: `Edge::send` below counts it as `downstream_failed`.
                    Ok(Err(_)) => None,
                    Err(_) => return Err(batch),
                },
                WhenFull::DropNewest => None,
            });
        }
        let n = batch.len();
        let batch = Arc::new(batch);
        self.telemetry.add_emitted(n as u64);
        for (edge, permit) in edges.iter().zip(permits) {
            match permit {
                Some(permit) => {
                    edge.stats.add(n);
                    permit.send(Item {
                        batch: Arc::clone(&batch),
                        hold: hold.clone(),
                    });
                }
                None => edge.send(Arc::clone(&batch), hold.as_ref()).await,
            }
        }
        drop(edges);
        drop((batch, hold, routes));
        tokio::task::yield_now().await;
        Ok(())
    }
}

impl FanOut {
    /// Sends to every edge of the batch's signal, waiting on full `block` queues and, as a
    /// receiver that cannot tell its source to retry, on refusing gates.
    async fn deliver(&self, batch: Batch, hold: Option<Hold>) {
        let n = batch.len() as u64;
        let Some((mut routes, mut picked)) = self.edges(batch.signal()) else {
            self.telemetry.add_dropped(RECEIVER_STOPPED, n);
            return;
        };
        // A receiver that cannot tell its source to retry waits while a gate refuses, as it
        // waits on a full `block` queue (its source — a kernel ring — counts what it loses).
        let mut waited = false;
        while picked
            .iter()
            .flat_map(|&i| &routes[i].1)
            .any(|e| e.refusing().is_some())
            && !self.shutdown.is_triggered()
        {
            waited = true;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if waited {
            // The routes may have changed (or closed) while it waited.
            let Some(now) = self.edges(batch.signal()) else {
                self.telemetry.add_dropped(RECEIVER_STOPPED, n);
                return;
            };
            (routes, picked) = now;
        }
        self.telemetry.add_emitted(n);
        let edges = picked.iter().flat_map(|&i| &routes[i].1);
        send_to_all(edges, Arc::new(batch), hold.as_ref()).await;
        drop((routes, hold));
        // Let the next stage take the batch while it is still in this core's cache: without
        // this a fast receiver fills the whole queue first (64 batches, tens of MB), and every
        // processor then reads its records back from memory (3x its own cost, measured).
        tokio::task::yield_now().await;
    }
}

#[async_trait]
impl BatchSink for FanOut {
    async fn send(&self, batch: Batch) {
        self.deliver(batch, None).await;
    }

    async fn send_holding(&self, batch: Batch, hold: Hold) {
        self.deliver(batch, Some(hold)).await;
    }

    fn takes_encoded(&self, signal: Signal) -> bool {
        let Some((routes, picked)) = self.edges(signal) else {
            return false;
        };
        let mut edges = picked.iter().flat_map(|&i| &routes[i].1).peekable();
        edges.peek().is_some() && edges.all(|e| e.takes_encoded)
    }

    async fn send_within(&self, batch: Batch, wait: Duration) -> Result<(), Batch> {
        self.deliver_within(batch, wait, None).await
    }

    async fn send_within_holding(
        &self,
        batch: Batch,
        wait: Duration,
        hold: Hold,
    ) -> Result<(), Batch> {
        self.deliver_within(batch, wait, Some(hold)).await
    }
}

/// Sends a processor's output downstream; every batch carries `hold` (what the input it was
/// made from kept alive). Batches not sent when the stage is abandoned count as its drops.
pub(super) async fn send_all(
    out: &mut Output,
    edges: &[Edge],
    telemetry: &Telemetry,
    hold: Option<&Hold>,
) {
    let batches = out.take();
    let mut unsent = InFlight::new(telemetry, batches.iter().map(|b| b.len()).sum());
    for batch in batches {
        let n = batch.len();
        telemetry.add_emitted(n as u64);
        unsent.records -= n as u64;
        send_to_all(edges.iter(), batch, hold).await;
    }
    unsent.done();
}

/// Sends `batch` into every edge in turn. If the sender is abandoned part way, the edges it had
/// not reached yet count the batch as `queued_at_stop` (the one being sent counts it itself).
async fn send_to_all<'a>(
    edges: impl Iterator<Item = &'a Edge> + Clone,
    batch: Arc<Batch>,
    hold: Option<&Hold>,
) {
    struct Rest<'a, I: Iterator<Item = &'a Edge>> {
        edges: Option<I>,
        records: u64,
    }
    impl<'a, I: Iterator<Item = &'a Edge>> Drop for Rest<'a, I> {
        fn drop(&mut self) {
            for edge in self.edges.take().into_iter().flatten() {
                // Sent to it, in the sense of the edge's count: it was meant to get them.
                edge.stats
                    .sent_records
                    .fetch_add(self.records, Ordering::Relaxed);
                edge.downstream.add_dropped(QUEUED_AT_STOP, self.records);
            }
        }
    }
    let mut rest = Rest {
        edges: Some(edges.clone()),
        records: batch.len() as u64,
    };
    for edge in edges {
        if let Some(r) = rest.edges.as_mut() {
            r.next();
        }
        edge.send(Arc::clone(&batch), hold).await;
    }
    rest.edges = None;
}
