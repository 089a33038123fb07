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

/// An [`Exporter`] that runs a [`BlockingExport`] on a dedicated thread.
pub struct OnThread {
    tx: mpsc::Sender<Job>,
    /// The error that ended the thread, for the next call to report.
    failed: Arc<Mutex<Option<String>>>,
    tick: Option<Duration>,
}

fn count(job: &Job) -> u64 {
    match job {
        Job::Batch(b) => b.len() as u64,
        _ => 0,
    }
}

impl OnThread {
    /// Starts the thread (named `oxeye-<name>`). `tick`: how often [`BlockingExport::tick`] runs.
    pub fn spawn(
        name: &str,
        mut inner: impl BlockingExport,
        telemetry: Telemetry,
        tick: Option<Duration>,
    ) -> std::io::Result<OnThread> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&failed);
        std::thread::Builder::new()
            .name(format!("oxeye-{name}"))
            .spawn(move || {
                let fail = |e: BoxError, lost: u64, rx: &mut mpsc::Receiver<Job>| {
                    telemetry.add_dropped("export_failed", lost);
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    // What is still queued is lost with the exporter: counted, not silent.
                    rx.close();
                    while let Ok(job) = rx.try_recv() {
                        telemetry.add_dropped("export_failed", count(&job));
                        if let Job::Shutdown(done) = job {
                            let _ = done.send(Err(e.to_string()));
                        }
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Batch(batch) => match inner.export(&batch) {
                            Ok(()) => telemetry.add_emitted(batch.len() as u64),
                            Err(e) => return fail(e, batch.len() as u64, &mut rx),
                        },
                        Job::Tick(now) => {
                            if let Err(e) = inner.tick(now) {
                                return fail(e, 0, &mut rx);
                            }
                        }
                        Job::Shutdown(done) => {
                            let _ = done.send(inner.shutdown().map_err(|e| e.to_string()));
                            return;
                        }
                    }
                }
            })?;
        Ok(OnThread { tx, failed, tick })
    }

    fn error(&self) -> BoxError {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the exporter's thread ended".into())
            .into()
    }
}

#[async_trait]
impl Exporter for OnThread {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        // Cancel-safe: a batch is either queued (and then counted by the thread) or returned.
        let permit = self.tx.reserve().await.map_err(|_| self.error())?;
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
        assert_eq!(t.emitted(), 7);
        // The failed batch, and every batch queued behind it, counted as dropped.
        assert_eq!(t.dropped(), vec![("export_failed", 5 + queued)]);
        assert!(e.shutdown().await.is_err());
        assert_eq!(*ticks.lock().expect("ticks"), 1);
    }
}
