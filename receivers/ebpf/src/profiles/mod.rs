//! CPU profiles: load the profile program, open a CPU-clock perf event per online CPU, drain the
//! ring buffer into the [`Aggregator`], and close windows into `profiles` records.

pub mod aggregate;
pub mod python;
pub mod tables;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::perf_event::{
    PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::ProgramError;
use aya::Ebpf;
use oxeye_api::{LostUnit, Mapping, Sample, Telemetry};
use oxeye_ebpf_common::{
    ProfileConfig, ProfileSampleEvent, PROFILE_COUNTER_NAMES, PROFILE_STACK_DEPTH, P_FILTERED,
    P_IDLE, P_KSTACK_FAILURES, P_OWN, P_RINGBUF_FULL, P_SAMPLES, P_UNWIND_UNKNOWN_PROCESS,
    P_UNWOUND_COMPLETE, P_UNWOUND_TRUNCATED, P_USTACK_FAILURES, SAMPLE_PYTHON,
    SAMPLE_UNWIND_UNKNOWN_PROCESS, SAMPLE_UNWOUND_TRUNCATED, STACK_KERNEL, STACK_USER,
};
use tokio::io::unix::AsyncFd;

pub use aggregate::{Aggregator, RawSample};

use crate::config::Unwind;
use crate::spans::take_map;
use crate::{sys, ProbeError, ProfilesConfig, StackMode};

/// The profile programs, compiled for bpfel-unknown-none by build.rs.
pub(crate) static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxeye-profile"));

/// How often the ring buffer is drained at the least (samples wait at most this long).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(200);

/// The kernel's ceiling on perf sampling frequencies (it lowers it by itself when sampling
/// takes too long).
pub fn max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens a CPU-clock perf event on each online CPU for `prog` at `frequency` Hz; a failure says
/// which kernel feature or setting is missing.
pub fn attach_cpu_clock(prog: &mut PerfEvent, frequency: u64) -> Result<usize, ProbeError> {
    let cpus = aya::util::online_cpus().map_err(|(what, io_error)| ProbeError::Syscall {
        what: what.to_string(),
        io_error,
    })?;
    for &cpu in &cpus {
        prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        )
        .map_err(|source| ProbeError::PerfEvent {
            cpu,
            frequency,
            source,
        })?;
    }
    Ok(cpus.len())
}

/// What a failed `perf_event_open` on `cpu` means: the kernel feature or setting missing.
pub(crate) fn perf_message(e: &ProgramError, cpu: u32, frequency: u64) -> String {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let what = crate::flows::chain(e);
    match errno {
        Some(libc::ENOENT | libc::ENODEV | libc::EOPNOTSUPP | libc::ENOSYS) => format!(
            "profiles: this kernel cannot open a software cpu-clock perf event on CPU {cpu} ({what}): \
             it needs CONFIG_PERF_EVENTS. Remove `profiles:` here, or profile on a kernel with perf events \
             (`oxeye doctor` shows what this kernel supports)"
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "profiles: opening a perf event on CPU {cpu} was refused ({what}): run as root or grant CAP_PERFMON \
             (kernel.perf_event_paranoid = {})",
            std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into())
        ),
        Some(libc::EINVAL) => format!(
            "profiles.frequency: the kernel refused {frequency} Hz ({what}); kernel.perf_event_max_sample_rate is {}",
            max_sample_rate().map_or("unknown".into(), |r| r.to_string())
        ),
        _ => format!("profiles: opening the cpu-clock perf event on CPU {cpu}: {what}"),
    }
}

/// [`perf_message`] for a `perf_event_open` that failed with `errno` (unit tests).
#[cfg(test)]
pub(crate) fn perf_error_for_test(errno: i32, cpu: u32, frequency: u64) -> String {
    let e = ProgramError::SyscallError(aya::sys::SyscallError {
        call: "perf_event_open",
        io_error: std::io::Error::from_raw_os_error(errno),
    });
    perf_message(&e, cpu, frequency)
}

