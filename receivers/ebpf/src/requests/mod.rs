//! Requests: load the request programs (`ebpf/programs/src/l7.rs`), attach them to the
//! syscall tracepoints, and turn what they capture into request spans (`tracker`): HTTP/1.x
//! (`http`), DNS (`dns`) and Redis (`redis`).

mod dns;
mod http;
mod metrics;
mod redis;
mod route;
pub(crate) mod tls;
mod tracker;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::TracePoint;
use aya::Ebpf;
use oxeye_api::{LostUnit, Span, Telemetry};
use oxeye_ebpf_common::{
    L7Config, L7Conn, L7Event, L7_COUNTER_NAMES, L7_EVENT_LEN, L7_FOLLOW_TLS, L7_MAX_PORTS,
    PROTO_DNS, PROTO_HTTP, PROTO_REDIS,
};
use tokio::io::unix::AsyncFd;

pub use metrics::RedMetrics;
pub use route::Routes;
pub use tracker::TrackerCounts;

use crate::spans::take_map;
use crate::{sys, ProbeError, Protocol, RequestsConfig};

/// The request programs, compiled for bpfel-unknown-none by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxeye-l7"));

/// Each program and the `syscalls:` tracepoints it runs on: exits only (the programs read a
/// call's arguments from the registers saved at its entry), and `close`'s entry.
const ATTACH: &[(&str, &[&str])] = &[
    (
        "oxeye_l7_accept_exit",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("oxeye_l7_connect_exit", &["sys_exit_connect"]),
    ("oxeye_l7_close", &["sys_enter_close"]),
    ("oxeye_l7_read_exit", &["sys_exit_read"]),
    ("oxeye_l7_recvfrom_exit", &["sys_exit_recvfrom"]),
    (
        "oxeye_l7_write_exit",
        &["sys_exit_write", "sys_exit_sendto"],
    ),
    ("oxeye_l7_readv_exit", &["sys_exit_readv"]),
    ("oxeye_l7_writev_exit", &["sys_exit_writev"]),
    ("oxeye_l7_recvmsg_exit", &["sys_exit_recvmsg"]),
    ("oxeye_l7_sendmsg_exit", &["sys_exit_sendmsg"]),
    ("oxeye_l7_sendfile_exit", &["sys_exit_sendfile64"]),
    ("oxeye_l7_recvmmsg_exit", &["sys_exit_recvmmsg"]),
    ("oxeye_l7_sendmmsg_exit", &["sys_exit_sendmmsg"]),
];

/// Every tracepoint the request programs need (for `validate` and `doctor`).
pub fn tracepoints() -> impl Iterator<Item = &'static str> {
    ATTACH.iter().flat_map(|(_, tps)| tps.iter().copied())
}

/// How often connections of processes that exited without closing them are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The request programs attached, and the connections' state. Dropping it detaches them.
pub struct RequestProbe {
    ebpf: Option<Ebpf>,
    ring: AsyncFd<crate::ring::Ring>,
    counters: PerCpuArray<MapData, u64>,
    conns: BpfHashMap<MapData, u64, L7Conn>,
    tracker: tracker::Tracker,
    telemetry: Telemetry,
}

impl RequestProbe {
    /// Loads the programs with `cfg`'s settings and attaches them.
    pub fn start(cfg: &RequestsConfig, telemetry: Telemetry) -> Result<RequestProbe, ProbeError> {
        let mut ebpf = load(cfg)?;
        let ring = crate::ring::Ring::watch(&mut ebpf, "L7_EVENTS")?;
        let counters = take_map(&mut ebpf, "L7_COUNTERS")?;
        let conns = take_map(&mut ebpf, "L7_CONNS")?;
        let tracefs = sys::tracefs()?;
        for (prog, tracepoints) in ATTACH {
            let p: &mut TracePoint = sys::program(&mut ebpf, prog)?;
            for tp in *tracepoints {
                if !tracefs.join("events/syscalls").join(tp).exists() {
                    return Err(ProbeError::Kernel(format!(
                        "requests: this kernel has no tracepoint syscalls:{tp} (CONFIG_FTRACE_SYSCALLS): request spans need the syscall tracepoints"
                    )));
                }
                p.attach("syscalls", tp)
                    .map_err(|source| ProbeError::Attach {
                        what: format!("requests: attaching the syscalls:{tp} tracepoint"),
                        source,
                    })?;
            }
        }
        if cfg.tls {
            let (libraries, warnings) = tls::libraries(cfg)
                .map_err(|why| ProbeError::Filter(format!("requests.tls: {why}")))?;
            for w in warnings {
                tracing::warn!("{w}");
            }
            let names = tls::attach(&mut ebpf, &libraries, cfg.pid)?;
            tracing::info!(libraries = ?names, "requests.tls: SSL_read/SSL_write uprobes attached");
        }
        let routes = Routes::new(&cfg.routes).map_err(ProbeError::Filter)?;
        tracing::info!(
            protocols = ?cfg.protocols,
            ports = ?cfg.ports,
            capture_bytes = cfg.capture_bytes,
            max_connections = cfg.max_connections,
            "requests: {} syscall tracepoints attached (connections opened from now on are traced)",
            tracepoints().count()
        );
        let listening = listening_ports();
        for p in cfg.ports.iter().filter(|p| !listening.contains(p)) {
            tracing::warn!(
                "requests.ports: nothing on this host listens on port {p} now: until something does, only connections made from here to port {p} elsewhere are traced"
            );
        }
        Ok(RequestProbe {
            ebpf: Some(ebpf),
            ring,
            counters,
            conns,
            tracker: tracker::Tracker::new(
                routes,
                sys::monotonic_to_unix_offset(),
                cfg.max_connections as usize,
            ),
            telemetry,
        })
    }

