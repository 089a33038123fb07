//! Small Linux facts and syscalls the receiver needs: capabilities, interfaces, clocks, and the
//! batch lookup-and-delete that aya 0.14 does not wrap.

use crate::ProbeError;
use std::os::fd::RawFd;

/// Capabilities an eBPF receiver needs, with the bit of each in `CapEff`.
const NEEDED: [(&str, u32); 3] = [("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];
const CAP_SYS_ADMIN: u32 = 21;

/// The needed capabilities this process lacks (CAP_SYS_ADMIN stands in for BPF and PERFMON).
pub fn missing_capabilities() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    NEEDED
        .iter()
        .filter(|(name, bit)| !(has(*bit) || (*name != "CAP_NET_ADMIN" && has(CAP_SYS_ADMIN))))
        .map(|(name, _)| *name)
        .collect()
}

/// Index of an interface, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Every interface name in this network namespace.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// True for the loopback interface.
pub fn is_loopback(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/type")).is_ok_and(|t| t.trim() == "772")
}

/// The interface of the IPv4 (else IPv6) default route.
pub fn default_route_interface() -> Option<String> {
    let v4 = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|s| {
            s.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
            })
        });
    v4.or_else(|| {
        std::fs::read_to_string("/proc/net/ipv6_route")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 10
                        && f[0] == "00000000000000000000000000000000"
                        && f[1] == "00"
                        && f[9] != "lo")
                        .then(|| f[9].to_string())
                })
            })
    })
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unix ns minus kernel monotonic ns: add it to a `bpf_ktime_get_coarse_ns` value.
pub fn monotonic_to_unix_offset() -> u64 {
    clock(libc::CLOCK_REALTIME).wrapping_sub(clock(libc::CLOCK_MONOTONIC))
}

/// Unix time now, ns.
pub fn unix_now_ns() -> u64 {
    clock(libc::CLOCK_REALTIME)
}

/// `bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf(cmd, attr, sizeof attr)`: what it returns (an fd for some commands), or errno.
///
/// # Safety
/// `attr` must be the layout `cmd` expects, and every pointer in it must point at a buffer the
/// kernel may read or write as `cmd` says, alive across the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's promise; the size is `attr`'s own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

/// The leading fields of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

/// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// (type, key size, value size) of a map.
fn map_info(map_fd: RawFd) -> std::io::Result<(u32, u32, u32)> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: map_fd as u32,
        info_len: std::mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    // SAFETY: attr points at `info`, sized as told; both live across the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok((info.map_type, info.key_size, info.value_size))
}

/// Moves every entry of a hash map (plain or LRU, shared or per-CPU) out with
/// BPF_MAP_LOOKUP_AND_DELETE_BATCH, calling `each(key, values)` per entry: one value, or one per
/// possible CPU (`cpus`) for a per-CPU map. `K` and `V` must be the map's key and value types:
/// their sizes are checked against the map's before any buffer is handed to the kernel (a
/// mismatch would make it write past our buffers), and they are [`aya::Pod`] — plain data for
/// which every byte pattern the kernel writes is a valid value.
pub fn drain_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    map_fd: RawFd,
    cpus: usize,
    mut each: impl FnMut(&K, &[V]),
) -> std::io::Result<usize> {
    let (map_type, key_size, value_size) = map_info(map_fd)?;
    let invalid = |what: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
    let (cpus, slot) = match map_type {
        // The kernel lays per-CPU values out 8-byte aligned.
        BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH => {
            (cpus, (value_size as usize).next_multiple_of(8))
        }
        BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH => (1, value_size as usize),
        _ => return invalid(format!("map type {map_type} is not a hash map")),
    };
    if std::mem::size_of::<K>() != key_size as usize || std::mem::size_of::<V>() != slot {
        return invalid(format!(
            "the map's key/value sizes are {key_size}/{value_size} bytes, the reader's {}/{}",
            std::mem::size_of::<K>(),
            std::mem::size_of::<V>()
        ));
    }
    let mut chunk = 4096usize;
    let mut token = 0u32;
    let mut first = true;
    let mut total = 0;
    loop {
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk * cpus];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token as *mut u32 as u64
            },
            out_batch: &mut token as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers sized for `chunk` keys and `chunk * cpus` values, as
        // the kernel expects for this map (cpus = 1 unless per-CPU); all live across the call.
        let err = unsafe { bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) }.err();
        for i in 0..attr.count as usize {
            each(&keys[i], &values[i * cpus..(i + 1) * cpus]);
        }
        total += attr.count as usize;
        match err {
            None => first = false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            // A bucket holds more entries than fit: retry it with room for them.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => chunk *= 4,
            Some(e) => return Err(e),
        }
    }
}

