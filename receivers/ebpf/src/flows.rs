//! Network flows: load the XDP and TC programs, attach them, harvest the flow cache and maps.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::{
    tc::SchedClassifierLinkId, tc::TcAttachType, xdp::XdpLinkId, SchedClassifier, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader};
use oxeye_api::{Attributes, Direction, Flow, LostUnit, TcpFlags, Telemetry, Transport};
use oxeye_ebpf_common::{
    cache_entries, cache_index, CacheSlot, FlowKey, FlowStats, CACHE_SLOTS, CONTROL_ACTIVE_MAP,
    COUNTERS_PER_PROGRAM, COUNTER_NAMES, C_FLOWS_CREATED, C_MAP_INSERT_FAILED, DIR_EGRESS, PROG_TC,
    PROG_XDP,
};
use tracing::{info, warn};

use crate::sys;
use crate::{FlowError, FlowsConfig, Interfaces, XdpModeConfig};

/// The programs, compiled for bpfel-unknown-none by build.rs.
pub(crate) static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxeye-ebpf"));

/// Fails, naming what is missing and how to grant it, unless the process may load and attach.
pub fn check_privileges() -> Result<(), FlowError> {
    let missing = sys::missing_capabilities();
    if missing.is_empty() {
        return Ok(());
    }
    Err(FlowError::Privileges { missing })
}

/// Resolves the configured interfaces to names, checking that each exists.
pub fn resolve_interfaces(spec: &Interfaces) -> Result<Vec<String>, FlowError> {
    let names = match spec {
        Interfaces::Default => {
            vec![sys::default_route_interface().ok_or(FlowError::NoDefaultRoute)?]
        }
        Interfaces::All => {
            let all: Vec<String> = sys::interfaces()
                .into_iter()
                .filter(|n| !sys::is_loopback(n))
                .collect();
            if all.is_empty() {
                return Err(FlowError::NoInterface);
            }
            all
        }
        Interfaces::List(list) => list.clone(),
    };
    for name in &names {
        if sys::if_index(name).is_none() {
            return Err(FlowError::NoSuchInterface {
                name: name.clone(),
                present: sys::interfaces(),
            });
        }
    }
    Ok(names)
}

/// Turns kernel jiffies (what the programs stamp flows with: ~4 ns against ~25 for a clock read)
/// into monotonic ns, from (jiffies, ns) pairs sampled together by test-running `oxeye_clock`.
pub(crate) struct Clock {
    hz: u64,
    jiffies: u64,
    mono_ns: u64,
}

fn clock_sample(ebpf: &mut Ebpf) -> Result<(u64, u64), FlowError> {
    let prog: &mut Xdp = crate::sys::program(ebpf, "oxeye_clock")?;
    let fd = prog
        .fd()
        .map_err(|e| FlowError::Load(format!("oxeye_clock: {e}")))?
        .as_fd()
        .as_raw_fd();
    sys::test_run(fd, &sys::sample_frame(), 1).map_err(|io_error| FlowError::Syscall {
        what: "sampling the kernel clock",
        io_error,
    })?;
    let map = |source| FlowError::Map {
        what: "CLOCK",
        source,
    };
    let clock: Array<_, u64> =
        Array::try_from(ebpf.map("CLOCK").ok_or(FlowError::MissingMap("CLOCK"))?).map_err(map)?;
    let get = |i| clock.get(&i, 0).map_err(map);
    Ok((get(0)?, get(1)?))
}

impl Clock {
    /// Two samples 200 ms apart give the kernel's HZ (one of the values Linux allows). Runs
    /// with the rest of the start-up on the blocking pool.
    fn calibrate(ebpf: &mut Ebpf) -> Result<Clock, FlowError> {
        let (j1, n1) = clock_sample(ebpf)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (j2, n2) = clock_sample(ebpf)?;
        let measured = (j2.wrapping_sub(j1)) as f64 * 1e9 / (n2.saturating_sub(n1)).max(1) as f64;
        let hz = [100u64, 250, 300, 1000]
            .into_iter()
            .min_by(|a, b| {
                (*a as f64 - measured)
                    .abs()
                    .total_cmp(&(*b as f64 - measured).abs())
            })
            .unwrap_or(250);
        Ok(Clock {
            hz,
            jiffies: j2,
            mono_ns: n2,
        })
    }

