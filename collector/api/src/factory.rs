//! Factories and compile-time registration.
//!
//! A component crate implements [`Factory`] and calls [`register!`](crate::register) once. The
//! `oxeye` binary finds every registered factory at startup ([`Registration::all`]); built-in
//! components register exactly the same way.
//!
//! ```ignore
//! pub struct TagFactory;
//! impl oxeye_api::Factory for TagFactory {
//!     type Config = TagConfig;                       // serde, #[serde(deny_unknown_fields)]
//!     type Component = Box<dyn oxeye_api::Processor>;
//!     const TYPE: &'static str = "tag";
//!     const SIGNALS: &'static [oxeye_api::Signal] = oxeye_api::Signal::ALL;
//!     const DESCRIPTION: &'static str = "adds static attributes";
//!     fn build(config: TagConfig, ctx: oxeye_api::BuildContext)
//!         -> Result<Self::Component, oxeye_api::BoxError> { Ok(Box::new(Tag::new(config))) }
//! }
//! oxeye_api::register!(TagFactory);
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

use crate::component::{BoxError, BuildContext, Connector, Exporter, Processor, Receiver};
use crate::config::ConfigErrors;
use crate::data::Signal;

/// The kinds of component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// Produces data.
    Receiver,
    /// Transforms data inside one pipeline.
    Processor,
    /// Sends data out.
    Exporter,
    /// Ends pipelines of one signal and starts pipelines of another ([`crate::Connector`]).
    Connector,
}

impl Kind {
    /// Singular name (`receiver`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Receiver => "receiver",
            Kind::Processor => "processor",
            Kind::Exporter => "exporter",
            Kind::Connector => "connector",
        }
    }

    /// The config section (`receivers`).
    pub fn section(self) -> &'static str {
        match self {
            Kind::Receiver => "receivers",
            Kind::Processor => "processors",
            Kind::Exporter => "exporters",
            Kind::Connector => "connectors",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built component, ready for the engine.
#[non_exhaustive]
pub enum Instance {
    /// A receiver.
    Receiver(Box<dyn Receiver>),
    /// A processor.
    Processor(Box<dyn Processor>),
    /// An exporter.
    Exporter(Box<dyn Exporter>),
    /// A connector.
    Connector(Box<dyn Connector>),
}

mod sealed {
    pub trait Sealed {}
}

/// Implemented by `Box<dyn Receiver>`, `Box<dyn Processor>`, `Box<dyn Exporter>` and
/// `Box<dyn Connector>`: what a
/// [`Factory`] builds, and so which [`Kind`] it registers.
pub trait Component: sealed::Sealed + Send + 'static {
    /// The kind of component.
    const KIND: Kind;
    /// Wraps into an [`Instance`].
    fn into_instance(self) -> Instance;
}

macro_rules! component_kind {
    ($t:ident, $kind:ident) => {
        impl sealed::Sealed for Box<dyn $t> {}
        impl Component for Box<dyn $t> {
            const KIND: Kind = Kind::$kind;
            fn into_instance(self) -> Instance {
                Instance::$kind(self)
            }
        }
    };
}
component_kind!(Receiver, Receiver);
component_kind!(Processor, Processor);
component_kind!(Exporter, Exporter);
component_kind!(Connector, Connector);

/// Describes one component type: its name, signals, typed config, validation and construction.
pub trait Factory: 'static {
    /// The typed config. Use `#[serde(deny_unknown_fields)]`; `#[serde(default)]` lets users
    /// write just the component id. An absent config deserializes from an empty mapping.
    type Config: DeserializeOwned;
    /// `Box<dyn Receiver>`, `Box<dyn Processor>`, `Box<dyn Exporter>` or `Box<dyn Connector>`.
    type Component: Component;
    /// The type name used in config keys (`type` or `type/name`).
    const TYPE: &'static str;
    /// Signals this component accepts or produces (a connector: those it takes).
    const SIGNALS: &'static [Signal];
    /// A connector's: the signals it makes, for the pipelines it is a receiver of. Others: none.
    const OUTPUT_SIGNALS: &'static [Signal] = &[];
    /// One line for `oxeye components`.
    const DESCRIPTION: &'static str;
    /// The component's reference page (Markdown), shown by `oxeye components TYPE`: its intro
    /// and its `yaml` blocks, which should show every setting with its default. Built-ins
    /// `include_str!` their page under `docs/components/`.
    const DOCS: &'static str = "";
    /// A receiver that applies config changes while it runs (through
    /// [`ReceiverContext::reconfigurations`](crate::ReceiverContext::reconfigurations)) instead of
    /// being replaced on reload.
    const RECONFIGURABLE: bool = false;

    /// Checks values serde cannot (ranges, combinations). Must not start anything.
    fn validate(_config: &Self::Config) -> Result<(), ConfigErrors> {
        Ok(())
    }

    /// Checks what depends on the signals of the pipelines the component is in (a setting that
    /// suits traces but not metrics). `oxeye validate` calls it with those signals, and so
    /// does every build ([`BuildContext::signals`]). Must not start anything.
    fn validate_signals(_config: &Self::Config, _signals: &[Signal]) -> Result<(), ConfigErrors> {
        Ok(())
    }

    /// Builds an instance from a validated config.
    fn build(config: Self::Config, ctx: BuildContext) -> Result<Self::Component, BoxError>;
}

