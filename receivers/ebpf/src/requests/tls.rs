//! `tls: true`: the libssl libraries to put the `SSL_read`/`SSL_write` uprobes on, and the
//! attaching. The programs see plaintext only in processes that call the system's (or their
//! own shared) OpenSSL; a program with TLS linked in statically, or another TLS library (Go's
//! crypto/tls, rustls, BoringSSL, GnuTLS), is not seen, and the messages here say so.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;

use crate::{sys, ProbeError, RequestsConfig};

/// Each entry program and the function it runs at; `required`: OpenSSL has had it always
/// (the `_ex` forms came with 1.1.1).
const PROBES: &[(&str, &str, bool)] = &[
    ("oxeye_l7_ssl_read", "SSL_read", true),
    ("oxeye_l7_ssl_write", "SSL_write", true),
    ("oxeye_l7_ssl_read_ex", "SSL_read_ex", false),
    ("oxeye_l7_ssl_write_ex", "SSL_write_ex", false),
];
/// The return program, at every function of `PROBES`.
const RETURN: &str = "oxeye_l7_ssl_return";

/// Where distributions keep shared libraries (for processes that start later).
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// A libssl to probe, and whether it has the `_ex` functions.
#[derive(Debug, PartialEq)]
pub(crate) struct Library {
    pub path: PathBuf,
    pub has_ex: bool,
}

/// The libssl files the filters' processes use: the one `pid` has mapped (an error when it has
/// none), or those in the library directories and in any running process's maps (`comm`
/// narrows that to its processes). Warnings: running processes of `comm` without libssl.
pub(crate) fn libraries(cfg: &RequestsConfig) -> Result<(Vec<Library>, Vec<String>), String> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut warnings = Vec::new();
    if let Some(pid) = cfg.pid {
        let mapped = mapped_libssl(pid);
        if mapped.is_empty() {
            return Err(format!(
                "process {pid} ({}) does not load libssl (no libssl.so* in /proc/{pid}/maps): TLS plaintext is seen only in processes that call OpenSSL's shared libssl; a program with TLS linked in statically or another TLS library (Go crypto/tls, rustls, BoringSSL, GnuTLS) is not seen",
                comm_of(pid).unwrap_or_else(|| "not running".into())
            ));
        }
        found.extend(mapped);
    } else {
        for dir in LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if is_libssl(&e.file_name().to_string_lossy()) {
                    found.push(e.path());
                }
            }
        }
        for pid in processes() {
            let matches = cfg
                .comm
                .as_deref()
                .is_none_or(|c| comm_of(pid).as_deref() == Some(c));
            if !matches {
                continue;
            }
            let mapped = mapped_libssl(pid);
            if mapped.is_empty() && cfg.comm.is_some() {
                warnings.push(format!(
                    "requests.tls: process {pid} ({}) does not load libssl: its TLS connections are not seen",
                    cfg.comm.as_deref().unwrap_or_default()
                ));
            }
            found.extend(mapped);
        }
    }
    // One probe per file, however many names it has.
    let mut seen = HashSet::new();
    let mut libraries = Vec::new();
    for path in found {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let has = |symbol| crate::preflight::find_symbol(&path, symbol).is_ok();
        if let Some((_, missing, _)) = PROBES.iter().find(|(_, f, required)| *required && !has(f)) {
            warnings.push(format!(
                "requests.tls: {} has no {missing}: not an OpenSSL libssl, left out",
                path.display()
            ));
            continue;
        }
        let has_ex = has("SSL_read_ex") && has("SSL_write_ex");
        libraries.push(Library { path, has_ex });
    }
    if libraries.is_empty() {
        return Err(format!(
            "no OpenSSL libssl.so* on this host (looked in {} and in the maps of running processes){}: TLS plaintext is seen through OpenSSL's shared libssl",
            LIBRARY_DIRS.join(", "),
            if warnings.is_empty() { String::new() } else { format!(" ({})", warnings.join("; ")) }
        ));
    }
    Ok((libraries, warnings))
}

