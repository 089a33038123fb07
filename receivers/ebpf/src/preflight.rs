//! What building the receiver checks on this host, so that `oxeye validate` refuses what `oxeye
//! run` would, at the config path of the culprit: interfaces, syscall tracepoints, kernel
//! functions, uprobe targets and their symbols, processes. Nothing is loaded or attached here.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};
use oxeye_api::ConfigErrors;

use crate::config::*;
use crate::sys;

/// Every problem found, at its path; the interfaces to watch when `flows:` is set.
pub(crate) fn check(c: &EbpfConfig) -> Result<Option<Vec<String>>, ConfigErrors> {
    let mut e = ConfigErrors::new();
    let interfaces = c
        .flows
        .as_ref()
        .and_then(|f| interfaces(&f.interfaces, &mut e));
    let mut kallsyms = None;
    for (i, src) in c.spans.iter().flat_map(|s| s.sources.iter()).enumerate() {
        let p = format!("spans.sources[{i}]");
        match src.kind() {
            SourceKind::Syscall(name) => {
                syscall(&name, src.attach, &format!("{p}.syscall"), &mut e)
            }
            SourceKind::Uprobe { path, symbol } => {
                if let Err(why) = uprobe(&path, &symbol) {
                    e.push(format!("{p}.uprobe"), why);
                }
            }
            SourceKind::Kprobe(func) => {
                let known = kallsyms.get_or_insert_with(kernel_functions);
                if known.as_ref().is_ok_and(|k| !k.contains(&func)) {
                    e.push(
                        format!("{p}.kprobe"),
                        format!(
                            "kernel function `{func}` is not in /proc/kallsyms: no such function in this kernel (or it was inlined){}",
                            did_you_mean(&func, known.iter().flatten().map(String::as_str))
                        ),
                    );
                }
            }
        }
        if let Some(pid) = src.pid {
            running(pid, &format!("{p}.pid"), &mut e);
        }
    }
    if let Some(pid) = c.profiles.as_ref().and_then(|p| p.pid) {
        running(pid, "profiles.pid", &mut e);
    }
    if c.process.is_some() {
        process_tracepoints(&mut e);
    }
    if let Some(r) = &c.requests {
        requests(r, &mut e);
    }
    e.into_result().map(|()| interfaces)
}

/// `requests:` attaches to the syscall tracepoints of `requests::tracepoints()` and reads
/// sockets at offsets from the kernel's BTF.
fn requests(r: &RequestsConfig, e: &mut ConfigErrors) {
    if let Some(pid) = r.pid {
        running(pid, "requests.pid", e);
    }
    if r.tls {
        if let Err(why) = crate::requests::tls::libraries(r) {
            e.push("requests.tls", why);
        }
    }
    if let Some(path) = &r.cgroup {
        if !Path::new(path).is_dir() {
            e.push(
                "requests.cgroup",
                format!("`{path}` is not a directory: give a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/foo.service"),
            );
        }
    }
    if let Err(why) = crate::btf::socket_offsets() {
        e.push(
            "requests",
            format!("{why}: request spans read each connection's addresses from the kernel's socket at offsets its BTF gives (a kernel built with CONFIG_DEBUG_INFO_BTF)"),
        );
    }
    let root = match sys::tracefs() {
        Ok(root) => root,
        Err(why) => {
            e.push("requests", why.to_string());
            return;
        }
    };
    let missing: Vec<&str> = crate::requests::tracepoints()
        .filter(|tp| !root.join("events/syscalls").join(tp).is_dir())
        .collect();
    if !missing.is_empty() {
        e.push(
            "requests",
            format!("this kernel has no syscall tracepoints {} (CONFIG_FTRACE_SYSCALLS): request spans cannot be made here", missing.join(", ")),
        );
    }
}

