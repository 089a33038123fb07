//! Spans: load the span programs, attach every source, drain the ring buffer into `traces`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::kprobe::KProbeLinkId;
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint, UProbe};
use aya::{Btf, Ebpf, EbpfLoader};
use oxeye_api::{Comm, LostUnit, Span, SpanId, StatusCode, TaskContext, Telemetry, TraceId};
use oxeye_ebpf_common::{
    SourceConfig, SpanEvent, SpanHeader, SPAN_BRIEF_LEN, SPAN_COUNTERS_PER_SOURCE,
    SPAN_COUNTER_NAMES, STACK_DEPTH, STACK_KERNEL, STACK_USER,
};
use tokio::io::unix::AsyncFd;
use tracing::info;

use crate::{sys, ProbeError};
use crate::{AttachMode, SourceKind, SourceSpec, SpansConfig, StackMode};

/// The span programs, compiled for bpfel-unknown-none by build.rs.
pub(crate) static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxeye-spans"));

/// What keeps a source attached; dropping (or detaching) it detaches the source.
// Tracepoint fds and fentry instances are held only for what dropping them does.
#[allow(dead_code)]
enum Links {
    /// Tracepoint pairs (link fd, perf fd).
    Tracepoints(Vec<[OwnedFd; 2]>),
    /// uprobe/uretprobe links of the shared programs.
    Uprobe(Vec<(&'static str, UProbeLinkId)>),
    /// kprobe/kretprobe links of the shared programs, and the function's address in `KFUNCS`.
    Kprobe(KprobeLinks, u64),
    /// The source's own fentry/fexit instance (its maps are the shared ones).
    Fentry(Box<Ebpf>),
    /// Its syscall number in `SYSCALL_SOURCES`, read by the shared `raw_syscalls` pair.
    RawSyscall(u32),
    /// Detached.
    None,
}

/// What a source turned into, for naming its spans and counters. Indexes (the programs' cookie
/// and counter slot) are never reused, so an event still in the ring buffer of a source removed
/// a moment ago is still named after it.
struct Source {
    /// Span name (function or syscall).
    name: Arc<str>,
    /// Counter label, e.g. `syscall:openat`.
    label: String,
    return_value: bool,
    nargs: usize,
    syscall: bool,
    spec: SourceSpec,
    links: Links,
    /// When `ttl` detaches it.
    expires: Option<std::time::Instant>,
}

/// Why kernel functions cannot be traced here, if they cannot: (fentry error, kprobe error).
pub fn kernel_function_support(ebpf: &mut Ebpf) -> Support {
    let fentry = (|| -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Kernel(sys::no_btf(e)))?;
        let p: &mut FEntry = crate::sys::program(ebpf, "oxeye_fentry_probe")?;
        p.load("do_sys_openat2", &btf)
            .map_err(|e| ProbeError::Load(crate::flows::chain(&e)))
    })();
    let kprobe = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        Ok(())
    } else {
        Err(ProbeError::Kernel(
            "this kernel has no kprobe PMU (CONFIG_KPROBES is off)".into(),
        ))
    };
    (fentry, kprobe)
}

/// Loaded programs with every source attached. Dropping it detaches everything.
pub struct SpanProbe {
    /// The programs; `None` once detached (dropping unloads and detaches them).
    ebpf: Option<Ebpf>,
    counters: PerCpuArray<MapData, u64>,
    ring: AsyncFd<crate::ring::Ring>,
    /// Every source attached during the run, by index (see [`Source`]).
    sources: Vec<Source>,
    configs: Array<MapData, SourceConfig>,
    kfuncs: BpfHashMap<MapData, u64, u32>,
    syscall_sources: Array<MapData, u32>,
    /// The `raw_syscalls` pair while a source uses it (it runs on every syscall of every task,
    /// so it is detached when the last such source goes).
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// Ring size and wakeup, for fentry instances loaded at start.
    spans_config: SpansConfig,
    telemetry: Telemetry,
    offset: u64,
}

