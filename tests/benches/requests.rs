//! Request-span cost (root), as users run it: nginx on loopback under a `wrk` load, untraced
//! and traced by `oxeye run` (the release binary, `requests:` on nginx's port, spans to the
//! `nop` exporter), interleaved rounds, medians: requests/s at saturation, busy CPU of the
//! whole host per request (/proc/stat) and what tracing adds to it, oxeye's own CPU per
//! request, spans per request; then one traced round with the kernel's BPF run-time
//! statistics on: time in the request programs per request. Second part: what the programs
//! cost a process that is not traced — a loop of one-byte writes to /dev/null, untraced, with
//! an empty `syscalls:` tracepoint pair on write (the floor of the hook), and with oxeye's
//! request programs attached. Third part: oxeye's resident memory with 10 000 connections to
//! nginx open (idle, or each with half a request), tracked on nginx's side or on both. Prints
//! figures only.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench requests

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxeye_tests::bench::{median, quick, release_oxeye};
use oxeye_tests::peers::{nginx, nginx_many, Flood};
use oxeye_tests::{free_port, rss, KillOnDrop};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_oxeye-workload");

/// Busy CPU time of the whole host so far (all CPUs: user, nice, system, irq, softirq, steal).
fn host_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().next().expect("cpu line");
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0);
    Duration::from_nanos(busy * 1_000_000_000 / clk_tck())
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// CPU time (user + system) of process `pid` so far.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_nanos(ticks * 1_000_000_000 / clk_tck())
}

/// `wrk` for `secs` on /ok with `conns` connections: (requests done, requests/s).
fn wrk(port: u16, secs: u64, conns: u32) -> (u64, f64) {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
        .arg(format!("http://127.0.0.1:{port}/ok"))
        .output()
        .expect("wrk (tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let done = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count from wrk: {text}"));
    let rate = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rate from wrk: {text}"));
    (done, rate)
}

/// `oxeye run` tracing requests to `port`, spans to `nop`; returns once attached.
fn oxeye(port: u16) -> (KillOnDrop, std::thread::JoinHandle<String>) {
    oxeye_with(&format!("{{ports: [{port}], comm: nginx}}"))
}

/// `oxeye run` with these `requests:` settings, spans to `nop`; returns once attached.
fn oxeye_with(requests: &str) -> (KillOnDrop, std::thread::JoinHandle<String>) {
    let cfg = oxeye_tests::temp_config(
        "bench-requests",
        &format!(
            "receivers:\n  ebpf:\n    requests: {requests}\nexporters:\n  nop: {{}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [ebpf], exporters: [nop]}}\n"
        ),
    );
    let mut ox = Command::new(release_oxeye(quick()))
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oxeye");
    let (rx, stderr) = oxeye_tests::follow(ox.stderr.take().expect("stderr"));
    while !rx
        .recv_timeout(Duration::from_secs(30))
        .expect("oxeye did not attach")
        .contains("syscall tracepoints attached")
    {}
    (KillOnDrop(ox), stderr)
}

/// Stops oxeye; the spans its final summary counts in.
fn stop(mut ox: KillOnDrop, stderr: std::thread::JoinHandle<String>) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    oxeye_tests::signal(&ox.0, libc::SIGINT);
    ox.0.wait().expect("oxeye");
    let stderr = stderr.join().expect("stderr");
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains("records in,"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    last.split("records in")
        .next()
        .and_then(|head| head.rsplit(": ").next())
        .and_then(|n| n.trim().replace(' ', "").parse().ok())
        .unwrap_or_else(|| panic!("no count in: {last}"))
}

/// One round of load: (requests, req/s, host busy CPU per request, oxeye CPU per request, spans).
struct Round {
    requests: u64,
    rate: f64,
    busy_ns: f64,
    oxeye_ns: f64,
    spans: u64,
}

