//! Pipeline throughput: `synthetic → 3 nop processors → nop exporter` on ONE tokio thread.
//!
//! Prints records/s and CPU ns per record (getrusage) for spans and flows, the median of
//! several runs, next to a baseline without processors (generator + engine only).
//! A benchmark, not a test: it never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench pipeline            # OXEYE_BENCH_RECORDS=2000000 to change N
//!     OXEYE_BENCH_ONLY=filter cargo bench -p oxeye-tests --bench pipeline   # only matching processor rows

use oxeye_tests::bench::{median, quick, records_and_rounds};

// The allocator the `oxeye` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn max_rss_mib() -> f64 {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn config(signal: &str, n: u64, processors: usize) -> String {
    let procs: Vec<String> = (0..processors).map(|i| format!("nop/{i}")).collect();
    config_with(signal, n, &procs, "", "")
}

/// `procs` are processor ids; `decl` declares any that are not `nop/*`; `gen_opts` are extra
/// generator options (`attributes: true`).
fn config_with(signal: &str, n: u64, procs: &[String], extra_decl: &str, gen_opts: &str) -> String {
    let gen = if signal == "traces" { "spans" } else { "flows" };
    let gen_opts = if gen_opts.is_empty() {
        String::new()
    } else {
        format!(", {gen_opts}")
    };
    let decl: String = procs
        .iter()
        .filter(|p| p.starts_with("nop/"))
        .map(|p| format!("  {p}:\n"))
        .collect::<String>()
        + extra_decl;
    format!(
        "receivers:\n  synthetic: {{seed: 7, batch_size: 1024, {gen}: {{count: {n}{gen_opts}}}}}\nprocessors:\n{decl}exporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    {signal}: {{receivers: [synthetic], processors: [{}], exporters: [nop]}}\n",
        procs.join(", ")
    )
}

/// One run: (records/s wall, CPU ns per record).
fn run_once(yaml: &str, n: u64) -> (f64, f64) {
    let (rate, ns, out) = run_counted(yaml, n);
    assert_eq!(out, n, "every record must arrive");
    (rate, ns)
}

/// One run: (records/s wall, CPU ns per record, records exported).
fn run_counted(yaml: &str, n: u64) -> (f64, f64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let report = rt.block_on(async {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        oxeye::run_config("bench.yaml", yaml, rx)
            .await
            .expect("valid config")
    });
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let out = report.registry.records_out();
    (
        n as f64 / wall.as_secs_f64(),
        cpu.as_nanos() as f64 / n as f64,
        out,
    )
}