impl SpanProbe {
    /// Loads the programs and attaches every configured source. With `share_threads`, the
    /// shared maps stay pinned in the returned [`PinDir`] (until it drops), so another object
    /// (the profiler) can reuse `THREADS`.
    pub fn start(
        cfg: &SpansConfig,
        telemetry: Telemetry,
        share_threads: bool,
    ) -> Result<(SpanProbe, Option<PinDir>), ProbeError> {
        let wakeup = cfg.wakeup_bytes;
        // Kernel functions: fentry or kprobe, per source, from what this kernel supports.
        let mut mechanisms = Vec::new();
        if cfg
            .sources
            .iter()
            .any(|s| matches!(s.kind(), SourceKind::Kprobe(_)))
        {
            let support = support()?;
            for spec in &cfg.sources {
                mechanisms.push(match spec.kind() {
                    SourceKind::Kprobe(func) => Some(mechanism(&func, spec.attach, &support)?),
                    _ => None,
                });
            }
        }
        // Removed when `pins` drops: on success once the instances hold the maps, and on any
        // error below too, so no pinned map (the ring buffer included) outlives a failed start.
        let pins = if share_threads || mechanisms.contains(&Some(Mechanism::Fentry)) {
            Some(PinDir::create()?)
        } else {
            None
        };
        let mut ebpf = loader(cfg, &wakeup, pins.as_ref().map(|p| p.0.as_path()))
            .load(PROGRAMS)
            .map_err(|e| {
                ProbeError::Load(sys::explain_load_error(
                    "loading the span programs",
                    crate::flows::chain(&e),
                    &sys::kernel_release(),
                ))
            })?;
        let configs: Array<MapData, SourceConfig> = take_map(&mut ebpf, "SOURCES")?;
        let kfuncs: BpfHashMap<MapData, u64, u32> = take_map(&mut ebpf, "KFUNCS")?;
        let syscall_sources: Array<MapData, u32> = take_map(&mut ebpf, "SYSCALL_SOURCES")?;
        let ring = crate::ring::Ring::watch(&mut ebpf, "EVENTS")?;
        let counters = take_map(&mut ebpf, "SPAN_COUNTERS")?;
        let mut probe = SpanProbe {
            ebpf: Some(ebpf),
            counters,
            ring,
            sources: Vec::new(),
            configs,
            kfuncs,
            syscall_sources,
            raw_links: Vec::new(),
            spans_config: cfg.clone(),
            telemetry,
            offset: sys::monotonic_to_unix_offset(),
        };
        for (i, spec) in cfg.sources.iter().enumerate() {
            let how = mechanisms.get(i).copied().flatten();
            probe.attach(spec, how, pins.as_ref().map(|p| p.0.as_path()))?;
        }
        // The instances hold the maps now; the pins are no longer needed, unless the caller
        // shares them.
        if !share_threads {
            drop(pins);
            return Ok((probe, None));
        }
        Ok((probe, pins))
    }

    /// Attaches one more source while running. A `kprobe:` source that would use fentry
    /// cannot be added live (its instance needs the maps pinned at start): `attach: kprobe`.
    pub fn add(&mut self, spec: &SourceSpec) -> Result<(), ProbeError> {
        let how = match spec.kind() {
            SourceKind::Kprobe(func) => {
                let m = mechanism(&func, spec.attach, &support()?)?;
                if m == Mechanism::Fentry {
                    return Err(ProbeError::Source(format!("kprobe:{func} would use fentry, which cannot be added to a running receiver; write `attach: kprobe` to add it live")));
                }
                Some(m)
            }
            _ => None,
        };
        self.attach(spec, how, None)
    }

    /// Detaches the attached source configured as `spec`; false when there is none. Spans it
    /// already recorded are still drained and named; calls open at this moment count as
    /// `exits_missed`.
    pub fn remove(&mut self, spec: &SourceSpec) -> bool {
        match self
            .sources
            .iter()
            .position(|s| &s.spec == spec && !matches!(s.links, Links::None))
        {
            Some(index) => {
                self.detach_source(index);
                true
            }
            None => false,
        }
    }

    /// Detaches the sources whose `ttl` has passed; returns their labels.
    pub fn expire(&mut self, now: std::time::Instant) -> Vec<String> {
        let due: Vec<usize> = (0..self.sources.len())
            .filter(|&i| {
                let s = &self.sources[i];
                s.expires.is_some_and(|t| t <= now) && !matches!(s.links, Links::None)
            })
            .collect();
        due.into_iter()
            .map(|i| {
                self.detach_source(i);
                self.sources[i].label.clone()
            })
            .collect()
    }

    /// When the next `ttl` ends, if a source has one.
    pub fn next_expiry(&self) -> Option<std::time::Instant> {
        self.sources
            .iter()
            .filter(|s| !matches!(s.links, Links::None))
            .filter_map(|s| s.expires)
            .min()
    }

