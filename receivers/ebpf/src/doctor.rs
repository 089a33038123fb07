//! `oxeye doctor`: what this kernel supports, and what oxeye will pick.

use aya::programs::{KProbe, PerfEvent, RawTracePoint, TracePoint};

use crate::sys;

/// One line of the report.
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// Whether it works.
    pub ok: bool,
    /// The evidence, or why not.
    pub detail: String,
}

fn check(what: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            what,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            what,
            ok: false,
            detail,
        },
    }
}

/// Runs every check (loads programs; attaches nothing).
pub fn report() -> Vec<Check> {
    let mut checks = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(Check {
        what: "kernel",
        ok: true,
        detail: release.trim().to_string(),
    });
    let missing = sys::missing_capabilities();
    checks.push(check(
        "privileges",
        if missing.is_empty() {
            Ok("CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON".into())
        } else {
            Err(format!("missing {}", missing.join(", ")))
        },
    ));
    checks.push(check(
        "BTF",
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("/sys/kernel/btf/vmlinux".into())
        } else {
            Err(sys::no_btf("no /sys/kernel/btf/vmlinux"))
        },
    ));
    let mut loader = crate::sys::thread_state_loader();
    crate::spans::with_task_offsets(&mut loader);
    let loaded = loader.load(crate::spans::PROGRAMS).map_err(|e| {
        sys::explain_load_error(
            "the span programs do not load",
            crate::flows::chain(&e),
            &sys::kernel_release(),
        )
    });
    checks.push(check(
        "ring buffer",
        loaded
            .as_ref()
            .map(|_| "BPF_MAP_TYPE_RINGBUF created".to_string())
            .map_err(Clone::clone),
    ));
    checks.push(check(
        "task storage",
        loaded
            .as_ref()
            .map(|_| "BPF_MAP_TYPE_TASK_STORAGE created (per-thread span state)".to_string())
            .map_err(Clone::clone),
    ));
    match loaded {
        Ok(mut ebpf) => {
            let tp = (|| -> Result<String, String> {
                let root = sys::tracefs().map_err(|e| e.to_string())?;
                let p: &mut TracePoint =
                    crate::sys::program(&mut ebpf, "oxeye_sys_enter").map_err(|e| e.to_string())?;
                p.load().map_err(|e| crate::flows::chain(&e))?;
                Ok(format!("syscalls:* tracepoints under {}", root.display()))
            })();
            checks.push(check("tracepoint", tp));
            let raw = (|| -> Result<String, String> {
                for prog in ["oxeye_raw_enter", "oxeye_raw_exit"] {
                    let p: &mut RawTracePoint =
                        crate::sys::program(&mut ebpf, prog).map_err(|e| e.to_string())?;
                    p.load().map_err(|e| crate::flows::chain(&e))?;
                }
                Ok(if cfg!(target_arch = "x86_64") {
                    "raw_syscalls pair loads (`syscall:` sources with attach: raw_tracepoint)"
                        .to_string()
                } else {
                    "loads, but attach: raw_tracepoint is for x86_64 builds only".to_string()
                })
            })();
            checks.push(check("raw tracepoint", raw));
            checks.push(check(
                "uprobe",
                if std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists() {
                    Ok("uprobe PMU present".into())
                } else {
                    Err("no uprobe PMU (CONFIG_UPROBE_EVENTS off)".into())
                },
            ));
            let (fentry, kprobe) = crate::spans::kernel_function_support(&mut ebpf);
            let fentry = fentry.map_err(|e| e.to_string());
            let kprobe = kprobe.map_err(|e| e.to_string()).and_then(|()| {
                let p: &mut KProbe =
                    crate::sys::program(&mut ebpf, "oxeye_kprobe").map_err(|e| e.to_string())?;
                p.load().map_err(|e| crate::flows::chain(&e))?;
                let link = p
                    .attach("do_sys_openat2", 0)
                    .map_err(|e| crate::flows::chain(&e))?;
                p.detach(link).map_err(|e| crate::flows::chain(&e))?;
                Ok(())
            });
            checks.push(check(
                "fentry/fexit",
                fentry
                    .clone()
                    .map(|()| "loads against do_sys_openat2".into()),
            ));
            checks.push(check(
                "kprobe/kretprobe",
                kprobe.clone().map(|()| "attaches to do_sys_openat2".into()),
            ));
            let pick = match (&fentry, &kprobe) {
                (Ok(()), _) => Ok("`kprobe:` sources use fentry/fexit (attach: auto)".to_string()),
                (Err(_), Ok(())) => {
                    Ok("`kprobe:` sources use kprobe/kretprobe (fentry unavailable)".to_string())
                }
                (Err(_), Err(_)) => Err(
                    "`kprobe:` sources fail here; use `syscall:` (tracepoint) or `uprobe:` sources"
                        .to_string(),
                ),
            };
            checks.push(check("kernel functions", pick));
        }
        Err(e) => checks.push(check("span programs", Err(e))),
    }
    checks.push(check("perf events", perf_events()));
    checks.push(check("stack unwinding", unwinding()));
    checks.push(check("processes", process_kinds()));
    let (programs, tls) = crate::requests::check();
    checks.push(check("request programs", programs));
    checks.push(check("TLS (libssl)", tls));
    // The flow programs as `oxeye run` loads them (verified, not attached), with the cache and
    // maps they allocate: 4 MiB per possible CPU plus two maps of `max_flows` entries.
    let flows = crate::FlowsConfig::default();
    checks.push(check(
        "flow programs",
        crate::flows::load_programs(&flows)
            .map(|_| {
                format!(
                    "XDP and TC programs load (`max_flows: {}`, BPF atomics)",
                    flows.max_flows
                )
            })
            .map_err(|e| e.to_string()),
    ));
    checks.push(Check {
        what: "XDP",
        ok: true,
        detail: "generic (skb) mode on every interface; native where the driver supports it (veth, virtio_net, most 10G+ NICs); `mode: auto` tries native first".into(),
    });
    checks.push(Check {
        what: "TC",
        ok: true,
        detail: "egress via tcx links on kernels >= 6.6, else clsact + netlink filter".into(),
    });
    checks
}

