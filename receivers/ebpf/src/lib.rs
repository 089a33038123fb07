//! `ebpf` receiver: telemetry from the kernel.
//!
//! `flows:` — network flows counted by an XDP program (ingress) and a TC program (egress) on
//! each watched interface, harvested every `flush_interval` into `flows` batches.
//! `spans:` — one span per probed call (syscall tracepoint pairs, uprobes, kprobes), nested per
//! thread into traces, with optional stacks, drained from a ring buffer into `traces` batches.
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
pub mod doctor;
mod flows;
pub mod profiles;
mod ring;

/// The ring-buffer record parsers on any bytes, for the fuzz targets (`tests/fuzz`). Not part
/// of the receiver's interface.
#[doc(hidden)]
pub mod fuzzing {
    /// A span record (any of its three sizes) → a span, or `None`.
    pub fn span_record(item: &[u8]) -> Option<oxeye_api::Span> {
        crate::spans::record_to_span(item)
    }

    /// A profile sample record counted into a window.
    pub fn profile_record(item: &[u8]) {
        let mut agg = crate::profiles::aggregate::Aggregator::new(1_000_000_000, 52_631_579, 64);
        let _ = crate::profiles::add_record(&mut agg, item, 0);
    }
}
mod spans;
mod sys;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::blocking::unblock;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Flow, Mapping, Receiver, ReceiverContext,
    Resource, Signal, Telemetry,
};
use oxeye_ebpf_common::SPAN_COUNTER_NAMES;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use tracing::info;

/// Which interfaces to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Interfaces {
    /// The interface of the default route.
    #[default]
    Default,
    /// Every non-loopback interface.
    All,
    /// These interfaces.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Interfaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Interfaces;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of interface names, `all` (every non-loopback interface) or `default` (the default-route interface)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Interfaces, E> {
                match v {
                    "default" => Ok(Interfaces::Default),
                    "all" => Ok(Interfaces::All),
                    other => Err(E::custom(format!(
                        "`{other}`: expected `all`, `default`, or a list such as [{other}]"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Interfaces, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(Interfaces::List(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode, else generic, with a log line.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic (skb) only.
    Generic,
}

/// `flows:` settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Interfaces to watch.
    pub interfaces: Interfaces,
    /// XDP mode.
    pub mode: XdpModeConfig,
    /// Also count egress with TC.
    pub egress: bool,
    /// How often to harvest the flow maps.
    #[serde(with = "oxeye_api::config::duration")]
    pub flush_interval: Duration,
    /// Capacity of each flow map (entries).
    pub max_flows: u32,
    /// Count 1 packet in N, scaled back up (1 = every packet).
    pub sample_every: u32,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            interfaces: Interfaces::Default,
            mode: XdpModeConfig::Auto,
            egress: true,
            flush_interval: Duration::from_secs(1),
            max_flows: 65536,
            sample_every: 1,
        }
    }
}

/// How a `kprobe:` or `syscall:` source attaches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// kprobe: fentry/fexit where the kernel supports it, else kprobe/kretprobe. syscall: the
    /// syscall's `syscalls:` tracepoint pair.
    #[default]
    Auto,
    /// kprobe/kretprobe only.
    Kprobe,
    /// fentry/fexit only.
    Fentry,
    /// syscall: the `syscalls:sys_enter_*`/`sys_exit_*` pair (runs only for that syscall).
    Tracepoint,
    /// syscall: the shared `raw_syscalls` pair (x86_64, one source per syscall): cheaper per
    /// traced call, but it runs on every syscall of every task, filtering by number.
    RawTracepoint,
}

/// Stacks to capture at entry.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StackMode {
    /// None.
    #[default]
    None,
    /// Kernel stack.
    Kernel,
    /// User stack.
    User,
    /// Both.
    Both,
}

/// One span source: exactly one of `syscall`, `uprobe`, `kprobe`, plus filters and options.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `syscalls:sys_enter_<name>` / `sys_exit_<name>`.
    pub syscall: Option<String>,
    /// `<path>:<symbol>` of a binary or library.
    pub uprobe: Option<String>,
    /// A kernel function.
    pub kprobe: Option<String>,
    /// How a kprobe or syscall source attaches.
    #[serde(default)]
    pub attach: AttachMode,
    /// Only this process (and, for uprobes, attach to it only).
    pub pid: Option<u32>,
    /// Only this thread.
    pub tid: Option<u32>,
    /// Only tasks with this comm (at most 15 bytes).
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 directory.
    pub cgroup: Option<String>,
    /// Emit only spans at least this long (decided in the kernel).
    #[serde(default, with = "oxeye_api::config::opt_duration")]
    pub min_duration: Option<Duration>,
    /// Raw arguments to capture (0..=6).
    #[serde(default)]
    pub args: u32,
    /// Keep the return value (`oxeye.return_value`).
    #[serde(default = "yes")]
    pub return_value: bool,
    /// Stacks captured at entry.
    #[serde(default)]
    pub stack: StackMode,
    /// Detach the source this long after it was attached (a live probe that cleans itself up).
    #[serde(default, with = "oxeye_api::config::opt_duration")]
    pub ttl: Option<Duration>,
}

