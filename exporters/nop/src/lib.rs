//! `nop` exporter: accepts every batch and sends it nowhere. The engine still counts what it
//! received, so it is the sink for benchmarks and pipeline tests. `delay` makes it a slow
//! destination, to exercise backpressure and queue policies.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{Batch, BoxError, BuildContext, Exporter, Factory, Signal};
use serde::Deserialize;

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NopConfig {
    /// Time to spend on each batch (default none).
    #[serde(with = "oxeye_api::config::duration")]
    pub delay: Duration,
}

/// The exporter.
pub struct NopExporter {
    delay: Duration,
}

#[async_trait]
impl Exporter for NopExporter {
    async fn export(&mut self, _batch: Arc<Batch>) -> Result<(), BoxError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

/// Factory for [`NopExporter`].
pub struct NopExporterFactory;

impl Factory for NopExporterFactory {
    type Config = NopConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "nop";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str =
        "accepts and counts records, sends them nowhere (optional delay)";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-nop.md");

    fn build(config: NopConfig, _ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(NopExporter {
            delay: config.delay,
        }))
    }
}

oxeye_api::register!(NopExporterFactory);