    /// Monotonic ns at the start of jiffy `j`.
    fn mono_ns(&self, j: u64) -> u64 {
        let delta = j.wrapping_sub(self.jiffies) as i64;
        (self.mono_ns as i64 + delta * (1_000_000_000 / self.hz) as i64) as u64
    }
}

/// The `CACHE` array mapped into this process (BPF_F_MMAPABLE): a harvest reads and resets a
/// generation's slots as memory, without a syscall per slot.
struct CacheMmap {
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
    ptr: *mut CacheSlot,
    slots: usize,
}

// SAFETY: the mapping is owned by this value and only touched through `&mut self`.
unsafe impl Send for CacheMmap {}

impl CacheMmap {
    fn new(map: MapData, slots: usize) -> Result<CacheMmap, FlowError> {
        let len = slots * std::mem::size_of::<CacheSlot>();
        // SAFETY: a shared read-write mapping of an mmapable array map of exactly `len` bytes
        // (a multiple of the page size: slots come in regions of CACHE_SLOTS lines).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FlowError::Syscall {
                what: "mapping the flow cache",
                io_error: std::io::Error::last_os_error(),
            });
        }
        Ok(CacheMmap {
            _map: map,
            ptr: ptr as *mut CacheSlot,
            slots,
        })
    }

    /// Takes slot `index` if it holds a flow, leaving it free. Only for slots no program is
    /// writing (a generation user space has flipped away from).
    fn take(&mut self, index: usize) -> Option<CacheSlot> {
        assert!(index < self.slots, "cache slot {index} out of range");
        // SAFETY: in bounds of the mapping; volatile because the kernel shares the memory.
        unsafe {
            let p = self.ptr.add(index);
            let slot = std::ptr::read_volatile(p);
            if slot.packets == 0 {
                return None;
            }
            std::ptr::write_volatile(p, CacheSlot::default());
            Some(slot)
        }
    }
}

impl Drop for CacheMmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe {
            libc::munmap(
                self.ptr as *mut libc::c_void,
                self.slots * std::mem::size_of::<CacheSlot>(),
            )
        };
    }
}

/// Loaded and attached flow programs. Dropping it detaches everything: the attachments are BPF
/// links, which the kernel also removes if the process dies.
pub struct FlowProbe {
    ebpf: Ebpf,
    /// Per interface, its XDP link and (with `egress`) its TC link.
    attached: Vec<Attached>,
    mode: XdpModeConfig,
    egress: bool,
    maps: [MapData; 2],
    cache: CacheMmap,
    active: usize,
    cpus: usize,
    /// ifindex → name, for `network.interface.name`.
    names: HashMap<u32, Arc<str>>,
    telemetry: Telemetry,
    harvested: u64,
    /// Map entries created up to the last flip: a harvest compares what it drained with these
    /// only, not with entries the programs have made in the new map since.
    created_at_flip: Option<u64>,
    /// Flows lost to the LRU so far (never decreases).
    evicted: u64,
    last_harvest_ns: u64,
    clock: Clock,
}

/// The error and its causes, `a: b: c` (aya's top-level messages omit the OS error).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    // A verifier log runs to thousands of lines; its end says what failed, and the whole of it
    // goes to a file (the lines before the end are where a bound was lost).
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 12 {
        let tail = lines[lines.len() - 10..].join("\n");
        let whole = whole_log(&text)
            .map(|path| format!("; whole log: {}", path.display()))
            .unwrap_or_default();
        text = format!(
            "{}\n[... {} lines of verifier log{whole} ...]\n{tail}",
            lines[0],
            lines.len() - 11
        );
    }
    text
}

/// Writes a long error (a verifier log) to a file of its own under the temp directory.
fn whole_log(text: &str) -> Option<std::path::PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("oxeye-verifier-{}-{n}.log", std::process::id()));
    std::fs::write(&path, text).ok().map(|()| path)
}

fn os_error(e: &aya::programs::ProgramError) -> Option<i32> {
    use std::error::Error;
    let mut source: Option<&dyn Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = err.source();
    }
    None
}