fn yes() -> bool {
    true
}

/// What a source probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A syscall.
    Syscall(String),
    /// A user function.
    Uprobe {
        /// Binary or library.
        path: String,
        /// Symbol.
        symbol: String,
    },
    /// A kernel function.
    Kprobe(String),
}

impl SourceSpec {
    /// The probe (validated: exactly one kind is set, and an uprobe is `path:symbol`).
    pub fn kind(&self) -> SourceKind {
        match (&self.syscall, &self.uprobe, &self.kprobe) {
            (Some(s), _, _) => SourceKind::Syscall(s.clone()),
            (_, Some(u), _) => {
                let (path, symbol) = u.rsplit_once(':').unwrap_or((u.as_str(), ""));
                SourceKind::Uprobe {
                    path: path.to_string(),
                    symbol: symbol.to_string(),
                }
            }
            (_, _, Some(k)) => SourceKind::Kprobe(k.clone()),
            _ => SourceKind::Syscall(String::new()),
        }
    }
}

/// `spans:` settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpansConfig {
    /// What to probe.
    pub sources: Vec<SourceSpec>,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    pub ring_size: u32,
    /// Wake the reader once this many bytes wait; the reader also drains every `drain_interval`.
    pub wakeup_bytes: u64,
    /// Longest a span waits in the ring buffer.
    #[serde(with = "oxeye_api::config::duration")]
    pub drain_interval: Duration,
}

impl Default for SpansConfig {
    fn default() -> Self {
        SpansConfig {
            sources: Vec::new(),
            ring_size: 4 << 20,
            wakeup_bytes: 256 << 10,
            drain_interval: Duration::from_millis(100),
        }
    }
}

/// `profiles:` settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// Samples per second on each CPU (the kernel caps it at kernel.perf_event_max_sample_rate).
    pub frequency: u64,
    /// Samples are counted per window and emitted when it ends (aligned to wall-clock multiples).
    #[serde(with = "oxeye_api::config::duration")]
    pub window: Duration,
    /// Stacks to capture: `both`, `kernel` or `user`.
    pub stacks: StackMode,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only tasks with this comm (at most 15 bytes).
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 directory.
    pub cgroup: Option<String>,
    /// Frames kept per stack (1..=127).
    pub max_depth: u32,
    /// Distinct (thread, stack, span) per window; samples of further stacks are counted in one
    /// overflow record.
    pub max_stacks: usize,
    /// Ring buffer bytes (a power of two; a sample takes about 2 KiB).
    pub ring_size: u32,
    /// Sample oxeye's own threads too (off: its CPU is on /metrics, and symbolizing its own
    /// large binary would cost the symbolization processor tens of MB).
    pub include_oxeye: bool,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            frequency: 19,
            window: Duration::from_secs(10),
            stacks: StackMode::Both,
            pid: None,
            comm: None,
            cgroup: None,
            max_depth: oxeye_ebpf_common::PROFILE_STACK_DEPTH as u32,
            max_stacks: 16384,
            // 512 samples; with wakeups at a quarter full, ample for 99 Hz on 128 CPUs.
            ring_size: 1 << 20,
            include_oxeye: false,
        }
    }
}

/// Highest `profiles.frequency` accepted by validation (the kernel may allow less).
pub const MAX_PROFILE_FREQUENCY: u64 = 10_000;

/// Receiver config.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Network flows from XDP and TC.
    pub flows: Option<FlowsConfig>,
    /// Spans from syscalls, user and kernel functions.
    pub spans: Option<SpansConfig>,
    /// CPU profiles.
    pub profiles: Option<ProfilesConfig>,
}

/// The receiver.
pub struct EbpfReceiver {
    flows: Option<(FlowsConfig, Vec<String>)>,
    spans: Option<SpansConfig>,
    profiles: Option<ProfilesConfig>,
    resource: Arc<Resource>,
    telemetry: Telemetry,
}