    fn detach_source(&mut self, index: usize) {
        // Entry probes go first (the reverse of attaching): a call already entered still has
        // its exit seen, so no thread is left with a span that never closes.
        let links = std::mem::replace(&mut self.sources[index].links, Links::None);
        if let Some(ebpf) = self.ebpf.as_mut() {
            match links {
                Links::Tracepoints(fds) => {
                    for fd in fds.into_iter().rev() {
                        drop(fd);
                    }
                }
                Links::Uprobe(ids) => {
                    for (prog, id) in ids.into_iter().rev() {
                        if let Ok(p) = crate::sys::program::<UProbe>(ebpf, prog) {
                            let _ = p.detach(id);
                        }
                    }
                }
                Links::Kprobe(ids, addr) => {
                    for (prog, id) in ids.into_iter().rev() {
                        if let Ok(p) = crate::sys::program::<KProbe>(ebpf, prog) {
                            let _ = p.detach(id);
                        }
                    }
                    let _ = self.kfuncs.remove(&addr);
                }
                Links::RawSyscall(nr) => {
                    // Entries stop here; calls already inside still close at their exit.
                    let _ = self.syscall_sources.set(nr, 0, 0);
                    let still_used = self
                        .sources
                        .iter()
                        .any(|s| matches!(s.links, Links::RawSyscall(_)));
                    if !still_used {
                        for (prog, id) in std::mem::take(&mut self.raw_links).into_iter().rev() {
                            if let Ok(p) = crate::sys::program::<RawTracePoint>(ebpf, prog) {
                                let _ = p.detach(id);
                            }
                        }
                    }
                }
                // Dropping the instance detaches both.
                Links::Fentry(_) | Links::None => {}
            }
        }
        let i = index as u32;
        if let Ok(mut c) = self.configs.get(&i, 0) {
            c.enabled = 0;
            let _ = self.configs.set(i, c, 0);
        }
        info!(source = %self.sources[index].label, "span source detached");
    }