/// `bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs a loaded program `repeat` times in the kernel on `frame` (BPF_PROG_TEST_RUN); returns the
/// average ns per run as the kernel measured it.
pub fn test_run(prog_fd: RawFd, frame: &[u8], repeat: u32) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: attr points at `frame`, which outlives the call; no output buffers are passed.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(attr.duration)
}

/// A 60-byte Ethernet/IPv4/UDP frame (10.0.0.1:40000 → 10.0.0.2:53) for test runs.
pub fn sample_frame() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f
}

/// A program of a loaded object as its type (`Xdp`, `TracePoint`, ...).
pub fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::NoProgram(name.to_string()))?
        .try_into()
        .map_err(|source| ProbeError::ProgramType {
            name: name.to_string(),
            source,
        })
}

/// A loader for the span and profile objects: their per-thread `THREADS` is task storage,
/// which aya creates but has no user-space type for (oxeye never reads it from user space).
pub fn thread_state_loader<'a>() -> aya::EbpfLoader<'a> {
    let mut l = aya::EbpfLoader::new();
    l.allow_unsupported_maps();
    l
}

/// This architecture's number of syscall `name` (as the `syscalls:` tracepoints name it).
pub fn syscall_number(name: &str) -> Option<u32> {
    name.parse::<syscalls::Sysno>().ok().map(|s| s.id() as u32)
}

/// The tracefs mount, mounting it at /sys/kernel/tracing if nothing is mounted yet.
pub fn tracefs() -> Result<std::path::PathBuf, ProbeError> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(p).join("events").is_dir() {
            return Ok(p.into());
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Kernel(format!(
            "tracefs is not mounted and mounting it failed ({}); mount it: mount -t tracefs nodev /sys/kernel/tracing",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok("/sys/kernel/tracing".into())
}

#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    _reserved2: u16,
    aux_sample_size: u32,
    _reserved3: u32,
    sig_data: u64,
    config3: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;

/// Attaches a loaded tracepoint program to tracepoint `id` with a BPF cookie (the span source),
/// which aya 0.14's `TracePoint::attach` cannot set. Dropping the returned fds detaches.
pub fn attach_tracepoint_with_cookie(
    prog_fd: RawFd,
    id: u64,
    cookie: u64,
) -> std::io::Result<[std::os::fd::OwnedFd; 2]> {
    use std::os::fd::FromRawFd;
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: perf_event_open with an attr of the declared size; pid -1, cpu 0 as for BPF tracepoints.
    let perf = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if perf < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("perf_event_open: {e}"),
        ));
    }
    // SAFETY: a fresh fd we own.
    let perf = unsafe { std::os::fd::OwnedFd::from_raw_fd(perf as RawFd) };
    // bpf_attr.link_create: prog_fd, target_fd, attach_type, flags, then perf_event.bpf_cookie.
    let mut attr = [0u64; 16];
    attr[0] =
        prog_fd as u32 as u64 | ((std::os::fd::AsRawFd::as_raw_fd(&perf) as u32 as u64) << 32);
    attr[1] = BPF_PERF_EVENT as u64;
    attr[2] = cookie;
    // SAFETY: attr is a zeroed bpf_attr-sized buffer with the link_create fields set.
    let link = unsafe { bpf(BPF_LINK_CREATE, &mut attr) }
        .map_err(|e| std::io::Error::new(e.kind(), format!("BPF_LINK_CREATE: {e}")))?;
    // SAFETY: a fresh fd we own.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(link as RawFd) };
    Ok([link, perf])
}

