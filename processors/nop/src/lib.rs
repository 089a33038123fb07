//! `nop` processor: passes every batch through unchanged. Useful to measure the engine's own
//! per-stage cost and as the smallest example of a processor.

use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{BoxError, BuildContext, Factory, Output, Processor, Signal};
use serde::Deserialize;

/// Config: none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NopConfig {}

/// The pass-through processor.
pub struct Nop;

#[async_trait]
impl Processor for Nop {
    async fn process(
        &mut self,
        batch: Arc<oxeye_api::Batch>,
        out: &mut Output,
    ) -> Result<(), BoxError> {
        out.push(batch);
        Ok(())
    }
}

/// Factory for [`Nop`].
pub struct NopFactory;

impl Factory for NopFactory {
    type Config = NopConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "nop";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "passes batches through unchanged";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-nop.md");

    fn build(_config: NopConfig, _ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Nop))
    }
}

oxeye_api::register!(NopFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{self, ProcessorHarness};

    #[test]
    fn passes_every_batch_through_unchanged() {
        let mut h = ProcessorHarness::new::<NopFactory>("").unwrap();
        let input = testing::span_batch(100);
        let out = h.process(input.clone()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(*out[0], input);
        assert!(h.flush().unwrap().is_empty());
        assert_eq!(
            (h.telemetry().received(), h.telemetry().emitted()),
            (100, 100)
        );
        assert!(testing::check::<NopFactory>("extra: 1").is_err());
    }
}