fn round(port: u16, secs: u64, conns: u32, traced: bool) -> Round {
    let ox = traced.then(|| oxeye(port));
    let pid = ox.as_ref().map(|(o, _)| o.0.id());
    let (busy0, own0) = (host_busy(), pid.map(process_cpu).unwrap_or_default());
    let (requests, rate) = wrk(port, secs, conns);
    let (busy1, own1) = (host_busy(), pid.map(process_cpu).unwrap_or_default());
    let spans = ox.map_or(0, |(o, e)| stop(o, e));
    let per = |d: Duration| d.as_nanos() as f64 / requests.max(1) as f64;
    Round {
        requests,
        rate,
        busy_ns: per(busy1 - busy0),
        oxeye_ns: per(own1 - own0),
        spans,
    }
}

/// Nanoseconds the request programs ran, per request, over one traced round with the kernel's
/// run-time statistics on (they add clock reads to every run, so the timed rounds go without).
fn in_programs(port: u16, secs: u64, conns: u32) -> (f64, Vec<(String, f64)>) {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF stats");
    let before = program_stats();
    let (ox, stderr) = oxeye(port);
    let (requests, _) = wrk(port, secs, conns);
    let after = program_stats();
    stop(ox, stderr);
    let mut total = 0.0;
    let mut parts = Vec::new();
    for (name, ns) in after {
        let was = before
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v);
        let per = (ns - was) as f64 / requests.max(1) as f64;
        total += per;
        if per >= 1.0 {
            parts.push((name, per));
        }
    }
    (total, parts)
}

/// Run time (ns) of every loaded request program, by name, summed over attachments.
fn program_stats() -> Vec<(String, u64)> {
    let mut by_name: Vec<(String, u64)> = Vec::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = p.name_as_str() else {
            continue;
        };
        if !name.starts_with("oxeye_l7_") {
            continue;
        }
        let ns = p.run_time().as_nanos() as u64;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += ns,
            None => by_name.push((name.to_string(), ns)),
        }
    }
    by_name
}

