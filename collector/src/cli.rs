//! The `oxeye` command line: `run`, `validate`, `components`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use oxeye_api::Kind;
use tracing::{error, info, warn};

use crate::components;
use crate::config::{self, Loaded};
use crate::engine::Engine;
use crate::{reload, secs, telemetry, DEFAULT_PIPELINE};

const EXAMPLES: &str = "\
Examples:
  oxeye run                                  run the embedded default pipeline
  oxeye run -c config/pipeline.yaml          run a pipeline from YAML
  oxeye run -c p.yaml --watch-config         reload p.yaml whenever it changes (also: kill -HUP)
  oxeye run -c p.yaml --enable-reload-endpoint
                                             also reload on curl -X POST localhost:8888/-/reload
  oxeye validate -c config/pipeline.yaml     check a config and this host, starting nothing
  oxeye validate -c p.yaml --no-build        check the file only (a config for another host)
  oxeye components                           list the registered component types
  oxeye components ebpf                      one type's settings and their defaults
  oxeye doctor                               what this kernel supports (kprobe, fentry, XDP, ...)
  RATE=5000 oxeye run -c p.yaml              values like ${env:RATE:-100} come from the environment
  OTLP_ENDPOINT=http://tempo:4317 oxeye run -c config/otlp.yaml
                                             kernel spans and flow metrics to an OTLP backend
                                             (OTEL_EXPORTER_OTLP_* variables are honoured too)

Exit codes: 0 ok; 1 a component failed or the shutdown deadline passed; 2 invalid config
(also one this host cannot run: a missing interface, syscall, binary or symbol, privilege).
Logs go to stderr (level from service.telemetry.logs.level, or OXEYE_LOG=debug).";

/// oxeye: an eBPF-native, OpenTelemetry-style telemetry pipeline.
#[derive(Parser, Debug)]
#[command(name = "oxeye", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline until its receivers finish or SIGINT/SIGTERM (a second signal stops at once).
    #[command(after_help = EXAMPLES)]
    Run {
        /// Pipeline config (YAML). Without it, the embedded default pipeline runs. SIGHUP or
        /// `POST /-/reload` on the metrics endpoint reloads it without a restart.
        #[arg(short, long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// Reload the config whenever the file changes.
        #[arg(long, requires = "config")]
        watch_config: bool,
        /// Take `POST /-/reload` on the metrics address (off by default: anyone who can reach
        /// that address could make oxeye reload; SIGHUP and --watch-config work without it).
        #[arg(long, requires = "config")]
        enable_reload_endpoint: bool,
    },
    /// Parse and validate a config and build every component as `run` does, starting and
    /// attaching nothing. Prints every problem, else the pipelines.
    #[command(after_help = EXAMPLES)]
    Validate {
        /// Pipeline config (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// Check the file only, not this host: skip building the components (for a config
        /// meant for another machine: its interfaces, binaries, processes and privileges).
        #[arg(long)]
        no_build: bool,
    },
    /// List registered component types and the signals each accepts; with a TYPE, show its
    /// settings and their defaults.
    #[command(
        after_help = "Examples:\n  oxeye components            every type, its kind, signals and crate\n  oxeye components ebpf       the ebpf receiver's settings and defaults\n  oxeye components otlp       both the otlp receiver and the otlp exporter"
    )]
    Components {
        /// A component type (`ebpf`, `otlp`, `tail_sampling`, ...).
        #[arg(value_name = "TYPE")]
        type_name: Option<String>,
    },
    /// Show which eBPF program and attach types this kernel supports, and what oxeye will use.
    Doctor,
}

/// Entry point of the `oxeye` binary, and of custom builds that link extra component crates.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let duplicates = config::duplicate_registrations();
    if !duplicates.is_empty() {
        for d in &duplicates {
            eprintln!("oxeye: error: {d}");
        }
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Components { type_name: None } => components::list(),
        Command::Components { type_name: Some(t) } => components::show(&t),
        Command::Doctor => doctor(),
        Command::Validate { config, no_build } => match read(&config) {
            Ok((name, text)) => validate(&name, &text, !no_build),
            Err(code) => code,
        },
        Command::Run {
            config,
            watch_config,
            enable_reload_endpoint,
        } => {
            let (name, text) = match &config {
                Some(path) => match read(path) {
                    Ok(v) => v,
                    Err(code) => return code,
                },
                None => (
                    "<default pipeline>".to_string(),
                    DEFAULT_PIPELINE.to_string(),
                ),
            };
            run(&name, &text, config, watch_config, enable_reload_endpoint)
        }
    }
}

