//! The data model: spans, flows and profile samples (metrics and logs in [`crate::metrics`] and
//! [`crate::logs`]), moved in batches that carry their resource.
//!
//! Batches travel between stages as `Arc<Batch>`: a receiver feeding several pipelines shares one
//! allocation. A processor that changes a batch calls [`std::sync::Arc::make_mut`], which copies
//! only when another pipeline still holds the same batch.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The kinds of telemetry a pipeline carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Signal {
    /// Spans (one per probed call, grouped into traces).
    Traces,
    /// Network flow records.
    Flows,
    /// CPU profiles: stacks sampled on a timer, counted per window ([`Sample`]).
    Profiles,
    /// Metrics: the OTLP metric model ([`Metric`](crate::Metric)).
    Metrics,
    /// Log records and events ([`LogRecord`](crate::LogRecord)).
    Logs,
}

impl Signal {
    /// Every signal, in display order.
    pub const ALL: &'static [Signal] = &[
        Signal::Traces,
        Signal::Metrics,
        Signal::Logs,
        Signal::Flows,
        Signal::Profiles,
    ];

    /// The name used in config (`traces`, `metrics`, `logs`, `flows`, `profiles`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Flows => "flows",
            Signal::Profiles => "profiles",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// Parses a config name (`traces`, `metrics`, `logs`, `flows`, `profiles`).
    pub fn parse(s: &str) -> Option<Signal> {
        Signal::ALL.iter().copied().find(|sig| sig.as_str() == s)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attribute value (or a log body).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// A string.
    Str(Arc<str>),
    /// A signed integer.
    Int(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes.
    Bytes(Arc<[u8]>),
    /// A list of values (OTLP `array_value`).
    Array(Arc<[Value]>),
    /// Nested key/values (OTLP `kvlist_value`).
    Map(Arc<Attributes>),
    /// No value (an OTLP `AnyValue` with nothing set).
    #[default]
    Empty,
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}
impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Bytes(b) => {
                for byte in b.iter() {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            Value::Array(values) => {
                f.write_str("[")?;
                for (i, v) in values.iter().enumerate() {
                    write!(f, "{}{v}", if i > 0 { ", " } else { "" })?;
                }
                f.write_str("]")
            }
            Value::Map(attrs) => {
                f.write_str("{")?;
                for (i, (k, v)) in attrs.iter().enumerate() {
                    write!(f, "{}{k}: {v}", if i > 0 { ", " } else { "" })?;
                }
                f.write_str("}")
            }
            Value::Empty => Ok(()),
        }
    }
}

/// Ordered key/value attributes. Keys follow OpenTelemetry semantic conventions where one
/// exists, `oxeye.*` otherwise. Small, so a `Vec` beats a map; `set` replaces an existing key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(Vec<(Arc<str>, Value)>);

impl Attributes {
    /// No attributes (does not allocate).
    pub const fn new() -> Self {
        Attributes(Vec::new())
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn set(&mut self, key: impl Into<Arc<str>>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Appends `key` without looking for an existing one: for a receiver copying attributes as
    /// they came (OTLP allows repeated keys, and a round trip must keep them).
    pub fn push(&mut self, key: impl Into<Arc<str>>, value: impl Into<Value>) {
        self.0.push((key.into(), value.into()));
    }

    /// Room for `n` more attributes.
    pub fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| &**k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Keeps the attributes for which `keep` returns true; it may change the values it keeps.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
    }

    /// Iterates in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries with their shared keys (for [`crate::size`]).
    pub(crate) fn entries(&self) -> &[(Arc<str>, Value)] {
        &self.0
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Arc<str>>, V: Into<Value>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut attrs = Attributes::new();
        for (k, v) in iter {
            attrs.set(k, v);
        }
        attrs
    }
}

/// Attributes that describe the source of a batch (`host.name`, `os.type`, `service.name`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    /// The resource attributes.
    pub attributes: Attributes,
    /// Attributes the source dropped (OTLP `dropped_attributes_count`).
    pub dropped_attributes_count: u32,
    /// The semantic-conventions schema the attributes follow (OTLP `schema_url`), when given.
    pub schema_url: Option<Arc<str>>,
    /// Entities the resource describes (OTLP `entity_refs`, in development upstream).
    pub entity_refs: Vec<EntityRef>,
}