fn attach_xdp(
    xdp: &mut Xdp,
    iface: &str,
    mode: XdpModeConfig,
) -> Result<(&'static str, XdpLinkId), String> {
    let busy = |e: &aya::programs::ProgramError| {
        matches!(os_error(e), Some(libc::EBUSY) | Some(libc::EEXIST))
    };
    let already = |iface: &str| {
        format!(
            "interface `{iface}` already has an XDP program attached by another tool; oxeye does not replace it. \
             Detach it (`ip link set dev {iface} xdp off`) or leave `{iface}` out of flows.interfaces"
        )
    };
    let try_mode = |xdp: &mut Xdp, m: XdpMode| xdp.attach(iface, m);
    match mode {
        XdpModeConfig::Native => try_mode(xdp, XdpMode::Driver)
            .map(|id| ("native", id))
            .map_err(|e| {
                if busy(&e) {
                    already(iface)
                } else {
                    format!(
                        "native XDP on `{iface}`: {}; use `mode: generic` or `auto`",
                        chain(&e)
                    )
                }
            }),
        XdpModeConfig::Generic => try_mode(xdp, XdpMode::Skb)
            .map(|id| ("generic", id))
            .map_err(|e| {
                if busy(&e) {
                    already(iface)
                } else {
                    format!("generic XDP on `{iface}`: {}", chain(&e))
                }
            }),
        XdpModeConfig::Auto => match try_mode(xdp, XdpMode::Driver) {
            Ok(id) => Ok(("native", id)),
            Err(e) if busy(&e) => Err(already(iface)),
            Err(e) => {
                info!(
                    interface = iface,
                    "native XDP unavailable ({}); falling back to generic XDP",
                    chain(&e)
                );
                try_mode(xdp, XdpMode::Skb)
                    .map(|id| ("generic", id))
                    .map_err(|e| {
                        if busy(&e) {
                            already(iface)
                        } else {
                            format!(
                                "XDP on `{iface}` (native and generic failed): {}",
                                chain(&e)
                            )
                        }
                    })
            }
        },
    }
}

/// The programs attached to one interface.
struct Attached {
    iface: String,
    xdp: XdpLinkId,
    tc: Option<SchedClassifierLinkId>,
}

/// Before tcx links (Linux 6.6) a TC program hangs off a `clsact` qdisc, which an interface
/// does not have until someone adds it: oxeye adds it when missing and leaves it (an empty
/// clsact changes nothing; `tc qdisc del dev IFACE clsact` removes it). Found by the 6.1 VM.
fn clsact_before_tcx(iface: &str) -> Result<(), String> {
    // aya attaches with tcx from 6.6 on (its own version check, from the same release).
    if sys::kernel_version(&sys::kernel_release()).is_some_and(|v| v >= (6, 6)) {
        return Ok(());
    }
    match aya::programs::tc::qdisc_add_clsact(iface) {
        Ok(()) => {
            info!(interface = %iface, "clsact qdisc added for TC (kernel before 6.6, no tcx)");
            Ok(())
        }
        Err(e) => {
            let e = chain(&e);
            if e.contains("exists") {
                Ok(())
            } else {
                Err(format!("adding the clsact qdisc: {e}"))
            }
        }
    }
}

/// Attaches XDP (and TC egress when `egress`) to `iface`; the programs are loaded.
fn attach_interface(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpModeConfig,
    egress: bool,
) -> Result<Attached, FlowError> {
    let xdp: &mut Xdp = crate::sys::program(ebpf, "oxeye_xdp")?;
    let (how, link) = attach_xdp(xdp, iface, mode).map_err(FlowError::Attach)?;
    info!(interface = %iface, mode = how, "XDP flow program attached (ingress)");
    let tc = if egress {
        let tc: &mut SchedClassifier = crate::sys::program(ebpf, "oxeye_tc")?;
        match clsact_before_tcx(iface).and_then(|()| {
            tc.attach(iface, TcAttachType::Egress)
                .map_err(|e| chain(&e))
        }) {
            Ok(link) => {
                info!(interface = %iface, "TC flow program attached (egress)");
                Some(link)
            }
            Err(e) => {
                // Not half-attached: the XDP link goes too.
                if let Ok(xdp) = crate::sys::program::<Xdp>(ebpf, "oxeye_xdp") {
                    let _ = xdp.detach(link);
                }
                return Err(FlowError::Attach(format!("TC egress on `{iface}`: {e}")));
            }
        }
    } else {
        None
    };
    Ok(Attached {
        iface: iface.to_string(),
        xdp: link,
        tc,
    })
}

/// Possible CPUs: the programs' per-CPU state is sized for every one.
fn cpus() -> Result<usize, FlowError> {
    aya::util::nr_cpus().map_err(|(what, io_error)| FlowError::Syscall { what, io_error })
}

