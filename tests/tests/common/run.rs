//! Running oxeye in-process for a test, reading its report, finding the test peers.

use std::path::PathBuf;

/// oxeye running in-process on a thread of its own until `stop`.
pub struct Oxeye {
    stop: tokio::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<oxeye::engine::Report>,
}

impl Oxeye {
    pub fn start(yaml: &str, ports: &[u16]) -> Oxeye {
        let (stop, rx) = tokio::sync::mpsc::channel(1);
        let yaml = yaml.to_string();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                match oxeye::run_config("test.yaml", &yaml, rx).await {
                    Ok(report) => report,
                    Err(errors) => panic!("config rejected: {errors:#?}"),
                }
            })
        });
        for &port in ports {
            oxeye_tests::wait_port(port);
        }
        Oxeye { stop, handle }
    }

    /// Waits for oxeye to end by itself (a finite source), without asking it to stop.
    pub fn join(self) -> oxeye::engine::Report {
        let report = self.handle.join().expect("oxeye thread");
        drop(self.stop);
        report
    }

    pub fn stop(self) -> oxeye::engine::Report {
        let _ = self.stop.blocking_send(());
        let report = self.handle.join().expect("oxeye thread");
        drop(self.stop);
        report
    }
}

pub fn sdk_python() -> PathBuf {
    let venv = std::env::var("OXEYE_OTEL_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".local/share/oxeye/otel-sdk")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/setup.sh (it installs the OpenTelemetry Python SDK)",
        python.display()
    );
    python
}

/// The counters of the component labelled `label` (`receivers/otlp`, `exporters/otlp`).
pub fn component(report: &oxeye::engine::Report, label: &str) -> oxeye_api::Telemetry {
    report
        .registry
        .components()
        .iter()
        .find(|c| c.label() == label)
        .map(|c| c.telemetry.clone())
        .unwrap_or_else(|| panic!("no component {label}"))
}

pub fn counter(report: &oxeye::engine::Report, label: &str, name: &str, source: &str) -> u64 {
    component(report, label)
        .counters()
        .iter()
        .find(|(n, s, _)| *n == name && s == source)
        .map_or(0, |(_, _, v)| *v)
}