    fn attach(
        &mut self,
        spec: &SourceSpec,
        how: Option<Mechanism>,
        pins: Option<&std::path::Path>,
    ) -> Result<(), ProbeError> {
        let index = self.sources.len() as u32;
        if index >= oxeye_ebpf_common::MAX_SOURCES {
            return Err(ProbeError::Source(format!(
                "at most {} span sources per run, removed ones included: restart oxeye",
                oxeye_ebpf_common::MAX_SOURCES
            )));
        }
        let kind = spec.kind();
        let (name, label, syscall) = match &kind {
            SourceKind::Syscall(name) => (name.clone(), format!("syscall:{name}"), true),
            SourceKind::Uprobe { path, symbol } => {
                (symbol.clone(), format!("uprobe:{path}:{symbol}"), false)
            }
            SourceKind::Kprobe(func) => (func.clone(), format!("kprobe:{func}"), false),
        };
        self.configs
            .set(index, source_config(spec)?, 0)
            .map_err(|source| ProbeError::Map {
                what: format!("{label}: writing its config"),
                source,
            })?;
        let raw_nr = match &kind {
            SourceKind::Syscall(name) => self.raw_syscall(name, spec.attach, &label)?,
            _ => None,
        };
        let ebpf = self.ebpf.as_mut().ok_or(ProbeError::Detached)?;
        let links = match &kind {
            SourceKind::Syscall(_) if raw_nr.is_some() => {
                let nr = raw_nr.unwrap_or_default();
                self.attach_raw_syscalls()?;
                self.syscall_sources
                    .set(nr, index + 1, 0)
                    .map_err(|source| ProbeError::Map {
                        what: format!("{label}: SYSCALL_SOURCES"),
                        source,
                    })?;
                Links::RawSyscall(nr)
            }
            SourceKind::Syscall(name) => {
                let root = sys::tracefs()?;
                let mut links = Vec::new();
                // Exit before entry: a call entered while only the entry probe is attached would
                // never be closed, and on a hot function enough of them fill the thread's stack.
                for (prog, dir) in [
                    ("oxeye_sys_exit", "sys_exit"),
                    ("oxeye_sys_enter", "sys_enter"),
                ] {
                    let id_path = root.join(format!("events/syscalls/{dir}_{name}/id"));
                    let id: u64 = std::fs::read_to_string(&id_path)
                        .map_err(|_| ProbeError::NoTracepoint {
                            label: label.clone(),
                            tracepoint: format!("{dir}_{name}"),
                            name: name.clone(),
                        })?
                        .trim()
                        .parse()
                        .map_err(|e| ProbeError::Kernel(format!("{}: {e}", id_path.display())))?;
                    let p: &mut TracePoint = crate::sys::program(ebpf, prog)?;
                    load_once(p, prog)?;
                    let fd = p
                        .fd()
                        .map_err(|source| ProbeError::Rejected {
                            program: prog.to_string(),
                            source,
                        })?
                        .as_fd()
                        .as_raw_fd();
                    links.push(
                        sys::attach_tracepoint_with_cookie(fd, id, index as u64).map_err(
                            |io_error| ProbeError::Syscall {
                                what: format!("{label}: attaching syscalls:{dir}_{name}"),
                                io_error,
                            },
                        )?,
                    );
                }
                Links::Tracepoints(links)
            }
            SourceKind::Uprobe { path, symbol } => {
                let scope = match spec.pid.and_then(std::num::NonZeroU32::new) {
                    Some(pid) => UProbeScope::OneProcess(pid),
                    None => UProbeScope::AllProcesses,
                };
                let mut links = Vec::new();
                // The return probe first (see above).
                for prog in ["oxeye_uretprobe", "oxeye_uprobe"] {
                    let p: &mut UProbe = crate::sys::program(ebpf, prog)?;
                    load_once(p, prog)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::Symbol(symbol),
                        cookie: Some(index as u64),
                    };
                    let id = p
                        .attach(point, path, scope)
                        .map_err(attaching(format!("{label}: attaching")))?;
                    links.push((prog, id));
                }
                Links::Uprobe(links)
            }
            SourceKind::Kprobe(func) => match how {
                Some(Mechanism::Fentry) => {
                    let pins = pins.ok_or_else(|| {
                        ProbeError::Source("fentry needs the maps pinned at start".into())
                    })?;
                    let source = index;
                    let wakeup = self.spans_config.wakeup_bytes;
                    let mut l = loader(&self.spans_config, &wakeup, Some(pins));
                    l.override_global("FENTRY_SOURCE", &source, true);
                    let mut e = l.load(PROGRAMS).map_err(|e| {
                        ProbeError::Load(format!("{label}: loading: {}", crate::flows::chain(&e)))
                    })?;
                    let btf = Btf::from_sys_fs()
                        .map_err(|e| ProbeError::Kernel(format!("{label}: {}", sys::no_btf(e))))?;
                    // fexit first (see above).
                    let p: &mut FExit = crate::sys::program(&mut e, "oxeye_fexit")?;
                    p.load(func, &btf)
                        .map_err(attaching(format!("{label}: fexit")))?;
                    p.attach().map_err(attaching(format!("{label}: fexit")))?;
                    let p: &mut FEntry = crate::sys::program(&mut e, "oxeye_fentry")?;
                    p.load(func, &btf)
                        .map_err(attaching(format!("{label}: fentry")))?;
                    p.attach().map_err(attaching(format!("{label}: fentry")))?;
                    Links::Fentry(Box::new(e))
                }
                _ => {
                    let (ids, addr) = attach_kprobe(ebpf, &mut self.kfuncs, func, index)?;
                    Links::Kprobe(ids, addr)
                }
            },
        };
        let via = match (&links, syscall) {
            (Links::Fentry(_), _) => "fentry/fexit",
            (Links::Kprobe(..), _) => "kprobe/kretprobe",
            (Links::RawSyscall(_), _) => "raw_syscalls raw tracepoints",
            (_, true) => "syscalls tracepoint pair",
            _ => "uprobe/uretprobe",
        };
        info!(source = %label, via, ttl = ?spec.ttl, "span source attached");
        self.sources.push(Source {
            name: Arc::from(name.as_str()),
            label,
            return_value: spec.return_value,
            nargs: spec.args as usize,
            syscall,
            spec: spec.clone(),
            links,
            expires: spec.ttl.map(|d| std::time::Instant::now() + d),
        });
        Ok(())
    }

    /// The syscall number when this source goes through the `raw_syscalls` pair: only with
    /// `attach: raw_tracepoint`, on x86_64 (the programs read arguments at its `pt_regs`
    /// offsets), for a syscall this build knows that no other source traces that way (one
    /// source per number); otherwise an error saying why. `auto` and `tracepoint` use the
    /// syscall's `syscalls:` pair: the raw pair makes a traced call cheaper but runs on every
    /// syscall of every task (see the README's benchmark), so it pays only for a syscall that
    /// is a large share of all the machine makes.
    fn raw_syscall(
        &self,
        name: &str,
        mode: AttachMode,
        label: &str,
    ) -> Result<Option<u32>, ProbeError> {
        if mode != AttachMode::RawTracepoint {
            return Ok(None);
        }
        let why_not = if !cfg!(target_arch = "x86_64") {
            "raw_syscalls sources are built for x86_64 only".to_string()
        } else {
            match sys::syscall_number(name) {
                None => format!("`{name}` is not a syscall oxeye knows the number of"),
                Some(nr) if nr >= oxeye_ebpf_common::MAX_SYSCALLS => {
                    format!("syscall number {nr} is out of range")
                }
                Some(nr) => match self.syscall_sources.get(&nr, 0) {
                    Ok(0) | Err(_) => return Ok(Some(nr)),
                    Ok(other) => format!(
                        "`{}` already traces it through raw_syscalls",
                        self.sources
                            .get(other as usize - 1)
                            .map_or("another source", |s| s.label.as_str())
                    ),
                },
            }
        };
        Err(ProbeError::Source(format!(
            "{label}: attach: raw_tracepoint is not possible: {why_not}; leave `attach` out to use the syscall's tracepoint pair"
        )))
    }

    /// Attaches the shared `raw_syscalls` pair unless it is already attached (exit first, as
    /// for every pair).
    fn attach_raw_syscalls(&mut self) -> Result<(), ProbeError> {
        if !self.raw_links.is_empty() {
            return Ok(());
        }
        let ebpf = self.ebpf.as_mut().ok_or(ProbeError::Detached)?;
        let mut links = Vec::new();
        for (prog, tp) in [
            ("oxeye_raw_exit", "sys_exit"),
            ("oxeye_raw_enter", "sys_enter"),
        ] {
            let p: &mut RawTracePoint = crate::sys::program(ebpf, prog)?;
            load_once(p, prog)?;
            let id = p
                .attach(tp)
                .map_err(attaching(format!("attaching raw_syscalls:{tp}")))?;
            links.push((prog, id));
        }
        self.raw_links = links;
        Ok(())
    }

    /// Waits until the ring buffer has data or `timeout` passes.
    pub async fn wait(&self, timeout: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, self.ring.readable()).await {
            // Drained right after; readiness is re-armed by the next wakeup.
            guard.clear_ready();
        }
    }

    /// Moves up to `max` waiting events out of the ring buffer as spans (fewer: it is empty).
    pub fn drain(&mut self, max: usize) -> Vec<Span> {
        self.offset = sys::monotonic_to_unix_offset();
        let mut spans = Vec::with_capacity(max.min(4096));
        let ring = self.ring.get_mut();
        let (sources, offset) = (&self.sources, self.offset);
        ring.drain(max, |item| {
            let Some((h, stacks)) = parse_record(item) else {
                return;
            };
            if let Some(source) = sources.get(h.source as usize) {
                spans.push(to_span(&h, stacks.as_ref(), &source.into(), offset));
            }
        });
        spans
    }

    /// Copies the kernel counters into self-metrics, labelled by source.
    /// Sources with the same label (one syscall traced for two processes, say) are summed: a
    /// label's counters are never one source's figures overwritten by another's.
    pub fn update_counters(&mut self) {
        let counters = &self.counters;
        let mut by_label: Vec<(&str, [u64; SPAN_COUNTER_NAMES.len()])> = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = match by_label.iter().position(|(l, _)| *l == source.label) {
                Some(at) => at,
                None => {
                    by_label.push((&source.label, [0; SPAN_COUNTER_NAMES.len()]));
                    by_label.len() - 1
                }
            };
            for (slot, total) in by_label[at].1.iter_mut().enumerate() {
                let index = i as u32 * SPAN_COUNTERS_PER_SOURCE + slot as u32;
                *total += counters
                    .get(&index, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0);
            }
        }
        for (label, totals) in by_label {
            for (name, total) in SPAN_COUNTER_NAMES.iter().zip(totals) {
                self.telemetry.set_counter(name, label, total);
                if let Some((reason, unit)) = lost_as(name) {
                    self.telemetry.set_lost(reason, unit, label, total);
                }
            }
        }
    }

    /// Detaches every source (the ring buffer stays readable for a final drain).
    pub fn detach(&mut self) {
        for s in &mut self.sources {
            s.links = Links::None;
        }
        // Dropping the programs detaches the raw pair too.
        self.raw_links.clear();
        self.ebpf = None;
    }
}