/// A reference from a resource to an entity it describes (OTLP `EntityRef`): which of the
/// resource's attributes identify it and which describe it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityRef {
    /// Schema of the entity type, when given.
    pub schema_url: Option<Arc<str>>,
    /// Entity type, e.g. `service`, `k8s.pod`.
    pub entity_type: Arc<str>,
    /// Attribute keys that identify the entity.
    pub id_keys: Vec<Arc<str>>,
    /// Attribute keys that describe it.
    pub description_keys: Vec<Arc<str>>,
}

impl Resource {
    /// A resource with these attributes.
    pub fn new(attributes: Attributes) -> Self {
        Resource {
            attributes,
            ..Resource::default()
        }
    }
}

/// The instrumentation scope that made a span (OTLP `InstrumentationScope`): a library name and
/// version. Spans made by oxeye itself have none ([`Span::scope`] `None`); exporters then name
/// oxeye.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    /// Library name (may be empty).
    pub name: Arc<str>,
    /// Library version (may be empty).
    pub version: Arc<str>,
    /// Scope attributes.
    pub attributes: Attributes,
    /// Attributes the source dropped.
    pub dropped_attributes_count: u32,
    /// Schema of the scope's spans (OTLP `ScopeSpans.schema_url`), when given.
    pub schema_url: Option<Arc<str>>,
}

/// A 16-byte trace id. All zero means invalid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id. All zero means invalid / absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// OpenTelemetry span kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// Internal operation (the default for probed functions).
    #[default]
    Internal,
    /// Not given by the source (OTLP `SPAN_KIND_UNSPECIFIED`).
    Unspecified,
    /// Server side of a request.
    Server,
    /// Client side of a request.
    Client,
    /// Producer of a message.
    Producer,
    /// Consumer of a message.
    Consumer,
}

impl SpanKind {
    /// Lower-case name (`internal`, `server`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Internal => "internal",
            SpanKind::Unspecified => "unspecified",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// OpenTelemetry status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// Not set.
    #[default]
    Unset,
    /// Explicitly OK.
    Ok,
    /// Failed (e.g. a syscall returned a negative errno).
    Error,
}

impl StatusCode {
    /// Lower-case name (`unset`, `ok`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// A task's `comm` (executable name as the kernel keeps it): up to 16 bytes, stored inline.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    /// Builds from a name, truncated to 15 bytes like the kernel does.
    pub fn new(name: &str) -> Self {
        let mut buf = [0u8; 16];
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(buf)
    }

    /// The name up to the first NUL (lossy for invalid UTF-8).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        // The strict check first: from_utf8_lossy walks in chunks, several times slower, and
        // exporters call this for every span.
        match std::str::from_utf8(&self.0[..end]) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(&self.0[..end]),
        }
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Where a span ran: process, thread, executable name and CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskContext {
    /// `process.pid` (kernel tgid).
    pub pid: u32,
    /// `thread.id` (kernel pid).
    pub tid: u32,
    /// `process.executable.name`.
    pub comm: Comm,
    /// `cpu.logical_number`.
    pub cpu: u32,
}

/// One symbolized stack frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    /// The raw address.
    pub address: u64,
    /// Function name, demangled, when known.
    pub function: Option<Arc<str>>,
    /// Module (binary, library or `[kernel]`).
    pub module: Option<Arc<str>>,
    /// Offset of the address within the function (or the module when the function is unknown).
    pub offset: u64,
    /// Source file, when debug info exists.
    pub file: Option<Arc<str>>,
    /// Source line, when debug info exists.
    pub line: Option<u32>,
    /// GNU build-id of the module (hex), when it has one.
    pub build_id: Option<Arc<str>>,
}

/// A timestamped event inside a span (OTLP `Span.Event`), e.g. an exception.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    /// When, Unix nanoseconds.
    pub time_unix_ns: u64,
    /// Event name.
    pub name: Arc<str>,
    /// Event attributes.
    pub attributes: Attributes,
    /// Attributes the source dropped.
    pub dropped_attributes_count: u32,
}

/// A link from a span to another span, of this or another trace (OTLP `Span.Link`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Link {
    /// The linked span's trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
    /// The linked span's W3C `tracestate`, when given.
    pub trace_state: Option<Arc<str>>,
    /// Link attributes.
    pub attributes: Attributes,
    /// Attributes the source dropped.
    pub dropped_attributes_count: u32,
    /// W3C trace flags and the OTLP is-remote bits of the linked context.
    pub flags: u32,
}