fn read(path: &std::path::Path) -> Result<(String, String), ExitCode> {
    let name = path.display().to_string();
    std::fs::read_to_string(path)
        .map(|text| (name.clone(), text))
        .map_err(|e| {
            eprintln!("oxeye: error: cannot read config {name}: {e}");
            ExitCode::from(2)
        })
}

fn doctor() -> ExitCode {
    let checks = oxeye_receiver_ebpf::doctor::report();
    for c in &checks {
        println!(
            "{:<18} {:<4} {}",
            c.what,
            if c.ok { "ok" } else { "no" },
            c.detail
        );
    }
    ExitCode::SUCCESS
}

fn print_diagnostics(loaded: &Loaded) -> usize {
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    loaded.errors().count()
}

/// Builds every component as `run` does (inside a runtime; nothing starts, nothing attaches).
/// A component that cannot be built is a config problem here: an error at its YAML path.
fn build(loaded: &Loaded, cfg: &config::Config) -> Result<Engine, Vec<config::Diagnostic>> {
    Engine::build(cfg).map_err(|errors| {
        let mut diagnostics: Vec<config::Diagnostic> = errors
            .iter()
            .map(|e| loaded.error_at(&e.path, e.offset, &e.message))
            .collect();
        diagnostics.sort_by_key(|d| (d.line.unwrap_or(usize::MAX), d.column.unwrap_or(0)));
        diagnostics
    })
}