/// Which span counters are losses before the pipeline, and of what.
fn lost_as(counter: &str) -> Option<(&'static str, LostUnit)> {
    match counter {
        // The span was complete, but the ring buffer had no room for it.
        "ebpf_ringbuf_full" => Some(("ringbuf_full", LostUnit::Records)),
        // Nested deeper than the per-thread stack of open spans: never recorded.
        "ebpf_calls_too_deep" => Some(("calls_too_deep", LostUnit::Records)),
        // Opened, but its exit was never seen (an inner exit closed it): never emitted.
        "ebpf_orphan_entries" => Some(("exits_missed", LostUnit::Records)),
        // The span was emitted without the stack.
        "ebpf_stack_failures" => Some(("stack_failures", LostUnit::Stacks)),
        _ => None,
    }
}

/// kprobe/kretprobe links of the shared programs, by program name.
type KprobeLinks = Vec<(&'static str, KProbeLinkId)>;

/// Whether fentry and kprobe work here: `Err(why not)` for each.
pub type Support = (Result<(), ProbeError>, Result<(), ProbeError>);

fn attach_kprobe(
    ebpf: &mut Ebpf,
    kfuncs: &mut BpfHashMap<MapData, u64, u32>,
    func: &str,
    index: u32,
) -> Result<(KprobeLinks, u64), ProbeError> {
    let addr = sys::kallsyms_address(func)
        .ok_or_else(|| ProbeError::NoKernelFunction(func.to_string()))?;
    kfuncs
        .insert(addr, index, 0)
        .map_err(|source| ProbeError::Map {
            what: "KFUNCS".into(),
            source,
        })?;
    let mut ids = Vec::new();
    // The return probe first: see `SpanProbe::attach`.
    for prog in ["oxeye_kretprobe", "oxeye_kprobe"] {
        let p: &mut KProbe = crate::sys::program(ebpf, prog)?;
        load_once(p, prog)?;
        ids.push((
            prog,
            p.attach(func, 0)
                .map_err(attaching(format!("kprobe:{func}: attaching {prog}")))?,
        ));
    }
    Ok((ids, addr))
}

/// What this kernel allows for kernel functions (loads the programs once to find out).
fn support() -> Result<Support, ProbeError> {
    let mut loader = crate::sys::thread_state_loader();
    with_task_offsets(&mut loader);
    let mut probe = loader.load(PROGRAMS).map_err(|e| {
        ProbeError::Load(sys::explain_load_error(
            "loading the span programs",
            crate::flows::chain(&e),
            &sys::kernel_release(),
        ))
    })?;
    Ok(kernel_function_support(&mut probe))
}

/// How a `kprobe:` source traces its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mechanism {
    Kprobe,
    Fentry,
}