    /// Waits until the ring buffer wakes the reader or `timeout` passes.
    pub async fn wait(&self, timeout: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, self.ring.readable()).await {
            guard.clear_ready();
        }
    }

    /// Up to `max` events from the ring buffer, into finished spans (memory work only).
    pub fn drain(&mut self, max: usize) -> (usize, Vec<Span>) {
        let mut spans = Vec::new();
        let tracker = &mut self.tracker;
        let n = self.ring.get_mut().drain(max, |item| {
            if let Some((ev, data)) = parse_event(item) {
                tracker.event(&ev, data, &mut spans);
            }
        });
        (n, spans)
    }

    /// Forgets the connections of processes that exited without closing them (the kernel map
    /// and the tracker's state): one map walk, for a blocking thread.
    pub fn sweep(&mut self) {
        let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        let dead: Vec<u64> = self
            .conns
            .keys()
            .flatten()
            .filter(|k| !alive((k >> 32) as u32))
            .collect();
        for k in &dead {
            let _ = self.conns.remove(k);
        }
        self.tracker.retain_pids(alive);
    }

    /// Copies the kernel's and the tracker's counters into self-metrics.
    pub fn update_counters(&mut self) {
        for (i, name) in L7_COUNTER_NAMES.iter().enumerate() {
            let total = self
                .counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0);
            self.telemetry.set_counter(name, "requests", total);
            let lost = match *name {
                "ebpf_l7_ringbuf_full" => Some("ringbuf_full"),
                "ebpf_l7_connections_map_full" => Some("l7_connections_map_full"),
                _ => None,
            };
            if let Some(reason) = lost {
                self.telemetry
                    .set_lost(reason, LostUnit::Records, "requests", total);
            }
        }
        let c = self.tracker.counts();
        for (name, value) in [
            ("ebpf_l7_spans", c.spans),
            ("ebpf_l7_unmatched_responses", c.unmatched_responses),
            ("ebpf_l7_pipeline_overflow", c.pipeline_overflow),
            ("ebpf_l7_closed_mid_response", c.closed_mid_response),
            ("ebpf_l7_truncated_heads", c.truncated_heads),
            ("ebpf_l7_inflight_evicted", c.connections_evicted),
            ("ebpf_l7_heads_shed", c.heads_shed),
        ] {
            self.telemetry.set_counter(name, "requests", value);
        }
        self.telemetry.set_lost(
            "l7_pipeline_overflow",
            LostUnit::Records,
            "requests",
            c.pipeline_overflow,
        );
        self.telemetry.set_lost(
            "l7_inflight_evicted",
            LostUnit::Records,
            "requests",
            c.connections_evicted,
        );
        self.telemetry.set_counter(
            "ebpf_l7_connections_open",
            "requests",
            self.tracker.connections() as u64,
        );
    }

    /// Connections the programs started tracking so far.
    pub fn connections_tracked(&self) -> u64 {
        self.counters
            .get(&oxeye_ebpf_common::L7_C_CONNECTIONS, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The tracker's totals.
    pub fn counts(&self) -> TrackerCounts {
        self.tracker.counts()
    }

    /// Detaches the programs (the ring buffer stays readable for a final drain).
    pub fn detach(&mut self) {
        self.ebpf = None;
    }
}

/// The request programs with `cfg`'s settings, loaded and verified; nothing attached.
fn load(cfg: &RequestsConfig) -> Result<Ebpf, ProbeError> {
    let settings = settings(cfg)?;
    let offsets = crate::btf::socket_offsets().map_err(|why| {
        ProbeError::Kernel(format!(
            "requests: {why}; request spans read each connection's addresses from the kernel's socket at offsets its BTF gives (CONFIG_DEBUG_INFO_BTF)"
        ))
    })?;
    // The SSL calls in progress are task storage (see `sys::thread_state_loader`).
    let mut loader = sys::thread_state_loader();
    loader
        .map_max_entries("L7_EVENTS", cfg.ring_size)
        .map_max_entries("L7_CONNS", cfg.max_connections);
    let mut ebpf = loader.load(PROGRAMS).map_err(|e| {
        ProbeError::Load(sys::explain_load_error(
            "loading the request programs",
            crate::flows::chain(&e),
            &sys::kernel_release(),
        ))
    })?;
    let mut config: Array<MapData, L7Config> = take_map(&mut ebpf, "L7_CONFIG")?;
    let mut offs: Array<MapData, oxeye_ebpf_common::SocketOffsets> =
        take_map(&mut ebpf, "L7_OFFSETS")?;
    let set_err = |what: &str, e: aya::maps::MapError| ProbeError::Map {
        what: what.into(),
        source: e,
    };
    config
        .set(0, settings, 0)
        .map_err(|e| set_err("L7_CONFIG", e))?;
    offs.set(0, offsets, 0)
        .map_err(|e| set_err("L7_OFFSETS", e))?;
    // Loaded here, while `config` and `offs` are open: a program takes the maps it uses when
    // it is loaded.
    for (prog, _) in ATTACH {
        let p: &mut TracePoint = sys::program(&mut ebpf, prog)?;
        p.load().map_err(|source| ProbeError::Rejected {
            program: prog.to_string(),
            source,
        })?;
    }
    if cfg.tls {
        tls::load(&mut ebpf)?;
    }
    Ok(ebpf)
}

/// For `oxeye doctor`: whether the request programs load here as `oxeye run` loads them, and
/// where TLS would be seen.
pub fn check() -> (Result<String, String>, Result<String, String>) {
    let cfg = RequestsConfig {
        tls: true,
        ..RequestsConfig::default()
    };
    let programs = load(&cfg).map(|_| {
        format!(
            "{} syscall exit programs and the TLS uprobe programs load (arguments from the saved registers, socket addresses at BTF offsets)",
            ATTACH.len()
        )
    });
    let tls = tls::libraries(&cfg).map(|(libs, _)| {
        let names: Vec<String> = libs.iter().map(|l| l.path.display().to_string()).collect();
        format!(
            "`tls: true` probes SSL_read/SSL_write in {}",
            names.join(", ")
        )
    });
    (programs.map_err(|e| e.to_string()), tls)
}

/// TCP ports something on this host listens on (IPv4 and IPv6), from /proc/net/tcp{,6}.
fn listening_ports() -> std::collections::HashSet<u16> {
    let mut ports = std::collections::HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (local, state) = (f.nth(1), f.nth(1));
            // State 0A is LISTEN; the local address ends in :PORT (hex).
            if state == Some("0A") {
                if let Some(port) = local
                    .and_then(|l| l.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

/// The programs' settings from the config.
fn settings(cfg: &RequestsConfig) -> Result<L7Config, ProbeError> {
    let mut comm = [0u8; 16];
    if let Some(c) = &cfg.comm {
        let n = c.len().min(15);
        comm[..n].copy_from_slice(&c.as_bytes()[..n]);
    }
    let cgroup_id = match &cfg.cgroup {
        Some(path) => std::fs::metadata(path)
            .map_err(|e| {
                ProbeError::Filter(format!(
                    "requests.cgroup `{path}`: {e} (give a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/foo.service)"
                ))
            })?
            .ino(),
        None => 0,
    };
    let mut ports = [0u16; L7_MAX_PORTS];
    for (slot, p) in ports.iter_mut().zip(&cfg.ports) {
        *slot = *p;
    }
    let mut protocols = 0;
    for p in &cfg.protocols {
        protocols |= match p {
            Protocol::Http => 1 << PROTO_HTTP,
            Protocol::Redis => 1 << PROTO_REDIS,
            Protocol::Dns => 1 << PROTO_DNS,
        };
    }
    if cfg.tls {
        protocols |= L7_FOLLOW_TLS;
    }
    Ok(L7Config {
        pid: cfg.pid.unwrap_or(0),
        capture_bytes: cfg.capture_bytes,
        cgroup_id,
        comm,
        ports,
        protocols,
        exclude_pid: if cfg.include_oxeye {
            0
        } else {
            std::process::id()
        },
    })
}

/// A ring record: its header and the bytes captured after it.
pub(crate) fn parse_event(item: &[u8]) -> Option<(L7Event, &[u8])> {
    if item.len() < L7_EVENT_LEN {
        return None;
    }
    // SAFETY: at least a header's length (checked); plain integers and bytes.
    let ev = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const L7Event) };
    let end = (L7_EVENT_LEN + ev.captured as usize).min(item.len());
    Some((ev, &item[L7_EVENT_LEN..end]))
}

/// Feeds `bytes` as a sequence of records (a little-endian u16 length, then that many bytes)
/// to one tracker, for the fuzz target.
pub(crate) fn fuzz_events(mut bytes: &[u8]) -> Vec<Span> {
    let mut t = tracker::Tracker::new(Routes::new(&["/a/{b}".into()]).expect("valid"), 0, 4);
    let mut spans = Vec::new();
    while bytes.len() >= 2 {
        let n = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        let rec = &bytes[2..(2 + n).min(bytes.len())];
        bytes = &bytes[(2 + n).min(bytes.len())..];
        if let Some((ev, data)) = parse_event(rec) {
            t.event(&ev, data, &mut spans);
        }
    }
    spans
}