fn profile_config(cfg: &ProfilesConfig) -> Result<ProfileConfig, ProbeError> {
    let mut comm = [0u8; 16];
    if let Some(c) = &cfg.comm {
        let n = c.len().min(15);
        comm[..n].copy_from_slice(&c.as_bytes()[..n]);
    }
    if let Some(pid) = cfg.pid {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ProbeError::Filter(format!(
                "profiles.pid: no process {pid} is running, so nothing would ever be sampled"
            )));
        }
    }
    let cgroup_id = match &cfg.cgroup {
        Some(path) => std::fs::metadata(path)
            .map_err(|e| {
                ProbeError::Filter(format!(
                    "profiles.cgroup `{path}`: {e} (give a cgroup v2 directory, e.g. \
                     /sys/fs/cgroup/system.slice/foo.service)"
                ))
            })?
            .ino(),
        None => 0,
    };
    Ok(ProfileConfig {
        pid: cfg.pid.unwrap_or(0),
        stack: match cfg.stacks {
            StackMode::Kernel => STACK_KERNEL,
            StackMode::User => STACK_USER,
            StackMode::Both | StackMode::None => STACK_KERNEL | STACK_USER,
        },
        cgroup_id,
        comm,
        max_depth: cfg.max_depth.min(PROFILE_STACK_DEPTH as u32),
        exclude_pid: if cfg.include_oxeye {
            0
        } else {
            std::process::id()
        },
    })
}

/// Counts one ring-buffer record (a [`ProfileSampleEvent`]); `None` when it is not one, else
/// whether the process's mappings should be read (see [`Aggregator::add`]).
pub(crate) fn add_record(agg: &mut Aggregator, item: &[u8], offset: u64) -> Option<Option<u32>> {
    if item.len() < std::mem::size_of::<ProfileSampleEvent>() {
        return None;
    }
    let copy;
    let ev: &ProfileSampleEvent =
        if (item.as_ptr() as usize).is_multiple_of(std::mem::align_of::<ProfileSampleEvent>()) {
            // SAFETY: ring records are 8-byte aligned (checked), at least this long (checked),
            // and the type is plain integers: read in place, no 2 KiB copy per sample.
            unsafe { &*(item.as_ptr() as *const ProfileSampleEvent) }
        } else {
            // SAFETY: as above; read_unaligned copes with any alignment.
            copy = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ProfileSampleEvent) };
            &copy
        };
    let klen = (ev.kstack_len as usize).min(PROFILE_STACK_DEPTH);
    let ulen = (ev.ustack_len as usize).min(PROFILE_STACK_DEPTH);
    Some(agg.add(&RawSample {
        unix_ns: ev.time_ns.wrapping_add(offset),
        pid: ev.pid,
        tid: ev.tid,
        comm: ev.comm,
        trace_id: ev.trace_id,
        span_id: ev.span_id,
        kernel: &ev.kernel[..klen],
        user: &ev.user[..ulen],
        // Walked with frame pointers before the process's tables were loaded: right for code
        // built with them, made up for code without; not presented as whole either way. (A
        // kernel thread has no user stack, and no tables ever: nothing to mark.)
        truncated: ulen > 0
            && ev.flags & (SAMPLE_UNWOUND_TRUNCATED | SAMPLE_UNWIND_UNKNOWN_PROCESS) != 0,
    }))
}

