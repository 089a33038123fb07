//! Flow programs' cost (root): UDP packets through a veth pair between two namespaces for a
//! fixed time, with no program, with a minimal XDP_PASS program, and with oxeye's programs
//! (XDP on the receiving end, TC on the sending end, so every packet meets both); then the
//! cost of harvesting 1 M distinct flows. Prints figures; never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench flows

use oxeye_tests::bench::{median, quick};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aya::programs::{tc::TcAttachType, SchedClassifier, Xdp, XdpMode};
use aya::Ebpf;
use oxeye_tests::netns::{in_ns, VethPair};

/// Busy and total jiffies of all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Sends 60-byte frames from b to a for `secs`; returns (packets/s, CPU ns per packet).
fn blast(pair: &VethPair, secs: f64) -> (f64, f64) {
    let dst: std::net::SocketAddr = format!("{}:9", pair.v4.0).parse().expect("addr");
    let src: std::net::SocketAddr = format!("{}:0", pair.v4.1).parse().expect("addr");
    let hz = 100.0; // USER_HZ
    let (busy0, _) = cpu_jiffies();
    let t0 = Instant::now();
    let sent = in_ns(&pair.ns_b, move || {
        let s = std::net::UdpSocket::bind(src).expect("bind");
        s.connect(dst).expect("connect");
        let payload = [0u8; 18];
        const BATCH: usize = 64;
        let mut iov = [libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        }; 1];
        // SAFETY: mmsghdr is plain data; each points at the same iovec, which outlives the calls.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = iov.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 1;
        }
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            // SAFETY: sendmmsg over BATCH initialised headers on a socket we own.
            let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
        }
        sent
    })
    .join()
    .expect("sender");
    let elapsed = t0.elapsed().as_secs_f64();
    let (busy1, _) = cpu_jiffies();
    let cpu_ns = (busy1 - busy0) as f64 / hz * 1e9;
    (sent as f64 / elapsed, cpu_ns / sent as f64)
}

fn load() -> Ebpf {
    Ebpf::load(oxeye_receiver_ebpf::bench::program_object()).expect("load programs")
}

fn attach_xdp(ebpf: &mut Ebpf, pair: &VethPair, program: &'static str) {
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .expect("program")
        .try_into()
        .expect("xdp");
    prog.load().expect("verifier");
    let va = pair.va.clone();
    let ns = pair.ns_a.clone();
    // Attach from inside the namespace; the link lives as long as `ebpf`.
    let prog_ptr = prog as *mut Xdp as usize;
    in_ns(&ns, move || {
        // SAFETY: the main thread waits for this thread (join) and does not touch `ebpf` meanwhile.
        let prog = unsafe { &mut *(prog_ptr as *mut Xdp) };
        prog.attach(&va, XdpMode::Driver)
            .expect("attach native XDP");
    })
    .join()
    .expect("attach");
}

fn attach_tc(ebpf: &mut Ebpf, pair: &VethPair) {
    let prog: &mut SchedClassifier = ebpf
        .program_mut("oxeye_tc")
        .expect("program")
        .try_into()
        .expect("tc");
    prog.load().expect("verifier");
    let vb = pair.vb.clone();
    let prog_ptr = prog as *mut SchedClassifier as usize;
    in_ns(&pair.ns_b, move || {
        // SAFETY: as in attach_xdp.
        let prog = unsafe { &mut *(prog_ptr as *mut SchedClassifier) };
        prog.attach(&vb, TcAttachType::Egress).expect("attach TC");
    })
    .join()
    .expect("attach");
}

fn program_cost(repeat: u32) {
    use std::os::fd::AsFd;
    let mut ebpf = load();
    let mut fds = Vec::new();
    for name in ["oxeye_xdp_pass", "oxeye_xdp"] {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp");
        p.load().expect("verifier");
        fds.push((name, p.fd().expect("fd").as_fd().as_raw_fd()));
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut("oxeye_tc")
        .expect("program")
        .try_into()
        .expect("tc");
    tc.load().expect("verifier");
    fds.push(("oxeye_tc", tc.fd().expect("fd").as_fd().as_raw_fd()));
    println!("program cost (BPF_PROG_TEST_RUN, {repeat} runs on one 60-byte frame, median of 5):");
    let mut costs = Vec::new();
    for (name, fd) in fds {
        let ns = median(
            (0..5)
                .map(|_| oxeye_receiver_ebpf::bench::test_run(fd, repeat).expect("test run") as f64)
                .collect(),
        );
        println!("  {name:<16} {ns:>6.0} ns/packet");
        costs.push(ns);
    }
    println!(
        "  oxeye_xdp adds {:.0} ns/packet over XDP_PASS",
        costs[1] - costs[0]
    );
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = quick();
    let (secs, runs, harvest_n) = if quick {
        (0.2, 1, 10_000)
    } else {
        (2.0, 5, 1_000_000)
    };
    program_cost(if quick { 1000 } else { 1_000_000 });
    let pair = VethPair::new("bn");
    // Warm up neighbour resolution and caches.
    blast(&pair, 0.2);
    println!("oxeye flow benchmark: 60-byte UDP frames through a veth pair, {secs} s per run, median of {runs}");
    println!(
        "{:<34} {:>12} {:>16}",
        "programs", "packets/s", "CPU ns/packet"
    );
    let mut results = Vec::new();
    for mode in ["none", "xdp_pass", "oxeye"] {
        let mut ebpf = load();
        match mode {
            "xdp_pass" => attach_xdp(&mut ebpf, &pair, "oxeye_xdp_pass"),
            "oxeye" => {
                attach_xdp(&mut ebpf, &pair, "oxeye_xdp");
                attach_tc(&mut ebpf, &pair);
            }
            _ => {}
        }
        let runs: Vec<(f64, f64)> = (0..runs).map(|_| blast(&pair, secs)).collect();
        let pps = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        let label = match mode {
            "none" => "no program",
            "xdp_pass" => "minimal XDP_PASS (native)",
            _ => "oxeye XDP (native) + TC egress",
        };
        println!("{label:<34} {:>10.0} k {cpu:>16.1}", pps / 1e3);
        results.push((pps, cpu));
        drop(ebpf);
    }
    let added = |a: usize, b: usize| results[b].1 - results[a].1;
    println!(
        "CPU ns/packet added by oxeye: {:+.1} vs no program, {:+.1} vs XDP_PASS",
        added(0, 2),
        added(1, 2)
    );
    assert!(pair.leftovers().is_empty(), "programs left attached");
    drop(pair);

    let h = oxeye_receiver_ebpf::bench::harvest(harvest_n).expect("harvest benchmark");
    println!(
        "harvest of {} distinct flows: {:.0} ms ({:.0} ns/flow), RSS +{:.1} MiB (map filled from user space in {:.1} s)",
        h.flows,
        h.harvest.as_secs_f64() * 1e3,
        h.harvest.as_nanos() as f64 / h.flows.max(1) as f64,
        h.rss_growth_kib as f64 / 1024.0,
        h.fill.as_secs_f64()
    );
    assert_eq!(h.flows, harvest_n as usize, "every flow harvested");
}
