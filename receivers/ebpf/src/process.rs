//! Process lifecycle events as log records: the process programs on the `sched_process_exec`
//! and `sched_process_exit` tracepoints, their ring buffer drained into `process.exec` and
//! `process.exit` events with the semantic conventions' process attributes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::TracePoint;
use aya::Ebpf;
use oxeye_api::{Attributes, LogRecord, LostUnit, Severity, Telemetry, Value};
use oxeye_ebpf_common::{
    ProcessEvent, PROCESS_CMDLINE_MAX, PROCESS_EXEC, PROCESS_PATH_MAX, PR_EXECS, PR_EXITS,
    PR_RINGBUF_FULL,
};
use tokio::io::unix::AsyncFd;

use crate::spans::take_map;
use crate::{sys, ProbeError, ProcessConfig};

/// The process programs, compiled for bpfel-unknown-none by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxeye-process"));

/// How often the ring buffer is drained at the least.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Offset of `group_dead` in this kernel's `sched_process_exit` record (0: none), from its
/// tracefs format.
fn group_dead_offset() -> u32 {
    let Ok(dir) = sys::tracefs() else { return 0 };
    let format = std::fs::read_to_string(dir.join("events/sched/sched_process_exit/format"))
        .unwrap_or_default();
    format
        .lines()
        .find(|l| l.contains(" group_dead;"))
        .and_then(|l| l.split("offset:").nth(1))
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// cgroup v2 ids (directory inodes) to their paths, found by walking the cgroup2 mount: a
/// process that already exited can still be placed (its `/proc/<pid>/cgroup` is gone). The
/// paths are what `/proc/<pid>/cgroup` shows (`/system.slice/foo.service`).
#[derive(Default)]
pub(crate) struct Cgroups {
    paths: HashMap<u64, Arc<str>>,
    scanned: Option<Instant>,
    root: Option<std::path::PathBuf>,
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
/// host); `None` without cgroup v2. Only that tree: v1 hierarchies number their inodes apart.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| at.into())
    })
}

impl Cgroups {
    /// Directories walked at most per scan (a host has hundreds, a busy node thousands).
    const MAX_DIRS: usize = 100_000;

    /// The path of cgroup `id` under /sys/fs/cgroup (walks the tree when `id` is new: blocking
    /// file reads, for a blocking thread).
    pub(crate) fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(p) = self.paths.get(&id) {
            return Some(Arc::clone(p));
        }
        // An unknown id: a cgroup made since the last scan. Scan again, at most once a second.
        if self
            .scanned
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.scanned = Some(Instant::now());
        self.paths.clear();
        if self.root.is_none() {
            self.root = cgroup2_mount();
        }
        let root = self.root.clone()?;
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            if self.paths.len() >= Self::MAX_DIRS {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(&dir).to_string_lossy();
                let rel = if rel.is_empty() {
                    "/".to_string()
                } else {
                    format!("/{rel}")
                };
                self.paths.insert(meta.ino(), rel.into());
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.paths.get(&id).cloned()
    }
}

/// The process programs attached. Dropping it detaches them.
pub struct ProcessProbe {
    ebpf: Option<Ebpf>,
    ring: AsyncFd<crate::ring::Ring>,
    counters: PerCpuArray<MapData, u64>,
    telemetry: Telemetry,
    cmdline: bool,
}