/// What the source of a span dropped before sending it (OTLP `dropped_*_count`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedCounts {
    /// Attributes.
    pub attributes: u32,
    /// Events.
    pub events: u32,
    /// Links.
    pub links: u32,
}

/// A span: one timed operation, with eBPF context and stacks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Span {
    /// Trace id shared by every span of a trace.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// Operation name (function or syscall).
    pub name: Arc<str>,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix nanoseconds.
    pub end_unix_ns: u64,
    /// Status code.
    pub status: StatusCode,
    /// Status message (empty when none).
    pub status_message: Option<Arc<str>>,
    /// Free-form attributes.
    pub attributes: Attributes,
    /// Process / thread / CPU, when known.
    pub task: Option<TaskContext>,
    /// Return value of the probed call, when captured.
    pub return_value: Option<i64>,
    /// First raw arguments of the probed call, when captured.
    pub args: Vec<u64>,
    /// Raw kernel stack addresses, innermost first.
    pub kernel_stack: Vec<u64>,
    /// Raw user stack addresses, innermost first.
    pub user_stack: Vec<u64>,
    /// Frames after symbolization, innermost first (kernel frames before user frames).
    pub frames: Vec<Frame>,
    /// W3C `tracestate`, when the source gave one.
    pub trace_state: Option<Arc<str>>,
    /// OTLP span flags: W3C trace flags (bit 0: sampled) and the is-remote bits (8, 9).
    pub flags: u32,
    /// Events inside the span.
    pub events: Vec<Event>,
    /// Links to other spans.
    pub links: Vec<Link>,
    /// What the source dropped.
    pub dropped: DroppedCounts,
    /// The instrumentation scope that made the span; `None` for spans oxeye made.
    pub scope: Option<Arc<Scope>>,
}

impl Span {
    /// Duration in nanoseconds (0 when end precedes start).
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
}

/// Transport protocol of a flow (`network.transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
    /// ICMPv6.
    Icmpv6,
    /// Another IP protocol number.
    Other(u8),
    /// Not IP at all (see [`Flow::ether_type`]).
    #[default]
    None,
}

impl Transport {
    /// The semantic-convention value (`tcp`, `udp`, `icmp`, `icmpv6`) or `ip-<n>` / `none`.
    pub fn as_str(self) -> std::borrow::Cow<'static, str> {
        match self {
            Transport::Tcp => "tcp".into(),
            Transport::Udp => "udp".into(),
            Transport::Icmp => "icmp".into(),
            Transport::Icmpv6 => "icmpv6".into(),
            Transport::Other(p) => format!("ip-{p}").into(),
            Transport::None => "none".into(),
        }
    }
}

/// Direction of a flow relative to the observed interface (`network.io.direction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Received on the interface.
    #[default]
    Receive,
    /// Transmitted by the interface.
    Transmit,
}

impl Direction {
    /// The semantic-convention value (`receive`, `transmit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Receive => "receive",
            Direction::Transmit => "transmit",
        }
    }
}

/// The OR of TCP flags seen on a flow (bit layout of the TCP header's flag byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;

    /// Names of the set flags, in header order (`FIN`, `SYN`, ...).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        (0..8)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(|i| NAMES[i])
    }
}

/// A network flow record: traffic between two endpoints seen on one interface in one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    /// `source.address`.
    pub src_addr: IpAddr,
    /// `destination.address`.
    pub dst_addr: IpAddr,
    /// `source.port` (0 when the transport has none).
    pub src_port: u16,
    /// `destination.port` (0 when the transport has none).
    pub dst_port: u16,
    /// `network.transport`.
    pub transport: Transport,
    /// EtherType of the frame (0x0800 IPv4, 0x86DD IPv6, ...).
    pub ether_type: u16,
    /// Interface index.
    pub ifindex: u32,
    /// `network.interface.name`, when known.
    pub interface: Option<Arc<str>>,
    /// `network.io.direction`.
    pub direction: Direction,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (frame length).
    pub bytes: u64,
    /// OR of TCP flags seen.
    pub tcp_flags: TcpFlags,
    /// First packet, Unix ns.
    pub first_seen_unix_ns: u64,
    /// Last packet, Unix ns.
    pub last_seen_unix_ns: u64,
    /// Start of the window this record covers, Unix ns.
    pub window_start_unix_ns: u64,
    /// End of the window this record covers, Unix ns.
    pub window_end_unix_ns: u64,
    /// Free-form attributes.
    pub attributes: Attributes,
}

