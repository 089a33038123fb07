//! The `oxeye` binary: validate exit codes, JSON lines on stdout, SIGTERM drain, metrics.

use std::io::Read;
use std::time::{Duration, Instant};

use oxeye_tests::{final_counts, free_port, oxeye_bin, signal, spawn, temp_config};

fn output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(oxeye_bin())
        .args(args)
        .output()
        .expect("run oxeye")
}

#[test]
fn validate_exit_codes_and_messages() {
    let good = temp_config("validate-good", oxeye::DEFAULT_PIPELINE);
    let out = output(&["validate", "-c", good.to_str().expect("utf8")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("valid: 1 pipeline(s) (flows), 1 receiver(s)"));

    let bad = temp_config(
        "validate-bad",
        "receivers:\n  synthetic: {spans: {rate: fast}}\nexporters:\n  stdout: {format: xml}\nservice:\n  pipelines:\n    traces: {receivers: [synthetic], exporters: [stdout, otlp]}\n",
    );
    let path = bad.to_str().expect("utf8");
    let out = output(&["validate", "-c", path]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{path}:2:23: error: receivers.synthetic.spans.rate: invalid type"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:4:12: error: exporters.stdout.format: unknown variant `xml`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("service.pipelines.traces.exporters[1]: undefined exporter `otlp`"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid: 3 error(s)"), "{stderr}");

    // `run` refuses the same file with the same exit code, starting nothing.
    let out = output(&["run", "-c", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());

    let out = output(&["validate", "-c", "/nonexistent/p.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config /nonexistent/p.yaml"));
}

/// `validate` builds every component as `run` does: what the host lacks (an interface, a
/// syscall, a binary or symbol, a process, a writable folder) and what the graph forbids is
/// refused by both, with exit code 2, at the line and YAML path of the culprit.
#[test]
fn validate_refuses_what_run_would() {
    let me = oxeye_bin();
    let me = me.to_str().expect("utf8");
    let yaml = format!(
        "receivers:
  ebpf:
    flows:
      interfaces: [oxeye-nope0]
    spans:
      sources:
        - syscall: opnat
        - uprobe: bash:readline
        - uprobe: /usr/bin/oxeye-nope:main
        - uprobe: {me}:no_such_function_xyz
        - syscall: read
          pid: 4194303
exporters:
  stdout:
    format: folded
  arrow:
    path: /proc/oxeye-nope/spans
service:
  pipelines:
    flows:
      receivers: [ebpf]
      exporters: [stdout]
    traces:
      receivers: [ebpf]
      exporters: [arrow]
"
    );
    let bad = temp_config("validate-host", &yaml);
    let path = bad.to_str().expect("utf8");
    let expected = [
        "4:20: error: receivers.ebpf.flows.interfaces[0]: interface `oxeye-nope0` does not exist".to_string(),
        "7:11: error: receivers.ebpf.spans.sources[0].syscall: no tracepoint syscalls:sys_enter_opnat on this kernel: `opnat` is not a syscall name (did you mean `openat`?)".to_string(),
        "8:11: error: receivers.ebpf.spans.sources[1].uprobe: `bash` is a program name, not a path: a uprobe needs the file".to_string(),
        "9:11: error: receivers.ebpf.spans.sources[2].uprobe: /usr/bin/oxeye-nope does not exist".to_string(),
        format!("10:11: error: receivers.ebpf.spans.sources[3].uprobe: symbol `no_such_function_xyz` is not in {me}"),
        "12:11: error: receivers.ebpf.spans.sources[4].pid: no process 4194303 is running".to_string(),
        "15:5: error: exporters.stdout.format: `format: folded` writes profiles only, but a flows pipeline uses it".to_string(),
        "17:5: error: exporters.arrow.path: cannot create files in /proc (files are named /proc/oxeye-nope/spans…)".to_string(),
    ];
    for command in ["validate", "run"] {
        let out = output(&[command, "-c", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(out.stdout.is_empty(), "{command} printed to stdout");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(lines.len(), expected.len(), "{command}: {stderr}");
        for (line, want) in lines.iter().zip(&expected) {
            assert!(
                line.starts_with(&format!("{path}:{want}")),
                "{command}: {line}\nwanted {path}:{want}"
            );
        }
    }

    // `--no-build` checks the file only: it is a valid file for some other host.
    let out = output(&["validate", "--no-build", "-c", path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Fixed, the same file is valid, and validate prints the graph.
    let good = temp_config(
        "validate-host-good",
        &format!(
            "receivers:
  ebpf:
    spans:
      sources:
        - syscall: openat
        - uprobe: /usr/bin/bash:readline
        - uprobe: {me}:main
exporters:
  stdout:
  arrow:
    path: {}/spans
processors:
  nop:
service:
  pipelines:
    traces:
      receivers: [ebpf]
      processors: [nop]
      exporters: [stdout, arrow]
",
            std::env::temp_dir().display()
        ),
    );
    let out = output(&["validate", "-c", good.to_str().expect("utf8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\n  traces  ebpf → nop → stdout, arrow\n"),
        "{stdout}"
    );
}

#[test]
fn components_lists_every_builtin() {
    let out = output(&["components"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "receiver   synthetic",
        "processor  nop",
        "exporter   stdout",
        "exporter   nop",
        "connector  spanmetrics    traces->metrics            oxeye-connector-spanmetrics",
        "traces,flows",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let help = String::from_utf8_lossy(&output(&["--help"]).stdout).to_string();
    assert!(help.contains("Examples:"), "{help}");
}

#[test]
fn components_type_prints_its_settings_and_defaults() {
    let out = output(&["components", "ebpf"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("ebpf receiver: "), "{text}");
    for needle in [
        "crate: oxeye-receiver-ebpf; applies config changes live",
        "# Network flows\nreceivers:\n  ebpf:\n    flows:\n",
        "flush_interval: 1s",
        "frequency: 19",
        "The whole reference: docs/components/receiver-ebpf.md",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(
        !text.contains("```") && !text.contains("]("),
        "markdown left in\n{text}"
    );

    // One type name, two kinds: both shown.
    let text = String::from_utf8_lossy(&output(&["components", "otlp"]).stdout).to_string();
    assert!(
        text.contains("otlp receiver: ") && text.contains("otlp exporter: "),
        "{text}"
    );

    // Every built-in type has its settings.
    let listing = String::from_utf8_lossy(&output(&["components"]).stdout).to_string();
    for line in listing.lines().skip(1) {
        let t = line.split_whitespace().nth(1).expect("a type");
        let out = output(&["components", t]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{t}: {text}");
        assert!(
            text.contains("\n# ") && text.contains(&format!("  {t}")),
            "{t}: {text}"
        );
    }

    let out = output(&["components", "ebfp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no component type `ebfp`; registered types: ") && err.contains(" ebpf,"),
        "{err}"
    );
}

#[test]
fn stdout_json_lines_carry_otel_names_and_exact_counts() {
    let cfg = temp_config(
        "json",
        "receivers:\n  synthetic: {seed: 9, spans: {count: 3000}, flows: {count: 2000}}\nexporters:\n  stdout: {format: json}\nservice:\n  resource: {service.name: edge-7}\n  pipelines:\n    traces: {receivers: [synthetic], exporters: [stdout]}\n    flows: {receivers: [synthetic], exporters: [stdout]}\n",
    );
    let out = output(&["run", "-c", cfg.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut spans = 0;
    let mut flows = 0;
    let mut children = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(v["resource"]["service.name"], "edge-7");
        match v["signal"].as_str() {
            Some("traces") => {
                spans += 1;
                assert_eq!(v["trace_id"].as_str().map(str::len), Some(32));
                assert_eq!(v["span_id"].as_str().map(str::len), Some(16));
                assert!(
                    v["name"].is_string() && v["process.pid"].is_u64() && v["thread.id"].is_u64()
                );
                assert!(v["end_time_unix_nano"].as_u64() >= v["start_time_unix_nano"].as_u64());
                if v["parent_span_id"].is_string() {
                    children += 1;
                }
            }
            Some("flows") => {
                flows += 1;
                assert!(v["source.address"].is_string() && v["destination.port"].is_u64());
                assert!(matches!(
                    v["network.transport"].as_str(),
                    Some("tcp" | "udp")
                ));
                assert!(v["packets"].as_u64() >= Some(1) && v["bytes"].as_u64() >= Some(64));
            }
            other => panic!("unexpected signal {other:?}"),
        }
    }
    assert_eq!((spans, flows), (3000, 2000));
    assert!(children > 0, "nested spans have parents");
    assert_eq!(final_counts(&stderr), Some((5000, 5000, 0)), "{stderr}");
}

#[test]
fn sigterm_drains_an_endless_run_and_exits_zero() {
    let cfg = temp_config(
        "sigterm",
        "receivers:\n  synthetic: {seed: 4, spans: {rate: 20000}, flows: {rate: 20000}}\nprocessors:\n  nop:\nexporters:\n  stdout: {format: json}\nservice:\n  pipelines:\n    traces: {receivers: [synthetic], processors: [nop], exporters: [stdout]}\n    flows: {receivers: [synthetic], exporters: [stdout]}\n",
    );
    let mut child = spawn(&["run", "-c", cfg.to_str().expect("utf8")]);
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).expect("read stdout");
        s
    });
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, libc::SIGTERM);
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let lines = reader.join().expect("reader").lines().count() as u64;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (inn, out, dropped) = final_counts(&stderr).expect("final summary line");
    assert!(inn > 1000, "{stderr}");
    assert_eq!((out, dropped), (inn, 0), "{stderr}");
    assert_eq!(lines, inn, "every record accepted was written");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

fn http_get(port: u16, path: &str) -> String {
    oxeye_tests::http_get(port, path).expect("GET")
}

#[test]
fn metrics_health_and_readiness_endpoints() {
    let port = free_port();
    let cfg = temp_config(
        "metrics",
        &format!(
            "receivers:\n  synthetic: {{seed: 4, spans: {{rate: 5000}}}}\nexporters:\n  nop:\n  nop/slow: {{delay: 200ms}}\nservice:\n  telemetry:\n    metrics: {{address: ':{port}'}}\n    logs: {{summary_interval: 200ms}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [nop, nop/slow], queues: {{nop/slow: {{capacity: 1, when_full: drop_newest}}}}}}\n"
        ),
    );
    let mut child = spawn(&["run", "-c", cfg.to_str().expect("utf8")]);
    // Follow stderr: the endpoint is up once oxeye logs it.
    let (rx, follower) = oxeye_tests::follow(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("oxeye never logged its metrics endpoint")
        .contains("self-metrics on")
    {}
    std::thread::sleep(Duration::from_millis(800));
    let metrics = http_get(port, "/metrics");
    let ready = http_get(port, "/readyz");
    let health = http_get(port, "/healthz");
    let missing = http_get(port, "/nope");
    signal(&child, libc::SIGINT);
    let status = child.wait().expect("wait");
    let stderr = follower.join().expect("stderr follower");
    assert_eq!(status.code(), Some(0), "{stderr}");

    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert!(value("oxeye_component_emitted_records_total{kind=\"receiver\",id=\"synthetic\"}") > 0);
    assert!(value("oxeye_component_received_records_total{kind=\"exporter\",id=\"nop\"}") > 0);
    assert!(value("oxeye_component_dropped_records_total{kind=\"exporter\",id=\"nop/slow\",reason=\"queue_full\"}") > 0);
    assert!(metrics.contains("oxeye_queue_capacity_batches{pipeline=\"traces\",from=\"pipelines/traces\",to=\"exporters/nop/slow\"} 1"), "{metrics}");
    assert!(metrics.contains("# TYPE oxeye_queue_depth_batches gauge"));
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(
        stderr.contains("records/s in"),
        "periodic summary line: {stderr}"
    );
}

/// CPU time (user + system) of a process in clock ticks, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn metrics_endpoint_out_of_file_descriptors_backs_off() {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let cfg = temp_config(
        "emfile",
        &format!(
            "receivers:\n  synthetic: {{seed: 4, spans: {{rate: 100}}}}\nexporters:\n  nop:\nservice:\n  telemetry:\n    metrics: {{address: ':{port}'}}\n    logs: {{summary_interval: 0s}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [nop]}}\n"
        ),
    );
    let mut cmd = std::process::Command::new(oxeye_bin());
    cmd.args(["run", "-c", cfg.to_str().expect("utf8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = oxeye_tests::KillOnDrop(cmd.spawn().expect("start oxeye"));
    let (rx, follower) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("oxeye never logged its metrics endpoint")
        .contains("self-metrics on")
    {}
    // Idle connections until oxeye has no descriptor left to accept with; the rest wait in
    // the listen backlog, so every accept() fails with EMFILE.
    let held: Vec<std::net::TcpStream> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(child.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.0.id()) - before;
    // A loop retrying accept() at once burns a whole core: ~200 ticks in 2 s.
    assert!(
        used < 60,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    // Once descriptors are free again, the endpoint answers.
    drop(held);
    let health = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            oxeye_tests::http_get(port, "/healthz")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        })
        .expect("/healthz after the descriptors came back");
    assert!(health.ends_with("ok\n"), "{health}");
    signal(&child.0, libc::SIGINT);
    let status = child.0.wait().expect("wait");
    let stderr = follower.join().expect("stderr follower");
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Operators are told, once a second, not in a tight loop.
    let told = stderr
        .lines()
        .filter(|l| l.contains("accept error: Too many open files"))
        .count();
    assert!(
        (1..=10).contains(&told),
        "{told} accept errors logged:\n{stderr}"
    );
}

/// Runs `oxeye run` on `yaml` to the end: (stderr, peak RSS of that process in MiB).
fn run_with_peak_rss(name: &str, yaml: &str) -> (String, f64) {
    let cfg = temp_config(name, yaml);
    let mut child = spawn(&["run", "-c", cfg.to_str().expect("utf8")]);
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).expect("read stderr");
        s
    });
    let (_, rss) = oxeye_tests::wait_with_rusage(child, Duration::from_secs(180));
    (reader.join().expect("reader"), rss)
}

#[test]
fn tail_sampling_flood_stays_under_its_byte_cap() {
    // 400 000 spans of ~100 000 distinct traces arrive as fast as the generator makes them,
    // and no trace's decision_wait ends: only the bounds decide.
    let config = |processor: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 3, spans: {{count: 400000}}}}\nprocessors:\n  {processor}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [{}], exporters: [nop]}}\n",
            processor.split(':').next().expect("id")
        )
    };
    let tail = |max_bytes: u64| {
        config(&format!(
            "tail_sampling: {{decision_wait: 1h, num_traces: 10000000, max_bytes: {max_bytes}, decision_cache: {{sampled_cache_size: 10000, non_sampled_cache_size: 10000}}, policies: [{{name: some, type: probabilistic, probabilistic: {{sampling_percentage: 10}}}}]}}"
        ))
    };
    const MIB: u64 = 1 << 20;
    let (_, nop) = run_with_peak_rss("flood-nop", &config("nop:"));
    let (log16, cap16) = run_with_peak_rss("flood-16", &tail(16 * MIB));
    let (_, cap48) = run_with_peak_rss("flood-48", &tail(48 * MIB));
    let (log_none, none) = run_with_peak_rss("flood-none", &tail(4096 * MIB));
    eprintln!(
        "peak RSS: nop pipeline {nop:.1} MiB; tail_sampling with max_bytes 16 MiB {cap16:.1}, 48 MiB {cap48:.1}, 4 GiB {none:.1}"
    );
    // Nothing lost silently: every span is out or counted as dropped, and the early decisions
    // are named in the log with the bounds that forced them.
    let (inn, out, dropped) = final_counts(&log16).expect("final line");
    assert_eq!((inn, out + dropped), (400_000, 400_000), "{log16}");
    assert!(
        out > 20_000 && out < 60_000,
        "10 % of traces kept: {out} spans"
    );
    assert!(
        log16.contains("tail_sampling is full (num_traces 10000000, max_bytes 16777216)"),
        "{log16}"
    );
    assert!(!log_none.contains("tail_sampling is full"), "{log_none}");
    // Memory follows the cap: 32 MiB more cap, about 32 MiB more memory (the estimate is
    // honest), and 16 MiB of cap stays within 16 MiB + allocator slack (measured 13 MiB) over
    // the nop pipeline, while without a cap every span is held.
    let slope = (cap48 - cap16) / 32.0;
    assert!(
        (0.5..1.5).contains(&slope),
        "32 MiB more cap gave {:.1} MiB",
        cap48 - cap16
    );
    assert!(
        cap16 - nop < 16.0 + 24.0,
        "16 MiB cap: +{:.1} MiB over nop",
        cap16 - nop
    );
    assert!(
        none - cap48 > 64.0,
        "no cap: {none:.1} MiB vs {cap48:.1} with 48 MiB"
    );
}

#[test]
fn the_final_lines_say_where_each_pipelines_records_went() {
    // One pipeline feeding two exporters and another feeding one of them: the headline adds
    // every exporter's copy; the lines after it read in = dropped + sent, per pipeline, and
    // in = out + dropped, per exporter.
    let config = temp_config(
        "breakdown",
        "receivers:\n  synthetic: {seed: 7, spans: {count: 3000}, flows: {count: 2000}}\nprocessors:\n  sampling: {ratio: 0.5}\nexporters:\n  nop:\n  nop/2:\nservice:\n  telemetry: {logs: {summary_interval: 0s}}\n  pipelines:\n    traces: {receivers: [synthetic], processors: [sampling], exporters: [nop, nop/2]}\n    flows: {receivers: [synthetic], exporters: [nop]}\n",
    );
    let out = output(&["run", "-c", config.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let line = |start: &str| -> Vec<u64> {
        let l = stderr
            .lines()
            .find_map(|l| l.split_once(start).map(|(_, rest)| rest.to_string()))
            .unwrap_or_else(|| panic!("no `{start}` line in {stderr}"));
        l.split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    // `pipeline traces: 3000 in, sampling D dropped (sampled_out D) → nop N, nop/2 N`, with the
    // digits of `nop/2` in the way: [3000, D, D, N, 2, N].
    let t = line("pipeline traces: ");
    assert_eq!(t[0], 3000, "{stderr}");
    assert_eq!(t[0], t[1] + t[3], "{stderr}");
    assert_eq!(t[3], t[5], "{stderr}");
    assert_eq!(line("pipeline flows: "), vec![2000, 2000]);
    let nop = line("exporter nop: ");
    assert_eq!(nop, vec![2000 + t[3], 2000 + t[3]], "{stderr}");
    assert_eq!(line("exporter nop/2: "), vec![t[3], t[3]], "{stderr}");
}

#[test]
fn a_metrics_address_that_does_not_parse_is_the_files_error() {
    let config = temp_config(
        "metrics-address",
        "receivers:\n  synthetic: {spans: {count: 10}}\nexporters:\n  nop:\nservice:\n  telemetry: {metrics: {address: localhost}}\n  pipelines:\n    traces: {receivers: [synthetic], exporters: [nop]}\n",
    );
    let path = config.to_str().expect("utf8");
    for command in ["validate", "run"] {
        let out = output(&[command, "-c", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}:6:")) && stderr.contains("error: service.telemetry.metrics.address: `localhost` is not an address: write host:port"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_bad_log_filter_is_refused_and_json_logs_parse() {
    let config = temp_config(
        "logs",
        "receivers:\n  synthetic: {spans: {count: 10}}\nexporters:\n  nop:\nservice:\n  telemetry: {logs: {summary_interval: 0s}}\n  pipelines:\n    traces: {receivers: [synthetic], exporters: [nop]}\n",
    );
    let path = config.to_str().expect("utf8");
    // A value that is not a filter used to turn every message off, the final line included.
    let out = std::process::Command::new(oxeye_bin())
        .args(["run", "-c", path])
        .env("OXEYE_LOG", "verbose")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OXEYE_LOG=\"verbose\" is not a log filter"),
        "{stderr}"
    );
    assert_eq!(final_counts(&stderr), Some((10, 10, 0)), "{stderr}");

    let json = temp_config(
        "logs-json",
        &std::fs::read_to_string(&config)
            .expect("read")
            .replace("summary_interval: 0s", "summary_interval: 0s, format: json"),
    );
    let out = output(&["run", "-c", json.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().all(|v| v["level"].is_string()));
    assert!(lines.iter().any(|v| v["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("10 records in"))));
}
