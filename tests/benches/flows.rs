//! Flow programs' cost (root), always side by side in one run with XDP_PASS and with a C/libbpf
//! reference (tests/reference/flow.bpf.c: per-CPU LRU hash + clock read, built here with clang):
//!
//! 1. `BPF_PROG_TEST_RUN` on one 60-byte frame: the hit path, oxeye's programs loaded exactly as
//!    `oxeye run` loads them (`SAMPLE_EVERY`, map sizes).
//! 2. A flow mix through a veth pair: 64 000 distinct flows (IPv4/IPv6, TCP/UDP) with Zipf
//!    popularity (exponent 1.1), prepared frames sent by AF_PACKET `sendmmsg` from a namespace
//!    the benchmark makes, the program attached natively to the receiving end. Per packet: the
//!    program's own run time (the kernel's BPF run-time statistics) and softirq CPU time
//!    (/proc/stat). The frames are addressed to another MAC, so the stack drops them right after
//!    XDP and the rest of the receive path costs the same in every mode.
//! 3. Harvesting 1 M distinct flows.
//!
//! Runs are interleaved (one of each mode per round); figures are medians. Never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench flows

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use aya::programs::{xdp::XdpLinkId, SchedClassifier, Xdp, XdpMode};
use aya::Ebpf;
use oxeye_receiver_ebpf::bench::{flow_programs, test_run};
use oxeye_tests::bench::{c_reference, median, quick};
use oxeye_tests::netns::{blast, in_ns, VethPair};

/// Distinct flows in the mix (`OXEYE_BENCH_FLOWS` to change), and their Zipf exponent (the
/// synthetic receiver's default).
const FLOWS: u32 = 64_000;
const ZIPF: f64 = 1.1;

fn flows() -> u32 {
    std::env::var("OXEYE_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLOWS)
}

/// One program to measure: its object, the program's name in it, and a label.
struct Candidate {
    label: &'static str,
    ebpf: Ebpf,
    program: &'static str,
}

impl Candidate {
    fn xdp(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.program)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    fn fd(&mut self) -> i32 {
        self.xdp().fd().expect("fd").as_fd().as_raw_fd()
    }
}

fn candidates() -> Vec<Candidate> {
    let mut pass = Ebpf::load(oxeye_receiver_ebpf::bench::program_object()).expect("load");
    let p: &mut Xdp = pass
        .program_mut("oxeye_xdp_pass")
        .expect("program")
        .try_into()
        .expect("xdp");
    p.load().expect("verifier");
    let oxeye = flow_programs(&Default::default()).expect("oxeye's flow programs");
    let mut reference = Ebpf::load(&c_reference("flow.bpf.c")).expect("load the C reference");
    let r: &mut Xdp = reference
        .program_mut("ref_flow")
        .expect("program")
        .try_into()
        .expect("xdp");
    r.load().expect("verifier (C reference)");
    vec![
        Candidate {
            label: "XDP_PASS",
            ebpf: pass,
            program: "oxeye_xdp_pass",
        },
        Candidate {
            label: "oxeye XDP (as `oxeye run` loads it)",
            ebpf: oxeye,
            program: "oxeye_xdp",
        },
        Candidate {
            label: "C reference (LRU per-CPU hash + ktime)",
            ebpf: reference,
            program: "ref_flow",
        },
    ]
}

/// Part 1: kernel-timed test runs on one frame, interleaved.
fn test_runs(cands: &mut [Candidate], repeat: u32, rounds: usize) -> Vec<f64> {
    let mut runs = vec![Vec::new(); cands.len()];
    for _ in 0..rounds {
        for (i, c) in cands.iter_mut().enumerate() {
            runs[i].push(test_run(c.fd(), repeat).expect("test run") as f64);
        }
    }
    println!("1. program cost, BPF_PROG_TEST_RUN × {repeat} on one 60-byte UDP frame (the hit path), median of {rounds}:");
    let medians: Vec<f64> = runs.into_iter().map(median).collect();
    for (c, ns) in cands.iter().zip(&medians) {
        println!("   {:<42} {ns:>6.0} ns/packet", c.label);
    }
    medians
}

/// xorshift64*: reproducible frames and order without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Flow `i` of the mix as a frame to a MAC that is not the receiver's: 80 % IPv4, 20 % IPv6,
/// half TCP (ACK, 20-byte header) and half UDP, sizes 64–190 bytes.
fn frame(i: u32, rng: &mut Rng) -> Vec<u8> {
    let v6 = i % 5 == 4;
    let tcp = i.is_multiple_of(2);
    let l4_len = if tcp { 20 } else { 8 };
    let payload = (rng.next() % 96) as usize + 2;
    let ip_len = if v6 { 40 } else { 20 };
    let mut f = vec![0u8; 14 + ip_len + l4_len + payload];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    let (src, dst) = (0x0a00_0000 | i, 0x0ac9_0001u32);
    let proto = if tcp { 6 } else { 17 };
    if v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((l4_len + payload) as u16).to_be_bytes());
        f[20] = proto;
        f[21] = 64;
        f[22..24].copy_from_slice(&[0xfd, 0]);
        f[34..38].copy_from_slice(&src.to_be_bytes());
        f[38..40].copy_from_slice(&[0xfd, 0]);
        f[50..54].copy_from_slice(&dst.to_be_bytes());
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + l4_len + payload) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = proto;
        f[26..30].copy_from_slice(&src.to_be_bytes());
        f[30..34].copy_from_slice(&dst.to_be_bytes());
    }
    let l4 = 14 + ip_len;
    f[l4..l4 + 2].copy_from_slice(&(1024 + (i % 60_000) as u16).to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&(if tcp { 443u16 } else { 53 }).to_be_bytes());
    if tcp {
        f[l4 + 12] = 5 << 4;
        f[l4 + 13] = 0x10;
    } else {
        f[l4 + 4..l4 + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    }
    f
}