impl Flow {
    /// `network.type`: `ipv4`, `ipv6`, or `other` for a non-IP frame.
    pub fn network_type(&self) -> &'static str {
        match (self.ether_type, self.src_addr) {
            (0x0800, _) => "ipv4",
            (0x86dd, _) => "ipv6",
            (0, IpAddr::V4(_)) => "ipv4",
            (0, IpAddr::V6(_)) => "ipv6",
            _ => "other",
        }
    }

    /// True for IPv4 and IPv6 flows (the ones with addresses and ports).
    pub fn is_ip(&self) -> bool {
        self.network_type() != "other"
    }

    /// What a non-IP frame was: `arp`, `lldp`, ... (see [`ether_type_name`]).
    pub fn ether_type_name(&self) -> Option<&'static str> {
        ether_type_name(self.ether_type)
    }
}

/// The common name of an EtherType (`0x0806` → `arp`), or `None` for one not listed.
pub fn ether_type_name(ether_type: u16) -> Option<&'static str> {
    Some(match ether_type {
        0x0800 => "ipv4",
        0x0806 => "arp",
        0x0842 => "wake-on-lan",
        0x22f0 => "avtp",
        0x22f3 => "trill",
        0x8035 => "rarp",
        0x8100 => "vlan",
        0x8137 => "ipx",
        0x86dd => "ipv6",
        0x8808 => "ethernet-flow-control",
        0x8809 => "lacp",
        0x8847 => "mpls",
        0x8848 => "mpls-multicast",
        0x8863 => "pppoe-discovery",
        0x8864 => "pppoe-session",
        0x888e => "eapol",
        0x88a8 => "qinq",
        0x88cc => "lldp",
        0x88e5 => "macsec",
        0x88f7 => "ptp",
        0x8902 => "cfm",
        0x8906 => "fcoe",
        0x9000 => "loopback",
        _ => return None,
    })
}

/// An executable file mapped into a process: one line of `/proc/<pid>/maps` with `x` permission.
/// A profiler snapshots a process's mappings while it runs, so its addresses can be resolved
/// (and written as pprof/OTLP mappings) after it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Offset in the file where the mapping begins.
    pub file_offset: u64,
    /// Path of the mapped file.
    pub path: Arc<str>,
}

impl Mapping {
    /// The mapping holding `address`, in mappings sorted by `start`.
    pub fn find(mappings: &[Mapping], address: u64) -> Option<&Mapping> {
        let i = mappings.partition_point(|m| m.start <= address);
        i.checked_sub(1)
            .map(|i| &mappings[i])
            .filter(|m| address < m.end)
    }

    /// The executable file mappings of process `pid`, sorted by address (`None`: the process is
    /// gone or its maps cannot be read).
    pub fn of_process(pid: u32) -> Option<Vec<Mapping>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        Some(Mapping::parse_maps(&text))
    }

    /// Parses the text of a `/proc/<pid>/maps` file: executable mappings backed by a file.
    pub fn parse_maps(text: &str) -> Vec<Mapping> {
        let mut maps = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms), Some(off), _, _, Some(path)) =
                (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if !perms.contains('x') || !path.starts_with('/') {
                continue;
            }
            let Some((s, e)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(file_offset)) = (
                u64::from_str_radix(s, 16),
                u64::from_str_radix(e, 16),
                u64::from_str_radix(off, 16),
            ) else {
                continue;
            };
            maps.push(Mapping {
                start,
                end,
                file_offset,
                path: Arc::from(path),
            });
        }
        maps.sort_by_key(|m| m.start);
        maps
    }
}