/// What oxeye can unwind of the processes running now, by kind: native code (with how many of
/// their objects have call-frame information), CPython by version, and runtimes whose own frames
/// it does not read.
fn process_kinds() -> Result<String, String> {
    use object::{Object, ObjectSection};
    use oxeye_unwind::python::{self, NotPython};
    let mut native = 0;
    let mut pythons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut others: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut objects: std::collections::HashMap<oxeye_unwind::ObjectKey, bool> = Default::default();
    let pids = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for pid in pids.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let maps = oxeye_unwind::maps::parse(&text);
        if maps.is_empty() {
            continue; // a kernel thread
        }
        for m in &maps {
            let Ok((path, key)) = oxeye_unwind::object(pid, m) else {
                continue;
            };
            objects.entry(key).or_insert_with(|| {
                std::fs::File::open(&path).is_ok_and(|f| {
                    let cache = object::ReadCache::new(&f);
                    object::File::parse(&cache).is_ok_and(|o| {
                        [".eh_frame", ".debug_frame"]
                            .iter()
                            .any(|n| o.section_by_name(n).is_some_and(|s| s.size() > 0))
                    })
                })
            });
        }
        let named = |needle: &str| {
            maps.iter().any(|m| {
                m.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(needle))
            })
        };
        match python::find(pid, &maps) {
            Ok(i) => {
                let (a, b) = i.layout.version;
                *pythons
                    .entry(format!("CPython {a}.{b}: Python frames"))
                    .or_default() += 1;
            }
            Err(NotPython::UnknownVersion(a, b)) => {
                *pythons
                    .entry(format!("CPython {a}.{b}: native frames only (no layout)"))
                    .or_default() += 1;
            }
            Err(_) if named("libjvm") => *others.entry("JVM: native frames only").or_default() += 1,
            Err(_) if named("node") || named("libnode") => {
                *others.entry("Node.js: native frames only").or_default() += 1
            }
            Err(_) if named("ruby") || named("libruby") => {
                *others.entry("Ruby: native frames only").or_default() += 1
            }
            Err(_) => native += 1,
        }
    }
    let with_cfi = objects.values().filter(|&&c| c).count();
    let mut parts = vec![format!(
        "{native} native (call-frame information in {with_cfi} of their {} objects; the rest by frame pointers)",
        objects.len()
    )];
    parts.extend(pythons.into_iter().map(|(k, n)| format!("{n} {k}")));
    parts.extend(others.into_iter().map(|(k, n)| format!("{n} {k}")));
    Ok(parts.join("; "))
}

/// The profile object, its benchmark-only maps left small.
fn profile_object() -> Result<aya::Ebpf, String> {
    crate::sys::thread_state_loader()
        .map_max_entries("STACK_IDS", 1)
        .map_max_entries("COUNTS", 1)
        .load(crate::profiles::PROGRAMS)
        .map_err(|e| crate::flows::chain(&e))
}

/// Whether user stacks can be walked from unwind tables here: the walker program loads
/// (verified, not attached) on an x86-64 kernel with `bpf_loop`.
fn unwinding() -> Result<String, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("unwind tables are built for x86-64 only: user stacks are walked with frame pointers (`unwind: auto`)".into());
    }
    let mut ebpf = profile_object()?;
    let p: &mut PerfEvent =
        crate::sys::program(&mut ebpf, "oxeye_profile_unwind").map_err(|e| e.to_string())?;
    p.load().map_err(|e| {
        format!(
            "the kernel refused the table walker (it needs bpf_loop, Linux 5.17+): {}; `unwind: auto` walks user stacks with frame pointers here",
            crate::flows::chain(&e).lines().next().unwrap_or_default()
        )
    })?;
    Ok("user stacks from unwind tables (.eh_frame): native code without frame pointers unwinds (C, C++, Rust, Go), with Python frames for CPython 3.10–3.13; other interpreters (Java, Node, Ruby) show their native frames only".into())
}

/// Whether the profiler can run: the profile program loads and a CPU-clock perf event opens on
/// every online CPU at the default frequency (then closes); and the kernel's ceiling.
fn perf_events() -> Result<String, String> {
    let mut ebpf = profile_object()?;
    let p: &mut PerfEvent =
        crate::sys::program(&mut ebpf, "oxeye_profile").map_err(|e| e.to_string())?;
    p.load().map_err(|e| crate::flows::chain(&e))?;
    let default = crate::ProfilesConfig::default().frequency;
    let cpus = crate::profiles::attach_cpu_clock(p, default).map_err(|e| e.to_string())?;
    let max =
        crate::profiles::max_sample_rate().map_or("unknown".to_string(), |m| format!("{m} Hz"));
    Ok(format!(
        "cpu-clock sampling opens on {cpus} CPUs at {default} Hz; kernel.perf_event_max_sample_rate = {max} (oxeye accepts up to {} Hz)",
        crate::MAX_PROFILE_FREQUENCY
    ))
}
