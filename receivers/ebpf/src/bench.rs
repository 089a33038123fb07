//! Hooks for oxeye's benchmarks (tests/benches/flows.rs, spans.rs, profiles.rs); not part of the
//! component API.

use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map};
use aya::EbpfLoader;
use oxeye_ebpf_common::{FlowKey, FlowStats, ProfileSampleEvent};

/// The compiled eBPF object (XDP `oxeye_xdp`, `oxeye_xdp_pass`; TC `oxeye_tc`).
pub fn program_object() -> &'static [u8] {
    crate::flows::PROGRAMS
}

/// The flow programs loaded exactly as `oxeye run` loads them for `cfg` (globals, map sizes),
/// not attached; the object's `oxeye_xdp_pass` baseline is left unloaded.
pub fn flow_programs(cfg: &crate::FlowsConfig) -> Result<aya::Ebpf, crate::FlowError> {
    crate::flows::load_programs(cfg)
}

/// Kernel-timed average ns of one run of a loaded program on a 60-byte UDP frame.
pub fn test_run(prog_fd: std::os::fd::RawFd, repeat: u32) -> std::io::Result<u32> {
    crate::sys::test_run(prog_fd, &crate::sys::sample_frame(), repeat)
}

/// What harvesting `flows` distinct flows cost.
#[derive(Debug)]
pub struct HarvestFigures {
    /// Entries moved out of the kernel map and turned into flow records.
    pub flows: usize,
    /// Time to fill the map from user space (not part of the harvest).
    pub fill: Duration,
    /// Batch lookup-and-delete plus conversion to records.
    pub harvest: Duration,
    /// Resident memory growth across the harvest, KiB.
    pub rss_growth_kib: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Loads the programs with room for `n` flows, fills one flow map with `n` distinct keys from
/// user space, and times the receiver's harvest of it.
pub fn harvest(n: u32) -> Result<HarvestFigures, String> {
    let mut ebpf = EbpfLoader::new()
        // Room beyond n: an LRU map starts evicting before it is completely full.
        .map_max_entries("FLOWS_A", n + n / 4)
        .map_max_entries("FLOWS_B", 1)
        .load(crate::flows::PROGRAMS)
        .map_err(|e| e.to_string())?;
    let cpus = aya::util::nr_cpus().map_err(|(w, e)| format!("{w}: {e}"))?;
    let mut map: HashMap<_, FlowKey, FlowStats> =
        HashMap::try_from(ebpf.map_mut("FLOWS_A").ok_or("FLOWS_A missing")?)
            .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for i in 0..n {
        let mut key = FlowKey {
            ether_type: 0x0800,
            proto: 17,
            src_port: (i & 0xffff) as u16,
            dst_port: 53,
            ifindex: 2,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&(0x0a00_0000 | (i >> 16)).to_be_bytes());
        key.dst[..4].copy_from_slice(&[10, 255, 0, 1]);
        let stats = FlowStats {
            packets: 3,
            bytes: 300,
            first_seen: 1,
            last_seen: 2,
            ..FlowStats::default()
        };
        map.insert(key, stats, 0).map_err(|e| e.to_string())?;
    }
    let fill = t0.elapsed();
    let Some(Map::LruHashMap(data)) = ebpf.take_map("FLOWS_A") else {
        return Err("FLOWS_A missing".into());
    };
    let rss0 = rss_kib();
    let t1 = Instant::now();
    let (flows, _) = crate::flows::drain_map(
        &data,
        cpus,
        (0, 1),
        &Default::default(),
        None,
        Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let harvest = t1.elapsed();
    let figures = HarvestFigures {
        flows: flows.len(),
        fill,
        harvest,
        rss_growth_kib: rss_kib().saturating_sub(rss0),
    };
    Ok(figures)
}

/// Which empty program pair [`empty_pair`] attaches (around `getppid`, unless named).
#[derive(Clone, Copy, Debug)]
pub enum EmptyPair {
    /// `syscalls:sys_enter_getppid` / `sys_exit_getppid` tracepoints.
    Tracepoint,
    /// `syscalls:sys_enter_write` / `sys_exit_write` tracepoints.
    WriteTracepoint,
    /// `syscalls:sys_exit_write` alone (what request spans hook: exits only).
    WriteExitTracepoint,
    /// `raw_syscalls` `sys_enter` / `sys_exit` raw tracepoints (every syscall).
    RawTracepoint,
    /// The raw pair with a clock read on each edge (stored in a per-CPU array), nothing else.
    RawTracepointClock,
}

/// Attaches programs that do nothing, to measure what the attachment alone costs a syscall.
/// They stay attached until the returned object is dropped.
pub fn empty_pair(kind: EmptyPair) -> Result<aya::Ebpf, String> {
    use aya::programs::{RawTracePoint, TracePoint};
    crate::sys::tracefs().map_err(|e| e.to_string())?;
    let mut ebpf = crate::sys::thread_state_loader()
        .load(crate::spans::PROGRAMS)
        .map_err(|e| format!("loading the span programs: {e}"))?;
    match kind {
        EmptyPair::Tracepoint | EmptyPair::WriteTracepoint | EmptyPair::WriteExitTracepoint => {
            let p: &mut TracePoint =
                crate::sys::program(&mut ebpf, "oxeye_empty_tp").map_err(|e| e.to_string())?;
            p.load().map_err(|e| e.to_string())?;
            let events: &[&str] = match kind {
                EmptyPair::Tracepoint => &["sys_enter_getppid", "sys_exit_getppid"],
                EmptyPair::WriteTracepoint => &["sys_enter_write", "sys_exit_write"],
                _ => &["sys_exit_write"],
            };
            for event in events {
                p.attach("syscalls", event).map_err(|e| e.to_string())?;
            }
        }
        EmptyPair::RawTracepoint | EmptyPair::RawTracepointClock => {
            let names = match kind {
                EmptyPair::RawTracepoint => ["oxeye_empty_raw_enter", "oxeye_empty_raw_exit"],
                _ => ["oxeye_clock_raw_enter", "oxeye_clock_raw_exit"],
            };
            for (name, tp) in names.into_iter().zip(["sys_enter", "sys_exit"]) {
                let p: &mut RawTracePoint =
                    crate::sys::program(&mut ebpf, name).map_err(|e| e.to_string())?;
                p.load().map_err(|e| e.to_string())?;
                p.attach(tp).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(ebpf)
}

// ---------------------------------------------------------------------------------------------
// Profiles

/// What counting samples in user space cost.
#[derive(Debug)]
pub struct AggregationFigures {
    /// Samples counted.
    pub samples: usize,
    /// Records the windows closed into.
    pub records: usize,
    /// CPU time of the counting thread (parsing each ring record and counting it).
    pub cpu: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A small deterministic generator (the benchmarks need no randomness crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Ring records as the profile program writes them, for a realistic mix: `distinct` stacks of
/// 8 to 64 user frames (sharing their outer frames, as call paths from one `main` do), a
/// kernel part on a quarter of them, spread over 16 threads of 2 processes, a tenth inside a
/// span; `n` samples drawn from them with Zipf-like popularity (stack i with weight 1/(i+1)).
/// Returns the distinct records and the order they are sampled in.
pub fn sample_records(n: usize, distinct: usize) -> (Vec<ProfileSampleEvent>, Vec<u32>) {
    let mut rng = Lcg(42);
    let roots: Vec<u64> = (0..64).map(|i| 0x5555_0000_1000 + i * 0x40).collect();
    let records: Vec<ProfileSampleEvent> = (0..distinct.max(1))
        .map(|i| {
            // SAFETY: plain integers: all zero is a valid value.
            let mut ev: ProfileSampleEvent = unsafe { std::mem::zeroed() };
            ev.pid = 1000 + (i % 2) as u32;
            ev.tid = ev.pid + (i % 8) as u32;
            ev.comm[..3].copy_from_slice(b"app");
            let depth = 8 + (rng.next() % 57) as usize;
            for d in 0..depth {
                // Innermost frames differ, outer ones come from the shared call paths.
                ev.user[d] = if d < 3 {
                    0x5555_0010_0000 + rng.next() % 0x10_0000
                } else {
                    roots[(d * 7 + i % 5) % roots.len()]
                };
            }
            ev.ustack_len = depth as u32;
            if i % 4 == 0 {
                ev.kstack_len = 6;
                for d in 0..6 {
                    ev.kernel[d] = 0xffff_ffff_8100_0000 + rng.next() % 0x100_0000;
                }
            }
            if i % 10 == 0 {
                ev.span_id = 1 + i as u64;
                ev.trace_id = [7; 16];
            }
            ev
        })
        .collect();
    // Zipf-like: P(i) ∝ 1/(i+1), by inverting the harmonic CDF approximately.
    let h = (distinct as f64).ln() + 0.5772;
    let order = (0..n)
        .map(|_| {
            let u = (rng.next() % 1_000_000) as f64 / 1_000_000.0;
            (((u * h).exp() - 1.0) as usize).min(distinct - 1) as u32
        })
        .collect();
    (records, order)
}

/// Counts `order` samples of `records` (as ring bytes) into 10 s windows, advancing time so
/// that the samples span `windows` windows; times the counting thread.
pub fn aggregate(
    records: &[ProfileSampleEvent],
    order: &[u32],
    windows: u64,
) -> AggregationFigures {
    let window_ns = 10_000_000_000;
    let mut agg = crate::profiles::Aggregator::new(window_ns, 52_631_578, 16384);
    let bytes: Vec<&[u8]> = records
        .iter()
        .map(|r| {
            // SAFETY: viewing plain integers as bytes.
            unsafe {
                std::slice::from_raw_parts(
                    r as *const ProfileSampleEvent as *const u8,
                    std::mem::size_of::<ProfileSampleEvent>(),
                )
            }
        })
        .collect();
    let step = windows * window_ns / order.len().max(1) as u64;
    let mut out = 0;
    let t0 = thread_cpu();
    for (k, &i) in order.iter().enumerate() {
        // The record's time (0) plus this offset is the sample's time.
        let offset = k as u64 * step;
        let _ = crate::profiles::add_record(&mut agg, bytes[i as usize], offset);
        if k % 4096 == 0 {
            out += agg
                .close(offset)
                .iter()
                .map(|(_, r)| r.len())
                .sum::<usize>();
        }
    }
    out += agg.close_all().iter().map(|(_, r)| r.len()).sum::<usize>();
    AggregationFigures {
        samples: order.len(),
        records: out,
        cpu: thread_cpu() - t0,
    }
}

/// How samples leave the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleExit {
    /// Each sample with its stacks through the ring buffer, counted in user space (oxeye's).
    RingBuffer,
    /// Stacks hashed into a stack map and counted per (thread, stacks) in a hash map in the
    /// kernel; user space reads both once a window.
    InKernelCounts,
    /// As `RingBuffer`, with user stacks walked from unwind tables (`unwind: tables`).
    RingBufferTables,
}

/// What one design cost while profiling a workload.
#[derive(Debug)]
pub struct SampleExitFigures {
    /// Samples the program ran on (the kernel's run count).
    pub samples: u64,
    /// Kernel time per sample (bpf_stats run time / run count).
    pub kernel_ns_per_sample: f64,
    /// User-space CPU per sample of the reading thread (drain and count, or read the maps).
    pub user_ns_per_sample: f64,
    /// Distinct (thread, stack) records at the end.
    pub records: usize,
    /// Samples lost or stacks not recorded (ring full, map full, stack-id collisions).
    pub lost: u64,
}

/// Profiles process `pid` at `frequency` Hz for `duration` with one design, in this thread
/// (windows of 1 s), with the kernel's BPF run-time statistics on.
pub fn sample_exit(
    design: SampleExit,
    frequency: u64,
    duration: Duration,
    pid: u32,
) -> Result<SampleExitFigures, String> {
    use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap};
    use aya::programs::PerfEvent;
    use oxeye_ebpf_common::{CountedKey, ProfileConfig, STACK_KERNEL, STACK_USER};

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.to_string())?;
    // Both designs look up the span open on the sampled thread, as with `spans:` running.
    let link = 1u32;
    let tables = design == SampleExit::RingBufferTables;
    let mut loader = crate::sys::thread_state_loader();
    loader
        .override_global("LINK_SPANS", &link, true)
        .map_max_entries("SAMPLES", 16 << 20);
    let max_deltas = crate::config::ProfilesConfig::default().unwind_max_deltas;
    if tables {
        loader
            .map_max_entries("UNWIND_PROCS", crate::profiles::tables::MAX_PROCESSES)
            .map_max_entries("PY_PROCS", crate::profiles::tables::MAX_PROCESSES)
            .map_max_entries("UNWIND_DELTAS", max_deltas);
    }
    let mut ebpf = loader
        .load(crate::profiles::PROGRAMS)
        .map_err(|e| crate::flows::chain(&e))?;
    // The tables are in place before the first sample (as for a process sampled before).
    let _tables = if tables {
        let mut t = crate::profiles::tables::Tables::new(&mut ebpf, max_deltas)
            .map_err(|e| e.to_string())?;
        t.load(pid);
        Some(t)
    } else {
        None
    };
    let mut cfg: Array<MapData, ProfileConfig> =
        Array::try_from(ebpf.take_map("PROFILE_CONFIG").ok_or("PROFILE_CONFIG")?)
            .map_err(|e| e.to_string())?;
    cfg.set(
        0,
        ProfileConfig {
            pid,
            stack: STACK_KERNEL | STACK_USER,
            max_depth: 127,
            ..ProfileConfig::default()
        },
        0,
    )
    .map_err(|e| e.to_string())?;
    let mut ring =
        RingBuf::try_from(ebpf.take_map("SAMPLES").ok_or("SAMPLES")?).map_err(|e| e.to_string())?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(ebpf.take_map("PROFILE_COUNTERS").ok_or("COUNTERS")?)
            .map_err(|e| e.to_string())?;
    let mut stacks = StackTraceMap::try_from(ebpf.take_map("STACK_IDS").ok_or("STACK_IDS")?)
        .map_err(|e| e.to_string())?;
    let mut counts: BpfHashMap<MapData, CountedKey, u64> =
        BpfHashMap::try_from(ebpf.take_map("COUNTS").ok_or("COUNTS")?)
            .map_err(|e| e.to_string())?;
    let name = match design {
        SampleExit::RingBuffer => "oxeye_profile",
        SampleExit::InKernelCounts => "oxeye_profile_counted",
        SampleExit::RingBufferTables => "oxeye_profile_unwind",
    };
    let prog: &mut PerfEvent = crate::sys::program(&mut ebpf, name).map_err(|e| e.to_string())?;
    prog.load().map_err(|e| crate::flows::chain(&e))?;
    crate::profiles::attach_cpu_clock(prog, frequency).map_err(|e| e.to_string())?;
    let mut agg = crate::profiles::Aggregator::new(1_000_000_000, 1_000_000_000 / frequency, 16384);
    let mut user = Duration::ZERO;
    let mut records = 0;
    let started = Instant::now();
    let mut next_window = started + Duration::from_secs(1);
    let offset = crate::sys::monotonic_to_unix_offset();
    // Reads the in-kernel counts once a window, as an agent of that design does: every
    // entry, the stacks it names (once each), then clears both maps.
    let mut read_counts = |counts: &mut BpfHashMap<MapData, CountedKey, u64>| -> usize {
        let entries: Vec<(CountedKey, u64)> = counts.iter().filter_map(Result::ok).collect();
        let mut seen = std::collections::HashMap::new();
        for (k, _) in &entries {
            for id in [k.kstack, k.ustack] {
                if id >= 0 && !seen.contains_key(&id) {
                    seen.insert(id, stacks.get(&(id as u32), 0).ok());
                }
            }
            let _ = counts.remove(k);
        }
        for id in seen.keys() {
            let _ = stacks.remove(&(*id as u32));
        }
        entries.len()
    };
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(50));
        let t0 = thread_cpu();
        match design {
            SampleExit::RingBuffer | SampleExit::RingBufferTables => {
                while let Some(item) = ring.next() {
                    let _ = crate::profiles::add_record(&mut agg, &item, offset);
                }
                if Instant::now() >= next_window {
                    records = agg.close(u64::MAX).iter().map(|(_, r)| r.len()).sum();
                }
            }
            SampleExit::InKernelCounts => {
                if Instant::now() >= next_window {
                    records = read_counts(&mut counts);
                }
            }
        }
        if Instant::now() >= next_window {
            next_window += Duration::from_secs(1);
        }
        user += thread_cpu() - t0;
    }
    let info = prog.info().map_err(|e| e.to_string())?;
    drop(ebpf);
    let counter =
        |slot: u32| -> u64 { counters.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    let samples = info.run_count().max(1);
    Ok(SampleExitFigures {
        samples,
        kernel_ns_per_sample: info.run_time().as_nanos() as f64 / samples as f64,
        user_ns_per_sample: user.as_nanos() as f64 / samples as f64,
        records,
        lost: counter(oxeye_ebpf_common::P_RINGBUF_FULL)
            + counter(oxeye_ebpf_common::P_KSTACK_FAILURES)
            + counter(oxeye_ebpf_common::P_USTACK_FAILURES),
    })
}