fn main() {
    let quick = quick();
    let (n, runs) = records_and_rounds(5_000_000);
    println!(
        "oxeye pipeline benchmark: {n} records per run, median of {runs} runs, 1 tokio thread"
    );
    println!(
        "{:<8} {:<28} {:>14} {:>16}",
        "signal", "pipeline", "records/s", "CPU ns/record"
    );
    // OXEYE_BENCH_ONLY=filter: only the processor rows whose label contains it.
    let only = std::env::var("OXEYE_BENCH_ONLY").ok();
    for signal in ["traces", "flows"].into_iter().filter(|_| only.is_none()) {
        for (label, procs) in [
            ("synthetic -> nop exporter", 0),
            ("synthetic -> 3 nop -> nop", 3),
        ] {
            let yaml = config(signal, n, procs);
            let results: Vec<(f64, f64)> = (0..runs).map(|_| run_once(&yaml, n)).collect();
            let rate = median(results.iter().map(|r| r.0).collect());
            let ns = median(results.iter().map(|r| r.1).collect());
            println!("{signal:<8} {label:<28} {:>12.2} M {ns:>16.1}", rate / 1e6);
        }
    }
    // Processors alone: the CPU they add over `synthetic -> nop`, per record.
    println!(
        "processors (CPU ns per record over synthetic -> nop; records/s of the processor alone):"
    );
    for (signal, id, decl, what) in [
        (
            "flows",
            "aggregation",
            "  aggregation: {window: 10s}\n",
            "aggregation, Zipf flows, 1024 tuples",
        ),
        (
            "traces",
            "sampling",
            "  sampling: {ratio: 0.1}\n",
            "sampling, ratio 0.1",
        ),
        (
            "traces",
            "sampling",
            "  sampling: {rate_limit: 1000, keep_slower_than: 10ms}\n",
            "sampling, rate limit + tail rule",
        ),
        (
            "traces",
            "tail_sampling",
            // 10 000 traces open at any time: each new trace decides the oldest early.
            "  tail_sampling: {decision_wait: 1h, num_traces: 10000, policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: some, type: probabilistic, probabilistic: {sampling_percentage: 10}}]}\n",
            "tail_sampling, 10 000 traces open",
        ),
        (
            "traces",
            "filter",
            "  filter: {traces: {span: ['attributes[\"http.route\"] == \"/health\"']}}\n",
            "filter, one attribute (HTTP spans)",
        ),
        (
            "traces",
            "filter",
            "  filter: {traces: {span: ['attributes[\"http.route\"] == \"/health\" or (status == STATUS_CODE_UNSET and duration < 50000)']}}\n",
            "filter, attribute or status + duration",
        ),
        (
            "traces",
            "transform",
            "  transform: {trace_statements: ['set(attributes[\"deployment.environment\"], \"prod\")']}\n",
            "transform, set one attribute",
        ),
        (
            "traces",
            "transform",
            "  transform: {trace_statements: ['replace_pattern(name, \"/[0-9]+\", \"/{id}\")', 'set(attributes[\"env\"], \"prod\") where attributes[\"http.route\"] != nil']}\n",
            "transform, regex replace + conditional set",
        ),
    ] {
        if only.as_deref().is_some_and(|o| !what.contains(o)) {
            continue;
        }
        // Processors on HTTP-shaped spans need the generator's attributes.
        let gen = if matches!(id, "filter" | "transform") { "attributes: true" } else { "" };
        let base_yaml = config_with(signal, n, &[], "", gen);
        let with_yaml = config_with(signal, n, &[id.to_string()], decl, gen);
        // Interleaved: base, with, base, with, ... so drift hits both alike.
        let mut base = Vec::new();
        let mut with: Vec<(f64, f64, u64)> = Vec::new();
        for _ in 0..runs {
            base.push(run_once(&base_yaml, n).1);
            with.push(run_counted(&with_yaml, n));
        }
        let added = median(with.iter().map(|r| r.1).collect()) - median(base);
        let out = with[0].2.max(1);
        println!("  {what:<40} +{added:>6.1} ns/record  {:>8.1} M records/s  {n} in -> {out} out ({:.0}x)", 1e3 / added.max(0.001), n as f64 / out as f64);
    }
    if only
        .as_deref()
        .is_some_and(|o| "reload".contains(o) || o.contains("reload"))
    {
        reload_latency(quick);
        return;
    }
    if only.is_some() {
        return;
    }
    // Exporters: Arrow encoding + writing, CPU added over the nop exporter, and bytes per record.
    println!("exporters (CPU ns per record over the nop exporter):");
    let dir = std::env::temp_dir().join(format!("oxeye-bench-arrow-{}", std::process::id()));
    for (signal, compression) in [("traces", "none"), ("traces", "zstd"), ("flows", "zstd")] {
        let gen = if signal == "traces" { "spans" } else { "flows" };
        let base: Vec<f64> = (0..runs)
            .map(|_| run_once(&config(signal, n, 0), n).1)
            .collect();
        let mut with = Vec::new();
        let mut bytes = 0u64;
        for r in 0..runs {
            let _ = std::fs::remove_dir_all(&dir);
            let prefix = dir.join(format!("run{r}"));
            let yaml = format!(
                "receivers:\n  synthetic: {{seed: 7, batch_size: 1024, {gen}: {{count: {n}}}}}\nexporters:\n  arrow: {{path: '{}', compression: {compression}, rotate: {{max_bytes: 1000000000000, max_age: 1h}}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    {signal}: {{receivers: [synthetic], exporters: [arrow]}}\n",
                prefix.display()
            );
            with.push(run_once(&yaml, n).1);
            bytes = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
        }
        let added = median(with) - median(base);
        println!(
            "  arrow {signal:<6} compression {compression:<5} +{added:>6.1} ns/record  {:>6.1} M records/s  {:.1} bytes/record",
            1e3 / added.max(0.001),
            bytes as f64 / n as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    reload_latency(quick);
    println!("peak RSS {:.1} MiB", max_rss_mib());
}

/// Ten components (1 receiver, 5 processors, 4 exporters) under 200 000 spans/s; each reload
/// changes a processor's setting and adds or removes an exporter. Prints the latency from the
/// request to the engine's answer (applied), and checks nothing was lost.
fn reload_latency(quick: bool) {
    let reloads = if quick { 4 } else { 40 };
    // At 200 000/s, long enough to outlast the reloads (100 ms apart).
    let count: u64 = if quick {
        200_000
    } else {
        200_000 * (reloads as u64 / 4 + 2)
    };
    let yaml = |value: &str, fourth: bool| {
        format!(
            "receivers:\n  synthetic: {{seed: 7, spans: {{count: {count}, rate: 200000}}}}\nprocessors:\n  transform: {{trace_statements: ['set(attributes[\"v\"], \"{value}\")']}}\n  filter: {{traces: {{span: ['name == \"never\"']}}}}\n  nop/1:\n  nop/2:\n  nop/3:\nexporters:\n  nop/1:\n  nop/2:\n  nop/3:\n  nop/4:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [transform, filter, nop/1, nop/2, nop/3], exporters: [nop/1, nop/2, nop/3{}]}}\n",
            if fourth { ", nop/4" } else { "" }
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = |y: &str| oxeye::config::load("bench.yaml", y).config.expect("valid");
    let engine = oxeye::engine::Engine::build(&load(&yaml("a", false))).expect("builds");
    let (latencies, report) = rt.block_on(async {
        let (_stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, rx));
        let mut latencies = Vec::new();
        for i in 0..reloads {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let cfg = load(&yaml(if i % 2 == 0 { "b" } else { "a" }, i % 2 == 0));
            let (done, answer) = tokio::sync::oneshot::channel();
            let t0 = Instant::now();
            tx.send(oxeye::engine::Reload { config: cfg, done })
                .await
                .expect("engine runs");
            answer.await.expect("answered").expect("applied");
            latencies.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        (latencies, run.await.expect("engine"))
    });
    let reg = &report.registry;
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "reload latency, 10 components under 200 000 spans/s: median {:.2} ms, max {:.2} ms over {reloads} reloads; {} spans in, {} dropped{}",
        median(latencies),
        sorted.last().copied().unwrap_or(0.0),
        reg.records_in(),
        reg.records_dropped(),
        if report.clean() { "" } else { " (NOT CLEAN)" }
    );
}
