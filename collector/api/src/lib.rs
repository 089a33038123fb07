//! The oxeye plugin API.
//!
//! Every oxeye component — the built-in ones and the ones users write as their own crates —
//! is built against this crate alone:
//!
//! * [`data`]: the records that move through a pipeline ([`Span`], [`Flow`], [`Sample`]) in
//!   [`Batch`]es; [`metrics`] ([`Metric`]) and [`logs`] ([`LogRecord`]) the OTLP metric and log
//!   models.
//! * [`component`]: the [`Receiver`], [`Processor`] and [`Exporter`] traits. The engine owns the
//!   loops around them (input, ticks, flush, output, counting, shutdown, backpressure).
//! * [`blocking`]: [`blocking::OnThread`] runs an exporter whose work blocks (files, stdout,
//!   compression) on a thread of its own, so it never stalls the async workers.
//! * [`files`]: output files that never overwrite anything (`.partial`, then a free name).
//! * [`factory`]: the [`Factory`] trait (type name, signals, typed config, validate, build) and
//!   the [`register!`] macro that makes a factory known to the `oxeye` binary at link time.
//! * [`profile`]: the deduplicated tables (strings, functions, mappings, locations) that
//!   profile formats such as pprof and OTLP profiles are built from.
//! * [`size`]: estimated memory of records, for components that bound what they hold.
//! * [`config`]: serde helpers for component configs (durations) and [`ConfigErrors`].
//! * `testing` (feature): harnesses that drive one component in unit tests.
#![deny(missing_docs)]

pub mod blocking;
pub mod component;
pub mod config;
pub mod data;
pub mod factory;
pub mod files;
pub mod logs;
pub mod metrics;
pub mod profile;
pub mod size;
#[cfg(feature = "testing")]
pub mod testing;

pub use component::{
    Admission, BoxError, BuildContext, Connector, Exporter, Hold, LostCount, LostUnit, Output,
    Processor, Receiver, ReceiverContext, Reconfigure, Shutdown, Telemetry,
};
pub use config::{ConfigErrors, FieldError};
pub use data::{
    Attributes, Batch, Comm, Direction, DroppedCounts, EncodedLogs, EncodedMetrics, EncodedRecords,
    EncodedSpans, EntityRef, Event, Flow, Frame, Link, Mapping, Records, Resource, Sample, Scope,
    Signal, Span, SpanId, SpanKind, StatusCode, TaskContext, TcpFlags, TraceId, Transport, Value,
};
pub use factory::{Factory, Instance, Kind, Registration};
pub use logs::{LogRecord, Severity};
pub use metrics::{
    Buckets, Exemplar, ExponentialHistogram, ExponentialHistogramPoint, Histogram, HistogramPoint,
    Metric, MetricData, Number, NumberPoint, PointError, Quantile, Sum, SummaryPoint, Temporality,
};

/// Re-exports used by the [`register!`] macro. Not part of the stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