/// Picks fentry or kprobe per the source's `attach` and what the kernel supports.
fn mechanism(func: &str, mode: AttachMode, support: &Support) -> Result<Mechanism, ProbeError> {
    let (fentry, kprobe) = support;
    let neither = |fentry: &dyn std::fmt::Display, kprobe: &dyn std::fmt::Display| {
        ProbeError::KernelFunctions {
            func: func.to_string(),
            fentry: fentry.to_string(),
            kprobe: kprobe.to_string(),
        }
    };
    match (mode, fentry, kprobe) {
        (AttachMode::Auto | AttachMode::Fentry, Ok(()), _) => Ok(Mechanism::Fentry),
        (AttachMode::Auto | AttachMode::Kprobe, _, Ok(())) => Ok(Mechanism::Kprobe),
        (AttachMode::Kprobe, _, Err(k)) => Err(neither(&"not requested (attach: kprobe)", k)),
        (AttachMode::Fentry, Err(f), _) => Err(neither(f, &"not requested (attach: fentry)")),
        (AttachMode::Auto, Err(f), Err(k)) => Err(neither(f, k)),
        // Rejected by validation: these modes are for `syscall:` sources.
        (AttachMode::Tracepoint | AttachMode::RawTracepoint, _, _) => {
            Err(ProbeError::Source(format!(
                "kprobe:{func}: attach: tracepoint and raw_tracepoint apply to `syscall:` sources"
            )))
        }
    }
}

/// Maps every program instance shares (fentry sources load the object once each).
const SHARED_MAPS: [&str; 6] = [
    "THREADS",
    "SYSCALL_SOURCES",
    "SOURCES",
    "EVENTS",
    "SPAN_COUNTERS",
    "KFUNCS",
];

/// A bpffs directory holding the shared maps' pins while the instances load; removed (pins and
/// all) when dropped, whether the start succeeded or failed.
pub struct PinDir(std::path::PathBuf);

impl PinDir {
    fn create() -> Result<PinDir, ProbeError> {
        pin_dir().map(PinDir)
    }

    /// Where shared map `name` is pinned.
    pub fn map_path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("removing bpffs pins {}: {e}", self.0.display());
        }
    }
}