const BATCH: usize = 4096;

/// Sends records in batches of at most BATCH (moving each record once).
async fn emit_batches<T>(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    records: Vec<T>,
    wrap: fn(Arc<Resource>, Vec<T>) -> Batch,
) {
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<T> = records.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            return;
        }
        ctx.emit(wrap(resource.clone(), chunk)).await;
    }
}

async fn emit(ctx: &ReceiverContext, resource: &Arc<Resource>, flows: Vec<Flow>) {
    emit_batches(ctx, resource, flows, Batch::flows).await;
}

async fn run_flows(
    ctx: &ReceiverContext,
    mut cfg: FlowsConfig,
    interfaces: Vec<String>,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
    mut changes: Changes<FlowsConfig>,
) -> Result<(), BoxError> {
    // Loading, attaching and harvesting are hundreds to thousands of syscalls: they run on the
    // blocking pool, never on the async workers.
    let flush_interval = cfg.flush_interval;
    let t = telemetry.clone();
    let started = cfg.clone();
    let mut probe = unblock(move || flows::FlowProbe::start(&started, &interfaces, t)).await?;
    let mut tick = tokio::time::interval(flush_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let old = probe.flip()?;
                // Programs that read the old index finish within microseconds.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let (p, flows) = unblock(move || {
                    let flows = probe.harvest(old);
                    (probe, flows)
                })
                .await;
                probe = p;
                emit(ctx, resource, flows?).await;
            }
            Some((new, done)) = changes.recv() => {
                let (result, p) = change_flows(probe, &mut cfg, new).await;
                probe = p;
                let _ = done.send(result);
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    // Detach first, so the final drain sees every packet counted.
    let (_probe, flows) = unblock(move || {
        probe.detach();
        let flows = probe.drain_all();
        (probe, flows)
    })
    .await;
    let flows = flows?;
    let counters: Vec<String> = telemetry
        .counters()
        .iter()
        .filter(|(name, _, _)| {
            name.starts_with("ebpf_") && !name.contains("span") && !name.contains("orphan")
        })
        .map(|(name, source, n)| format!("{source}.{}={n}", name.trim_start_matches("ebpf_")))
        .collect();
    info!(
        flows = flows.len(),
        "flow programs detached; final harvest; kernel counters: {}",
        counters.join(" ")
    );
    emit(ctx, resource, flows).await;
    Ok(())
}

/// Starts the span sources and the profiler together: a profile sample looks up the span open
/// on its thread in the span programs' `THREADS` map, which the profile object reuses through a
/// pin that only lives while both start.
fn start_probes(
    spans: Option<&SpansConfig>,
    profiles: Option<&ProfilesConfig>,
    telemetry: Telemetry,
) -> Result<(Option<spans::SpanProbe>, Option<profiles::ProfileProbe>), String> {
    let link = spans.is_some() && profiles.is_some();
    let (span_probe, pins) = match spans {
        Some(cfg) => {
            let (probe, pins) = spans::SpanProbe::start(cfg, telemetry.clone(), link)?;
            (Some(probe), pins)
        }
        None => (None, None),
    };
    let threads = pins.as_ref().map(|p| p.map_path("THREADS"));
    let profile_probe = match profiles {
        Some(cfg) => Some(profiles::ProfileProbe::start(
            cfg,
            telemetry,
            threads.as_deref(),
        )?),
        None => None,
    };
    Ok((span_probe, profile_probe))
}

