//! CPU profiling costs. Prints figures; never fails on speed.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench profiles
//!     OXEYE_BENCH_ONLY=exit cargo bench -p oxeye-tests --bench profiles   # counting | exit | overhead | tables
//!
//! 1. User-space counting: ring records of a realistic mix (5 000 stacks of 8–64 frames, Zipf
//!    popularity, 16 threads, a tenth in spans) parsed and counted as the receiver does.
//! 2. (root) How samples leave the kernel, side by side on the same workload at 999 Hz: each
//!    sample through the ring buffer and counted in user space (oxeye's design), against stacks
//!    hashed into a stack map and counted in a kernel hash map read once a window; kernel ns
//!    per sample from the kernel's BPF run-time statistics, user CPU of the reader per sample.
//! 3. (root) What `oxeye run` costs while both CPUs are busy: the release binary profiling at
//!    19 Hz and 99 Hz (symbolization, pprof files), interleaved with runs without it: the
//!    workload's throughput, oxeye's own CPU per second (steady state, /proc/<pid>/stat) and its
//!    peak RSS; user stacks from unwind tables (`auto`) and frame pointers.
//! 4. Unwind tables: build time and size for large objects, and (root) `oxeye run` at 19 and 99 Hz
//!    while 200 busy processes of five kinds share both CPUs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxeye_receiver_ebpf::bench::{aggregate, sample_exit, sample_records, SampleExit};
use oxeye_tests::bench::{cpu_seconds, median, quick};
use oxeye_tests::burn::Burn;

fn counting(quick: bool) {
    let n = if quick { 100_000 } else { 5_000_000 };
    let (records, order) = sample_records(n, 5000);
    let mut runs = Vec::new();
    let mut out = 0;
    for _ in 0..if quick { 1 } else { 5 } {
        let f = aggregate(&records, &order, 20);
        out = f.records;
        runs.push(f.cpu.as_nanos() as f64 / f.samples as f64);
    }
    let ns = median(runs);
    println!(
        "user-space counting: {n} samples of 5000 stacks over 20 windows -> {out} records: {ns:.0} ns/sample ({:.2} M samples/s on one core; target >= 1 M/s)",
        1e3 / ns
    );
}

fn sample_exits(quick: bool) {
    let secs = if quick { 1 } else { 5 };
    let rounds = if quick { 1 } else { 5 };
    let mut figures = [(); 3].map(|_| Vec::new());
    let designs = [
        SampleExit::RingBuffer,
        SampleExit::InKernelCounts,
        SampleExit::RingBufferTables,
    ];
    for _ in 0..rounds {
        for (i, design) in designs.into_iter().enumerate() {
            // Both CPUs busy, stacks 4 to 28 frames deep.
            let mut burn = Burn::start(&["-", "2", "2000", "24"]);
            burn.go();
            let f = sample_exit(design, 999, Duration::from_secs(secs), burn.pid)
                .expect("profile program");
            burn.stop();
            figures[i].push(f);
        }
    }
    println!("how samples leave the kernel (999 Hz on 2 busy CPUs, {secs} s per run, median of {rounds} interleaved):");
    println!(
        "| design | kernel ns/sample | user ns/sample | total | samples | lost | records/window |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, name) in [
        "ring buffer, counted in user space (oxeye, `unwind: frame_pointers`)",
        "stack map + in-kernel counts, read once a window",
        "ring buffer, user stacks walked from unwind tables (oxeye, `unwind: tables`)",
    ]
    .iter()
    .enumerate()
    {
        let f = &figures[i];
        let k = median(f.iter().map(|x| x.kernel_ns_per_sample).collect());
        let u = median(f.iter().map(|x| x.user_ns_per_sample).collect());
        let samples = median(f.iter().map(|x| x.samples as f64).collect());
        let lost = median(f.iter().map(|x| x.lost as f64).collect());
        let records = median(f.iter().map(|x| x.records as f64).collect());
        println!(
            "| {name} | {k:.0} | {u:.0} | {:.0} | {samples:.0} | {lost:.0} | {records:.0} |",
            k + u
        );
    }
}

/// How one overhead run profiles: frequency and whether symbolization reads DWARF.
#[derive(Clone, Copy)]
struct Setting {
    frequency: u64,
    debug_info: bool,
    unwind: &'static str,
}

