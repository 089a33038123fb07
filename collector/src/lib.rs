//! oxeye: an eBPF-native, OpenTelemetry-style telemetry pipeline.
//!
//! This library is the runtime behind the `oxeye` binary. A custom build of oxeye with extra
//! component crates is a binary that links them and calls [`cli::main`]:
//!
//! ```ignore
//! use my_processor as _; // links the crate, so its `oxeye_api::register!` is seen
//! fn main() -> std::process::ExitCode { oxeye::cli::main() }
//! ```

pub mod cli;
mod components;
pub mod config;
pub mod engine;
mod memory;
pub mod reload;
pub mod telemetry;

/// The built-in components, linked into every binary that uses this library. Each registers
/// itself with `oxeye_api::register!`, exactly as a third-party crate does.
pub mod builtin {
    pub use oxeye_connector_flowmetrics as flowmetrics;
    pub use oxeye_connector_spanmetrics as spanmetrics;
    pub use oxeye_exporter_arrow as arrow;
    #[cfg(feature = "kafka")]
    pub use oxeye_exporter_kafka as kafka;
    pub use oxeye_exporter_nop as nop_exporter;
    pub use oxeye_exporter_otlp as otlp;
    pub use oxeye_exporter_pprof as pprof;
    pub use oxeye_exporter_prometheus as prometheus;
    pub use oxeye_exporter_prometheusremotewrite as prometheusremotewrite;
    pub use oxeye_exporter_stdout as stdout;
    pub use oxeye_processor_aggregation as aggregation;
    pub use oxeye_processor_enrich as enrich;
    pub use oxeye_processor_filter as filter;
    pub use oxeye_processor_memory_limiter as memory_limiter;
    pub use oxeye_processor_nop as nop_processor;
    pub use oxeye_processor_sampling as sampling;
    pub use oxeye_processor_symbolization as symbolization;
    pub use oxeye_processor_tail_sampling as tail_sampling;
    pub use oxeye_processor_transform as transform;
    pub use oxeye_receiver_ebpf as ebpf;
    #[cfg(feature = "kafka")]
    pub use oxeye_receiver_kafka as kafka_receiver;
    pub use oxeye_receiver_otlp as otlp_receiver;
    pub use oxeye_receiver_synthetic as synthetic;
}

/// The pipeline `oxeye run` uses when no `-c FILE` is given.
pub const DEFAULT_PIPELINE: &str = include_str!("../../config/default.yaml");

use std::time::Duration;

/// Loads and runs a config in the current tokio runtime until it ends by itself or `stop`
/// yields; for tests and embedding. Returns the report, or the config / build errors.
pub async fn run_config(
    file: &str,
    text: &str,
    stop: tokio::sync::mpsc::Receiver<()>,
) -> Result<engine::Report, Vec<String>> {
    let loaded = config::load(file, text);
    let Some(cfg) = loaded.config else {
        return Err(loaded.errors().map(|d| d.to_string()).collect());
    };
    let engine = engine::Engine::build(&cfg)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(engine.run(stop).await)
}

/// Formats a duration for logs (`1.234s`).
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}
