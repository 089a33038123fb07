//! Exporters whose work blocks — file writes, compression, renames, a pipe that may be slow —
//! run on a thread of their own, so the async workers that move every other batch never wait
//! on a disk or a terminal.
//!
//! Write the work as a [`BlockingExport`] and wrap it in [`OnThread`], which is an
//! [`Exporter`]: it hands batches and ticks to the thread over a small bounded queue (a full
//! queue slows the pipeline as any `block` edge does) and counts each batch as out only when the
//! thread has written it, so "out" means written.
//!
//! For blocking work inside a processor or receiver (a `/proc` read, a burst of syscalls),
//! [`unblock`] runs a closure on tokio's blocking pool and awaits it.
//!
//! ```ignore
//! struct Lines { file: std::fs::File }
//! impl BlockingExport for Lines {
//!     fn export(&mut self, batch: &Batch) -> Result<(), BoxError> { /* write */ Ok(()) }
//! }
//! let exporter = OnThread::spawn("lines", Lines { file }, ctx.telemetry, None)?;
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::component::{BoxError, Exporter, Telemetry};
use crate::data::Batch;

/// Runs blocking work (file reads, syscalls) on tokio's blocking pool and waits for it without
/// holding an async worker. A panic in `f` is resumed here, so the engine reports it with the
/// component's id.
pub async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Only when the runtime shuts down under us.
            Err(e) => panic!("blocking task did not finish: {e}"),
        },
    }
}

/// The blocking half of an exporter; its methods run on the exporter's own thread.
pub trait BlockingExport: Send + 'static {
    /// Writes one batch. An `Err` ends the exporter (and starts the collector's shutdown).
    fn export(&mut self, batch: &Batch) -> Result<(), BoxError>;

    /// Called every tick interval given to [`OnThread::spawn`] with the wall-clock time.
    fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        Ok(())
    }

    /// Called once after the last batch: flush, close, rename.
    fn shutdown(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

enum Job {
    Batch(Arc<Batch>),
    Tick(SystemTime),
    Shutdown(oneshot::Sender<Result<(), String>>),
}

/// Batches waiting for the thread: enough to keep it busy while the next one is made.
const QUEUE: usize = 2;

/// What the async side and the thread share. Every record handed over is settled exactly once:
/// written (emitted), failed (`export_failed`), or abandoned with the exporter
/// (`component_stopped`).
#[derive(Debug, Default)]
struct Shared {
    /// Records handed to the thread and not settled yet.
    pending: u64,
    /// The exporter was dropped before its shutdown finished (aborted at the deadline): what
    /// was pending is counted as dropped then, and the thread counts nothing more.
    abandoned: bool,
    /// The error that ended the thread.
    failed: Option<String>,
    /// The thread has ended; everything it was given is settled.
    finished: bool,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// An [`Exporter`] that runs a [`BlockingExport`] on a dedicated thread.
pub struct OnThread {
    tx: mpsc::Sender<Job>,
    shared: Arc<Mutex<Shared>>,
    telemetry: Telemetry,
    tick: Option<Duration>,
}

fn count(job: &Job) -> u64 {
    match job {
        Job::Batch(b) => b.len() as u64,
        _ => 0,
    }
}

/// Runs `f`, turning a panic into an error that says so.
fn guarded<T>(f: impl FnOnce() -> Result<T, BoxError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => Err(format!(
            "panicked: {}",
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown payload".into())
        )),
    }
}

/// The thread's loop: every job in order; on an error, everything still queued is settled as
/// failed and every later call reports the error.
fn work(
    mut inner: impl BlockingExport,
    mut rx: mpsc::Receiver<Job>,
    shared: &Mutex<Shared>,
    telemetry: &Telemetry,
) {
    let settle = |n: u64, written: bool| {
        let mut s = lock(shared);
        if s.abandoned {
            return; // counted as dropped when the exporter was abandoned
        }
        s.pending -= n;
        if written {
            telemetry.add_emitted(n);
        } else {
            telemetry.add_dropped("export_failed", n);
        }
    };
    let error = loop {
        let Some(job) = rx.blocking_recv() else {
            return; // the exporter was dropped (abandoned); `pending` was counted then
        };
        match job {
            Job::Batch(batch) => match guarded(|| inner.export(&batch)) {
                Ok(()) => settle(batch.len() as u64, true),
                Err(e) => {
                    settle(batch.len() as u64, false);
                    break e;
                }
            },
            Job::Tick(now) => {
                if let Err(e) = guarded(|| inner.tick(now)) {
                    break e;
                }
            }
            Job::Shutdown(done) => {
                let _ = done.send(guarded(|| inner.shutdown()));
                return;
            }
        }
    };
    lock(shared).failed = Some(error.clone());
    // Refuse new batches; what is queued (or reserved and about to be sent: `blocking_recv`
    // returns None only once every reserved slot is used or released) is lost with the
    // exporter: counted, not silent.
    rx.close();
    while let Some(job) = rx.blocking_recv() {
        settle(count(&job), false);
        if let Job::Shutdown(done) = job {
            let _ = done.send(Err(error.clone()));
        }
    }
}

impl OnThread {
    /// Starts the thread (named `oxeye-<name>`). `tick`: how often [`BlockingExport::tick`] runs.
    pub fn spawn(
        name: &str,
        inner: impl BlockingExport,
        telemetry: Telemetry,
        tick: Option<Duration>,
    ) -> std::io::Result<OnThread> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (s, t) = (Arc::clone(&shared), telemetry.clone());
        std::thread::Builder::new()
            .name(format!("oxeye-{name}"))
            .spawn(move || {
                work(inner, rx, &s, &t);
                lock(&s).finished = true;
            })?;
        Ok(OnThread {
            tx,
            shared,
            telemetry,
            tick,
        })
    }

    fn error(&self) -> BoxError {
        lock(&self.shared)
            .failed
            .clone()
            .unwrap_or_else(|| "the exporter's thread ended".into())
            .into()
    }

    #[cfg(test)]
    fn finished(&self) -> bool {
        lock(&self.shared).finished
    }
}

