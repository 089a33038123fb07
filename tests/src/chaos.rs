//! Components that misbehave on purpose, for the chaos and shutdown tests: a `chaos` processor
//! and a `chaos` exporter that hold, fail or stall at a chosen batch, and a `slowreconf`
//! receiver that takes a live config change slowly. Registered through the public API like any
//! user's crate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, Exporter, Factory, Output, Processor, Receiver, ReceiverContext,
    Signal,
};
use serde::Deserialize;

/// What a chaos component does, and when (counted in batches taken).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Return an error at this batch (its records count as dropped by the engine).
    pub fail_at: Option<u64>,
    /// Panic at this batch.
    pub panic_at: Option<u64>,
    /// Never return from this batch (the shutdown deadline abandons the component).
    pub stall_at: Option<u64>,
    /// Processor: keep up to this many batches inside, then pass them all on at once.
    pub hold: usize,
    /// Time spent on every batch.
    #[serde(with = "oxeye_api::config::duration")]
    pub delay: Duration,
}

impl ChaosConfig {
    /// Misbehaves as configured at batch `n` (0-based).
    async fn at(&self, n: u64) -> Result<(), BoxError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_at == Some(n) {
            return Err(format!("chaos: deliberate error at batch {n}").into());
        }
        if self.panic_at == Some(n) {
            panic!("chaos: deliberate panic at batch {n}");
        }
        if self.stall_at == Some(n) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// `chaos` processor.
pub struct ChaosProcessor {
    config: ChaosConfig,
    taken: u64,
    held: VecDeque<Arc<Batch>>,
}

#[async_trait]
impl Processor for ChaosProcessor {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        let n = self.taken;
        self.taken += 1;
        // Misbehaves with the batch taken in: the engine must count it once.
        self.held.push_back(batch);
        self.config.at(n).await?;
        if self.held.len() > self.config.hold {
            for b in self.held.drain(..) {
                out.push(b);
            }
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Output) -> Result<(), BoxError> {
        for b in self.held.drain(..) {
            out.push(b);
        }
        Ok(())
    }

    fn held(&self) -> u64 {
        self.held.iter().map(|b| b.len() as u64).sum()
    }
}

/// Factory of [`ChaosProcessor`].
pub struct ChaosProcessorFactory;
impl Factory for ChaosProcessorFactory {
    type Config = ChaosConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "chaos";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: holds, fails or stalls at a chosen batch";
    fn build(config: ChaosConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(ChaosProcessor {
            config,
            taken: 0,
            held: VecDeque::new(),
        }))
    }
}
oxeye_api::register!(ChaosProcessorFactory);

/// `chaos` exporter: counts and discards, misbehaving as configured.
pub struct ChaosExporter {
    config: ChaosConfig,
    taken: u64,
}

#[async_trait]
impl Exporter for ChaosExporter {
    async fn export(&mut self, _batch: Arc<Batch>) -> Result<(), BoxError> {
        let n = self.taken;
        self.taken += 1;
        self.config.at(n).await
    }
}

/// Factory of [`ChaosExporter`].
pub struct ChaosExporterFactory;
impl Factory for ChaosExporterFactory {
    type Config = ChaosConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "chaos";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: fails or stalls at a chosen batch";
    fn build(config: ChaosConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(ChaosExporter { config, taken: 0 }))
    }
}
oxeye_api::register!(ChaosExporterFactory);

/// `slowreconf` receiver: runs until shutdown; takes a live config change after `delay`.
pub struct SlowReconf {
    delay: Duration,
}

/// Config of [`SlowReconf`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowReconfConfig {
    /// How long a live config change takes.
    #[serde(with = "oxeye_api::config::duration")]
    pub delay: Duration,
    /// Anything, to make a config differ.
    pub tag: u64,
}

#[async_trait]
impl Receiver for SlowReconf {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let mut changes = ctx.reconfigurations();
        loop {
            tokio::select! {
                _ = ctx.shutdown().wait() => return Ok(()),
                change = async {
                    match changes.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => match change {
                    Some(change) => {
                        // Slow work that a stop interrupts (the engine must not wait for it).
                        tokio::select! {
                            _ = tokio::time::sleep(self.delay) => {
                                let _ = change.done.send(Ok(()));
                            }
                            _ = ctx.shutdown().wait() => return Ok(()),
                        }
                    }
                    None => changes = None,
                },
            }
        }
    }
}

/// Factory of [`SlowReconf`].
pub struct SlowReconfFactory;
impl Factory for SlowReconfFactory {
    type Config = SlowReconfConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "slowreconf";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: takes a live config change slowly";
    const RECONFIGURABLE: bool = true;
    fn build(c: SlowReconfConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(SlowReconf { delay: c.delay }))
    }
}
oxeye_api::register!(SlowReconfFactory);