/// A CPU profile record: one stack of one thread, seen `count` times by the sampling profiler
/// in one window (samples taken inside different spans stay separate records, so each keeps
/// its link to the span).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// `process.pid` (kernel tgid).
    pub pid: u32,
    /// `thread.id` (kernel pid).
    pub tid: u32,
    /// `process.executable.name` (the thread's comm).
    pub comm: Comm,
    /// Raw kernel stack addresses, innermost first.
    pub kernel_stack: Vec<u64>,
    /// Raw user stack addresses, innermost first.
    pub user_stack: Vec<u64>,
    /// Frames after symbolization, innermost first (kernel frames before user frames).
    pub frames: Vec<Frame>,
    /// Samples of this stack in the window.
    pub count: u64,
    /// CPU time one sample stands for (1 s / frequency), so `count * period_ns` is CPU ns.
    pub period_ns: u64,
    /// Start of the window, Unix ns.
    pub window_start_unix_ns: u64,
    /// End of the window, Unix ns.
    pub window_end_unix_ns: u64,
    /// The trace of the span open on the thread when it was sampled, when known.
    pub trace_id: Option<TraceId>,
    /// That span's id.
    pub span_id: Option<SpanId>,
    /// The process's executable mappings, as seen while it ran (shared by its samples; empty
    /// when unknown), sorted by address.
    pub mappings: Arc<[Mapping]>,
    /// Free-form attributes.
    pub attributes: Attributes,
}

impl Sample {
    /// CPU time the samples stand for, in ns (`count * period_ns`).
    pub fn cpu_ns(&self) -> u64 {
        self.count.saturating_mul(self.period_ns)
    }
}

/// Spans still in the form they arrived in: an OTLP `ExportTraceServiceRequest` holding one
/// `ResourceSpans`, already checked by the receiver that made it (well-formed, no span it would
/// refuse). A gateway (OTLP in, OTLP out, nothing in between) forwards these bytes as they came:
/// no decoding into [`Span`]s, no encoding back. The engine decodes them into
/// [`Records::Spans`] before every processor and every exporter that does not say it takes them
/// ([`Exporter::takes_encoded`](crate::Exporter::takes_encoded)), so components see spans as
/// always.
#[derive(Clone)]
pub struct EncodedSpans {
    bytes: bytes::Bytes,
    spans: usize,
    decode: fn(&[u8]) -> Result<Vec<Span>, crate::BoxError>,
    gzipped: Option<bytes::Bytes>,
}

impl EncodedSpans {
    /// `spans` spans in `bytes` (one OTLP trace request with one `ResourceSpans`), and the
    /// function that decodes them (it must accept every span the receiver counted).
    pub fn new(
        bytes: bytes::Bytes,
        spans: usize,
        decode: fn(&[u8]) -> Result<Vec<Span>, crate::BoxError>,
    ) -> Self {
        EncodedSpans {
            bytes,
            spans,
            decode,
            gzipped: None,
        }
    }

    /// The same, with the request as it arrived gzip'd: one gzip member that inflates to
    /// exactly [`EncodedSpans::bytes`] (the whole request, no more), which an exporter that
    /// sends gzip may send as it is instead of deflating again.
    pub fn with_gzipped(mut self, gzipped: bytes::Bytes) -> Self {
        self.gzipped = Some(gzipped);
        self
    }

    /// The request as it arrived gzip'd, if kept ([`EncodedSpans::with_gzipped`]).
    pub fn gzipped(&self) -> Option<&bytes::Bytes> {
        self.gzipped.as_ref()
    }

    /// The encoded request.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// True when there is no span.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The spans, decoded (without their resource: that is the batch's).
    pub fn decode(&self) -> Result<Vec<Span>, crate::BoxError> {
        (self.decode)(&self.bytes)
    }
}

impl fmt::Debug for EncodedSpans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedSpans")
            .field("spans", &self.spans)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl PartialEq for EncodedSpans {
    fn eq(&self, other: &Self) -> bool {
        self.spans == other.spans && self.bytes == other.bytes
    }
}

/// Metrics or log records still in the form they arrived in, like [`EncodedSpans`]: an OTLP
/// `ExportMetricsServiceRequest` (`ExportLogsServiceRequest`) holding one `ResourceMetrics`
/// (`ResourceLogs`), already checked by the receiver that made it, counted in data points (log
/// records). Exporters that forward requests as received take them; the engine decodes them
/// for everyone else ([`Batch::decoded`]).
#[derive(Clone)]
pub struct EncodedRecords<T> {
    bytes: bytes::Bytes,
    count: usize,
    decode: fn(&[u8]) -> Result<Vec<T>, crate::BoxError>,
    gzipped: Option<bytes::Bytes>,
}

