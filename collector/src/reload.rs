//! Config reloads: the triggers (SIGHUP, `--watch-config`, `POST /-/reload`) and the reloader,
//! which reads the file, validates it completely and only then hands it to the engine, which
//! applies it as a diff (see `engine/README.md`). An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config;
use crate::engine::{Registry, Reload};

/// How a reload went: `Ok(what changed)` or `Err(why nothing changed)`.
pub type Outcome = Result<String, String>;

/// Asks the reloader for a reload. Cheap to clone.
#[derive(Clone)]
pub struct Trigger(mpsc::Sender<Option<oneshot::Sender<Outcome>>>);

impl Trigger {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Some(tx)).await.is_err() {
            return Err("oxeye is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("oxeye is shutting down".into()))
    }

    /// Asks for a reload without waiting (signals, the file watcher). Requests made while one
    /// is pending are folded into it.
    pub fn nudge(&self) {
        let _ = self.0.try_send(None);
    }
}

/// Starts the reloader for `path`: each request reads, validates and applies the file.
/// `running` is the config the engine started with (its `service.telemetry` is read once).
pub fn start(
    path: PathBuf,
    registry: Arc<Registry>,
    engine: mpsc::Sender<Reload>,
    running: &config::Config,
) -> (Trigger, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Option<oneshot::Sender<Outcome>>>(1);
    let telemetry = format!("{:?}", running.telemetry);
    let task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let outcome = reload_once(&path, &registry, &engine, &telemetry).await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    });
    (Trigger(tx), task)
}

async fn reload_once(
    path: &std::path::Path,
    registry: &Registry,
    engine: &mpsc::Sender<Reload>,
    telemetry: &str,
) -> Outcome {
    let name = path.display().to_string();
    let file = path.to_path_buf();
    let text = match oxeye_api::blocking::unblock(move || std::fs::read_to_string(file)).await {
        Ok(t) => t,
        Err(e) => {
            registry.count_rejected_reload();
            let msg = format!(
                "config reload rejected, the running pipelines go on: cannot read {name}: {e}"
            );
            error!("{msg}");
            return Err(msg);
        }
    };
    let loaded = config::load(&name, &text);
    let mut errors = Vec::new();
    for d in &loaded.diagnostics {
        match d.severity {
            config::Severity::Error => {
                error!("{d}");
                errors.push(d.to_string());
            }
            config::Severity::Warning => warn!("{d}"),
        }
    }
    let config = match loaded.config {
        Some(c) if errors.is_empty() => c,
        _ => {
            registry.count_rejected_reload();
            let msg = format!(
                "config reload rejected, the running pipelines go on: {name}: {} error(s): {}",
                errors.len(),
                errors.join("; ")
            );
            error!("{msg}");
            return Err(msg);
        }
    };
    if format!("{:?}", config.telemetry) != telemetry {
        warn!("service.telemetry changed: it is read at start only, restart oxeye to apply it");
    }
    let (done, result) = oneshot::channel();
    if engine.send(Reload { config, done }).await.is_err() {
        return Err("oxeye is shutting down".into());
    }
    result
        .await
        .unwrap_or_else(|_| Err("oxeye is shutting down".into()))
}

/// SIGHUP asks for a reload.
pub fn on_sighup(trigger: Trigger) -> JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot install the SIGHUP handler: reload with POST /-/reload");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the config");
            trigger.nudge();
        }
    })
}

/// Watches `path`: when its contents change (checked every 250 ms; applied once they have
/// stayed the same for one more check, so a save in progress is not read half-written), asks
/// for a reload. Polling rather than inotify: editors save by writing a new file and renaming
/// it over the old one, which ends an inotify watch on the file.
pub fn watch(path: PathBuf, trigger: Trigger) -> JoinHandle<()> {
    tokio::spawn(async move {
        let read = |p: PathBuf| oxeye_api::blocking::unblock(move || std::fs::read(p).ok());
        let mut applied = read(path.clone()).await;
        let mut seen = applied.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = read(path.clone()).await;
            if now.is_some() && now == seen && now != applied {
                info!(file = %path.display(), "config file changed: reloading");
                applied = now.clone();
                trigger.nudge();
            }
            seen = now;
        }
    })
}