async fn run_profiles(
    ctx: &ReceiverContext,
    mut probe: profiles::ProfileProbe,
    cfg: ProfilesConfig,
    resource: &Arc<Resource>,
) -> Result<(), BoxError> {
    // A window is closed once a drain after its end has run, so its last samples are in.
    let grace = profiles::DRAIN_INTERVAL + Duration::from_millis(50);
    let window_ns = cfg.window.as_nanos() as u64;
    let next_close = || {
        let now = sys::unix_now_ns();
        let wait = window_ns - now % window_ns;
        tokio::time::Instant::now() + Duration::from_nanos(wait) + grace
    };
    let mut close_at = next_close();
    let mut emitted = 0;
    loop {
        tokio::select! {
            _ = probe.wait(profiles::DRAIN_INTERVAL) => drain_profiles(&mut probe).await,
            _ = tokio::time::sleep_until(close_at) => {
                drain_profiles(&mut probe).await;
                let closed = probe.close(sys::unix_now_ns() - grace.as_nanos() as u64, false);
                probe.update_counters();
                emitted += emit_windows(ctx, resource, closed).await;
                close_at = next_close();
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    probe.detach();
    drain_profiles(&mut probe).await;
    let closed = probe.close(0, true);
    probe.update_counters();
    emitted += emit_windows(ctx, resource, closed).await;
    info!(
        samples = probe.samples(),
        records = emitted,
        "profiler detached; final windows emitted"
    );
    Ok(())
}

/// Drains the profile ring buffer; reads the mappings of processes new in their window off the
/// async workers.
async fn drain_profiles(probe: &mut profiles::ProfileProbe) {
    probe.drain();
    let pids = probe.pending_snapshots();
    if !pids.is_empty() {
        let read = unblock(move || {
            pids.into_iter()
                .map(|pid| (pid, Mapping::of_process(pid)))
                .collect()
        })
        .await;
        probe.set_mappings(read);
    }
}

/// Emits closed windows; returns the number of records.
async fn emit_windows(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    closed: Vec<(u64, Vec<oxeye_api::Sample>)>,
) -> usize {
    let mut n = 0;
    for (_, samples) in closed {
        n += samples.len();
        emit_batches(ctx, resource, samples, Batch::samples).await;
    }
    n
}

async fn run_spans(
    ctx: &ReceiverContext,
    mut probe: spans::SpanProbe,
    mut cfg: SpansConfig,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
    mut changes: Changes<SpansConfig>,
) -> Result<(), BoxError> {
    let drain_interval = cfg.drain_interval;
    let mut expired = 0;
    loop {
        let expiry = probe.next_expiry();
        tokio::select! {
            _ = probe.wait(drain_interval) => {
                drain_spans(ctx, resource, &mut probe).await;
                probe.update_counters();
            }
            Some((new, done)) = changes.recv() => {
                let (result, p) = change_spans(probe, &mut cfg, new).await;
                probe = p;
                let _ = done.send(result);
            }
            _ = sleep_until(expiry), if expiry.is_some() => {
                let (gone, p) = unblock(move || {
                    let gone = probe.expire(std::time::Instant::now());
                    (gone, probe)
                })
                .await;
                probe = p;
                for label in gone {
                    info!(source = %label, "span source expired (ttl): detached");
                    expired += 1;
                    telemetry.set_counter("ebpf_sources_expired", "spans", expired);
                }
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    // Detaching fentry/fexit links waits for RCU: off the async workers too.
    let mut probe = unblock(move || {
        probe.detach();
        probe
    })
    .await;
    let final_drain = drain_spans(ctx, resource, &mut probe).await;
    probe.update_counters();
    let counters: Vec<String> = telemetry
        .counters()
        .iter()
        .filter(|(name, _, n)| {
            SPAN_COUNTER_NAMES.contains(name) && (*n > 0 || *name == "ebpf_spans")
        })
        .map(|(name, source, n)| format!("{source} {}={n}", name.trim_start_matches("ebpf_")))
        .collect();
    info!(
        final_drain,
        "span sources detached; kernel counters: {}",
        counters.join(", ")
    );
    Ok(())
}

/// A part of a new config for one half of the receiver, and where to say whether it applied.
type Change<T> = (T, tokio::sync::oneshot::Sender<Result<(), String>>);
type Changes<T> = tokio::sync::mpsc::UnboundedReceiver<Change<T>>;

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Applies a new `spans:` to running span sources: sources removed are detached, new ones
/// attached, the others untouched. Anything else changed cannot be applied live (`Err`: the
/// engine then replaces the receiver).
async fn change_spans(
    mut probe: spans::SpanProbe,
    cfg: &mut SpansConfig,
    spans: SpansConfig,
) -> (Result<(), String>, spans::SpanProbe) {
    let same_rest = SpansConfig {
        sources: cfg.sources.clone(),
        ..spans.clone()
    } == *cfg;
    if !same_rest {
        return (
            Err("ring_size, wakeup_bytes or drain_interval changed".into()),
            probe,
        );
    }
    let removed: Vec<SourceSpec> = cfg
        .sources
        .iter()
        .filter(|s| !spans.sources.contains(s))
        .cloned()
        .collect();
    let added: Vec<SourceSpec> = spans
        .sources
        .iter()
        .filter(|s| !cfg.sources.contains(s))
        .cloned()
        .collect();
    *cfg = spans;
    // Attach and detach call into the kernel (and may wait for RCU): off the async workers.
    unblock(move || {
        for spec in &removed {
            probe.remove(spec);
        }
        let mut result = Ok(());
        for spec in &added {
            if let Err(e) = probe.add(spec) {
                result = Err(e);
                break;
            }
        }
        (result, probe)
    })
    .await
}

/// Applies a new `flows:` whose only change is `interfaces`: the programs are attached to new
/// interfaces and detached from removed ones; the others, the maps and the counters go on.
async fn change_flows(
    mut probe: flows::FlowProbe,
    cfg: &mut FlowsConfig,
    new: FlowsConfig,
) -> (Result<(), String>, flows::FlowProbe) {
    let same_rest = FlowsConfig {
        interfaces: cfg.interfaces.clone(),
        ..new.clone()
    } == *cfg;
    if !same_rest {
        return (
            Err("flows settings other than `interfaces` changed".into()),
            probe,
        );
    }
    let spec = new.interfaces.clone();
    let (result, probe) = unblock(move || {
        let wanted = match flows::resolve_interfaces(&spec) {
            Ok(w) => w,
            Err(e) => return (Err(e), probe),
        };
        let now = probe.interfaces();
        for iface in now.iter().filter(|i| !wanted.contains(i)) {
            probe.remove_interface(iface);
        }
        for iface in wanted.iter().filter(|i| !now.contains(i)) {
            if let Err(e) = probe.add_interface(iface) {
                return (Err(e), probe);
            }
        }
        (Ok(()), probe)
    })
    .await;
    if result.is_ok() {
        *cfg = new;
    }
    (result, probe)
}

/// Drains the ring buffer batch by batch (bounded memory however much waits); returns the count.
async fn drain_spans(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    probe: &mut spans::SpanProbe,
) -> usize {
    let mut total = 0;
    loop {
        let spans = probe.drain(BATCH);
        let n = spans.len();
        total += n;
        if n > 0 {
            ctx.emit(Batch::spans(resource.clone(), spans)).await;
        }
        if n < BATCH {
            return total;
        }
    }
}

#[async_trait]
impl Receiver for EbpfReceiver {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let this = *self;
        let flows_now = this.flows.as_ref().map(|(c, _)| c.clone());
        let spans_now = this.spans.clone();
        let (flow_tx, flow_rx) = tokio::sync::mpsc::unbounded_channel();
        let (span_tx, span_rx) = tokio::sync::mpsc::unbounded_channel();
        let profiles_now = this.profiles.clone();
        let flows_on = this.flows.is_some() && ctx.wants(Signal::Flows);
        let spans_on = this.spans.is_some() && ctx.wants(Signal::Traces);
        let flows = async {
            match this.flows.filter(|_| ctx.wants(Signal::Flows)) {
                Some((cfg, interfaces)) => {
                    run_flows(
                        &ctx,
                        cfg,
                        interfaces,
                        &this.resource,
                        &this.telemetry,
                        flow_rx,
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let tracing = async {
            let spans = this.spans.filter(|_| ctx.wants(Signal::Traces));
            let profiles = this.profiles.filter(|_| ctx.wants(Signal::Profiles));
            if spans.is_none() && profiles.is_none() {
                return Ok(());
            }
            // Loading and attaching are hundreds of syscalls: off the async workers.
            let (s, p, t) = (spans.clone(), profiles.clone(), this.telemetry.clone());
            let (span_probe, profile_probe) =
                unblock(move || start_probes(s.as_ref(), p.as_ref(), t)).await?;
            let run_s = async {
                match (span_probe, spans) {
                    (Some(probe), Some(cfg)) => {
                        run_spans(&ctx, probe, cfg, &this.resource, &this.telemetry, span_rx).await
                    }
                    _ => Ok(()),
                }
            };
            let run_p = async {
                match (profile_probe, profiles) {
                    (Some(probe), Some(cfg)) => {
                        run_profiles(&ctx, probe, cfg, &this.resource).await
                    }
                    _ => Ok(()),
                }
            };
            tokio::try_join!(run_s, run_p).map(|_| ())
        };
        // Live config changes: each half takes its part; anything else is refused, and the
        // engine then replaces the receiver.
        let dispatch = async {
            let Some(mut changes) = ctx.reconfigurations() else {
                return std::future::pending::<()>().await;
            };
            let (mut flows_now, mut spans_now) = (flows_now, spans_now);
            while let Some(change) = changes.recv().await {
                let result = async {
                    let value = match change.config.clone() {
                        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
                        v => v,
                    };
                    let new: EbpfConfig =
                        serde_yaml::from_value(value).map_err(|e| format!("config: {e}"))?;
                    for (part, differs, on, now_some, new_some) in [
                        (
                            "flows",
                            new.flows != flows_now,
                            flows_on,
                            flows_now.is_some(),
                            new.flows.is_some(),
                        ),
                        (
                            "spans",
                            new.spans != spans_now,
                            spans_on,
                            spans_now.is_some(),
                            new.spans.is_some(),
                        ),
                    ] {
                        if differs && (!on || now_some != new_some) {
                            return Err(format!("`{part}:` added, removed or not running"));
                        }
                    }
                    if new.profiles != profiles_now {
                        return Err("`profiles:` changed (the profiler restarts)".to_string());
                    }
                    if let Some(f) = new.flows.clone().filter(|f| Some(f) != flows_now.as_ref()) {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        flow_tx
                            .send((f, tx))
                            .map_err(|_| "flows stopped".to_string())?;
                        rx.await.map_err(|_| "flows stopped".to_string())??;
                        flows_now = new.flows.clone();
                    }
                    if let Some(sp) = new
                        .spans
                        .clone()
                        .filter(|sp| Some(sp) != spans_now.as_ref())
                    {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        span_tx
                            .send((sp, tx))
                            .map_err(|_| "spans stopped".to_string())?;
                        rx.await.map_err(|_| "spans stopped".to_string())??;
                        spans_now = new.spans.clone();
                    }
                    Ok(())
                }
                .await;
                let _ = change.done.send(result);
            }
            std::future::pending::<()>().await
        };
        // Either half failing ends the receiver at once (the other half is dropped, which
        // detaches its programs); the engine then marks it unhealthy and shuts everything down.
        tokio::select! {
            r = async { tokio::try_join!(flows, tracing).map(|_| ()) } => r,
            _ = dispatch => unreachable!("pends forever"),
        }
    }
}

/// Factory for [`EbpfReceiver`].
pub struct EbpfFactory;

impl Factory for EbpfFactory {
    type Config = EbpfConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "ebpf";
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Flows, Signal::Profiles];
    const DESCRIPTION: &'static str =
        "kernel telemetry: network flows (XDP, TC), spans (tracepoints, u/kprobes, fentry), CPU profiles (perf events); needs root";
    // Span sources and flow interfaces change live; other changes replace the receiver.
    const RECONFIGURABLE: bool = true;

    fn validate(c: &EbpfConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.flows.is_none() && c.spans.is_none() && c.profiles.is_none() {
            e.push(
                "",
                "configure `flows:`, `spans:` and/or `profiles:`, or nothing is collected",
            );
            return Err(e);
        }
        if let Some(s) = &c.spans {
            validate_spans(s, &mut e);
        }
        if let Some(p) = &c.profiles {
            validate_profiles(p, &mut e);
        }
        let Some(f) = &c.flows else {
            return e.into_result();
        };
        if f.flush_interval.is_zero() {
            e.push("flows.flush_interval", "must be greater than 0");
        }
        if f.max_flows == 0 {
            e.push("flows.max_flows", "must be at least 1");
        }
        if f.sample_every == 0 {
            e.push(
                "flows.sample_every",
                "must be at least 1 (1 = count every packet)",
            );
        }
        if let Interfaces::List(names) = &f.interfaces {
            if names.is_empty() {
                e.push(
                    "flows.interfaces",
                    "empty list: name interfaces, or write `default` or `all`",
                );
            }
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                    e.push(
                        format!("flows.interfaces[{i}]"),
                        format!("`{n}` is not a valid interface name"),
                    );
                }
            }
        }
        e.into_result()
    }

    fn build(config: EbpfConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        flows::check_privileges()?;
        let flows = match config.flows {
            Some(f) => {
                let names = flows::resolve_interfaces(&f.interfaces)?;
                Some((f, names))
            }
            None => None,
        };
        Ok(Box::new(EbpfReceiver {
            flows,
            spans: config.spans,
            profiles: config.profiles,
            resource: ctx.resource,
            telemetry: ctx.telemetry,
        }))
    }
}

fn validate_profiles(p: &ProfilesConfig, e: &mut ConfigErrors) {
    if p.frequency == 0 || p.frequency > MAX_PROFILE_FREQUENCY {
        e.push(
            "profiles.frequency",
            format!(
                "{} Hz is out of range: give 1 to {MAX_PROFILE_FREQUENCY} samples per second per CPU \
                 (19 or 99 are usual: off the beat of periodic timers)",
                p.frequency
            ),
        );
    }
    if p.window < Duration::from_millis(100) {
        e.push("profiles.window", "must be at least 100ms (10s is usual)");
    }
    if p.stacks == StackMode::None {
        e.push(
            "profiles.stacks",
            "a profile is made of stacks: give `both`, `kernel` or `user`",
        );
    }
    if p.max_depth == 0 || p.max_depth > oxeye_ebpf_common::PROFILE_STACK_DEPTH as u32 {
        e.push(
            "profiles.max_depth",
            format!(
                "must be 1 to {} frames",
                oxeye_ebpf_common::PROFILE_STACK_DEPTH
            ),
        );
    }
    if p.max_stacks == 0 {
        e.push("profiles.max_stacks", "must be at least 1");
    }
    if p.ring_size < 65536 || !p.ring_size.is_power_of_two() {
        e.push(
            "profiles.ring_size",
            format!(
                "must be a power of two of at least 65536 bytes (a sample takes about 2 KiB), got {}",
                p.ring_size
            ),
        );
    }
    if p.comm
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 15)
    {
        e.push(
            "profiles.comm",
            "must be 1 to 15 bytes (the kernel keeps 15)",
        );
    }
}

fn validate_spans(s: &SpansConfig, e: &mut ConfigErrors) {
    if s.sources.is_empty() {
        e.push(
            "spans.sources",
            "no sources: add e.g. `- syscall: openat` or `- uprobe: /usr/bin/app:handle`",
        );
    }
    if s.sources.len() > oxeye_ebpf_common::MAX_SOURCES as usize {
        e.push(
            "spans.sources",
            format!("at most {} sources", oxeye_ebpf_common::MAX_SOURCES),
        );
    }
    if s.ring_size < 4096 || !s.ring_size.is_power_of_two() {
        e.push(
            "spans.ring_size",
            format!(
                "must be a power of two of at least 4096 bytes, got {}",
                s.ring_size
            ),
        );
    }
    if s.drain_interval.is_zero() {
        e.push("spans.drain_interval", "must be greater than 0");
    }
    for (i, src) in s.sources.iter().enumerate() {
        let p = format!("spans.sources[{i}]");
        let kinds = [&src.syscall, &src.uprobe, &src.kprobe]
            .iter()
            .filter(|k| k.is_some())
            .count();
        if kinds != 1 {
            e.push(&p, "give exactly one of `syscall:`, `uprobe:` or `kprobe:`");
            continue;
        }
        if let Some(u) = &src.uprobe {
            if !matches!(u.rsplit_once(':'), Some((path, sym)) if !path.is_empty() && !sym.is_empty())
            {
                e.push(
                    format!("{p}.uprobe"),
                    format!("`{u}`: expected <path>:<symbol>, e.g. /usr/bin/app:handle_request"),
                );
            }
        }
        match src.attach {
            AttachMode::Auto => {}
            AttachMode::Kprobe | AttachMode::Fentry if src.kprobe.is_none() => e.push(
                format!("{p}.attach"),
                "kprobe and fentry apply to `kprobe:` sources (syscall: tracepoint or raw_tracepoint)",
            ),
            AttachMode::Tracepoint | AttachMode::RawTracepoint if src.syscall.is_none() => e.push(
                format!("{p}.attach"),
                "tracepoint and raw_tracepoint apply to `syscall:` sources (kprobe: kprobe or fentry)",
            ),
            _ => {}
        }
        if src.args as usize > oxeye_ebpf_common::MAX_ARGS {
            e.push(
                format!("{p}.args"),
                format!("at most {} arguments", oxeye_ebpf_common::MAX_ARGS),
            );
        }
        if src
            .comm
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 15)
        {
            e.push(
                format!("{p}.comm"),
                "must be 1 to 15 bytes (the kernel keeps 15)",
            );
        }
        if src.ttl.is_some_and(|t| t.is_zero()) {
            e.push(
                format!("{p}.ttl"),
                "must be greater than 0 (leave it out to keep the source)",
            );
        }
    }
}

oxeye_api::register!(EbpfFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::check;

    #[test]
    fn config_validation() {
        assert!(check::<EbpfFactory>("flows: {interfaces: [eth0], sample_every: 4}").is_ok());
        assert!(check::<EbpfFactory>("flows: {interfaces: all}").is_ok());
        assert!(check::<EbpfFactory>("flows: {}").is_ok());
        let e = check::<EbpfFactory>("flows: {interfaces: eth0}").unwrap_err();
        assert!(
            e.to_string()
                .contains("expected `all`, `default`, or a list such as [eth0]"),
            "{e}"
        );
        let e = check::<EbpfFactory>(
            "flows: {interfaces: [], flush_interval: 0s, sample_every: 0, max_flows: 0}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flows.flush_interval",
                "flows.max_flows",
                "flows.sample_every",
                "flows.interfaces"
            ]
        );
        assert!(check::<EbpfFactory>("flows: {mode: turbo}").is_err());
        assert!(check::<EbpfFactory>("{}").is_err());
    }

    #[test]
    fn profile_config_validation() {
        assert!(check::<EbpfFactory>("profiles: {}").is_ok());
        assert!(check::<EbpfFactory>(
            "profiles: {frequency: 99, window: 1s, stacks: user, comm: app, max_depth: 64}"
        )
        .is_ok());
        let e = check::<EbpfFactory>(
            "profiles: {frequency: 0, window: 10ms, stacks: none, max_depth: 200, max_stacks: 0, ring_size: 4096, comm: ''}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "profiles.frequency",
                "profiles.window",
                "profiles.stacks",
                "profiles.max_depth",
                "profiles.max_stacks",
                "profiles.ring_size",
                "profiles.comm"
            ]
        );
        assert!(
            e.to_string()
                .contains("0 Hz is out of range: give 1 to 10000"),
            "{e}"
        );
        assert!(check::<EbpfFactory>("profiles: {frequency: 20000}").is_err());
        assert!(check::<EbpfFactory>("profiles: {hz: 19}").is_err());
    }

    #[test]
    fn perf_event_errors_name_the_missing_feature() {
        let err = |errno| profiles::perf_error_for_test(errno, 3, 99);
        assert!(
            err(libc::ENOENT).contains("CONFIG_PERF_EVENTS"),
            "{}",
            err(libc::ENOENT)
        );
        assert!(
            err(libc::EACCES).contains("CAP_PERFMON"),
            "{}",
            err(libc::EACCES)
        );
        assert!(
            err(libc::EINVAL).contains("profiles.frequency: the kernel refused 99 Hz"),
            "{}",
            err(libc::EINVAL)
        );
    }

    #[test]
    fn span_config_validation() {
        assert!(check::<EbpfFactory>("spans: {sources: [{syscall: openat, pid: 1, min_duration: 10us, stack: both, args: 3}]}").is_ok());
        assert!(check::<EbpfFactory>(
            "spans: {sources: [{uprobe: '/bin/app:main'}, {kprobe: vfs_read, attach: fentry}]}"
        )
        .is_ok());
        let e = check::<EbpfFactory>(
            "spans: {ring_size: 1000, sources: [{syscall: read, uprobe: '/x:y'}, {uprobe: nocolon}, {syscall: read, attach: kprobe, args: 9, comm: ''}]}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spans.ring_size",
                "spans.sources[0]",
                "spans.sources[1].uprobe",
                "spans.sources[2].attach",
                "spans.sources[2].args",
                "spans.sources[2].comm"
            ]
        );
        assert!(check::<EbpfFactory>(
            "spans: {sources: [{syscall: read, attach: raw_tracepoint}, {syscall: write, attach: tracepoint}]}"
        )
        .is_ok());
        let wrong_kind: Vec<(String, String)> = check::<EbpfFactory>(
            "spans: {sources: [{uprobe: '/bin/app:main', attach: raw_tracepoint}, {kprobe: vfs_read, attach: tracepoint}, {syscall: read, attach: fentry}]}",
        )
        .unwrap_err()
        .0
        .into_iter()
        .map(|f| (f.path, f.message))
        .collect();
        for (i, applies_to) in ["syscall:", "syscall:", "kprobe:"].iter().enumerate() {
            let (path, message) = &wrong_kind[i];
            assert_eq!(path, &format!("spans.sources[{i}].attach"));
            assert!(
                message.contains(&format!("apply to `{applies_to}` sources")),
                "{message}"
            );
        }
        assert_eq!(wrong_kind.len(), 3, "{wrong_kind:?}");
        assert!(check::<EbpfFactory>("spans: {sources: []}").is_err());
        assert!(
            check::<EbpfFactory>("spans: {sources: [{syscall: read, min_duration: 10}]}").is_err()
        );
        assert!(check::<EbpfFactory>("spans: {sources: [{syscall: read, stack: deep}]}").is_err());
    }
}