/// Loads (verifies) the uprobe programs: while the maps they use are open, as with the others.
pub(crate) fn load(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for prog in std::iter::once(RETURN).chain(PROBES.iter().map(|(p, _, _)| *p)) {
        let p: &mut UProbe = sys::program(ebpf, prog)?;
        p.load().map_err(|source| ProbeError::Rejected {
            program: prog.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Attaches the return program, then the entry programs, to each library (a return without
/// its entry is ignored; the other order could leave an entry without its return). A library
/// that cannot be probed (gone since it was found: a short-lived process's) is left out with a
/// warning; none probed is an error. Returns the libraries probed.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    libraries: &[Library],
    pid: Option<u32>,
) -> Result<Vec<String>, ProbeError> {
    let mut probed = Vec::new();
    let mut last = None;
    for lib in libraries {
        match attach_one(ebpf, lib, pid) {
            Ok(()) => probed.push(lib.path.display().to_string()),
            Err(e) => {
                tracing::warn!("requests.tls: {} left out: {e}", lib.path.display());
                last = Some(e);
            }
        }
    }
    match last {
        Some(e) if probed.is_empty() => Err(e),
        _ => Ok(probed),
    }
}

fn attach_one(ebpf: &mut Ebpf, lib: &Library, pid: Option<u32>) -> Result<(), ProbeError> {
    let scope = match pid.and_then(std::num::NonZeroU32::new) {
        Some(pid) => UProbeScope::OneProcess(pid),
        None => UProbeScope::AllProcesses,
    };
    for (entry, symbol, required) in PROBES {
        if !required && !lib.has_ex {
            continue;
        }
        for prog in [RETURN, entry] {
            let p: &mut UProbe = sys::program(ebpf, prog)?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(symbol),
                cookie: None,
            };
            p.attach(point, &lib.path, scope)
                .map_err(|source| ProbeError::Attach {
                    what: format!(
                        "requests.tls: attaching {prog} to {}:{symbol}",
                        lib.path.display()
                    ),
                    source,
                })?;
        }
    }
    Ok(())
}

fn is_libssl(name: &str) -> bool {
    name.starts_with("libssl.so")
}

/// The libssl files process `pid` has mapped, as paths this process can open (through the
/// process's root, so a container's library is found too).
fn mapped_libssl(pid: u32) -> Vec<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(path)) = (fields.next(), fields.nth(4)) else {
            continue;
        };
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy());
        if name.is_some_and(|n| is_libssl(&n)) {
            // A library replaced on disk since the process mapped it (an upgrade) is open
            // through map_files: its path now names the new file, not the one running.
            let full = if line.ends_with(" (deleted)") {
                PathBuf::from(format!("/proc/{pid}/map_files/{range}"))
            } else {
                PathBuf::from(format!("/proc/{pid}/root{path}"))
            };
            if !out.contains(&full) {
                out.push(full);
            }
        }
    }
    out
}

fn processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_libssl_is_named() {
        // This test binary links no OpenSSL.
        let cfg = RequestsConfig {
            pid: Some(std::process::id()),
            ..RequestsConfig::default()
        };
        let e = libraries(&cfg).unwrap_err();
        assert!(e.contains("does not load libssl"), "{e}");
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
    }

    #[test]
    fn the_system_libssl_is_found_once() {
        // tests/setup.sh installs nginx, which brings OpenSSL's libssl.
        let (libs, _) = libraries(&RequestsConfig::default()).expect("found");
        let mut inodes: Vec<u64> = libs
            .iter()
            .map(|l| std::fs::metadata(&l.path).unwrap().ino())
            .collect();
        let n = inodes.len();
        inodes.sort();
        inodes.dedup();
        assert_eq!(n, inodes.len(), "{libs:?}");
    }
}
