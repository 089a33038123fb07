//! Helpers for oxeye's end-to-end tests: test-only components (registered through the public
//! API exactly like a user's crate), running pipelines in-process, and running the binary.

pub mod burn;
pub mod chaos;
pub mod netns;
pub mod peers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Output, Processor, Signal,
};
use serde::Deserialize;

/// `capture/<name>` exporter: keeps every batch in memory, per component id, for assertions.
pub struct Capture {
    id: String,
}

fn store() -> &'static Mutex<HashMap<String, Vec<Arc<Batch>>>> {
    static STORE: OnceLock<Mutex<HashMap<String, Vec<Arc<Batch>>>>> = OnceLock::new();
    STORE.get_or_init(Default::default)
}

fn told() -> &'static Mutex<HashMap<String, Vec<Signal>>> {
    static TOLD: OnceLock<Mutex<HashMap<String, Vec<Signal>>>> = OnceLock::new();
    TOLD.get_or_init(Default::default)
}

/// The signals the engine told `capture/<id>` it will handle (`BuildContext::signals`).
pub fn signals_of(id: &str) -> Vec<Signal> {
    told()
        .lock()
        .expect("told")
        .get(id)
        .cloned()
        .unwrap_or_default()
}

/// Takes what `capture/<id>` received so far. Ids are global: use unique ids per test.
pub fn captured(id: &str) -> Vec<Arc<Batch>> {
    store()
        .lock()
        .expect("store")
        .remove(id)
        .unwrap_or_default()
}

#[async_trait]
impl Exporter for Capture {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        store()
            .lock()
            .expect("store")
            .entry(self.id.clone())
            .or_default()
            .push(batch);
        Ok(())
    }
}

/// No config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Factory of [`Capture`].
pub struct CaptureFactory;
impl Factory for CaptureFactory {
    type Config = Empty;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "capture";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: keeps batches in memory";
    fn build(_: Empty, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        told()
            .lock()
            .expect("told")
            .insert(ctx.id.clone(), ctx.signals.clone());
        Ok(Box::new(Capture { id: ctx.id }))
    }
}
oxeye_api::register!(CaptureFactory);

/// `failstop` exporter: accepts every batch; at shutdown waits `after`, then fails.
pub struct FailStop {
    after: Duration,
}

/// Config of [`FailStop`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailStopConfig {
    /// Time spent in `shutdown` before the error.
    #[serde(with = "oxeye_api::config::duration")]
    pub after: Duration,
}

#[async_trait]
impl Exporter for FailStop {
    async fn export(&mut self, _batch: Arc<Batch>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn shutdown(&mut self) -> Result<(), BoxError> {
        tokio::time::sleep(self.after).await;
        Err("failstop exporter: deliberate error at shutdown".into())
    }
}

/// Factory of [`FailStop`].
pub struct FailStopFactory;
impl Factory for FailStopFactory {
    type Config = FailStopConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "failstop";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: fails at shutdown after a delay";
    fn build(c: FailStopConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(FailStop { after: c.after }))
    }
}
oxeye_api::register!(FailStopFactory);

/// `tag` processor: sets an attribute on every span (copy-on-write through `Arc::make_mut`).
pub struct Tag {
    key: String,
    value: String,
}

/// Config of [`Tag`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Attribute key.
    pub key: String,
    /// Attribute value.
    pub value: String,
}

#[async_trait]
impl Processor for Tag {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        if let oxeye_api::Records::Spans(spans) = &mut Arc::make_mut(&mut batch).records {
            for s in spans {
                s.attributes.set(self.key.as_str(), self.value.as_str());
            }
        }
        out.push(batch);
        Ok(())
    }
}

/// Factory of [`Tag`].
pub struct TagFactory;
impl Factory for TagFactory {
    type Config = TagConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "tag";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str = "test: sets an attribute on every span";
    fn validate(c: &TagConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.key.is_empty() {
            e.push("key", "must not be empty");
        }
        e.into_result()
    }
    fn build(c: TagConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Tag {
            key: c.key,
            value: c.value,
        }))
    }
}
oxeye_api::register!(TagFactory);

/// `fail` processor: passes `after` batches, then panics or returns an error.
pub struct Fail {
    left: u64,
    panic: bool,
}

/// Config of [`Fail`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailConfig {
    /// Batches passed before failing.
    pub after: u64,
    /// Panic (true) or return an error (false).
    #[serde(default)]
    pub panic: bool,
}

#[async_trait]
impl Processor for Fail {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        if self.left == 0 {
            if self.panic {
                panic!("fail processor: deliberate panic");
            }
            return Err("fail processor: deliberate error".into());
        }
        self.left -= 1;
        out.push(batch);
        Ok(())
    }
}