/// One run: the workload alone (`frequency` None) or with `oxeye run` profiling it.
struct Run {
    rounds_per_s: f64,
    /// oxeye's CPU per second over the whole run (start-up excluded), and after its first
    /// window (the symbols of the host's binaries cached).
    oxeye_cpu_per_s: f64,
    oxeye_steady_cpu_per_s: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// Starts `oxeye run -c cfg` and waits until the profiler is attached; its stderr's reader.
fn start_profiling(
    bin: &std::path::Path,
    cfg: &std::path::Path,
) -> (oxeye_tests::KillOnDrop, std::thread::JoinHandle<String>) {
    let mut child = oxeye_tests::KillOnDrop(
        Command::new(bin)
            .args(["run", "-c"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("oxeye"),
    );
    let (rx, reader) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("profiler attached");
        assert!(!line.contains("ERROR"), "{line}");
        if line.contains("perf events attached") {
            break;
        }
    }
    (child, reader)
}

fn overhead_run(bin: &std::path::Path, setting: Option<Setting>, secs: f64) -> Run {
    let dir = std::env::temp_dir().join(format!("oxeye-prof-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ox = setting.map(|s| {
        let yaml = format!(
            "receivers:\n  ebpf:\n    profiles: {{frequency: {}, window: 10s, unwind: {}}}\nprocessors:\n  symbolization: {{debug_info: {}}}\nexporters:\n  pprof: {{path: {}/cpu}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    profiles: {{receivers: [ebpf], processors: [symbolization], exporters: [pprof]}}\n",
            s.frequency,
            s.unwind,
            s.debug_info,
            dir.display()
        );
        start_profiling(bin, &oxeye_tests::temp_config("prof-bench", &yaml))
    });
    let mut burn = Burn::start(&["-", "2", "2000", "24"]);
    burn.go();
    // Steady state: oxeye's start-up (loading BTF and the programs) is not counted.
    std::thread::sleep(Duration::from_millis(500));
    let pid = ox.as_ref().map(|(c, _)| c.0.id());
    let cpu0 = pid.map_or(0.0, cpu_seconds);
    let t0 = Instant::now();
    // The first 10 s window closes (and its stacks are symbolized) at about 10.3 s.
    let first = (secs * 0.4).min(11.0);
    std::thread::sleep(Duration::from_secs_f64(first));
    let cpu_first = pid.map_or(0.0, cpu_seconds);
    let t_first = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(secs - first));
    let cpu1 = pid.map_or(0.0, cpu_seconds);
    let wall = t0.elapsed().as_secs_f64();
    let (rss, peak) = pid.map_or((0.0, 0.0), |p| (rss_mib(p, "VmRSS:"), rss_mib(p, "VmHWM:")));
    let (_, rounds) = burn.stop();
    if let Some((child, _)) = ox {
        oxeye_tests::signal(&child.0, libc::SIGINT);
        drop(child);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        // The work counted from `go`: the 0.5 s settling included, the same for every run.
        rounds_per_s: rounds as f64 / (wall + 0.5),
        oxeye_cpu_per_s: (cpu1 - cpu0) / wall,
        oxeye_steady_cpu_per_s: (cpu1 - cpu_first) / (wall - t_first),
        rss_mib: rss,
        peak_rss_mib: peak,
    }
}

fn overhead(quick: bool) {
    let bin = oxeye_tests::bench::release_oxeye(quick);
    let secs = if quick { 1.0 } else { 30.0 };
    let rounds = if quick { 1 } else { 3 };
    let at = |frequency, debug_info, unwind| {
        Some(Setting {
            frequency,
            debug_info,
            unwind,
        })
    };
    let settings = [
        None,
        at(19, true, "auto"),
        at(19, false, "auto"),
        at(19, false, "frame_pointers"),
        at(99, false, "auto"),
        at(99, false, "frame_pointers"),
    ];
    let mut runs: Vec<Vec<Run>> = settings.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, f) in settings.iter().enumerate() {
            runs[i].push(overhead_run(&bin, *f, secs));
        }
    }
    let base = median(runs[0].iter().map(|r| r.rounds_per_s).collect());
    println!(
        "`oxeye run` profiling while a workload keeps both CPUs busy ({}, {secs} s per run, median of {rounds} interleaved):",
        bin.display()
    );
    println!("| profiling | workload rounds/s | slowdown | oxeye CPU, whole run | after the first window | RSS at the end | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, f) in settings.iter().enumerate() {
        let m = |g: fn(&Run) -> f64| median(runs[i].iter().map(g).collect());
        let r = m(|r| r.rounds_per_s);
        match f {
            None => println!("| off | {r:.0} | | | | | |"),
            Some(s) => println!(
                "| {} Hz, `unwind: {}`, symbolization {} | {r:.0} | {:.2} % | {:.2} % of a core | {:.2} % | {:.1} MiB | {:.1} MiB |",
                s.frequency,
                s.unwind,
                if s.debug_info { "with DWARF (default)" } else { "`debug_info: false`" },
                100.0 * (1.0 - r / base),
                100.0 * m(|r| r.oxeye_cpu_per_s),
                100.0 * m(|r| r.oxeye_steady_cpu_per_s),
                m(|r| r.rss_mib),
                m(|r| r.peak_rss_mib),
            ),
        }
    }
}