/// The pid and user stack of a sample with Python frames in it.
fn python_stack(item: &[u8]) -> Option<(u32, Vec<u64>)> {
    if item.len() < std::mem::size_of::<ProfileSampleEvent>() {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(item[o..o + 4].try_into().unwrap_or_default());
    if u32_at(std::mem::offset_of!(ProfileSampleEvent, flags)) & SAMPLE_PYTHON == 0 {
        return None;
    }
    let len = (u32_at(std::mem::offset_of!(ProfileSampleEvent, ustack_len)) as usize)
        .min(PROFILE_STACK_DEPTH);
    let at = std::mem::offset_of!(ProfileSampleEvent, user);
    let user = item[at..at + len * 8]
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Some((u32_at(std::mem::offset_of!(ProfileSampleEvent, pid)), user))
}

/// How often a process's tables are read again at most.
const RELOAD_TABLES: Duration = Duration::from_secs(2);

/// The pid of a sample whose process had no unwind tables in the kernel, or whose walk was cut
/// short (not a kernel thread's: no user stack, nothing to load).
fn needs_tables(item: &[u8]) -> Option<u32> {
    if item.len() < std::mem::size_of::<ProfileSampleEvent>() {
        return None;
    }
    let at = |o: usize| u32::from_ne_bytes(item[o..o + 4].try_into().unwrap_or_default());
    let flags = at(std::mem::offset_of!(ProfileSampleEvent, flags));
    let user = at(std::mem::offset_of!(ProfileSampleEvent, ustack_len));
    (user > 0 && flags & (SAMPLE_UNWIND_UNKNOWN_PROCESS | SAMPLE_UNWOUND_TRUNCATED) != 0)
        .then(|| at(std::mem::offset_of!(ProfileSampleEvent, pid)))
}

/// The profile program attached to every online CPU. Dropping it detaches everything.
pub struct ProfileProbe {
    /// The program and its perf links; `None` once detached.
    ebpf: Option<Ebpf>,
    ring: AsyncFd<crate::ring::Ring>,
    counters: PerCpuArray<MapData, u64>,
    aggregator: Aggregator,
    telemetry: Telemetry,
    offset: u64,
    /// Kernel counters at the end of the previous window (samples, filtered, idle, own).
    last: [u64; 4],
    filtered_by: String,
    /// Pids whose mappings the aggregator asked for.
    pending: Vec<u32>,
    /// `unwind: tables`: the tables loaded in the kernel.
    unwind: Option<std::sync::Arc<std::sync::Mutex<tables::Tables>>>,
    /// Processes sampled without tables, to load.
    unwind_pending: Vec<u32>,
    /// Names of Python frames (with tables).
    python: Option<python::PythonNames>,
    /// When each process was last asked for.
    unwind_requested: rustc_hash::FxHashMap<u32, std::time::Instant>,
    /// The tables' flushes seen.
    unwind_flushes: u64,
}

impl ProfileProbe {
    /// Loads the program and attaches it to each online CPU. `threads`: the span programs'
    /// pinned `THREADS` map, so samples carry the span open on their thread.
    pub fn start(
        cfg: &ProfilesConfig,
        telemetry: Telemetry,
        threads: Option<&Path>,
    ) -> Result<ProfileProbe, ProbeError> {
        // The tables and the walker's registers are x86-64's.
        let x86_64 = cfg!(target_arch = "x86_64");
        match cfg.unwind {
            Unwind::Tables if !x86_64 => Err(ProbeError::Source(
                "profiles.unwind: tables are built for x86-64 only; use `frame_pointers` (or `auto`) here"
                    .into(),
            )),
            Unwind::Auto if !x86_64 => Self::start_with(cfg, telemetry, threads, false),
            Unwind::FramePointers => Self::start_with(cfg, telemetry, threads, false),
            Unwind::Tables => Self::start_with(cfg, telemetry, threads, true),
            _ => match Self::start_with(cfg, telemetry.clone(), threads, true) {
                Err(ProbeError::Rejected { source, .. }) => {
                    tracing::warn!(
                        "profiles: this kernel refused the table walker ({}): user stacks are walked with frame pointers \
                         and stop at the first frame of code built without them (it needs bpf_loop, Linux 5.17+; \
                         `unwind: frame_pointers` says so without trying)",
                        crate::flows::chain(&source).lines().next().unwrap_or_default()
                    );
                    Self::start_with(cfg, telemetry, threads, false)
                }
                other => other,
            },
        }
    }

    fn start_with(
        cfg: &ProfilesConfig,
        telemetry: Telemetry,
        threads: Option<&Path>,
        tables: bool,
    ) -> Result<ProfileProbe, ProbeError> {
        if let Some(max) = max_sample_rate() {
            if cfg.frequency > max {
                return Err(ProbeError::Source(format!(
                    "profiles.frequency: {} Hz is above this kernel's limit, kernel.perf_event_max_sample_rate = {max} \
                     (the kernel lowers it by itself when sampling takes too long); use at most {max}",
                    cfg.frequency
                )));
            }
        }
        let config = profile_config(cfg)?;
        let wakeup = (cfg.ring_size / 4) as u64;
        let link: u32 = threads.is_some().into();
        let mut loader = crate::sys::thread_state_loader();
        loader
            // No CO-RE relocations in this object: parsing the kernel's BTF (several MB, the
            // start-up's peak memory) would buy nothing.
            .btf(None)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .override_global("LINK_SPANS", &link, true)
            .map_max_entries("SAMPLES", cfg.ring_size)
            // The benchmark-only counting program's maps: unused here.
            .map_max_entries("STACK_IDS", 1)
            .map_max_entries("COUNTS", 1);
        if tables {
            loader
                .map_max_entries("UNWIND_PROCS", tables::MAX_PROCESSES)
                .map_max_entries("PY_PROCS", tables::MAX_PROCESSES)
                .map_max_entries("UNWIND_DELTAS", cfg.unwind_max_deltas);
        }
        if let Some(path) = threads {
            loader.map_pin_path("THREADS", path);
        }
        let mut ebpf = loader.load(PROGRAMS).map_err(|e| {
            ProbeError::Load(crate::sys::explain_load_error(
                "loading the profile program",
                crate::flows::chain(&e),
                &crate::sys::kernel_release(),
            ))
        })?;
        let mut configs: Array<MapData, ProfileConfig> = take_map(&mut ebpf, "PROFILE_CONFIG")?;
        configs
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                what: "PROFILE_CONFIG".into(),
                source,
            })?;
        let ring = crate::ring::Ring::watch(&mut ebpf, "SAMPLES")?;
        let counters = take_map(&mut ebpf, "PROFILE_COUNTERS")?;
        let unwind = if tables {
            let mut t = tables::Tables::new(&mut ebpf, cfg.unwind_max_deltas)?;
            // The process asked for is known from the first sample on.
            if let Some(pid) = cfg.pid {
                t.load(pid);
            }
            Some(std::sync::Arc::new(std::sync::Mutex::new(t)))
        } else {
            None
        };
        let name = if tables {
            "oxeye_profile_unwind"
        } else {
            "oxeye_profile"
        };
        let prog: &mut PerfEvent = sys::program(&mut ebpf, name)?;
        prog.load().map_err(|source| ProbeError::Rejected {
            program: "the profile program".into(),
            source,
        })?;
        let cpus = attach_cpu_clock(prog, cfg.frequency)?;
        let filtered_by = [
            cfg.pid.map(|p| format!("pid={p}")),
            cfg.comm.as_ref().map(|c| format!("comm={c}")),
            cfg.cgroup.as_ref().map(|c| format!("cgroup={c}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        tracing::info!(
            frequency = cfg.frequency,
            cpus,
            window = ?cfg.window,
            linked_to_spans = threads.is_some(),
            filter = %filtered_by,
            unwind = if tables { "tables" } else { "frame_pointers" },
            "profiling: cpu-clock perf events attached"
        );
        Ok(ProfileProbe {
            ebpf: Some(ebpf),
            ring,
            counters,
            aggregator: Aggregator::new(
                cfg.window.as_nanos() as u64,
                1_000_000_000 / cfg.frequency.max(1),
                cfg.max_stacks,
            ),
            telemetry,
            offset: sys::monotonic_to_unix_offset(),
            last: [0; 4],
            filtered_by,
            pending: Vec::new(),
            python: unwind.as_ref().map(|t| {
                python::PythonNames::new(std::sync::Arc::clone(
                    &t.lock().unwrap_or_else(|p| p.into_inner()).python,
                ))
            }),
            unwind,
            unwind_pending: Vec::new(),
            unwind_requested: rustc_hash::FxHashMap::default(),
            unwind_flushes: 0,
        })
    }

    /// Waits until the ring buffer wakes the reader or `timeout` passes.
    pub async fn wait(&self, timeout: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, self.ring.readable()).await {
            guard.clear_ready();
        }
    }

    /// Moves every waiting sample into the aggregator; returns how many. Processes seen for
    /// the first time in their window are left in [`ProfileProbe::pending_snapshots`].
    pub fn drain(&mut self) -> usize {
        self.offset = sys::monotonic_to_unix_offset();
        let ring = self.ring.get_mut();
        let (aggregator, pending, offset) = (&mut self.aggregator, &mut self.pending, self.offset);
        let (unwind_pending, requested) = (&mut self.unwind_pending, &mut self.unwind_requested);
        let python = &mut self.python;
        if requested.len() > 4096 {
            requested.retain(|_, t| t.elapsed() < RELOAD_TABLES);
        }
        let mut n = 0;
        ring.drain(usize::MAX, |item| {
            if let (Some(names), Some((pid, user))) = (python.as_mut(), python_stack(item)) {
                names.see(pid, &user);
            }
            if let Some(pid) = needs_tables(item) {
                // Each process at most once per RELOAD_TABLES: a truncated stack may be code
                // mapped since (dlopen), or code without tables for good.
                let now = std::time::Instant::now();
                let due = requested
                    .get(&pid)
                    .is_none_or(|t| now.duration_since(*t) >= RELOAD_TABLES);
                if due {
                    requested.insert(pid, now);
                    unwind_pending.push(pid);
                }
            }
            match add_record(aggregator, item, offset) {
                Some(Some(pid)) => {
                    pending.push(pid);
                    n += 1;
                }
                Some(None) => n += 1,
                None => {}
            }
        });
        n
    }

    /// Processes to load unwind tables for, and where (`unwind: tables`; taken once).
    pub fn pending_tables(
        &mut self,
    ) -> Option<(Vec<u32>, std::sync::Arc<std::sync::Mutex<tables::Tables>>)> {
        let t = self.unwind.as_ref()?;
        // After a flush every process must be loaded again: forget when each was asked for.
        // `try_lock`: the loader holds it while it builds a table; the next drain looks again.
        let flushes = t
            .try_lock()
            .map_or(self.unwind_flushes, |t| t.stats.flushes);
        if flushes != self.unwind_flushes {
            self.unwind_flushes = flushes;
            self.unwind_requested.clear();
        }
        if self.unwind_pending.is_empty() {
            return None;
        }
        Some((
            std::mem::take(&mut self.unwind_pending),
            std::sync::Arc::clone(t),
        ))
    }

    /// Pids whose mappings should be read now (taken once).
    pub fn pending_snapshots(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.pending)
    }

    /// Hands over the mappings read for [`ProfileProbe::pending_snapshots`].
    pub fn set_mappings(&mut self, read: Vec<(u32, Option<Vec<Mapping>>)>) {
        for (pid, maps) in read {
            self.aggregator.set_mappings(pid, maps);
        }
    }

    /// At a window's end: the windows that ended by `now_unix_ns`, as records (a window without
    /// samples is logged with the reason). At shutdown (`all`): every window.
    pub fn close(&mut self, now_unix_ns: u64, all: bool) -> Vec<(u64, Vec<Sample>)> {
        let mut closed = if all {
            self.aggregator.close_all()
        } else {
            self.check_empty();
            self.aggregator.close(now_unix_ns)
        };
        if let Some(names) = &self.python {
            for s in closed.iter_mut().flat_map(|(_, w)| w.iter_mut()) {
                names.name(s);
            }
        }
        closed
    }

    /// Never a silent empty profile: a window without samples says why.
    fn check_empty(&mut self) {
        let now = [P_SAMPLES, P_FILTERED, P_IDLE, P_OWN].map(|c| self.counter(c));
        let [samples, filtered, idle, own] = [0, 1, 2, 3].map(|i| now[i] - self.last[i]);
        self.last = now;
        if samples > 0 {
            return;
        }
        if filtered > 0 {
            tracing::warn!(
                filtered,
                "profiles: no samples in the last window: the filter ({}) matched none of the tasks that ran",
                self.filtered_by
            );
        } else if idle == 0 && own == 0 {
            tracing::warn!(
                "profiles: no samples at all in the last window (not even of idle CPUs): the cpu-clock perf events did not fire"
            );
        }
    }

    fn counter(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Copies the kernel and aggregation counters into self-metrics and losses.
    pub fn update_counters(&mut self) {
        for (slot, name) in PROFILE_COUNTER_NAMES.iter().enumerate() {
            let total = self.counter(slot as u32);
            self.telemetry.set_counter(name, "profile", total);
        }
        let stack_failures = self.counter(P_KSTACK_FAILURES) + self.counter(P_USTACK_FAILURES);
        self.telemetry.set_lost(
            "ringbuf_full",
            LostUnit::Records,
            "profile",
            self.counter(P_RINGBUF_FULL),
        );
        self.telemetry.set_lost(
            "stack_failures",
            LostUnit::Stacks,
            "profile",
            stack_failures,
        );
        // `try_lock`: the loader holds it while it builds a table (the next window reports).
        if let Some(Ok(t)) = self.unwind.as_ref().map(|t| t.try_lock()) {
            let (s, (objects, deltas)) = (t.stats, t.loaded());
            drop(t);
            let t = &self.telemetry;
            t.set_counter(
                "ebpf_profile_unwind_processes_loaded",
                "profile",
                s.processes,
            );
            t.set_counter(
                "ebpf_profile_python_processes",
                "profile",
                s.python_processes,
            );
            t.set_counter(
                "ebpf_profile_python_unsupported_processes",
                "profile",
                s.python_unsupported,
            );
            t.set_counter("ebpf_profile_unwind_processes_exited", "profile", s.exited);
            t.set_gauge("ebpf_profile_unwind_objects", "profile", objects);
            t.set_gauge("ebpf_profile_unwind_deltas", "profile", deltas);
            t.set_gauge(
                "ebpf_profile_unwind_objects_without_table",
                "profile",
                s.objects_without_table,
            );
        }
        let (_, overflowed) = self.aggregator.totals();
        self.telemetry
            .set_counter("ebpf_profile_stacks_overflowed", "profile", overflowed);
        self.telemetry
            .set_lost("max_stacks", LostUnit::Stacks, "profile", overflowed);
    }

    /// Samples counted in user space so far.
    pub fn samples(&self) -> u64 {
        self.aggregator.totals().0
    }

    /// Detaches the perf events (the ring buffer stays readable for a final drain).
    pub fn detach(&mut self) {
        self.ebpf = None;
        if let Some(t) = &self.unwind {
            let s = t.lock().unwrap_or_else(|p| p.into_inner()).stats;
            tracing::info!(
                processes = s.processes,
                objects = s.objects,
                objects_without_table = s.objects_without_table,
                deltas = s.deltas,
                kernel_kib = s.deltas * 8 / 1024,
                complete = self.counter(P_UNWOUND_COMPLETE),
                truncated = self.counter(P_UNWOUND_TRUNCATED),
                before_tables = self.counter(P_UNWIND_UNKNOWN_PROCESS),
                flushes = s.flushes,
                exited = s.exited,
                python_processes = s.python_processes,
                python_unsupported = s.python_unsupported,
                "profiles: user stacks walked with unwind tables"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_event_errors_name_the_missing_feature() {
        let err = |errno| perf_error_for_test(errno, 3, 99);
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
}