/// The mix: every flow's frame, and a Zipf-distributed order of `len` packets over them (the
/// ranks shuffled, so popularity does not follow the flow index).
fn mix(len: usize) -> (Vec<Vec<u8>>, Vec<u32>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let n = flows();
    let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(i, &mut rng)).collect();
    let mut cdf = Vec::with_capacity(n as usize);
    let mut acc = 0.0;
    for k in 1..=n {
        acc += 1.0 / (k as f64).powf(ZIPF);
        cdf.push(acc);
    }
    let mut rank_to_flow: Vec<u32> = (0..n).collect();
    for i in (1..rank_to_flow.len()).rev() {
        rank_to_flow.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let order = (0..len)
        .map(|_| {
            let u = rng.unit() * acc;
            rank_to_flow[cdf.partition_point(|&c| c < u).min(n as usize - 1)]
        })
        .collect();
    (frames, order)
}

/// Softirq time of all CPUs, in USER_HZ ticks (/proc/stat, 7th field of the `cpu` line).
fn softirq_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The kernel's run-time statistics of a program: (run_time_ns, run_cnt), from its fdinfo.
fn run_stats(fd: i32) -> (u64, u64) {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("run_time_ns:"), field("run_cnt:"))
}

fn attach(c: &mut Candidate, pair: &VethPair) -> XdpLinkId {
    let prog_ptr = c.xdp() as *mut Xdp as usize;
    let va = pair.va.clone();
    in_ns(&pair.ns_a, move || {
        // SAFETY: the caller waits for this thread (join) and does not touch the program meanwhile.
        let prog = unsafe { &mut *(prog_ptr as *mut Xdp) };
        prog.attach(&va, XdpMode::Driver)
            .expect("attach native XDP")
    })
    .join()
    .expect("attach")
}

/// One measured run: (program ns/packet, softirq ns/packet, packets/s).
fn mix_run(
    c: &mut Candidate,
    pair: &VethPair,
    frames: &Arc<Vec<Vec<u8>>>,
    order: &Arc<Vec<u32>>,
    secs: f64,
) -> (f64, f64, f64) {
    let link = attach(c, pair);
    let fd = c.fd();
    let (rt0, cnt0) = run_stats(fd);
    let soft0 = softirq_ticks();
    let t0 = std::time::Instant::now();
    let sent = blast(&pair.ns_b, &pair.vb, frames.clone(), order.clone(), secs);
    let elapsed = t0.elapsed().as_secs_f64();
    let soft = softirq_ticks() - soft0;
    let (rt1, cnt1) = run_stats(fd);
    c.xdp().detach(link).expect("detach");
    let runs = (cnt1 - cnt0).max(1);
    assert!(
        runs * 10 >= sent * 9,
        "{}: the program ran {runs} times for {sent} frames sent",
        c.label
    );
    (
        (rt1 - rt0) as f64 / runs as f64,
        soft as f64 * 1e7 / sent.max(1) as f64, // USER_HZ = 100: a tick is 10 ms
        sent as f64 / elapsed,
    )
}