/// Unwind tables: how long large objects take to build and what they take, and `oxeye run`
/// (the defaults, 99 Hz, whole host) while 200 busy processes of five kinds share both CPUs.
fn tables(quick: bool) {
    use std::os::unix::fs::MetadataExt;
    let mut objects = vec![
        "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0".to_string(),
        oxeye_tests::bench::release_oxeye(quick)
            .display()
            .to_string(),
    ];
    // The largest shared object of the Rust toolchain (librustc_driver, about 150 MB).
    let home = std::env::var("HOME").unwrap_or_default();
    if let Ok(dirs) = std::fs::read_dir(format!("{home}/.rustup/toolchains")) {
        let mut drivers: Vec<(u64, String)> = dirs
            .filter_map(|d| std::fs::read_dir(d.ok()?.path().join("lib")).ok())
            .flatten()
            .filter_map(|f| {
                let p = f.ok()?.path();
                let name = p.file_name()?.to_string_lossy().to_string();
                (name.starts_with("librustc_driver") && name.ends_with(".so")).then(|| {
                    (
                        p.metadata().map_or(0, |m| m.size()),
                        p.display().to_string(),
                    )
                })
            })
            .collect();
        drivers.sort();
        objects.extend(drivers.pop().map(|d| d.1));
    }
    println!("unwind tables built from .eh_frame (one core, median of 3):");
    println!("| object | size | FDEs | deltas | distinct rules | build time | kernel memory | user memory while building |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for path in objects {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        let mut times = Vec::new();
        let mut table = None;
        for _ in 0..if quick { 1 } else { 3 } {
            let t0 = Instant::now();
            table = oxeye_unwind::Table::from_elf(&data).ok();
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let Some(t) = table else { continue };
        let n = t.deltas().len();
        println!(
            "| `{}` | {:.1} MB | {} | {n} | {} | {:.1} ms | {:.0} KiB | {:.1} MiB |",
            path.rsplit('/').next().unwrap_or(&path),
            data.len() as f64 / 1e6,
            t.cfi.fdes,
            t.distinct_rules(),
            median(times),
            n as f64 * 8.0 / 1024.0,
            std::mem::size_of_val(t.deltas()) as f64 / (1 << 20) as f64,
        );
    }
    for (frequency, unwind) in [(19, "auto"), (99, "auto"), (99, "frame_pointers")] {
        many_processes(quick, frequency, unwind);
    }
}

fn many_processes(quick: bool, frequency: u32, unwind: &str) {
    let bin = oxeye_tests::bench::release_oxeye(quick);
    let dir = std::env::temp_dir().join(format!("oxeye-unwind-bench-{}", std::process::id()));
    let (tree_c, tree_rust) = oxeye_tests::burn::build_trees(&dir);
    let input = dir.join("input.txt");
    std::fs::write(&input, "oxeye ".repeat(4 << 20)).expect("input");
    let secs = if quick { 3 } else { 20 };
    let n = if quick { 20 } else { 200 };
    let cfg = oxeye_tests::temp_config(
        "unwind-bench",
        &format!("receivers:\n  ebpf:\n    profiles: {{frequency: {frequency}, unwind: {unwind}}}\nprocessors:\n  symbolization: {{debug_info: false}}\nexporters:\n  pprof: {{path: {}/cpu}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    profiles: {{receivers: [ebpf], processors: [symbolization], exporters: [pprof]}}\n", dir.display()),
    );
    let (mut ox, reader) = start_profiling(&bin, &cfg);
    let secs_arg = (secs + 2).to_string();
    let mut children: Vec<oxeye_tests::KillOnDrop> = (0..n)
        .map(|i| {
            let mut c = match i % 5 {
                0 => Command::new(&tree_c),
                1 => Command::new(&tree_rust),
                2 => {
                    let mut c = Command::new("python3");
                    c.args(["-c", "while True: pass"]);
                    c
                }
                3 => {
                    let mut c = Command::new("xz");
                    c.args(["-9", "-T1", "-c"]).arg(&input);
                    c
                }
                _ => {
                    let mut c = Command::new("bash");
                    c.args(["-c", "while :; do :; done"]);
                    c
                }
            };
            if i % 5 < 2 {
                c.arg(&secs_arg);
            }
            oxeye_tests::KillOnDrop(c.stdout(Stdio::null()).spawn().expect("workload"))
        })
        .collect();
    let pid = ox.0.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let peak = rss_mib(pid, "VmHWM:");
    children.clear();
    oxeye_tests::signal(&ox.0, libc::SIGINT);
    let _ = ox.0.wait();
    let stderr = reader.join().unwrap_or_default();
    let summary = stderr
        .lines()
        .find(|l| l.contains("user stacks walked with unwind tables"))
        .and_then(|l| l.split_once("tables ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| "(no table summary: frame pointers only?)".into());
    println!(
        "`oxeye run` ({frequency} Hz, whole host, `unwind: {unwind}`, symbolization `debug_info: false`, pprof) for {secs} s while {n} busy processes (C and Rust without frame pointers, python3, xz, bash) share both CPUs: oxeye {:.2} % of a core, peak RSS {peak:.1} MiB; {summary}",
        100.0 * cpu
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let quick = quick();
    let only = std::env::var("OXEYE_BENCH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("counting") {
        counting(quick);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("(not root: the kernel rows are skipped)");
        return;
    }
    if run("exit") {
        sample_exits(quick);
    }
    if run("overhead") {
        overhead(quick);
    }
    if run("tables") {
        tables(quick);
    }
}