/// Metrics as they arrived ([`EncodedRecords`]).
pub type EncodedMetrics = EncodedRecords<crate::Metric>;
/// Log records as they arrived ([`EncodedRecords`]).
pub type EncodedLogs = EncodedRecords<crate::LogRecord>;

impl<T> EncodedRecords<T> {
    /// `count` records (data points for metrics) in `bytes`, and the function that decodes
    /// them (it must accept every record the receiver counted).
    pub fn new(
        bytes: bytes::Bytes,
        count: usize,
        decode: fn(&[u8]) -> Result<Vec<T>, crate::BoxError>,
    ) -> Self {
        EncodedRecords {
            bytes,
            count,
            decode,
            gzipped: None,
        }
    }

    /// The same, with the request as it arrived gzip'd (see [`EncodedSpans::with_gzipped`]).
    pub fn with_gzipped(mut self, gzipped: bytes::Bytes) -> Self {
        self.gzipped = Some(gzipped);
        self
    }

    /// The request as it arrived gzip'd, if kept.
    pub fn gzipped(&self) -> Option<&bytes::Bytes> {
        self.gzipped.as_ref()
    }

    /// The encoded request.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of records (data points for metrics).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, decoded (without their resource: that is the batch's).
    pub fn decode(&self) -> Result<Vec<T>, crate::BoxError> {
        (self.decode)(&self.bytes)
    }
}

impl<T> fmt::Debug for EncodedRecords<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedRecords")
            .field("count", &self.count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<T> PartialEq for EncodedRecords<T> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.bytes == other.bytes
    }
}

/// The records of one batch: all of one signal.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Records {
    /// Spans.
    Spans(Vec<Span>),
    /// Flow records.
    Flows(Vec<Flow>),
    /// Profile samples.
    Samples(Vec<Sample>),
    /// Metrics.
    Metrics(Vec<crate::Metric>),
    /// Log records.
    Logs(Vec<crate::LogRecord>),
    /// Spans still encoded as they arrived (see [`EncodedSpans`]); only exporters that say they
    /// take them see this variant.
    Encoded(EncodedSpans),
    /// Metrics still encoded as they arrived ([`EncodedRecords`]); like `Encoded`, only
    /// exporters that take encoded records see it.
    EncodedMetrics(EncodedMetrics),
    /// Log records still encoded as they arrived.
    EncodedLogs(EncodedLogs),
}

impl Records {
    /// The signal these records belong to.
    pub fn signal(&self) -> Signal {
        match self {
            Records::Spans(_) | Records::Encoded(_) => Signal::Traces,
            Records::Flows(_) => Signal::Flows,
            Records::Samples(_) => Signal::Profiles,
            Records::Metrics(_) | Records::EncodedMetrics(_) => Signal::Metrics,
            Records::Logs(_) | Records::EncodedLogs(_) => Signal::Logs,
        }
    }