/// ns per one-byte write to /dev/null in the workload process.
fn writes(n: u64) -> f64 {
    let mut child: Child = Command::new(WORKLOAD)
        .args(["write", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("pid");
    writeln!(stdin, "go").expect("go");
    line.clear();
    out.read_line(&mut line).expect("done");
    drop(stdin);
    child.wait().expect("workload");
    let ns: f64 = line.trim().trim_start_matches("done ").parse().expect("ns");
    ns / n as f64
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = quick();
    let (secs, rounds, conns) = if quick { (1, 1, 4) } else { (5, 5, 8) };
    let dir = std::env::temp_dir().join(format!("oxeye-bench-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let _nginx = nginx(&dir, port);
    // Warm nginx and the page cache.
    wrk(port, 1, conns);

    let (mut plain, mut traced) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(round(port, secs, conns, false));
        traced.push(round(port, secs, conns, true));
    }
    let med = |rs: &[Round], f: fn(&Round) -> f64| median(rs.iter().map(f).collect());
    let (p_rate, t_rate) = (med(&plain, |r| r.rate), med(&traced, |r| r.rate));
    let (p_busy, t_busy) = (med(&plain, |r| r.busy_ns), med(&traced, |r| r.busy_ns));
    let own = med(&traced, |r| r.oxeye_ns);
    let spans_per_request = med(&traced, |r| r.spans as f64 / r.requests.max(1) as f64);
    println!(
        "nginx /ok under wrk (1 thread, {conns} connections, {secs} s), median of {rounds} interleaved rounds:"
    );
    println!(
        "  untraced:                          {:>9.0} req/s   host busy CPU {:>6.2} µs/request",
        p_rate,
        p_busy / 1e3
    );
    println!(
        "  traced (`oxeye run`, spans → nop): {:>9.0} req/s   host busy CPU {:>6.2} µs/request   oxeye's own {:.2} µs/request   spans/request {:.3}",
        t_rate,
        t_busy / 1e3,
        own / 1e3,
        spans_per_request
    );
    println!(
        "  tracing adds {:.2} µs of CPU per request (kernel + user space); throughput at saturation {:.1} % of untraced",
        (t_busy - p_busy) / 1e3,
        100.0 * t_rate / p_rate.max(1.0)
    );
    let (kernel, parts) = in_programs(port, secs.min(3), conns);
    let parts: Vec<String> = parts
        .iter()
        .map(|(n, ns)| format!("{} {ns:.0}", n.trim_start_matches("oxeye_l7_")))
        .collect();
    println!(
        "  in the request programs (BPF stats on): {kernel:.0} ns/request ({})",
        parts.join(", ")
    );

    // What a process no request source tracks pays per write.
    let n = if quick { 100_000 } else { 3_000_000 };
    let (mut untraced, mut empty, mut empty_exit, mut attached) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    use oxeye_receiver_ebpf::bench::{empty_pair, EmptyPair};
    for _ in 0..rounds {
        untraced.push(writes(n));
        {
            let _pair = empty_pair(EmptyPair::WriteTracepoint).expect("empty tracepoint pair");
            empty.push(writes(n));
        }
        {
            let _exit = empty_pair(EmptyPair::WriteExitTracepoint).expect("empty exit tracepoint");
            empty_exit.push(writes(n));
        }
        let (ox, stderr) = oxeye(free_port());
        attached.push(writes(n));
        stop(ox, stderr);
    }
    let (u, e, x, a) = (
        median(untraced),
        median(empty),
        median(empty_exit),
        median(attached),
    );
    println!("one-byte writes to /dev/null by a process that is not traced, median of {rounds}:");
    println!("  untraced:                                   {u:>6.0} ns/write");
    println!(
        "  empty syscalls: tracepoint pair on write:   {e:>6.0} ns/write  (+{:.0} ns: the hook itself)",
        e - u
    );
    println!(
        "  empty syscalls: exit tracepoint on write:   {x:>6.0} ns/write  (+{:.0} ns: what oxeye hooks)",
        x - u
    );
    println!(
        "  `oxeye run` with requests: attached:        {a:>6.0} ns/write  (+{:.0} ns over the empty exit, {:+.0} over the empty pair; {:.2}x untraced)",
        a - x,
        a - e,
        a / u
    );
    memory(&dir, if quick { 1000 } else { 10_000 });
    let _ = std::fs::remove_dir_all(&dir);
}

/// oxeye's RSS at start and at its peak while `n` connections are open to a fresh nginx.
fn memory(dir: &std::path::Path, n: usize) {
    let port = free_port();
    let _nginx = nginx_many(dir, port, n as u32 + 100);
    println!("`oxeye run` resident memory, {n} connections open to nginx (release build):");
    for (label, requests, half) in [
        (
            "idle, nginx's side tracked",
            format!("{{ports: [{port}], comm: nginx}}"),
            false,
        ),
        // The 940-byte heads captured whole (the default 512 bytes gives them up at once).
        (
            "half a request each, nginx's side tracked",
            format!("{{ports: [{port}], comm: nginx, capture_bytes: 1024}}"),
            true,
        ),
        (
            "half a request each, both sides tracked",
            format!("{{ports: [{port}], capture_bytes: 1024}}"),
            true,
        ),
    ] {
        let (ox, stderr) = oxeye_with(&requests);
        let pid = ox.0.id();
        // Past the start's transient peak (the kernel's BTF read and parsed).
        std::thread::sleep(Duration::from_secs(2));
        let start = rss(pid);
        let flood = Flood::start(port, n, half);
        let mut peak = 0;
        for _ in 0..15 {
            peak = peak.max(rss(pid));
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(flood);
        stop(ox, stderr);
        println!(
            "  {label:<42} {:>6.1} MB at start, {:>6.1} MB peak",
            start as f64 / 1e6,
            peak as f64 / 1e6
        );
    }
}
