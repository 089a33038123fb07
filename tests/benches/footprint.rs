//! Footprint (root): the release `oxeye run` with the embedded default pipeline (flows on the
//! default-route interface, text to stdout), first as users run it — on this host's own
//! default-route interface: RSS after 10 s idle, anonymous and file-backed — then inside a
//! test-made namespace whose default route is a veth: RSS after 10 s idle, the peak RSS while
//! the peer namespace sends UDP to 16 384 ports for 8 s. And the binary's size with line tables
//! and stripped. Prints figures; never fails on size.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench footprint

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxeye_tests::bench::quick;
use oxeye_tests::netns::{in_ns, VethPair};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `VmRSS`, `RssAnon` and `RssFile` of a process, KiB.
fn rss_split(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = quick();
    let bin = oxeye_tests::bench::release_oxeye(quick);
    let idle = if quick { 2 } else { 10 };
    // As users run it: the host's own default-route interface.
    let host = {
        let mut ox = oxeye_tests::KillOnDrop(
            Command::new(&bin)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("oxeye run"),
        );
        std::thread::sleep(Duration::from_secs(idle));
        let rss = rss_split(ox.0.id());
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(ox.0.id() as i32, libc::SIGINT) };
        let _ = ox.0.wait();
        rss
    };
    let pair = VethPair::new("fp");
    let route = Command::new("ip")
        .args([
            "-n", &pair.ns_a, "route", "add", "default", "via", &pair.v4.1,
        ])
        .status()
        .expect("ip route");
    assert!(route.success(), "default route in {}", pair.ns_a);
    // `ip netns exec` execs oxeye: the child's pid is oxeye's.
    let mut ox = oxeye_tests::KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &pair.ns_a])
            .arg(&bin)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("oxeye run"),
    );
    let pid = ox.0.id();
    std::thread::sleep(Duration::from_secs(idle));
    let idle_rss = rss_kib(pid);

    let load = if quick { 1.0 } else { 8.0 };
    let dst = pair.v4.0.clone();
    let sender = in_ns(&pair.ns_b, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let end = Instant::now() + Duration::from_secs_f64(load);
        let mut sent = 0u64;
        // Bounded in time and count; 16 384 distinct flows.
        while Instant::now() < end && sent < 20_000_000 {
            for port in 20_000..36_384u16 {
                let _ = s.send_to(&[0u8; 64], (dst.as_str(), port));
                sent += 1;
            }
        }
        sent
    });
    let mut peak = 0;
    while !sender.is_finished() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = sender.join().expect("sender");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = ox.0.wait();

    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let stripped = std::env::temp_dir().join(format!("oxeye-stripped-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .is_ok_and(|s| s.success());
    let stripped_size = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&stripped);
    println!("oxeye footprint, default pipeline ({}):", bin.display());
    println!(
        "  oxeye run on this host's default-route interface: RSS after {idle} s idle {:>6.1} MiB ({:.1} anonymous, {:.1} file-backed)",
        host.0 as f64 / 1024.0,
        host.1 as f64 / 1024.0,
        host.2 as f64 / 1024.0
    );
    println!(
        "  in a test namespace: RSS after {idle} s idle {:>6.1} MiB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  RSS peak, {sent} UDP packets to 16 384 ports in {load} s  {:>6.1} MiB",
        peak as f64 / 1024.0
    );
    println!(
        "  binary {:.1} MB with line tables, {} stripped",
        size as f64 / 1e6,
        if ok {
            format!("{:.1} MB", stripped_size as f64 / 1e6)
        } else {
            "(strip failed)".into()
        }
    );
}