/// A fresh bpffs directory to pin the shared maps in while the instances load.
fn pin_dir() -> Result<std::path::PathBuf, ProbeError> {
    let root = std::path::Path::new("/sys/fs/bpf");
    let is_bpffs = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        })
        .unwrap_or(false);
    if !is_bpffs {
        // SAFETY: mount(2) with NUL-terminated strings and no data.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(ProbeError::Syscall {
                what: "mounting bpffs at /sys/fs/bpf (needed for fentry sources)".into(),
                io_error: std::io::Error::last_os_error(),
            });
        }
    }
    let dir = root.join(format!("oxeye-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|io_error| ProbeError::Syscall {
        what: dir.display().to_string(),
        io_error,
    })?;
    Ok(dir)
}

/// Takes map `name` out of the object as its typed form.
pub(crate) fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ProbeError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    M::try_from(map).map_err(|source| ProbeError::Map {
        what: name.into(),
        source,
    })
}

/// Loads a shared program the first time a source needs it.
fn load_once<P: Loadable>(p: &mut P, name: &str) -> Result<(), ProbeError> {
    if p.fd().is_err() {
        p.load().map_err(|source| ProbeError::Rejected {
            program: name.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The program types `load_once` loads: those whose `load` takes no target.
trait Loadable {
    fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError>;
    fn load(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError> {
                <$t>::fd(self)
            }
            fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
                <$t>::load(self)
            }
        }
    )*};
}
loadable!(TracePoint, UProbe, KProbe, RawTracePoint);

/// An attach error's wrapper naming what was attached.
fn attaching(what: String) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Attach { what, source }
}

fn loader<'a>(
    cfg: &'a SpansConfig,
    wakeup: &'a u64,
    pins: Option<&std::path::Path>,
) -> EbpfLoader<'a> {
    let mut l = crate::sys::thread_state_loader();
    l.override_global("WAKEUP_BYTES", wakeup, true)
        .map_max_entries("EVENTS", cfg.ring_size);
    with_task_offsets(&mut l);
    if let Some(dir) = pins {
        for m in SHARED_MAPS {
            l.map_pin_path(m, dir.join(m));
        }
    }
    l
}

/// A ring-buffer record as the programs write it: a whole `SpanEvent` (with stacks), a whole
/// `SpanHeader`, or a header's first `SPAN_BRIEF_LEN` bytes (a source without arguments: they
/// read as 0), told apart by length. `None` for anything shorter.
fn parse_record(item: &[u8]) -> Option<(SpanHeader, Option<[u64; 2 * STACK_DEPTH]>)> {
    // SAFETY (each read): the item holds at least the bytes read; read_unaligned copes with
    // alignment, and all-zero is a valid SpanHeader (the brief case's tail).
    if item.len() >= std::mem::size_of::<SpanEvent>() {
        let ev: SpanEvent = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SpanEvent) };
        Some((ev.header, Some(ev.stacks)))
    } else if item.len() >= std::mem::size_of::<SpanHeader>() {
        let h = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SpanHeader) };
        Some((h, None))
    } else if item.len() >= SPAN_BRIEF_LEN {
        let mut h = std::mem::MaybeUninit::<SpanHeader>::zeroed();
        unsafe {
            std::ptr::copy_nonoverlapping(item.as_ptr(), h.as_mut_ptr() as *mut u8, SPAN_BRIEF_LEN);
            Some((h.assume_init(), None))
        }
    } else {
        None
    }
}

/// Sets the span programs' `task_struct` offsets (from the kernel's BTF) on a loader of the
/// span object: every load that verifies them (`oxeye run`, `doctor`, the kernel-function
/// probe) checks the same code.
pub(crate) fn with_task_offsets(l: &mut EbpfLoader<'_>) {
    if let Some(task) = crate::btf::task_offsets() {
        l.override_global("TASK_COMM_OFFSET", &task.comm, true)
            .override_global("TASK_PID_OFFSET", &task.pid, true);
    }
}

fn source_config(spec: &SourceSpec) -> Result<SourceConfig, ProbeError> {
    let mut comm = [0u8; 16];
    if let Some(c) = &spec.comm {
        comm[..c.len().min(15)].copy_from_slice(&c.as_bytes()[..c.len().min(15)]);
    }
    let cgroup_id = match &spec.cgroup {
        Some(path) => {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path)
                .map_err(|e| ProbeError::Filter(format!("cgroup `{path}`: {e} (give a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/foo.service)")))?
                .ino()
        }
        None => 0,
    };
    Ok(SourceConfig {
        pid: spec.pid.unwrap_or(0),
        tid: spec.tid.unwrap_or(0),
        cgroup_id,
        min_duration_ns: spec.min_duration.map_or(0, |d| d.as_nanos() as u64),
        comm,
        nargs: spec.args,
        stack: match spec.stack {
            StackMode::None => 0,
            StackMode::Kernel => STACK_KERNEL,
            StackMode::User => STACK_USER,
            StackMode::Both => STACK_KERNEL | STACK_USER,
        },
        enabled: 1,
        _pad: 0,
    })
}

