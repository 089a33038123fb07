//! The receiver's config: `flows:`, `spans:` (sources), `profiles:` and `process:`, with their
//! defaults.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

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
    /// How user stacks are walked: `tables` (unwind tables from each binary's `.eh_frame`:
    /// binaries built without frame pointers too), `frame_pointers` (the kernel's walk), or
    /// `auto` (tables where this kernel can run the walker).
    pub unwind: Unwind,
    /// Stack deltas the kernel holds for all objects' unwind tables (8 bytes of kernel memory
    /// each; libc takes about 23 000). When full, all are dropped and reloaded as sampled.
    pub unwind_max_deltas: u32,
}

/// `profiles.unwind`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unwind {
    /// `tables` where the kernel verifies the walker, else `frame_pointers` (said at start).
    #[default]
    Auto,
    /// `bpf_get_stack`: stops at the first frame of code built without frame pointers.
    FramePointers,
    /// Unwind tables built from `.eh_frame`, walked in the profile program (kernel 5.17+:
    /// `bpf_loop`); frame pointers where an object has none.
    Tables,
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
            unwind: Unwind::Auto,
            // 32 MiB: about 130 MiB of machine code.
            unwind_max_deltas: 1 << 22,
        }
    }
}

/// `process:` settings: process lifecycle events as logs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Ring buffer bytes (a power of two; an event takes 576).
    pub ring_size: u32,
    /// Keep exec'd command lines (`process.command_line`; off: the executable path only, for
    /// hosts where arguments may hold secrets).
    pub command_line: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            // About 1 800 events: a burst of process starts between two drains.
            ring_size: 1 << 20,
            command_line: true,
        }
    }
}

/// A protocol `requests:` makes spans of.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.0 and 1.1.
    Http,
    /// Redis (RESP2 and RESP3 commands in arrays, as clients send them).
    Redis,
    /// DNS over UDP and TCP, on connections to or from port 53 (the client side of UDP
    /// lookups: a resolver that connects its socket, as glibc's and dig do).
    Dns,
}

/// `requests:` settings: one span per request a process served or made, from the bytes its
/// connections carry (syscall tracepoints; no change to the application).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Protocols to recognise.
    pub protocols: Vec<Protocol>,
    /// Only connections whose server port (the local port where the process accepted, the
    /// peer's where it connected) is one of these; empty = any.
    pub ports: Vec<u16>,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only tasks with this comm (at most 15 bytes).
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 directory.
    pub cgroup: Option<String>,
    /// Bytes of each read and write captured (16..=1024): a request's head should fit.
    pub capture_bytes: u32,
    /// Connections tracked at once (kernel map and user-space state).
    pub max_connections: u32,
    /// `http.route` patterns for server spans, first match wins: `/users/{id}`, `/static/*`.
    pub routes: Vec<String>,
    /// Ring buffer bytes (a power of two, at least 4096).
    pub ring_size: u32,
    /// Longest an event waits in the ring buffer.
    #[serde(with = "oxeye_api::config::duration")]
    pub drain_interval: Duration,
    /// Trace oxeye's own connections too (off: its exporters' requests would trace themselves).
    pub include_oxeye: bool,
    /// Follow TLS connections through uprobes on OpenSSL's `SSL_read`/`SSL_write` (processes
    /// using the shared libssl): their spans as for plaintext, with `tls: true`.
    pub tls: bool,
    /// The RED metrics made when the receiver is in a metrics pipeline.
    pub metrics: RequestMetricsConfig,
}

/// `requests.metrics`: the semantic conventions' duration histograms of the request spans.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestMetricsConfig {
    /// How often the histograms are emitted (and once more at shutdown).
    #[serde(with = "oxeye_api::config::duration")]
    pub interval: Duration,
    /// Series at most, over all four metrics; requests of any further series count in their
    /// metric's `otel.metric.overflow` series.
    pub max_series: usize,
}

impl Default for RequestMetricsConfig {
    fn default() -> Self {
        RequestMetricsConfig {
            interval: Duration::from_secs(60),
            max_series: 2000,
        }
    }
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            protocols: vec![Protocol::Http, Protocol::Dns, Protocol::Redis],
            ports: Vec::new(),
            pid: None,
            comm: None,
            cgroup: None,
            capture_bytes: 512,
            max_connections: 65536,
            routes: Vec::new(),
            ring_size: 4 << 20,
            drain_interval: Duration::from_millis(100),
            include_oxeye: false,
            tls: false,
            metrics: RequestMetricsConfig::default(),
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
    /// Process lifecycle events (exec, exit) as logs.
    pub process: Option<ProcessConfig>,
    /// Request spans (HTTP, DNS, Redis) from the connections processes serve and make.
    pub requests: Option<RequestsConfig>,
}