/// Loads the flow programs into the kernel as `oxeye run` does — `SAMPLE_EVERY` and the maps'
/// size from `cfg`; the clock program, XDP, and TC when `cfg.egress` — without attaching them.
/// The flow benchmark measures what this returns.
pub(crate) fn load_programs(cfg: &FlowsConfig) -> Result<Ebpf, FlowError> {
    let sample_every: u32 = cfg.sample_every;
    let mut ebpf = EbpfLoader::new()
        .override_global("SAMPLE_EVERY", &sample_every, true)
        .map_max_entries("FLOWS_A", cfg.max_flows)
        .map_max_entries("FLOWS_B", cfg.max_flows)
        .map_max_entries("CACHE", cache_entries(cpus()? as u32))
        .load(PROGRAMS)
        .map_err(|e| FlowError::Load(format!("loading the flow programs: {}", chain(&e))))?;
    let clock: &mut Xdp = crate::sys::program(&mut ebpf, "oxeye_clock")?;
    clock.load().map_err(|e| {
        FlowError::Load(format!(
            "the kernel rejected the clock program: {}",
            chain(&e)
        ))
    })?;
    let release = crate::sys::kernel_release();
    let rejected = |what: &str, e: &aya::programs::ProgramError| {
        FlowError::Load(crate::sys::explain_flow_load_error(
            &format!("the kernel rejected the {what} program"),
            chain(e),
            &release,
        ))
    };
    let xdp: &mut Xdp = crate::sys::program(&mut ebpf, "oxeye_xdp")?;
    xdp.load().map_err(|e| rejected("XDP", &e))?;
    if cfg.egress {
        let tc: &mut SchedClassifier = crate::sys::program(&mut ebpf, "oxeye_tc")?;
        tc.load().map_err(|e| rejected("TC", &e))?;
    }
    Ok(ebpf)
}

impl FlowProbe {
    /// Attaches the programs to one more interface while running.
    pub fn add_interface(&mut self, iface: &str) -> Result<(), FlowError> {
        let a = attach_interface(&mut self.ebpf, iface, self.mode, self.egress)?;
        self.names
            .insert(sys::if_index(iface).unwrap_or(0), Arc::from(iface));
        self.attached.push(a);
        Ok(())
    }

    /// Detaches the programs from `iface` (what they counted there is harvested as usual).
    pub fn remove_interface(&mut self, iface: &str) -> bool {
        let Some(i) = self.attached.iter().position(|a| a.iface == iface) else {
            return false;
        };
        let a = self.attached.remove(i);
        self.detach_one(a);
        info!(interface = %iface, "flow programs detached from the interface");
        true
    }