    /// Number of records: spans, flows, samples, log records — and for metrics their data
    /// points (what OTLP counts and a pipeline's throughput is measured in).
    pub fn len(&self) -> usize {
        match self {
            Records::Spans(v) => v.len(),
            Records::Flows(v) => v.len(),
            Records::Samples(v) => v.len(),
            Records::Metrics(v) => v.iter().map(crate::Metric::points).sum(),
            Records::Logs(v) => v.len(),
            Records::Encoded(e) => e.len(),
            Records::EncodedMetrics(e) => e.len(),
            Records::EncodedLogs(e) => e.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of records of one signal with the resource they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Where the records came from (shared by every batch of a receiver).
    pub resource: Arc<Resource>,
    /// The records.
    pub records: Records,
}

impl Batch {
    /// A batch of spans.
    pub fn spans(resource: Arc<Resource>, spans: Vec<Span>) -> Self {
        Batch {
            resource,
            records: Records::Spans(spans),
        }
    }

    /// A batch of flows.
    pub fn flows(resource: Arc<Resource>, flows: Vec<Flow>) -> Self {
        Batch {
            resource,
            records: Records::Flows(flows),
        }
    }

    /// A batch of profile samples.
    pub fn samples(resource: Arc<Resource>, samples: Vec<Sample>) -> Self {
        Batch {
            resource,
            records: Records::Samples(samples),
        }
    }

    /// A batch of metrics.
    pub fn metrics(resource: Arc<Resource>, metrics: Vec<crate::Metric>) -> Self {
        Batch {
            resource,
            records: Records::Metrics(metrics),
        }
    }

    /// A batch of log records.
    pub fn logs(resource: Arc<Resource>, logs: Vec<crate::LogRecord>) -> Self {
        Batch {
            resource,
            records: Records::Logs(logs),
        }
    }

    /// The signal of the batch.
    pub fn signal(&self) -> Signal {
        self.records.signal()
    }

    /// True when the records are still encoded ([`Records::Encoded`],
    /// [`Records::EncodedMetrics`], [`Records::EncodedLogs`]).
    pub fn is_encoded(&self) -> bool {
        matches!(
            self.records,
            Records::Encoded(_) | Records::EncodedMetrics(_) | Records::EncodedLogs(_)
        )
    }

    /// The batch with encoded records decoded ([`Records::Spans`], [`Records::Metrics`],
    /// [`Records::Logs`]; others as they are). The original stays with any other holder of the
    /// `Arc`.
    pub fn decoded(batch: Arc<Batch>) -> Result<Arc<Batch>, crate::BoxError> {
        let records = match &batch.records {
            Records::Encoded(e) => Records::Spans(e.decode()?),
            Records::EncodedMetrics(e) => Records::Metrics(e.decode()?),
            Records::EncodedLogs(e) => Records::Logs(e.decode()?),
            _ => return Ok(batch),
        };
        Ok(Arc::new(Batch {
            resource: Arc::clone(&batch.resource),
            records,
        }))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_mut_copies_only_shared_batches() {
        let batch = Arc::new(Batch::spans(Arc::default(), vec![Span::default()]));
        let shared = Arc::clone(&batch);
        let mut mine = batch;
        Arc::make_mut(&mut mine).records = Records::Spans(vec![]);
        assert_eq!(shared.len(), 1, "the other holder keeps the original");
        assert_eq!(mine.len(), 0);
        assert!(!Arc::ptr_eq(&mine, &shared));
    }

    #[test]
    fn attributes_set_replaces() {
        let mut a = Attributes::new();
        a.set("k", 1i64);
        a.set("k", "v");
        assert_eq!(a.len(), 1);
        assert_eq!(a.get("k"), Some(&Value::from("v")));
        a.set("j", true);
        assert_eq!(a.remove("k"), Some(Value::from("v")));
        assert_eq!(a.remove("k"), None);
        a.retain(|k, _| k != "j");
        assert!(a.is_empty());
    }

    #[test]
    fn maps_lines_become_executable_mappings() {
        let text = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 123 /usr/bin/app
55d0c0a21000-55d0c0b00000 r-xp 00021000 fd:01 123 /usr/bin/app
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]
7f1000000000-7f1000100000 r-xp 00002000 fd:01 9 /lib/x86_64-linux-gnu/libc.so.6
";
        let maps = Mapping::parse_maps(text);
        assert_eq!(
            maps.len(),
            2,
            "only executable, file-backed lines: {maps:?}"
        );
        assert_eq!(
            (maps[0].start, maps[0].end, maps[0].file_offset),
            (0x55d0c0a21000, 0x55d0c0b00000, 0x21000)
        );
        assert_eq!(&*maps[1].path, "/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(Mapping::find(&maps, 0x55d0c0a21010), Some(&maps[0]));
        assert_eq!(Mapping::find(&maps, 0x55d0c0b00000), None);
        assert_eq!(Mapping::find(&maps, 0x10), None);
        let own = Mapping::of_process(std::process::id()).unwrap();
        assert!(
            Mapping::find(
                &own,
                maps_lines_become_executable_mappings as *const () as u64
            )
            .is_some(),
            "this test's own code is in one of its mappings: {own:?}"
        );
    }

    #[test]
    fn tcp_flag_names_and_comm() {
        let names: Vec<_> = TcpFlags(TcpFlags::SYN | TcpFlags::ACK).names().collect();
        assert_eq!(names, ["SYN", "ACK"]);
        assert_eq!(
            Comm::new("a-very-long-command-name").as_str(),
            "a-very-long-com"
        );
    }
}