/// A registered factory, type-erased. Collected at link time with `inventory`.
pub struct Registration {
    /// Type name (`synthetic`).
    pub type_name: &'static str,
    /// Kind of component.
    pub kind: Kind,
    /// Signals accepted (a connector: those it takes).
    pub signals: &'static [Signal],
    /// A connector's [`Factory::OUTPUT_SIGNALS`].
    pub output_signals: &'static [Signal],
    /// One-line description.
    pub description: &'static str,
    /// See [`Factory::DOCS`].
    pub docs: &'static str,
    /// The crate that registered it (for duplicate reports).
    pub crate_name: &'static str,
    /// See [`Factory::RECONFIGURABLE`].
    pub reconfigurable: bool,
    check: fn(&serde_yaml::Value) -> Result<(), ConfigErrors>,
    check_signals: fn(&serde_yaml::Value, &[Signal]) -> Result<(), ConfigErrors>,
    build: fn(&serde_yaml::Value, BuildContext) -> Result<Instance, BoxError>,
}

inventory::collect!(Registration);

fn parse<F: Factory>(value: &serde_yaml::Value) -> Result<F::Config, ConfigErrors> {
    // `receivers: {synthetic:}` has a null config: treat it as an empty mapping.
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        other => other.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().iter().fold(String::new(), |mut path, segment| {
            use serde_path_to_error::Segment;
            match segment {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                other => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&other.to_string());
                }
            }
            path
        });
        let mut errors = ConfigErrors::new();
        errors.push(path, err.into_inner().to_string());
        errors
    })
}

fn check<F: Factory>(value: &serde_yaml::Value) -> Result<(), ConfigErrors> {
    F::validate(&parse::<F>(value)?)
}

fn check_signals<F: Factory>(
    value: &serde_yaml::Value,
    signals: &[Signal],
) -> Result<(), ConfigErrors> {
    F::validate_signals(&parse::<F>(value)?, signals)
}

fn build<F: Factory>(value: &serde_yaml::Value, ctx: BuildContext) -> Result<Instance, BoxError> {
    let config = parse::<F>(value)?;
    F::validate(&config)?;
    F::validate_signals(&config, &ctx.signals)?;
    Ok(F::build(config, ctx)?.into_instance())
}

impl Registration {
    /// The registration of `F`; used by [`register!`](crate::register).
    pub const fn of<F: Factory>(crate_name: &'static str) -> Registration {
        Registration {
            type_name: F::TYPE,
            kind: <F::Component as Component>::KIND,
            signals: F::SIGNALS,
            output_signals: F::OUTPUT_SIGNALS,
            description: F::DESCRIPTION,
            docs: F::DOCS,
            crate_name,
            reconfigurable: F::RECONFIGURABLE,
            check: check::<F>,
            check_signals: check_signals::<F>,
            build: build::<F>,
        }
    }

    /// Every factory linked into this binary.
    pub fn all() -> impl Iterator<Item = &'static Registration> {
        inventory::iter::<Registration>.into_iter()
    }

    /// Deserializes and validates a config without building anything.
    pub fn check(&self, config: &serde_yaml::Value) -> Result<(), ConfigErrors> {
        (self.check)(config)
    }

    /// The checks that depend on the signals the component serves
    /// ([`Factory::validate_signals`]).
    pub fn check_signals(
        &self,
        config: &serde_yaml::Value,
        signals: &[Signal],
    ) -> Result<(), ConfigErrors> {
        (self.check_signals)(config, signals)
    }

    /// Deserializes, validates and builds an instance.
    pub fn build(
        &self,
        config: &serde_yaml::Value,
        ctx: BuildContext,
    ) -> Result<Instance, BoxError> {
        (self.build)(config, ctx)
    }

    /// True when the component accepts `signal`.
    pub fn supports(&self, signal: Signal) -> bool {
        self.signals.contains(&signal)
    }

    /// True when a connector makes `signal`.
    pub fn makes(&self, signal: Signal) -> bool {
        self.output_signals.contains(&signal)
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("type_name", &self.type_name)
            .field("kind", &self.kind)
            .field("signals", &self.signals)
            .field("crate_name", &self.crate_name)
            .finish()
    }
}

/// Registers a [`Factory`] so that the `oxeye` binary (and any binary linking the crate) finds it.
///
/// The crate must be linked into the final binary: built-in crates are referenced by the `oxeye`
/// library; a custom binary adds `use my_processor as _;`.
#[macro_export]
macro_rules! register {
    ($factory:ty) => {
        $crate::__private::inventory::submit! {
            $crate::Registration::of::<$factory>(env!("CARGO_PKG_NAME"))
        }
    };
}