fn validate(name: &str, text: &str, build_here: bool) -> ExitCode {
    let loaded = config::load(name, text);
    let mut errors = print_diagnostics(&loaded);
    if let Some(cfg) = loaded.config.as_ref().filter(|_| errors == 0) {
        if !build_here {
            print_graph(name, cfg);
            return ExitCode::SUCCESS;
        }
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))
            .map(|rt| rt.block_on(async { build(&loaded, cfg).map(drop) }));
        match built {
            Ok(Ok(())) => {
                print_graph(name, cfg);
                return ExitCode::SUCCESS;
            }
            Ok(Err(diagnostics)) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                errors = diagnostics.len();
            }
            Err(e) => {
                eprintln!("oxeye: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("{name}: invalid: {errors} error(s)");
    ExitCode::from(2)
}

/// The counts, then one line per pipeline: receivers → processors in order → exporters.
fn print_graph(name: &str, cfg: &config::Config) {
    let count = |k: Kind| cfg.components.keys().filter(|(kind, _)| *kind == k).count();
    let pipelines: Vec<&str> = cfg.pipelines.iter().map(|p| p.id.as_str()).collect();
    let connectors = match count(Kind::Connector) {
        0 => String::new(),
        n => format!(", {n} connector(s)"),
    };
    println!(
        "{name}: valid: {} pipeline(s) ({}), {} receiver(s), {} processor(s), {} exporter(s){connectors}",
        pipelines.len(),
        pipelines.join(", "),
        count(Kind::Receiver),
        count(Kind::Processor),
        count(Kind::Exporter)
    );
    let width = pipelines.iter().map(|p| p.len()).max().unwrap_or(0);
    for p in &cfg.pipelines {
        let mut stages = vec![p.receivers.join(", ")];
        stages.extend(p.processors.iter().cloned());
        stages.push(p.exporters.join(", "));
        println!("  {:<width$}  {}", p.id, stages.join(" → "));
    }
}

/// `OXEYE_LOG`, if it is a filter: comma-separated `level` or `target=level` directives. A value
/// that is neither would silently turn every message off (it reads as a target name).
fn oxeye_log() -> Result<Option<String>, String> {
    let Ok(v) = std::env::var("OXEYE_LOG") else {
        return Ok(None);
    };
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let ok = !v.trim().is_empty()
        && v.split(',').all(|d| {
            let level =
                d.rsplit_once('=').map_or(
                    d,
                    |(target, level)| {
                        if target.trim().is_empty() {
                            ""
                        } else {
                            level
                        }
                    },
                );
            LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        });
    if ok {
        Ok(Some(v))
    } else {
        Err(format!(
            "OXEYE_LOG={v:?} is not a log filter: give a level (error, warn, info, debug, trace) or target=level directives, e.g. OXEYE_LOG=info,oxeye_receiver_otlp=debug"
        ))
    }
}

fn init_logs(level: &str, format: config::LogFormat) {
    let (directives, bad) = match oxeye_log() {
        Ok(Some(v)) => (v, None),
        Ok(None) => (level.to_string(), None),
        Err(why) => (level.to_string(), Some(why)),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if let Some(why) = bad {
        warn!("{why}; logging at `{level}`");
    }
}

/// Raises the soft limit on open files to the hard one, as Go programs (the Collector) do: a
/// gateway holds a descriptor per client connection, and 1024 is the usual soft default.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed; nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                warn!(
                    "cannot raise the open files limit from {}: {}",
                    lim.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn run(
    name: &str,
    text: &str,
    path: Option<std::path::PathBuf>,
    watch: bool,
    reload_endpoint: bool,
) -> ExitCode {
    let mut loaded = config::load(name, text);
    let invalid = || {
        eprintln!(
            "{name}: invalid config, nothing started (check it with `oxeye validate -c {name}`)"
        );
        ExitCode::from(2)
    };
    if print_diagnostics(&loaded) > 0 {
        return invalid();
    }
    let Some(cfg) = loaded.config.take() else {
        return invalid();
    };
    init_logs(cfg.telemetry.logs.level.as_str(), cfg.telemetry.logs.format);
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxeye: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let engine = match build(&loaded, &cfg) {
            Ok(engine) => engine,
            Err(diagnostics) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                return invalid();
            }
        };
        let registry = engine.registry();
        let mut background = Vec::new();
        // Reloads: read and validate the file, then hand it to the engine.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let trigger = match path {
            Some(path) => {
                let (trigger, task) = reload::start(path.clone(), Arc::clone(&registry), reload_tx, &cfg);
                background.push(task);
                background.push(reload::on_sighup(trigger.clone()));
                if watch {
                    info!(file = %path.display(), "watching the config file for changes");
                    background.push(reload::watch(path, trigger.clone()));
                }
                Some(trigger)
            }
            None => None,
        };
        if let Some(address) = &cfg.telemetry.metrics.address {
            match telemetry::bind(address).await {
                Ok(listener) => {
                    info!("self-metrics on http://{}/metrics", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
                    let reloads = reload_endpoint.then(|| trigger.clone()).flatten();
                    background.push(tokio::spawn(telemetry::serve(listener, Arc::clone(&registry), reloads, reload_endpoint)));
                }
                Err(e) => {
                    error!("service.telemetry.metrics.address: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let every = cfg.telemetry.logs.summary_interval;
        if !every.is_zero() {
            background.push(tokio::spawn(telemetry::summarize(Arc::clone(&registry), every)));
        }
        background.push(crate::memory::return_freed());
        let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(4);
        background.push(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                warn!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if stop_tx.send(()).await.is_err() {
                    return;
                }
            }
        }));
        let pipelines: Vec<&str> = cfg.pipelines.iter().map(|p| p.id.as_str()).collect();
        info!(config = name, "running {} pipeline(s): {}", pipelines.len(), pipelines.join(", "));
        let report = engine.run_with_reloads(stop_rx, reload_rx).await;
        for task in background {
            task.abort();
        }
        let reg = &report.registry;
        let summary = format!(
            "stopped after {}: {} records in, {} out, {} dropped{}",
            secs(report.elapsed),
            reg.records_in(),
            reg.records_out(),
            reg.records_dropped(),
            reg.lost_summary()
        );
        // The headline adds every exporter's copy; these say where each pipeline's records went.
        let breakdown = reg.breakdown();
        if report.clean() {
            info!("{summary}");
            for line in &breakdown {
                info!("  {line}");
            }
            ExitCode::SUCCESS
        } else {
            for line in &breakdown {
                error!("  {line}");
            }
            let abandoned: u64 = report.abandoned.iter().map(|(_, n)| n).sum();
            error!(
                "{summary}; {} failed component(s), {} abandoned at the deadline ({abandoned} queued records lost)",
                report.failures.len(),
                report.abandoned.len()
            );
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn diagnostics_print_file_line_path() {
        let loaded = crate::config::load("p.yaml", "receivers:\n  synthetic: {seed: x}\n");
        let first = loaded
            .errors()
            .next()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert!(first.starts_with("p.yaml:2:"), "{first}");
        assert!(first.contains("receivers.synthetic.seed"), "{first}");
    }
}
