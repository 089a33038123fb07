//! `ebpf` receiver: telemetry from the kernel.
//!
//! `flows:` — network flows counted by an XDP program (ingress) and a TC program (egress) on
//! each watched interface, harvested every `flush_interval` into `flows` batches.
//! `spans:` — one span per probed call (syscall tracepoint pairs, uprobes, kprobes), nested per
//! thread into traces, with optional stacks, drained from a ring buffer into `traces` batches.
//! `requests:` — one span per HTTP request, Redis command or DNS lookup a process served (SERVER) or made (CLIENT), from
//! the first bytes of what its connections carry (syscall tracepoints), joined to the caller's
//! trace through `traceparent`.
//! `process:` — process lifecycle events (`process.exec`, `process.exit`) from the
//! `sched_process_exec`/`sched_process_exit` tracepoints, as `logs`.
//! `profiles:` — CPU profiles: stacks sampled by a perf_event program on a CPU clock of every
//! online CPU, counted per (thread, stack, span) in user space and emitted once per `window` as
//! `profiles` batches; with `spans:` too, a sample carries the span open on its thread.
//!
//! ```yaml
//! receivers:
//!   ebpf:
//!     flows:
//!       interfaces: default        # default-route interface | all | [eth0, eth1]
//!       mode: auto                 # auto (native, else generic) | native | generic
//!       egress: true
//!       flush_interval: 1s
//!       max_flows: 65536           # per map (two maps alternate)
//!       sample_every: 1            # 1-in-N packet sampling, counts scaled back up
//! ```

pub mod bench;
mod btf;
mod config;
pub mod doctor;
mod error;
mod flows;
mod preflight;
mod process;
pub mod profiles;
mod requests;
mod ring;
mod run;

mod spans;
mod sys;
mod validate;

pub use error::{FlowError, ProbeError};

use oxeye_api::{BoxError, BuildContext, ConfigErrors, Factory, Receiver, Signal};

pub use config::*;
pub use run::EbpfReceiver;

/// Factory for [`EbpfReceiver`].
pub struct EbpfFactory;

impl Factory for EbpfFactory {
    type Config = EbpfConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "ebpf";
    const SIGNALS: &'static [Signal] = &[
        Signal::Traces,
        Signal::Metrics,
        Signal::Flows,
        Signal::Profiles,
        Signal::Logs,
    ];
    const DESCRIPTION: &'static str =
        "kernel telemetry: network flows (XDP, TC), spans (tracepoints, u/kprobes, fentry), HTTP, DNS and Redis request spans, CPU profiles (perf events), process events (logs); needs root";
    const DOCS: &'static str = include_str!("../../../docs/components/receiver-ebpf.md");
    // Span sources and flow interfaces change live; other changes replace the receiver.
    const RECONFIGURABLE: bool = true;

    fn validate(c: &EbpfConfig) -> Result<(), ConfigErrors> {
        validate::check(c)
    }

    fn build(config: EbpfConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        flows::check_privileges()?;
        // What the host must have, checked before anything loads (so `validate` agrees).
        let interfaces = preflight::check(&config)?;
        Ok(Box::new(EbpfReceiver {
            flows: config.flows.zip(interfaces),
            spans: config.spans,
            profiles: config.profiles,
            process: config.process,
            requests: config.requests,
            resource: ctx.resource,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(EbpfFactory);

/// The ring-buffer record parsers on any bytes, for the fuzz targets (`tests/fuzz`). Not part
/// of the receiver's interface.
#[doc(hidden)]
pub mod fuzzing {
    /// A span record (any of its three sizes) → a span, or `None`.
    pub fn span_record(item: &[u8]) -> Option<oxeye_api::Span> {
        crate::spans::record_to_span(item)
    }

    /// Request events (ring records, back to back with a u16 length before each) through one
    /// connection tracker.
    pub fn request_events(bytes: &[u8]) -> Vec<oxeye_api::Span> {
        crate::requests::fuzz_events(bytes)
    }

    /// A profile sample record counted into a window.
    pub fn profile_record(item: &[u8]) {
        let mut agg = crate::profiles::aggregate::Aggregator::new(1_000_000_000, 52_631_579, 64);
        let _ = crate::profiles::add_record(&mut agg, item, 0);
    }
}