impl Drop for OnThread {
    /// Dropped before its shutdown finished (the engine aborted it at the deadline): the
    /// records the thread still holds are counted as dropped now, not as out after the summary.
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        if !s.finished {
            s.abandoned = true;
            let n = std::mem::take(&mut s.pending);
            self.telemetry.add_dropped("component_stopped", n);
        }
    }
}

#[async_trait]
impl Exporter for OnThread {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        // Cancel-safe: a batch is either queued (and then settled by the thread) or returned.
        let permit = self.tx.reserve().await.map_err(|_| self.error())?;
        lock(&self.shared).pending += batch.len() as u64;
        permit.send(Job::Batch(batch));
        Ok(())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.tick
    }

    async fn tick(&mut self, now: SystemTime) -> Result<(), BoxError> {
        match self.tx.try_send(Job::Tick(now)) {
            // A busy thread will see the next tick; ticks are not data.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.error()),
        }
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Job::Shutdown(done))
            .await
            .map_err(|_| self.error())?;
        match result.await {
            Ok(r) => r.map_err(BoxError::from),
            Err(_) => Err(self.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Resource, Span};

    struct Fails {
        after: usize,
        ticks: Arc<Mutex<usize>>,
    }

    impl BlockingExport for Fails {
        fn export(&mut self, _batch: &Batch) -> Result<(), BoxError> {
            if self.after == 0 {
                return Err("disk full".into());
            }
            self.after -= 1;
            Ok(())
        }
        fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
            *self.ticks.lock().expect("ticks") += 1;
            Ok(())
        }
    }

    fn batch(n: usize) -> Arc<Batch> {
        Arc::new(Batch::spans(
            Arc::new(Resource::default()),
            vec![Span::default(); n],
        ))
    }

    #[tokio::test]
    async fn counts_written_and_lost_and_reports_the_error() {
        let t = Telemetry::default();
        let ticks = Arc::new(Mutex::new(0));
        let inner = Fails {
            after: 2,
            ticks: Arc::clone(&ticks),
        };
        let mut e = OnThread::spawn("test", inner, t.clone(), None).expect("thread");
        e.export(batch(3)).await.expect("queued");
        e.tick(SystemTime::now()).await.expect("tick");
        e.export(batch(4)).await.expect("queued");
        e.export(batch(5)).await.expect("queued");
        // The thread failed on the third batch; later calls report its error.
        let mut queued = 0;
        let err = loop {
            match e.export(batch(1)).await {
                Ok(()) => {
                    queued += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(err) => break err,
            }
        };
        assert_eq!(err.to_string(), "disk full");
        while !e.finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(t.emitted(), 7);
        // The failed batch, and every batch queued behind it, counted as dropped.
        assert_eq!(t.dropped(), vec![("export_failed", 5 + queued)]);
        assert!(e.shutdown().await.is_err());
        assert_eq!(*ticks.lock().expect("ticks"), 1);
    }

    struct Slow;

    impl BlockingExport for Slow {
        fn export(&mut self, batch: &Batch) -> Result<(), BoxError> {
            assert!(batch.len() != 13, "unlucky batch");
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        }
    }

    #[tokio::test]
    async fn abandoned_at_the_deadline_every_record_is_settled_once() {
        let t = Telemetry::default();
        let mut e = OnThread::spawn("slow", Slow, t.clone(), None).expect("thread");
        for _ in 0..3 {
            e.export(batch(10)).await.expect("queued"); // one writing, two queued
        }
        drop(e); // what an abort at the shutdown deadline does
        let stopped = t.dropped();
        tokio::time::sleep(Duration::from_millis(500)).await; // the thread finishes its work
        assert_eq!(t.dropped(), stopped, "nothing counted twice after the drop");
        assert_eq!(t.emitted() + t.dropped_total(), 30, "{:?}", t.dropped());
        assert!(t.dropped_total() >= 20, "{:?}", t.dropped());
    }

    #[tokio::test]
    async fn a_panic_on_the_thread_is_an_error_that_says_so() {
        let t = Telemetry::default();
        let mut e = OnThread::spawn("slow", Slow, t.clone(), None).expect("thread");
        e.export(batch(13)).await.expect("queued");
        let err = loop {
            match e.export(batch(1)).await {
                Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(err) => break err,
            }
        };
        assert!(
            err.to_string().starts_with("panicked: unlucky batch"),
            "{err}"
        );
        while !e.finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(t.emitted(), 0);
        assert!(t.dropped_total() >= 13, "{:?}", t.dropped());
    }
}