/// Factory of [`Fail`].
pub struct FailFactory;
impl Factory for FailFactory {
    type Config = FailConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "fail";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: fails after N batches";
    fn build(c: FailConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Fail {
            left: c.after,
            panic: c.panic,
        }))
    }
}
oxeye_api::register!(FailFactory);

/// `oneshot` receiver: declares it takes config changes live but ends at once (so a change
/// finds it stopped), counting its starts; `tag` is any value, to make a config differ.
pub struct OneShot;

/// Config of [`OneShot`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OneShotConfig {
    /// Anything.
    pub tag: u64,
}

/// Starts of `oneshot` receivers so far.
pub static ONESHOT_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[async_trait]
impl oxeye_api::Receiver for OneShot {
    async fn run(self: Box<Self>, _ctx: oxeye_api::ReceiverContext) -> Result<(), BoxError> {
        ONESHOT_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Factory of [`OneShot`].
pub struct OneShotFactory;
impl Factory for OneShotFactory {
    type Config = OneShotConfig;
    type Component = Box<dyn oxeye_api::Receiver>;
    const TYPE: &'static str = "oneshot";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "test: ends at once; claims live reconfiguration";
    const RECONFIGURABLE: bool = true;
    fn build(_: OneShotConfig, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(OneShot))
    }
}
oxeye_api::register!(OneShotFactory);

/// Runs a config in-process on a fresh multi-thread runtime until it ends by itself.
pub fn run(yaml: &str) -> oxeye::engine::Report {
    run_with_stop(yaml, None)
}

/// Runs a config in-process; if `stop_after` is set, requests shutdown after that long.
pub fn run_with_stop(yaml: &str, stop_after: Option<Duration>) -> oxeye::engine::Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if let Some(after) = stop_after {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(()).await;
                // Keep the channel open so the engine does not see a closed stop channel.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        } else {
            std::mem::forget(tx);
        }
        match oxeye::run_config("test.yaml", yaml, rx).await {
            Ok(report) => report,
            Err(errors) => panic!("config rejected: {errors:#?}"),
        }
    })
}

/// A pin from tests/pins.env (`NAME=value`), e.g. `pin("RUST_NIGHTLY")`.
pub fn pin(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pins.env");
    let pins = std::fs::read_to_string(path).expect("tests/pins.env");
    pins.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("tests/pins.env has no {name}= line"))
        .trim()
        .to_string()
}

/// The `oxeye` binary built by `cargo build` (the test command builds it first).
pub fn oxeye_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OXEYE_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug/oxeye");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p oxeye` first (tests/run.sh does), or set OXEYE_BIN",
        bin.display()
    );
    bin
}

/// Writes `yaml` to a fresh temp file and returns its path.
pub fn temp_config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oxeye-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Starts `oxeye <args>` with piped stdout/stderr.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(oxeye_bin())
        .args(args)
        .env_remove("OXEYE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxeye")
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is shared.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

/// `GET path` on 127.0.0.1:port: the whole response (status line, headers, body). Asks the
/// server to close the connection, so reading to the end returns.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

/// Waits (at most 10 s) until something listens on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Rotel's `rotel-agent`, from the venv tests/setup.sh made (`OXEYE_ROTEL_VENV`).
pub fn rotel_agent() -> PathBuf {
    let venv = std::env::var("OXEYE_ROTEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".local/share/oxeye/rotel")
        });
    std::fs::read_dir(venv.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no rotel-agent under {}: run tests/setup.sh",
                venv.display()
            )
        })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub mod broker;

/// Helpers shared by the benchmarks.
pub mod bench {
    /// `cargo bench` passes `--bench`; `cargo test --benches` does not: then run small and fast,
    /// so the benchmarks cannot rot.
    pub fn quick() -> bool {
        !std::env::args().any(|a| a == "--bench")
    }

