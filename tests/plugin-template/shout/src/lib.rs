//! A custom processor written outside oxeye: upper-cases span names and tags what it saw.

use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records, Signal};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShoutConfig {
    /// Exclamation marks to append.
    #[serde(default = "one")]
    pub times: usize,
    /// Panic on a span with this name (to see how oxeye reports a failing plugin).
    #[serde(default)]
    pub panic_on: Option<String>,
}

fn one() -> usize {
    1
}

pub struct Shout {
    suffix: String,
    panic_on: Option<String>,
}

#[async_trait]
impl Processor for Shout {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        if let Records::Spans(spans) = &mut Arc::make_mut(&mut batch).records {
            for s in spans {
                if self.panic_on.as_deref() == Some(&*s.name) {
                    panic!("shout: told to panic on {}", s.name);
                }
                s.name = format!("{}{}", s.name.to_uppercase(), self.suffix).into();
                s.attributes.set("shout.seen", true);
            }
        }
        out.push(batch);
        Ok(())
    }
}

pub struct ShoutFactory;

impl Factory for ShoutFactory {
    type Config = ShoutConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "shout";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str = "upper-cases span names (a plugin built outside oxeye)";

    fn validate(c: &ShoutConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.times == 0 {
            e.push("times", "must be at least 1");
        }
        e.into_result()
    }

    fn build(c: ShoutConfig, _ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Shout {
            suffix: "!".repeat(c.times),
            panic_on: c.panic_on,
        }))
    }
}

oxeye_api::register!(ShoutFactory);

#[cfg(feature = "duplicate")]
mod duplicate {
    pub struct AnotherNop;
    impl oxeye_api::Factory for AnotherNop {
        type Config = ();
        type Component = Box<dyn oxeye_api::Processor>;
        const TYPE: &'static str = "nop";
        const SIGNALS: &'static [oxeye_api::Signal] = oxeye_api::Signal::ALL;
        const DESCRIPTION: &'static str = "clashes with the built-in nop";
        fn build(_: (), _: oxeye_api::BuildContext) -> Result<Self::Component, oxeye_api::BoxError> {
            Err("never built".into())
        }
    }
    oxeye_api::register!(AnotherNop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, span_batch, spans, ProcessorHarness};

    #[test]
    fn shouts() {
        let mut h = ProcessorHarness::new::<ShoutFactory>("times: 2").unwrap();
        let out = h.process(span_batch(2)).unwrap();
        assert_eq!(&*spans(&out)[0].name, "OP-0!!");
        assert!(check::<ShoutFactory>("times: 0").is_err());
    }
}