impl ProcessProbe {
    /// Loads the programs and attaches them to the two tracepoints.
    pub fn start(cfg: &ProcessConfig, telemetry: Telemetry) -> Result<ProcessProbe, ProbeError> {
        let o = crate::btf::process_offsets();
        let group_dead = group_dead_offset();
        let mut loader = aya::EbpfLoader::new();
        loader
            .btf(None)
            .override_global("TASK_REAL_PARENT_OFFSET", &o.real_parent, true)
            .override_global("TASK_TGID_OFFSET", &o.tgid, true)
            .override_global("TASK_EXIT_CODE_OFFSET", &o.exit_code, true)
            .override_global("TASK_MM_OFFSET", &o.mm, true)
            .override_global("MM_ARG_START_OFFSET", &o.arg_start, true)
            .override_global("MM_ARG_END_OFFSET", &o.arg_end, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &group_dead, true)
            .map_max_entries("PROCESS_EVENTS", cfg.ring_size);
        let mut ebpf = loader.load(PROGRAMS).map_err(|e| {
            ProbeError::Load(sys::explain_load_error(
                "loading the process-event programs",
                crate::flows::chain(&e),
                &sys::kernel_release(),
            ))
        })?;
        let ring = crate::ring::Ring::watch(&mut ebpf, "PROCESS_EVENTS")?;
        let counters = take_map(&mut ebpf, "PROCESS_COUNTERS")?;
        for (prog, tracepoint) in [
            ("oxeye_process_exec", "sched_process_exec"),
            ("oxeye_process_exit", "sched_process_exit"),
        ] {
            let p: &mut TracePoint = sys::program(&mut ebpf, prog)?;
            p.load().map_err(|source| ProbeError::Rejected {
                program: prog.to_string(),
                source,
            })?;
            p.attach("sched", tracepoint)
                .map_err(|source| ProbeError::Attach {
                    what: format!(
                        "process: attaching the sched:{tracepoint} tracepoint (needs CONFIG_TRACEPOINTS and tracefs)"
                    ),
                    source,
                })?;
        }
        if o.exit_code == u32::MAX || o.real_parent == u32::MAX {
            tracing::warn!(
                "process: this kernel's BTF (/sys/kernel/btf/vmlinux) does not give task_struct's layout: events go without parent pid and exit code"
            );
        }
        tracing::info!(
            ring_size = cfg.ring_size,
            group_dead = group_dead != 0,
            "process events: sched_process_exec and sched_process_exit attached"
        );
        Ok(ProcessProbe {
            ebpf: Some(ebpf),
            ring,
            counters,
            telemetry,
            cmdline: cfg.command_line,
        })
    }

    /// Waits until the ring buffer wakes the reader or `timeout` passes.
    pub async fn wait(&self, timeout: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, self.ring.readable()).await {
            guard.clear_ready();
        }
    }

    /// Every waiting event (memory reads only: fine on an async worker).
    pub fn drain(&mut self) -> Events {
        let mut events = Vec::new();
        self.ring.get_mut().drain(usize::MAX, |item| {
            if item.len() >= std::mem::size_of::<ProcessEvent>() {
                // SAFETY: at least this long (checked); plain integers and bytes.
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr() as *const ProcessEvent)
                });
            }
        });
        Events {
            events,
            offset: sys::monotonic_to_unix_offset(),
            observed: sys::unix_now_ns(),
            cmdline: self.cmdline,
        }
    }

    /// Publishes the kernel's counters: events lost in a full ring buffer as lost records.
    pub fn update_counters(&self) {
        let sum = |i: u32| {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        self.telemetry.set_lost(
            "ringbuf_full",
            LostUnit::Records,
            "process",
            sum(PR_RINGBUF_FULL),
        );
        self.telemetry
            .set_counter("ebpf_process_execs", "process", sum(PR_EXECS));
        self.telemetry
            .set_counter("ebpf_process_exits", "process", sum(PR_EXITS));
    }

    /// Detaches the programs (events already in the ring stay readable).
    pub fn detach(&mut self) {
        self.ebpf = None;
    }
}

/// Events drained from the ring, to be made log records.
pub struct Events {
    events: Vec<ProcessEvent>,
    offset: u64,
    observed: u64,
    cmdline: bool,
}