/// `process:` attaches to `sched:sched_process_exec` and `sched:sched_process_exit`.
fn process_tracepoints(e: &mut ConfigErrors) {
    let root = match sys::tracefs() {
        Ok(root) => root,
        Err(why) => {
            e.push("process", why.to_string());
            return;
        }
    };
    for tp in ["sched_process_exec", "sched_process_exit"] {
        if !root.join("events/sched").join(tp).is_dir() {
            e.push(
                "process",
                format!("this kernel has no tracepoint sched:{tp} (events/sched/{tp} in tracefs): process events cannot be watched here; spans of the exec and exit syscalls (`spans: {{sources: [{{syscall: execve}}]}}`) are the nearest"),
            );
        }
    }
}

fn interfaces(spec: &Interfaces, e: &mut ConfigErrors) -> Option<Vec<String>> {
    let Interfaces::List(names) = spec else {
        return match crate::flows::resolve_interfaces(spec) {
            Ok(names) => Some(names),
            Err(why) => {
                e.push("flows.interfaces", why.to_string());
                None
            }
        };
    };
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        if sys::if_index(name).is_none() {
            ok = false;
            e.push(
                format!("flows.interfaces[{i}]"),
                format!(
                    "interface `{name}` does not exist (interfaces here: {})",
                    sys::interfaces().join(", ")
                ),
            );
        }
    }
    ok.then(|| names.clone())
}

fn syscall(name: &str, attach: AttachMode, path: &str, e: &mut ConfigErrors) {
    if attach == AttachMode::RawTracepoint {
        // The raw pair filters by number: the name must be one this build knows.
        if sys::syscall_number(name).is_none() {
            e.push(
                path,
                format!("`{name}` is not a syscall oxeye knows the number of"),
            );
        }
        return;
    }
    let root = match sys::tracefs() {
        Ok(root) => root,
        Err(why) => {
            e.push(path, why.to_string());
            return;
        }
    };
    let events = root.join("events/syscalls");
    if events.join(format!("sys_enter_{name}")).is_dir() {
        return;
    }
    let Ok(dir) = std::fs::read_dir(&events) else {
        e.push(
            path,
            "this kernel has no syscall tracepoints (events/syscalls: CONFIG_FTRACE_SYSCALLS is off): use `attach: raw_tracepoint`",
        );
        return;
    };
    let names: Vec<String> = dir
        .flatten()
        .filter_map(|d| {
            let n = d.file_name().into_string().ok()?;
            n.strip_prefix("sys_enter_").map(str::to_string)
        })
        .collect();
    e.push(
        path,
        format!(
            "no tracepoint syscalls:sys_enter_{name} on this kernel: `{name}` is not a syscall name{}",
            did_you_mean(name, names.iter().map(String::as_str))
        ),
    );
}

/// ` (did you mean `x`?)` for the closest of `known` within two edits, else nothing.
fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn kernel_functions() -> Result<std::collections::HashSet<String>, std::io::Error> {
    let text = std::fs::read_to_string("/proc/kallsyms")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T").then(|| name.to_string())
        })
        .collect())
}

fn running(pid: u32, path: &str, e: &mut ConfigErrors) {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        e.push(path, format!("no process {pid} is running"));
    }
}

/// The uprobe target as aya will resolve it: a path, or a library name (which aya looks up in
/// /etc/ld.so.cache when it attaches). A program name is refused with its path.
fn uprobe(target: &str, symbol: &str) -> Result<(), String> {
    if !target.contains('/') {
        if let Some(found) = on_path(target) {
            return Err(format!(
                "`{target}` is a program name, not a path: a uprobe needs the file, e.g. `uprobe: {}:{symbol}` (`command -v {target}` finds it)",
                found.display()
            ));
        }
        if target.starts_with("lib") {
            return Ok(());
        }
        return Err(format!(
            "`{target}` is neither a path nor a library name: give the binary's path, e.g. /usr/bin/{target}:{symbol}"
        ));
    }
    let file = Path::new(target);
    if !file.is_file() {
        return Err(if file.exists() {
            format!("{target} is not a file")
        } else {
            format!("{target} does not exist")
        });
    }
    find_symbol(file, symbol)
}

