//! Hooks for oxeye's benchmarks (tests/benches/flows.rs, spans.rs); not part of the component API.

use std::time::{Duration, Instant};

use aya::maps::{Map, PerCpuHashMap, PerCpuValues};
use aya::EbpfLoader;
use oxeye_ebpf_common::{FlowKey, FlowStats};

/// The compiled eBPF object (XDP `oxeye_xdp`, `oxeye_xdp_pass`; TC `oxeye_tc`).
pub fn program_object() -> &'static [u8] {
    crate::flows::PROGRAMS
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
    let mut map: PerCpuHashMap<_, FlowKey, FlowStats> =
        PerCpuHashMap::try_from(ebpf.map_mut("FLOWS_A").ok_or("FLOWS_A missing")?)
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
        let values = PerCpuValues::try_from(vec![stats; cpus]).map_err(|e| e.to_string())?;
        map.insert(key, values, 0).map_err(|e| e.to_string())?;
    }
    let fill = t0.elapsed();
    let Some(Map::PerCpuLruHashMap(data)) = ebpf.take_map("FLOWS_A") else {
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

/// Which empty program pair [`empty_pair`] attaches around `getppid`.
#[derive(Clone, Copy, Debug)]
pub enum EmptyPair {
    /// `syscalls:sys_enter_getppid` / `sys_exit_getppid` tracepoints.
    Tracepoint,
    /// `raw_syscalls` `sys_enter` / `sys_exit` raw tracepoints (every syscall).
    RawTracepoint,
}

/// Attaches programs that do nothing, to measure what the attachment alone costs a syscall.
/// They stay attached until the returned object is dropped.
pub fn empty_pair(kind: EmptyPair) -> Result<aya::Ebpf, String> {
    use aya::programs::{RawTracePoint, TracePoint};
    crate::sys::tracefs()?;
    let mut ebpf = EbpfLoader::new()
        .load(crate::spans::PROGRAMS)
        .map_err(|e| format!("loading the span programs: {e}"))?;
    match kind {
        EmptyPair::Tracepoint => {
            let p: &mut TracePoint = crate::sys::program(&mut ebpf, "oxeye_empty_tp")?;
            p.load().map_err(|e| e.to_string())?;
            for event in ["sys_enter_getppid", "sys_exit_getppid"] {
                p.attach("syscalls", event).map_err(|e| e.to_string())?;
            }
        }
        EmptyPair::RawTracepoint => {
            for (name, tp) in [
                ("oxeye_empty_raw_enter", "sys_enter"),
                ("oxeye_empty_raw_exit", "sys_exit"),
            ] {
                let p: &mut RawTracePoint = crate::sys::program(&mut ebpf, name)?;
                p.load().map_err(|e| e.to_string())?;
                p.attach(tp).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(ebpf)
}