/// Part 2: the flow mix through a veth pair, interleaved rounds.
fn flow_mix(cands: &mut [Candidate], secs: f64, rounds: usize) -> Vec<(f64, f64, f64)> {
    let (frames, order) = mix(1 << 20);
    let (frames, order) = (Arc::new(frames), Arc::new(order));
    let pair = VethPair::new("bn");
    // Statistics on while measuring only: they add two clock reads to every run of every program.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    // Warm-up: neighbour tables, page cache, and each program's maps in their steady state.
    for c in cands.iter_mut() {
        mix_run(c, &pair, &frames, &order, secs.min(0.5));
    }
    let mut runs = vec![Vec::new(); cands.len()];
    for _ in 0..rounds {
        for (i, c) in cands.iter_mut().enumerate() {
            runs[i].push(mix_run(c, &pair, &frames, &order, secs));
        }
    }
    drop(stats);
    assert!(pair.leftovers().is_empty(), "programs left attached");
    drop(pair);
    println!(
        "2. flow mix through veth: {} flows (80 % IPv4 / 20 % IPv6, TCP and UDP, 64–190 bytes), Zipf {ZIPF}, {secs} s runs, median of {rounds}:",
        flows()
    );
    println!(
        "   {:<42} {:>16} {:>16} {:>11}",
        "program", "program ns/pkt", "softirq ns/pkt", "packets/s"
    );
    let medians: Vec<(f64, f64, f64)> = runs
        .into_iter()
        .map(|r| {
            (
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
            )
        })
        .collect();
    for (c, m) in cands.iter().zip(&medians) {
        println!(
            "   {:<42} {:>16.1} {:>16.0} {:>9.0} k",
            c.label,
            m.0,
            m.1,
            m.2 / 1e3
        );
    }
    medians
}

fn tc_cost(oxeye: &mut Candidate, repeat: u32) -> f64 {
    let tc: &mut SchedClassifier = oxeye
        .ebpf
        .program_mut("oxeye_tc")
        .expect("program")
        .try_into()
        .expect("tc");
    let fd = tc.fd().expect("fd").as_fd().as_raw_fd();
    median(
        (0..5)
            .map(|_| test_run(fd, repeat).expect("test run") as f64)
            .collect(),
    )
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = quick();
    let (repeat, rounds, secs, harvest_n) = if quick {
        (1000, 1, 0.2, 10_000)
    } else {
        (1_000_000, 5, 2.0, 1_000_000)
    };
    let mut cands = candidates();
    let hit = test_runs(&mut cands, repeat, rounds);
    println!(
        "   oxeye TC (egress, same loading)             {:>6.0} ns/packet",
        tc_cost(&mut cands[1], repeat)
    );
    println!(
        "   oxeye: {:+.0} ns over XDP_PASS (target ≤ +15), {:.2}× the C reference",
        hit[1] - hit[0],
        hit[1] / hit[2]
    );
    let m = flow_mix(&mut cands, secs, rounds);
    println!(
        "   oxeye under the mix: {:.2}× the C reference's program time (target ≤ 0.6×), {:+.1} ns over XDP_PASS; softirq {:.2}× the reference's",
        m[1].0 / m[2].0,
        m[1].0 - m[0].0,
        m[1].1 / m[2].1
    );

    let counters: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(cands[1].ebpf.map("COUNTERS").expect("COUNTERS"))
            .expect("COUNTERS");
    let total = |i: u32| -> u64 { counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    println!(
        "   oxeye's counters over the mix: {} packets, {} malformed, {} flows created in the hash map, {} insert failures, {:.1} % cache misses",
        total(0),
        total(1),
        total(4),
        total(2),
        total(5) as f64 * 100.0 / total(0).max(1) as f64
    );

    let h = oxeye_receiver_ebpf::bench::harvest(harvest_n).expect("harvest benchmark");
    println!(
        "3. harvest of {} distinct flows: {:.0} ms ({:.0} ns/flow), RSS +{:.1} MiB (map filled from user space in {:.1} s)",
        h.flows,
        h.harvest.as_secs_f64() * 1e3,
        h.harvest.as_nanos() as f64 / h.flows.max(1) as f64,
        h.rss_growth_kib as f64 / 1024.0,
        h.fill.as_secs_f64()
    );
    assert_eq!(h.flows, harvest_n as usize, "every flow harvested");
}