    /// The release `oxeye` binary, the one users run (`cargo build --release -p oxeye`); in
    /// quick mode the debug one will do.
    pub fn release_oxeye(quick: bool) -> std::path::PathBuf {
        let release = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/oxeye"
        ));
        if release.exists() {
            return release;
        }
        assert!(
            quick,
            "run `cargo build --release -p oxeye` first: this measures the binary"
        );
        crate::oxeye_bin()
    }

    /// How many records a benchmark makes (`OXEYE_BENCH_RECORDS`, else `full`; 20 000 in quick
    /// mode) and how many rounds it takes the median of (5; 1 in quick mode).
    pub fn records_and_rounds(full: u64) -> (u64, usize) {
        let quick = quick();
        let n = std::env::var("OXEYE_BENCH_RECORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 20_000 } else { full });
        (n, if quick { 1 } else { 5 })
    }

    /// A C reference program of `tests/reference/` (`flow.bpf.c`, `span.bpf.c`), compiled now
    /// with Debian's clang and libbpf headers (installed by tests/setup.sh): the ELF object.
    pub fn c_reference(file: &str) -> Vec<u8> {
        let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("reference")
            .join(file);
        let out = std::env::temp_dir().join(format!("oxeye-ref-{}-{file}.o", std::process::id()));
        let status = std::process::Command::new("clang")
            .args(["-O2", "-g", "-target", "bpf"])
            .arg(format!(
                "-I/usr/include/{}-linux-gnu",
                std::env::consts::ARCH
            ))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .expect("clang (run tests/setup.sh: it installs clang and libbpf-dev)");
        assert!(status.success(), "clang failed on {}", src.display());
        let bytes = std::fs::read(&out).expect("reference object");
        let _ = std::fs::remove_file(&out);
        bytes
    }

    /// `bin` pinned to `cpu` with taskset, its output thrown away (a process under
    /// measurement must not pay for writing logs).
    pub fn pinned(cpu: &str, bin: &std::path::Path) -> std::process::Command {
        let mut c = std::process::Command::new("taskset");
        c.args(["-c", cpu]).arg(bin);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    /// utime + stime of a live process, seconds (/proc/<pid>/stat; 0 when it is gone).
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // After the command: state is field 0, utime 11, stime 12.
        (tick(11) + tick(12)) / per_second
    }

    /// The median of some figures.
    pub fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }
}

/// Follows a child's stderr: each line as it comes (the receiver), and all of it when the child
/// closes it (the join handle).
pub fn follow(
    stderr: std::process::ChildStderr,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (rx, handle)
}

/// `oxeye run -c <config>` (the debug binary) with its stdout collected and its stderr followed
/// line by line; killed if dropped before [`Running::stop`].
pub struct Running {
    child: KillOnDrop,
    /// stderr, line by line as it comes.
    pub lines: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    stdout: std::thread::JoinHandle<String>,
}

impl Running {
    /// Starts oxeye on `config` and waits (at most 30 s) for a stderr line containing `ready`;
    /// an ERROR line before it fails the test.
    pub fn start(config: &std::path::Path, ready: &str) -> Running {
        let mut child = KillOnDrop(
            Command::new(oxeye_bin())
                .args(["run", "-c"])
                .arg(config)
                .env_remove("OXEYE_LOG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start oxeye"),
        );
        let (lines, stderr) = follow(child.0.stderr.take().expect("stderr"));
        let mut pipe = child.0.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut out);
            out
        });
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("oxeye did not log `{ready}` within 30 s"));
            assert!(!line.contains("ERROR"), "{line}");
            if line.contains(ready) {
                break;
            }
        }
        Running {
            child,
            lines,
            stderr,
            stdout,
        }
    }

    /// oxeye's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Resident memory of oxeye now, bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }

    /// Stops oxeye with SIGINT; asserts it exits 0; its stdout and stderr.
    pub fn stop(mut self) -> (String, String) {
        signal(&self.child.0, libc::SIGINT);
        let status = self.child.0.wait().expect("oxeye exit");
        let stderr = self.stderr.join().expect("stderr reader");
        assert_eq!(status.code(), Some(0), "{stderr}");
        (self.stdout.join().expect("stdout reader"), stderr)
    }
}

/// Resident memory of a live process now, bytes (`VmRSS` of /proc/PID/status).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Parses `N lost in the kernel` from a summary line.
pub fn lost_in_kernel(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .windows(4)
        .position(|w| w[1..] == ["lost", "in", "the"])?;
    words[i].parse().ok()
}

/// Peak resident memory of a running process, in MiB (`VmHWM` of `/proc/<pid>/status`: its own
/// address space's high-water mark). Not wait4's `ru_maxrss`: Linux carries the high-water mark
/// of the address space a child had before `exec` — a copy of this test process, which may be
/// far larger than oxeye — into it.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Waits for `child` to exit (at most `within`; then kills it and panics) and returns its CPU
/// seconds (user + system, from wait4) and peak RSS in MiB ([`peak_rss_mib`], read until it
/// exits). Panics unless it exited 0.
pub fn wait_with_rusage(mut child: Child, within: Duration) -> (f64, f64) {
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + within;
    // SAFETY: wait4 on our own child; the out-parameters are owned locals.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    let mut peak = 0.0f64;
    loop {
        if let Some(p) = peak_rss_mib(child.id()) {
            peak = peak.max(p);
        }
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oxeye did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "oxeye failed (wait status {status})"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), peak)
}

/// Parses `N records in, M out, D dropped` from oxeye's final log line.
pub fn final_counts(stderr: &str) -> Option<(u64, u64, u64)> {
    let line = stderr.lines().rev().find(|l| l.contains("records in,"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let find = |w: &str| -> Option<u64> {
        let i = words.iter().position(|x| x.trim_end_matches(',') == w)?;
        words.get(i - 1)?.parse().ok()
    };
    Some((find("records")?, find("out")?, find("dropped")?))
}