/// What of a source a span is made with.
struct Shape<'a> {
    name: &'a Arc<str>,
    return_value: bool,
    nargs: usize,
    syscall: bool,
}

impl<'a> From<&'a Source> for Shape<'a> {
    fn from(s: &'a Source) -> Self {
        Shape {
            name: &s.name,
            return_value: s.return_value,
            nargs: s.nargs,
            syscall: s.syscall,
        }
    }
}

/// A span from any bytes, as a ring record of a syscall source with every argument (the fuzz
/// target `kernel_records`).
pub(crate) fn record_to_span(item: &[u8]) -> Option<Span> {
    let (h, stacks) = parse_record(item)?;
    let name: Arc<str> = Arc::from("fuzz");
    let shape = Shape {
        name: &name,
        return_value: true,
        nargs: 6,
        syscall: true,
    };
    Some(to_span(&h, stacks.as_ref(), &shape, 0))
}

fn to_span(
    ev: &SpanHeader,
    stacks: Option<&[u64; 2 * STACK_DEPTH]>,
    source: &Shape<'_>,
    offset: u64,
) -> Span {
    let klen = (ev.kstack_len as usize).min(STACK_DEPTH);
    let ulen = (ev.ustack_len as usize).min(STACK_DEPTH);
    let (kernel_stack, user_stack) = match stacks {
        Some(s) => (
            s[..klen].to_vec(),
            s[STACK_DEPTH..STACK_DEPTH + ulen].to_vec(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let (status, status_message) = if source.syscall && ev.ret < 0 && ev.ret > -4096 {
        (
            StatusCode::Error,
            Some(Arc::from(
                std::io::Error::from_raw_os_error(-ev.ret as i32).to_string(),
            )),
        )
    } else {
        (StatusCode::Unset, None)
    };
    let mut attributes = oxeye_api::Attributes::new();
    attributes.set("code.function.name", source.name.clone());
    Span {
        trace_id: TraceId(ev.trace_id),
        span_id: SpanId(ev.span_id.to_be_bytes()),
        parent_span_id: (ev.parent_span_id != 0).then(|| SpanId(ev.parent_span_id.to_be_bytes())),
        name: source.name.clone(),
        start_unix_ns: ev.start_ns.wrapping_add(offset),
        end_unix_ns: ev.end_ns.wrapping_add(offset),
        status,
        status_message,
        attributes,
        task: Some(TaskContext {
            pid: ev.pid,
            tid: ev.tid,
            comm: Comm(ev.comm),
            cpu: ev.cpu,
        }),
        return_value: source.return_value.then_some(ev.ret),
        args: ev.args[..source.nargs.min(ev.args.len())].to_vec(),
        kernel_stack,
        user_stack,
        ..Span::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(args: [u64; 6]) -> SpanHeader {
        // SAFETY: all-zero is a valid SpanHeader.
        let mut h: SpanHeader = unsafe { std::mem::zeroed() };
        h.span_id = 7;
        h.pid = 42;
        h.tid = 43;
        h.comm[..4].copy_from_slice(b"curl");
        h.args = args;
        h
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading a plain #[repr(C)] value's bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn records_are_told_apart_by_length() {
        let full = bytes_of(&header([1, 2, 3, 4, 5, 6]));
        // Brief: the header's bytes before `args`; the ring pads records to 8 bytes.
        let (h, stacks) = parse_record(&full[..SPAN_BRIEF_LEN]).expect("brief record");
        assert_eq!(
            (h.span_id, h.pid, h.tid, &h.comm[..4]),
            (7, 42, 43, &b"curl"[..])
        );
        assert_eq!((h.args, stacks), ([0; 6], None));
        let (h, stacks) = parse_record(&full).expect("header");
        assert_eq!((h.args, stacks), ([1, 2, 3, 4, 5, 6], None));
        let mut ev = full.clone();
        ev.extend((0..2 * STACK_DEPTH as u64).flat_map(|f| f.to_ne_bytes()));
        let (h, stacks) = parse_record(&ev).expect("event");
        assert_eq!((h.pid, stacks.map(|s| s[5])), (42, Some(5)));
        assert!(parse_record(&full[..SPAN_BRIEF_LEN - 8]).is_none());
    }
}