    /// The interfaces the programs are attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.iter().map(|a| a.iface.clone()).collect()
    }

    fn detach_one(&mut self, a: Attached) {
        if let Ok(xdp) = crate::sys::program::<Xdp>(&mut self.ebpf, "oxeye_xdp") {
            if let Err(e) = xdp.detach(a.xdp) {
                warn!("detaching XDP from {}: {e}", a.iface);
            }
        }
        if let Some(link) = a.tc {
            if let Ok(tc) = crate::sys::program::<SchedClassifier>(&mut self.ebpf, "oxeye_tc") {
                if let Err(e) = tc.detach(link) {
                    warn!("detaching TC from {}: {e}", a.iface);
                }
            }
        }
    }

    /// Loads the programs and attaches them to every interface. Blocking: hundreds of syscalls
    /// and a 200 ms clock calibration.
    pub fn start(
        cfg: &FlowsConfig,
        interfaces: &[String],
        telemetry: Telemetry,
    ) -> Result<FlowProbe, FlowError> {
        let mut ebpf = load_programs(cfg)?;
        let cpus = cpus()?;
        let clock = Clock::calibrate(&mut ebpf)?;
        let mut names = HashMap::new();
        let mut attached = Vec::new();
        for iface in interfaces {
            attached.push(attach_interface(&mut ebpf, iface, cfg.mode, cfg.egress)?);
            names.insert(sys::if_index(iface).unwrap_or(0), Arc::from(iface.as_str()));
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| match ebpf.take_map(name) {
            Some(Map::LruHashMap(m)) => Ok(m),
            _ => Err(FlowError::MissingMap(name)),
        };
        let maps = [take(&mut ebpf, "FLOWS_A")?, take(&mut ebpf, "FLOWS_B")?];
        let cache = match ebpf.take_map("CACHE") {
            Some(Map::Array(m)) => CacheMmap::new(m, cache_entries(cpus as u32) as usize)?,
            _ => return Err(FlowError::MissingMap("CACHE")),
        };
        Ok(FlowProbe {
            ebpf,
            attached,
            mode: cfg.mode,
            egress: cfg.egress,
            maps,
            cache,
            active: 0,
            cpus,
            names,
            telemetry,
            harvested: 0,
            created_at_flip: None,
            evicted: 0,
            last_harvest_ns: sys::unix_now_ns(),
            clock,
        })
    }

    fn set_active(&mut self, index: usize) -> Result<(), FlowError> {
        let map = self
            .ebpf
            .map_mut("CONTROL")
            .ok_or(FlowError::MissingMap("CONTROL"))?;
        let mut control: Array<_, u32> = Array::try_from(map).map_err(|source| FlowError::Map {
            what: "CONTROL",
            source,
        })?;
        control
            .set(CONTROL_ACTIVE_MAP, index as u32, 0)
            .map_err(|source| FlowError::Map {
                what: "switching flow maps",
                source,
            })?;
        self.active = index;
        Ok(())
    }

    /// Switches the programs to the other map; returns the old one, to [`FlowProbe::harvest`]
    /// once the programs still running on it are done (microseconds).
    pub fn flip(&mut self) -> Result<usize, FlowError> {
        let old = self.active;
        self.set_active(1 - old)?;
        self.created_at_flip = Some(self.created());
        Ok(old)
    }

    /// Drains map `old` (after [`FlowProbe::flip`]): batched map syscalls and a scan of the
    /// cache (4 MiB per CPU), so call it off the async workers.
    pub fn harvest(&mut self, old: usize) -> Result<Vec<Flow>, FlowError> {
        let flows = self.drain(old)?;
        self.update_counters();
        Ok(flows)
    }

    /// Drains both maps (at shutdown, after detaching).
    pub fn drain_all(&mut self) -> Result<Vec<Flow>, FlowError> {
        let mut flows = self.drain(self.active)?;
        flows.extend(self.drain(1 - self.active)?);
        self.update_counters();
        Ok(flows)
    }

    /// Detaches every program (maps stay readable).
    pub fn detach(&mut self) {
        for a in std::mem::take(&mut self.attached) {
            self.detach_one(a);
        }
    }

    fn drain(&mut self, index: usize) -> Result<Vec<Flow>, FlowError> {
        let now = sys::unix_now_ns();
        let window = (self.last_harvest_ns, now);
        self.last_harvest_ns = now;
        // A fresh sample keeps the jiffies conversion from drifting.
        let (jiffies, mono_ns) = clock_sample(&mut self.ebpf)?;
        self.clock.jiffies = jiffies;
        self.clock.mono_ns = mono_ns;
        let cached = self.drain_cache(index);
        let (flows, from_map) = drain_map(
            &self.maps[index],
            self.cpus,
            window,
            &self.names,
            Some(&self.clock),
            cached,
        )
        .map_err(|io_error| FlowError::Syscall {
            what: "draining flow map",
            io_error,
        })?;
        self.harvested += from_map;
        Ok(flows)
    }

    /// Takes every used slot of one generation's cache regions (both programs, every CPU) and
    /// frees the slots. Runs only while the programs use the other generation.
    fn drain_cache(&mut self, generation: usize) -> HashMap<FlowKey, Vec<FlowStats>> {
        let now = self.clock.jiffies;
        let mut out: HashMap<FlowKey, Vec<FlowStats>> = HashMap::new();
        for cpu in 0..self.cpus as u32 {
            for prog in [PROG_XDP, PROG_TC] {
                let first = cache_index(cpu, generation as u32, prog, 0) as usize;
                for index in first..first + CACHE_SLOTS as usize {
                    if let Some(slot) = self.cache.take(index) {
                        out.entry(slot.key).or_default().push(slot.stats(now));
                    }
                }
            }
        }
        out
    }

    /// Flow-map entries the programs have created so far (both programs, every CPU).
    fn created(&self) -> u64 {
        let Some(map) = self.ebpf.map("COUNTERS") else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        [PROG_XDP, PROG_TC]
            .iter()
            .map(|prog| {
                let index = prog * COUNTERS_PER_PROGRAM + C_FLOWS_CREATED;
                counters
                    .get(&index, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn update_counters(&mut self) {
        let Some(map) = self.ebpf.map("COUNTERS") else {
            return;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return;
        };
        let mut created = 0;
        for (prog, source) in [(PROG_XDP, "xdp"), (PROG_TC, "tc")] {
            for (slot, name) in COUNTER_NAMES.iter().enumerate() {
                let index = prog * COUNTERS_PER_PROGRAM + slot as u32;
                let total: u64 = counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0);
                if slot as u32 == C_FLOWS_CREATED {
                    created += total;
                } else {
                    self.telemetry.set_counter(name, source, total);
                }
                if slot as u32 == C_MAP_INSERT_FAILED {
                    // Packets seen but not counted into any flow.
                    self.telemetry.set_lost(
                        "map_insert_failures",
                        LostUnit::Packets,
                        source,
                        total,
                    );
                }
            }
        }
        // Entries created but never harvested were evicted by the LRU (map full). After a
        // harvest, only entries created before the flip can have been harvested.
        let created = self
            .created_at_flip
            .take()
            .map_or(created, |at_flip| at_flip.min(created));
        self.evicted = self.evicted.max(created.saturating_sub(self.harvested));
        self.telemetry
            .set_counter("ebpf_flows_evicted", "flows", self.evicted);
        self.telemetry
            .set_lost("flows_evicted", LostUnit::Records, "flows", self.evicted);
    }
}

/// Moves every entry out of a flow map and, merged with the flows taken from the cache
/// (`cached`), turns them into records for `window` (Unix ns). Also returns how many entries
/// the map held (for the eviction count).
pub(crate) fn drain_map(
    map: &MapData,
    cpus: usize,
    window: (u64, u64),
    names: &HashMap<u32, Arc<str>>,
    clock: Option<&Clock>,
    mut cached: HashMap<FlowKey, Vec<FlowStats>>,
) -> std::io::Result<(Vec<Flow>, u64)> {
    let offset = sys::monotonic_to_unix_offset();
    // Jiffies → Unix ns; without a clock (benchmarks) the raw value stays.
    let to_unix = |j: u64| clock.map_or(j, |c| c.mono_ns(j).wrapping_add(offset));
    let mut flows = Vec::new();
    let fd = map.fd().as_fd().as_raw_fd();
    let mut from_map = 0;
    sys::drain_hash::<FlowKey, FlowStats>(fd, cpus, |key, per_cpu| {
        from_map += 1;
        let flow = match cached.remove(key) {
            Some(mut more) => {
                more.extend_from_slice(per_cpu);
                to_flow(key, &more, &to_unix, window.0, window.1, names)
            }
            None => to_flow(key, per_cpu, &to_unix, window.0, window.1, names),
        };
        flows.push(flow);
    })?;
    for (key, per_cpu) in &cached {
        flows.push(to_flow(key, per_cpu, &to_unix, window.0, window.1, names));
    }
    Ok((flows, from_map))
}

fn to_flow(
    key: &FlowKey,
    per_cpu: &[FlowStats],
    to_unix: &dyn Fn(u64) -> u64,
    window_start: u64,
    window_end: u64,
    names: &HashMap<u32, Arc<str>>,
) -> Flow {
    let mut packets = 0;
    let mut bytes = 0;
    let mut first = u64::MAX;
    let mut last = 0;
    let mut flags = 0;
    for s in per_cpu.iter().filter(|s| s.packets > 0) {
        packets += s.packets;
        bytes += s.bytes;
        first = first.min(s.first_seen);
        last = last.max(s.last_seen);
        flags |= s.tcp_flags;
    }
    let (src_addr, dst_addr): (IpAddr, IpAddr) = match key.ether_type {
        0x86dd => (
            Ipv6Addr::from(key.src).into(),
            Ipv6Addr::from(key.dst).into(),
        ),
        0x0800 => (
            Ipv4Addr::new(key.src[0], key.src[1], key.src[2], key.src[3]).into(),
            Ipv4Addr::new(key.dst[0], key.dst[1], key.dst[2], key.dst[3]).into(),
        ),
        _ => (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::UNSPECIFIED.into()),
    };
    let transport = match (key.ether_type, key.proto) {
        (0x0800 | 0x86dd, 6) => Transport::Tcp,
        (0x0800 | 0x86dd, 17) => Transport::Udp,
        (0x0800 | 0x86dd, 1) => Transport::Icmp,
        (0x0800 | 0x86dd, 58) => Transport::Icmpv6,
        (0x0800 | 0x86dd, p) => Transport::Other(p),
        _ => Transport::None,
    };
    let mut attributes = Attributes::new();
    let (src_port, dst_port) = match transport {
        Transport::Icmp | Transport::Icmpv6 => {
            attributes.set("oxeye.icmp.type", (key.dst_port >> 8) as i64);
            attributes.set("oxeye.icmp.code", (key.dst_port & 0xff) as i64);
            (0, 0)
        }
        _ => (key.src_port, key.dst_port),
    };
    Flow {
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        transport,
        ether_type: key.ether_type,
        ifindex: key.ifindex,
        interface: names.get(&key.ifindex).cloned(),
        direction: if key.direction == DIR_EGRESS {
            Direction::Transmit
        } else {
            Direction::Receive
        },
        packets,
        bytes,
        tcp_flags: TcpFlags(flags),
        first_seen_unix_ns: if first == u64::MAX { 0 } else { to_unix(first) },
        last_seen_unix_ns: if last == 0 { 0 } else { to_unix(last) },
        window_start_unix_ns: window_start,
        window_end_unix_ns: window_end,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_keeps_its_end_and_points_at_the_whole_of_it() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let e = std::io::Error::other(log);
        let text = chain(&e);
        assert!(
            text.starts_with("line 0\n[... 89 lines of verifier log; whole log: "),
            "{text}"
        );
        assert!(text.ends_with("line 99"), "{text}");
        let path = text
            .split("whole log: ")
            .nth(1)
            .and_then(|r| r.split(" ...]").next())
            .expect("path");
        let whole = std::fs::read_to_string(path).expect("the whole log");
        assert!(whole.contains("line 50\n"));
        let _ = std::fs::remove_file(path);
    }
    use oxeye_ebpf_common::widen_jiffies;

    #[test]
    fn a_missing_interface_is_a_variant_naming_it_and_the_ones_there() {
        let spec = Interfaces::List(vec!["oxeye-nope0".into()]);
        let e = resolve_interfaces(&spec).expect_err("no such interface");
        let FlowError::NoSuchInterface { name, present } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(name, "oxeye-nope0");
        assert!(present.iter().any(|i| i == "lo"), "{present:?}");
        assert!(
            e.to_string()
                .starts_with("interface `oxeye-nope0` does not exist (interfaces here: "),
            "{e}"
        );
    }

    #[test]
    fn jiffies_widen_across_a_32_bit_wrap() {
        let now = (7u64 << 32) + 5;
        assert_eq!(widen_jiffies(now, 5), now);
        assert_eq!(widen_jiffies(now, 0), now - 5);
        // Written just before the low 32 bits wrapped.
        assert_eq!(widen_jiffies(now, u32::MAX - 9), now - 15);
        assert_eq!(widen_jiffies(1000, 400), 400);
    }

    /// Root: one flow test-run past 4 GiB through the front cache (32-bit slot counters, moved
    /// to the hash map before they overflow) and through the sampling scale; every count exact.
    #[test]
    fn counts_past_32_bits_exactly() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "kernel tests need root (CI runs them as root)"
        );
        let cfg = FlowsConfig::default();
        let mut probe = FlowProbe::start(&cfg, &[], Telemetry::default()).expect("start");
        let mut frame = vec![0u8; 1500];
        frame[..60].copy_from_slice(&sys::sample_frame());
        let fd = {
            let xdp: &mut Xdp = sys::program(&mut probe.ebpf, "oxeye_xdp").expect("xdp");
            xdp.fd().expect("fd").as_fd().as_raw_fd()
        };
        // 3 M × 1 500 bytes = 4.5 GB, in chunks (one test run stays on one CPU).
        const RUNS: u32 = 3_000_000;
        for _ in 0..RUNS / 500_000 {
            sys::test_run(fd, &frame, 500_000).expect("test run");
        }
        let flows = probe.drain_all().expect("drain");
        let packets: u64 = flows.iter().map(|f| f.packets).sum();
        let bytes: u64 = flows.iter().map(|f| f.bytes).sum();
        assert_eq!((packets, bytes), (RUNS as u64, RUNS as u64 * 1500));
        assert!(flows
            .iter()
            .all(|f| f.src_port == 40000 && f.dst_port == 53));
    }
}