impl Events {
    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The log records, their cgroups placed through `cgroups` (which may walk /sys/fs/cgroup:
    /// call on a blocking thread).
    pub(crate) fn records(&self, cgroups: &mut Cgroups) -> Vec<LogRecord> {
        self.events
            .iter()
            .map(|ev| {
                let cgroup = cgroups.path(ev.cgroup_id);
                record(ev, self.offset, self.observed, cgroup, self.cmdline)
            })
            .collect()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One event as a log record: `process.exec` or `process.exit`, INFO, with the process's
/// attributes; the body says what happened in words.
pub(crate) fn record(
    ev: &ProcessEvent,
    offset: u64,
    observed: u64,
    cgroup: Option<Arc<str>>,
    cmdline: bool,
) -> LogRecord {
    let comm = oxeye_api::Comm(ev.comm);
    let mut a = Attributes::new();
    a.set("process.pid", i64::from(ev.pid));
    if ev.ppid != 0 {
        a.set("process.parent_pid", i64::from(ev.ppid));
    }
    a.set("process.executable.name", comm.as_str().into_owned());
    a.set("oxeye.cgroup_id", ev.cgroup_id as i64);
    if let Some(path) = cgroup {
        a.set("oxeye.cgroup", Value::Str(path));
    }
    let exec = ev.kind == PROCESS_EXEC;
    let body = if exec {
        let path = text(&ev.filename[..(ev.filename_len as usize).min(PROCESS_PATH_MAX)]);
        a.set("process.executable.path", path.clone());
        let args: Vec<String> = ev.cmdline[..(ev.cmdline_len as usize).min(PROCESS_CMDLINE_MAX)]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(text)
            .collect();
        let line = if args.is_empty() {
            path.clone()
        } else {
            args.join(" ")
        };
        if cmdline && !args.is_empty() {
            a.set("process.command_line", line.clone());
        }
        if ev.cmdline_len as usize >= PROCESS_CMDLINE_MAX - 1 {
            a.set("oxeye.process.command_line.truncated", true);
        }
        format!("exec {}", if cmdline { line } else { path })
    } else {
        // A wait status: the exit code in bits 8-15, the signal that ended it in bits 0-6.
        let (code, signal) = ((ev.exit_code >> 8) & 0xff, ev.exit_code & 0x7f);
        a.set("process.exit.code", i64::from(code));
        if signal != 0 {
            a.set("oxeye.process.exit.signal", i64::from(signal));
            format!("exit by signal {signal}")
        } else {
            format!("exit {code}")
        }
    };
    LogRecord {
        time_unix_ns: ev.time_ns.wrapping_add(offset),
        observed_time_unix_ns: observed,
        severity_number: Severity::INFO,
        severity_text: Some("INFO".into()),
        body: Some(body.into()),
        attributes: a,
        event_name: Some(if exec { "process.exec" } else { "process.exit" }.into()),
        ..LogRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_ebpf_common::PROCESS_EXIT;

    fn event(kind: u32) -> ProcessEvent {
        let mut ev = ProcessEvent {
            kind,
            pid: 42,
            tid: 42,
            ppid: 1,
            time_ns: 5,
            cgroup_id: 7,
            exit_code: 3 << 8,
            filename_len: 7,
            cmdline_len: 12,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            filename: [0; PROCESS_PATH_MAX],
            cmdline: [0; PROCESS_CMDLINE_MAX],
        };
        ev.filename[..7].copy_from_slice(b"/bin/sh");
        ev.cmdline[..12].copy_from_slice(b"sh\0-c\0exit 3");
        ev
    }

    #[test]
    fn exec_and_exit_become_events_with_process_attributes() {
        let exec = record(
            &event(PROCESS_EXEC),
            10,
            20,
            Some("/user.slice".into()),
            true,
        );
        assert_eq!(exec.event_name.as_deref(), Some("process.exec"));
        assert_eq!(exec.time_unix_ns, 15);
        assert_eq!(exec.body, Some("exec sh -c exit 3".into()));
        let a = &exec.attributes;
        assert_eq!(a.get("process.pid"), Some(&Value::Int(42)));
        assert_eq!(a.get("process.parent_pid"), Some(&Value::Int(1)));
        assert_eq!(a.get("process.executable.path"), Some(&"/bin/sh".into()));
        assert_eq!(a.get("process.command_line"), Some(&"sh -c exit 3".into()));
        assert_eq!(a.get("oxeye.cgroup"), Some(&"/user.slice".into()));
        let exit = record(&event(PROCESS_EXIT), 0, 0, None, true);
        assert_eq!(exit.event_name.as_deref(), Some("process.exit"));
        assert_eq!(
            exit.attributes.get("process.exit.code"),
            Some(&Value::Int(3))
        );
        let mut killed = event(PROCESS_EXIT);
        killed.exit_code = 9;
        let killed = record(&killed, 0, 0, None, true);
        assert_eq!(
            killed.attributes.get("oxeye.process.exit.signal"),
            Some(&Value::Int(9))
        );
        assert_eq!(killed.body, Some("exit by signal 9".into()));
        // Without command lines (they may hold secrets): the path only.
        let quiet = record(&event(PROCESS_EXEC), 0, 0, None, false);
        assert_eq!(quiet.body, Some("exec /bin/sh".into()));
        assert!(quiet.attributes.get("process.command_line").is_none());
    }
}