/// Address of a kernel function from /proc/kallsyms (root sees real addresses).
pub fn kallsyms_address(func: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
        (name == func && matches!(kind, "t" | "T"))
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of a kernel release such as `6.1.0-57-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The BPF ring buffer's first kernel: spans and profiles need it, flows do not.
pub const RINGBUF_KERNEL: (u32, u32) = (5, 8);

/// `error` from loading programs that use the BPF ring buffer, naming the missing feature and
/// the kernel that has it when `release` is older.
pub fn explain_load_error(what: &str, error: String, release: &str) -> String {
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    explain_load_error_for(what, error, release, btf)
}

fn explain_load_error_for(what: &str, error: String, release: &str, btf: bool) -> String {
    let v = kernel_version(release);
    if v.is_some_and(|v| v < RINGBUF_KERNEL) {
        format!(
            "{what}: this kernel ({release}) has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux {}.{} or later), which spans and profiles need (and flows need Linux {}.{}): upgrade the kernel ({error})",
            RINGBUF_KERNEL.0, RINGBUF_KERNEL.1, ATOMIC_OR_KERNEL.0, ATOMIC_OR_KERNEL.1
        )
    } else if v.is_some_and(|v| v < TASK_STORAGE_KERNEL) {
        format!(
            "{what}: this kernel ({release}) has no task-local storage for tracing programs (BPF_MAP_TYPE_TASK_STORAGE, Linux {}.{} or later), where spans and profiles keep per-thread state (flows need that kernel too): upgrade the kernel ({error})",
            TASK_STORAGE_KERNEL.0, TASK_STORAGE_KERNEL.1
        )
    } else if !btf {
        format!(
            "{what}: this kernel ({release}) has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF), which the per-thread task storage of spans and profiles needs; flows work without it: use a kernel built with BTF (Debian's have it since Debian 11) or use only `flows:` ({error})"
        )
    } else {
        format!("{what}: {error}")
    }
}

/// Task-local storage in tracing programs (span and profile per-thread state).
pub const TASK_STORAGE_KERNEL: (u32, u32) = (5, 12);

/// BPF atomic OR (and the other atomics beyond add): the flow programs OR TCP flags into the
/// flow map shared by all CPUs.
pub const ATOMIC_OR_KERNEL: (u32, u32) = (5, 12);

/// `error` from loading the flow programs, naming BPF atomic OR and the kernel that has it
/// when `release` is older.
pub fn explain_flow_load_error(what: &str, error: String, release: &str) -> String {
    if kernel_version(release).is_some_and(|v| v < ATOMIC_OR_KERNEL) {
        format!(
            "{what}: this kernel ({release}) has no BPF atomic OR (Linux {}.{} or later), which the flow programs use to merge counters into the flow map all CPUs share: upgrade the kernel ({error})",
            ATOMIC_OR_KERNEL.0, ATOMIC_OR_KERNEL.1
        )
    } else {
        format!("{what}: {error}")
    }
}

/// Why kernel BTF is missing and what works without it.
pub fn no_btf(error: impl std::fmt::Display) -> String {
    format!(
        "no kernel BTF (/sys/kernel/btf/vmlinux: a kernel built with CONFIG_DEBUG_INFO_BTF, Linux 5.4 or later; Debian's kernels have it since Debian 11): fentry/fexit need it (Linux 5.5 or later), and so do all spans and profiles (their per-thread task storage); flows work without it ({error})"
    )
}

/// Writes `values` at keys `first..` of an array map in one `BPF_MAP_UPDATE_BATCH` (Linux 5.6).
pub(crate) fn update_batch(
    map: std::os::fd::BorrowedFd<'_>,
    first: u32,
    values: &[u64],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let keys: Vec<u32> = (first..first + values.len() as u32).collect();
    let mut attr = Batch {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is the batch command's layout; `keys` and `values` outlive the call and
    // hold `count` elements of the map's key and value sizes (u32, u64).
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    if attr.count as usize != values.len() {
        return Err(std::io::Error::other("batch update stopped short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// `bpf_attr` for BPF_MAP_CREATE (leading fields).
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    fn create(map_type: u32, key_size: u32, value_size: u32) -> Option<OwnedFd> {
        let mut attr = CreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries: 16,
            ..CreateAttr::default()
        };
        // SAFETY: a BPF_MAP_CREATE attr that lives across the call; a returned fd is ours.
        let fd = unsafe { bpf(0, &mut attr) }.ok()?;
        // SAFETY: a fresh fd owned by nobody else.
        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    #[test]
    fn drain_refuses_types_that_do_not_match_the_map() {
        use std::os::fd::AsRawFd;
        // Needs CAP_BPF (the test tiers run as root); say so rather than pass silently.
        let Some(map) = create(BPF_MAP_TYPE_PERCPU_HASH, 4, 12) else {
            assert!(
                !missing_capabilities().is_empty(),
                "BPF_MAP_CREATE failed as root: {}",
                std::io::Error::last_os_error()
            );
            eprintln!("skipped: needs root");
            return;
        };
        let cpus = aya::util::nr_cpus().expect("cpus");
        let e = drain_hash::<u64, u64>(map.as_raw_fd(), cpus, |_, _| {})
            .expect_err("u64 keys on a 4-byte-key map");
        assert!(e.to_string().contains("key/value sizes are 4/12"), "{e}");
        // A 12-byte value takes a 16-byte slot per CPU.
        assert!(drain_hash::<u32, [u64; 2]>(map.as_raw_fd(), cpus, |_, _| {}).is_ok());
        // A shared map has one value per key, not padded.
        let plain = create(BPF_MAP_TYPE_LRU_HASH, 4, 12).expect("hash map");
        assert!(drain_hash::<u32, [u32; 3]>(plain.as_raw_fd(), cpus, |_, _| {}).is_ok());
        let e = drain_hash::<u32, [u64; 2]>(plain.as_raw_fd(), cpus, |_, _| {})
            .expect_err("12-byte values read as 16");
        assert!(e.to_string().contains("key/value sizes are 4/12"), "{e}");
        let array = create(2, 4, 8).expect("array map");
        let e =
            drain_hash::<u32, u64>(array.as_raw_fd(), cpus, |_, _| {}).expect_err("not a hash map");
        assert!(e.to_string().contains("not a hash map"), "{e}");
    }

    #[test]
    fn kernel_features_name_the_kernel_that_has_them() {
        assert_eq!(kernel_version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.12.117+deb12-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("unknown"), None);
        let old = explain_load_error_for(
            "loading the span programs",
            "EINVAL".into(),
            "5.4.0-1",
            true,
        );
        assert!(old.contains("no BPF ring buffer"), "{old}");
        assert!(old.contains("Linux 5.8 or later"), "{old}");
        assert!(
            old.contains("(5.4.0-1)") && old.ends_with("(EINVAL)"),
            "{old}"
        );
        let no_storage = explain_load_error_for(
            "loading the span programs",
            "EINVAL".into(),
            "5.10.0-9",
            true,
        );
        assert!(
            no_storage.contains("BPF_MAP_TYPE_TASK_STORAGE, Linux 5.12 or later"),
            "{no_storage}"
        );
        assert!(!no_storage.contains("flows work"), "{no_storage}");
        assert!(
            explain_load_error_for("x", "EINVAL".into(), "5.4.0-1", true)
                .contains("flows need Linux 5.12"),
        );
        let flows = explain_flow_load_error(
            "the kernel rejected the XDP program",
            "EINVAL".into(),
            "5.10.0-9",
        );
        assert!(
            flows.contains("BPF atomic OR (Linux 5.12 or later)") && flows.ends_with("(EINVAL)"),
            "{flows}"
        );
        assert_eq!(
            explain_flow_load_error("x", "EPERM".into(), "6.1.0-57-amd64"),
            "x: EPERM"
        );
        let no_btf_here = explain_load_error_for(
            "loading the span programs",
            "EINVAL".into(),
            "6.1.0-57",
            false,
        );
        assert!(
            no_btf_here.contains("CONFIG_DEBUG_INFO_BTF"),
            "{no_btf_here}"
        );
        assert_eq!(
            explain_load_error_for(
                "loading the span programs",
                "EPERM".into(),
                "6.1.0-57-amd64",
                true
            ),
            "loading the span programs: EPERM"
        );
        let btf = no_btf("ENOENT");
        assert!(
            btf.contains("CONFIG_DEBUG_INFO_BTF") && btf.contains("Linux 5.4"),
            "{btf}"
        );
        assert!(btf.contains("flows work without it"), "{btf}");
    }
}