/// Looks `symbol` up as aya does when it attaches: the dynamic symbols and the symbol table,
/// then the file a `.gnu_debuglink` names next to the binary.
pub(crate) fn find_symbol(file: &Path, symbol: &str) -> Result<(), String> {
    let shown = file.display();
    let mapped = map(file)?;
    let obj = object::File::parse(&*mapped)
        .map_err(|e| format!("{shown} is not an ELF binary this host can read: {e}"))?;
    if has_symbol(&obj, symbol) {
        return Ok(());
    }
    let stripped = obj.section_by_name(".symtab").is_none();
    let link = obj.gnu_debuglink().ok().flatten().map(|(name, _)| {
        let name = PathBuf::from(String::from_utf8_lossy(name).into_owned());
        match file.parent() {
            Some(dir) if name.is_relative() => dir.join(name),
            _ => name,
        }
    });
    if let Some(debug) = link.as_ref().filter(|d| d.is_file()) {
        let debug_map = map(debug)?;
        if object::File::parse(&*debug_map).is_ok_and(|d| has_symbol(&d, symbol)) {
            return Ok(());
        }
    }
    let exported = format!("`nm -D --defined-only {shown}` lists the exported ones");
    Err(match (stripped, link) {
        (false, _) => format!(
            "symbol `{symbol}` is not in {shown} (neither its symbol table nor its dynamic symbols; {exported})"
        ),
        (true, Some(debug)) if !debug.is_file() => format!(
            "symbol `{symbol}` is not among {shown}'s dynamic (exported) symbols, and the binary is stripped: the debug file it links, {}, is not there. Probe an exported function ({exported}), or an unstripped build",
            debug.display()
        ),
        (true, _) => format!(
            "symbol `{symbol}` is not among {shown}'s dynamic (exported) symbols, and the binary is stripped (no symbol table). Probe an exported function ({exported}), or an unstripped build"
        ),
    })
}

fn has_symbol(obj: &object::File<'_>, symbol: &str) -> bool {
    obj.dynamic_symbols()
        .chain(obj.symbols())
        .any(|s| s.name().is_ok_and(|n| n == symbol))
}

fn map(file: &Path) -> Result<memmap2::Mmap, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // SAFETY: a read-only private mapping, read once here and dropped; a binary truncated while
    // we read it is the only hazard, as for aya's own lookup at attach.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("{}: {e}", file.display()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uprobe_targets_are_named_as_a_user_would_fix_them() {
        let e = uprobe("bash", "readline").unwrap_err();
        assert!(
            e.contains("is a program name, not a path") && e.contains("/bash:readline"),
            "{e}"
        );
        let e = uprobe("/no/such/app", "main").unwrap_err();
        assert_eq!(e, "/no/such/app does not exist");
        let e = uprobe("/tmp", "main").unwrap_err();
        assert_eq!(e, "/tmp is not a file");
        let e = uprobe("/etc/hostname", "main").unwrap_err();
        assert!(e.contains("is not an ELF binary"), "{e}");
        // The test binary itself has a symbol table.
        let me = std::env::current_exe().expect("exe");
        let me = me.to_str().expect("utf-8");
        let e = uprobe(me, "no_such_function_xyz").unwrap_err();
        assert!(e.contains("is not in") && e.contains("nm -D"), "{e}");
        assert!(uprobe(me, "main").is_ok());
        assert!(
            uprobe("libc.so.6", "malloc").is_ok(),
            "library names are aya's to resolve"
        );
    }

    #[test]
    fn near_names_are_suggested() {
        let known = ["openat", "open", "read"];
        assert_eq!(
            did_you_mean("opnat", known.iter().copied()),
            " (did you mean `openat`?)"
        );
        assert_eq!(did_you_mean("frobnicate", known.iter().copied()), "");
    }

    #[test]
    fn processes_must_be_running() {
        let mut e = ConfigErrors::new();
        running(std::process::id(), "pid", &mut e);
        running(u32::MAX - 1, "profiles.pid", &mut e);
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "profiles.pid");
    }
}
