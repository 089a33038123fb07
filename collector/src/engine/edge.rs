//! Edges: the bounded channels between stages, their counters, a stage's inputs (polled
//! round-robin) and a receiver's fan-out into the pipelines that take its batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::component::BatchSink;
use oxeye_api::{Batch, Output, Signal, Telemetry};
use tokio::sync::mpsc;

use super::graph::Routes;
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
    pub(super) fn add(&self, records: usize) {
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

/// The receiving end of an edge and its counters.
pub(super) type InputEnd = (mpsc::Receiver<Arc<Batch>>, Arc<EdgeStats>);

/// The sending end of an edge.
pub(super) struct Edge {
    pub(super) tx: mpsc::Sender<Arc<Batch>>,
    pub(super) when_full: WhenFull,
    pub(super) stats: Arc<EdgeStats>,
    /// The downstream component: records refused by its queue count as its drops.
    pub(super) downstream: Telemetry,
    /// The downstream component takes encoded spans as they are (an exporter that says so).
    pub(super) takes_encoded: bool,
}

/// Records a stage holds while an await is pending. If the stage stops before `done` (error,
/// panic, abort at the deadline), the drop counts them as dropped: nothing is lost silently.
pub(super) struct InFlight<'a> {
    pub(super) telemetry: &'a Telemetry,
    pub(super) records: u64,
}

impl<'a> InFlight<'a> {
    pub(super) fn new(telemetry: &'a Telemetry, records: usize) -> Self {
        InFlight {
            telemetry,
            records: records as u64,
        }
    }
    pub(super) fn done(mut self) {
        self.records = 0;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.telemetry
            .add_dropped("component_stopped", self.records);
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
        }
    }

    pub(super) async fn send(&self, batch: Arc<Batch>) {
        let n = batch.len();
        self.stats.add(n);
        let in_flight = InFlight::new(&self.downstream, n);
        let result = match self.when_full {
            WhenFull::Block => self.tx.send(batch).await.map_err(|_| "downstream_failed"),
            WhenFull::DropNewest => self.tx.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "downstream_failed",
            }),
        };
        in_flight.done();
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
            while let Ok(batch) = rx.try_recv() {
                stats.sub(batch.len());
                self.owner
                    .add_dropped("component_stopped", batch.len() as u64);
            }
        }
    }
}

impl Inputs {
    /// The next batch from any input; `None` once every input is closed and empty.
    pub(super) async fn recv(&mut self) -> Option<Arc<Batch>> {
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
                    Poll::Ready(Some(batch)) => {
                        self.rxs[idx].1.sub(batch.len());
                        self.next = idx + 1;
                        return Poll::Ready(Some(batch));
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
    /// Swapped by a reload while the receiver runs.
    pub(super) routes: Arc<Routes>,
    pub(super) telemetry: Telemetry,
}

#[async_trait]
impl BatchSink for FanOut {
    async fn send(&self, batch: Batch) {
        let signal = batch.signal();
        let batch = Arc::new(batch);
        self.telemetry.add_emitted(batch.len() as u64);
        let routes = self.routes.get();
        for (s, edges) in routes.iter() {
            if *s == signal {
                for edge in edges {
                    edge.send(Arc::clone(&batch)).await;
                }
            }
        }
        drop((batch, routes));
        // Let the next stage take the batch while it is still in this core's cache: without
        // this a fast receiver fills the whole queue first (64 batches, tens of MB), and every
        // processor then reads its records back from memory (3x its own cost, measured).
        tokio::task::yield_now().await;
    }

    fn takes_encoded(&self, signal: Signal) -> bool {
        let routes = self.routes.get();
        let mut edges = routes
            .iter()
            .filter(|(s, _)| *s == signal)
            .flat_map(|(_, edges)| edges)
            .peekable();
        edges.peek().is_some() && edges.all(|e| e.takes_encoded)
    }

    async fn send_within(&self, batch: Batch, wait: Duration) -> Result<(), Batch> {
        let signal = batch.signal();
        let routes = self.routes.get();
        let edges: Vec<&Edge> = routes
            .iter()
            .filter(|(s, _)| *s == signal)
            .flat_map(|(_, edges)| edges)
            .collect();
        // Reserve a slot in every `block` queue first, so the batch goes to all pipelines or to
        // none: a refused batch is retried by the client and must not arrive twice.
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
                    permit.send(Arc::clone(&batch));
                }
                None => edge.send(Arc::clone(&batch)).await,
            }
        }
        drop((batch, routes));
        tokio::task::yield_now().await;
        Ok(())
    }
}

pub(super) async fn send_all(out: &mut Output, edges: &[Edge], telemetry: &Telemetry) {
    for batch in out.take() {
        telemetry.add_emitted(batch.len() as u64);
        for edge in edges {
            edge.send(Arc::clone(&batch)).await;
        }
    }
}
