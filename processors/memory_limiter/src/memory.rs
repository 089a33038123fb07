//! Reading memory: the process's resident set, and the total it may use (its cgroup's limit
//! when one is set, else the machine's memory).

use std::path::PathBuf;

/// Resident memory of this process, in bytes (`/proc/self/statm`, field 2, in pages).
pub(crate) fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Hands memory the allocator holds but no longer uses back to the system. oxeye's binary
/// allocates with mimalloc; in a binary that does not, mimalloc holds nothing and this does nothing.
pub(crate) fn release() {
    // SAFETY: mi_collect only walks mimalloc's own free lists and arenas; it is thread-safe.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; it has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The memory this process may use: its cgroup v2 `memory.max` when that is a number, else
/// `MemTotal` from `/proc/meminfo`.
pub(crate) fn total() -> Option<u64> {
    cgroup_limit().or_else(machine_total)
}

fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = PathBuf::from("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.max");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn machine_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_and_total_are_read() {
        let rss = resident().expect("statm");
        let total = total().expect("meminfo");
        assert!(rss > 1 << 20, "{rss}");
        assert!(total > rss, "{total} vs {rss}");
        // Resident memory follows what is touched.
        let block = vec![1u8; 64 << 20];
        let after = resident().expect("statm");
        assert!(after >= rss + (48 << 20), "{rss} -> {after}");
        drop(block);
    }
}
