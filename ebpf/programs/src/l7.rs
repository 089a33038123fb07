//! Requests (L7): the connections processes accept and make, and the first bytes of what they
//! read and write on them, for user space to parse into request spans.
//!
//! Syscall exit tracepoints only (what every kernel with tracepoints has; no entry programs:
//! a call's arguments are read at its exit from the registers the kernel saved at its entry,
//! `bpf_task_pt_regs`): `accept`/`accept4` and `connect` exits start tracking a connection (`L7_CONNS`, keyed by process and fd, with its
//! addresses read from the socket at offsets user space takes from the kernel's BTF); `read`,
//! `write`, `readv`, `writev`, `recvfrom`, `sendto`, `recvmsg`, `sendmsg`, `recvmmsg`,
//! `sendmmsg` (their first message) and `sendfile` on a tracked connection write one [`L7Event`] each with up to `capture_bytes` of the data;
//! `close` ends the tracking. The protocol is detected from the first message: a connection
//! that speaks none of the configured protocols is marked and costs one map lookup a call from
//! then on, as does any untracked fd.
//!
//! TLS (with `L7_FOLLOW_TLS`): a connection whose first bytes are a TLS record is marked `tls`
//! and its socket data is not captured. Uprobes on libssl's `SSL_read`/`SSL_write` (and `_ex`)
//! capture the plaintext instead. Which connection an `SSL` object speaks on is learnt from the
//! socket call it makes while inside an `SSL_*` call (`L7_SSL_FDS`): no offsets into OpenSSL's
//! private structures.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        generated,
    },
    macros::{btf_map, map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
mod task_storage;
use oxeye_ebpf::helpers::kernel;
use oxeye_ebpf_common::{
    L7Config, L7Conn, L7Event, SocketOffsets, L7_CLOSE, L7_C_CONNECTIONS, L7_C_EVENTS,
    L7_C_MAP_FULL, L7_C_OTHER_PROTOCOL, L7_C_RINGBUF_FULL, L7_C_SOCKET_UNREADABLE,
    L7_C_TLS_NO_PLAINTEXT, L7_C_TLS_UNLINKED, L7_C_TRUNCATED, L7_DATA_MAX, L7_EVENT_LEN,
    L7_FOLLOW_TLS, L7_MAX_PORTS, L7_READ, L7_WRITE, PROTO_DNS, PROTO_HTTP, PROTO_OTHER,
    PROTO_REDIS, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER,
};
use task_storage::TaskStorage;

#[map]
static L7_CONFIG: Array<L7Config> = Array::with_max_entries(1, 0);
#[map]
static L7_OFFSETS: Array<SocketOffsets> = Array::with_max_entries(1, 0);
/// `pid << 32 | fd` → connection. User space sets the size (`max_connections`) and removes
/// the entries of processes that exited without closing.
#[map]
static L7_CONNS: HashMap<u64, L7Conn> = HashMap::with_max_entries(65536, 0);
/// User space sets the size (`ring_size`).
#[map]
static L7_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
/// Where an event is put together before it is copied to the ring at its own length.
#[map]
static L7_SCRATCH: PerCpuArray<[u8; L7_EVENT_LEN + L7_DATA_MAX]> =
    PerCpuArray::with_max_entries(1, 0);
/// Indexed by `L7_C_*`.
#[map]
static L7_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(16, 0);
/// Processes with tracked connections, by `pid & 0xffff` (never cleared: a stale bit costs only
/// a map lookup): a call of any other process returns after this one array read, which the
/// verifier inlines, instead of a hash lookup.
#[map]
static L7_PIDS: Array<u8> = Array::with_max_entries(65536, 0);
/// Per-CPU count of connections, for their ids.
#[map]
static L7_NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A data call at its exit: its arguments and when it returned.
#[derive(Clone, Copy)]
struct Pending {
    /// `CALL_*` with `BUF_*`.
    call: u32,
    /// The data buffer, iovec array or msghdr, by call.
    buf: u64,
    /// A plain buffer's size (a truncated datagram's return can exceed it).
    size: u64,
}

/// An `SSL_read`/`SSL_write` (or `_ex`) in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct SslCall {
    /// The `SSL *` (0: no call in progress).
    ssl: u64,
    buf: u64,
    /// `_ex` calls: where the byte count is written; 0 for the others.
    count_at: u64,
    /// The buffer's size argument.
    size: u64,
    start_ns: u64,
    /// The socket the call used, when it made a socket call (`u32::MAX`: none yet).
    fd: u32,
    /// L7_READ or L7_WRITE.
    kind: u32,
}

#[btf_map]
static L7_SSL: TaskStorage<SslCall> = TaskStorage::new();

/// `[tgid, SSL *]` → the fd that `SSL` object was last seen using. LRU: an object freed
/// without notice leaves only a stale entry that newer ones push out.
#[map]
static L7_SSL_FDS: LruHashMap<[u64; 2], u32> = LruHashMap::with_max_entries(65536, 0);

/// Wake the reader once this many bytes wait in the ring (set at load).
#[unsafe(no_mangle)]
static L7_WAKEUP_BYTES: u64 = 262144;

const CALL_READ: u32 = 3;
const CALL_WRITE: u32 = 4;

/// How a data call's buffer argument points at its bytes.
const BUF_PLAIN: u32 = 0;
/// An iovec array (readv, writev): the first iovec is captured.
const BUF_IOV: u32 = 1 << 4;
/// A msghdr (recvmsg, sendmsg): its first iovec is captured.
const BUF_MSG: u32 = 2 << 4;
/// No bytes to capture (sendfile: the count only).
const BUF_NONE: u32 = 3 << 4;
/// An mmsghdr array (recvmmsg, sendmmsg): the first message's first iovec is captured, and
/// its length (not the call's return, a message count) is the event's byte count.
const BUF_MMSG: u32 = 4 << 4;

/// `recv*` flag: look without taking.
const MSG_PEEK: u64 = 2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn count(counter: u32) {
    if let Some(c) = L7_COUNTERS.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn conn_key(fd: u64) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff)
}

/// Whether the current task passes the pid, comm and cgroup filters.
#[inline(always)]
fn admitted(cfg: &L7Config) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if (cfg.pid != 0 && cfg.pid != tgid) || tgid == cfg.exclude_pid {
        return false;
    }
    if cfg.comm[0] != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let (a, b) = (comm.as_ptr() as *const u64, cfg.comm.as_ptr() as *const u64);
        if unsafe { a.read_unaligned() != b.read() || a.add(1).read_unaligned() != b.add(1).read() }
        {
            return false;
        }
    }
    cfg.cgroup_id == 0 || unsafe { bpf_get_current_cgroup_id() } == cfg.cgroup_id
}

#[inline(always)]
fn user<T: Copy>(at: u64) -> Option<T> {
    if at == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(at as *const T) }.ok()
}

/// The addresses of the socket open as `fd` in the current task: task → files → fdtable →
/// file → socket → sock.
#[inline(always)]
fn socket_of(fd: u64, role: u8) -> Option<L7Conn> {
    let o = L7_OFFSETS.get(0)?;
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kernel(task, o.task_files)?;
    let fdt: u64 = kernel(files, o.files_fdt)?;
    let fds: u64 = kernel(fdt, o.fdt_fd)?;
    let file: u64 = kernel(fds + (fd & 0xffff_ffff) * 8, 0)?;
    let sock: u64 = kernel(file, o.file_private_data)?;
    let sk: u64 = kernel(sock, o.socket_sk)?;
    let family: u16 = kernel(sk, o.skc_family)?;
    let mut c = L7Conn {
        role,
        family,
        sock_type: kernel::<u16>(sk, o.sk_type).unwrap_or(0) as u8,
        local_port: kernel(sk, o.skc_num)?,
        remote_port: u16::from_be(kernel(sk, o.skc_dport)?),
        ..L7Conn::default()
    };
    match family {
        AF_INET => {
            let l: [u8; 4] = kernel(sk, o.skc_rcv_saddr)?;
            let r: [u8; 4] = kernel(sk, o.skc_daddr)?;
            c.local[..4].copy_from_slice(&l);
            c.remote[..4].copy_from_slice(&r);
        }
        AF_INET6 => {
            c.local = kernel(sk, o.skc_v6_rcv_saddr)?;
            c.remote = kernel(sk, o.skc_v6_daddr)?;
        }
        _ => return None,
    }
    Some(c)
}

/// Whether the connection's server port (local for a server, peer for a client) is one of the
/// configured ports (any, when none is configured).
#[inline(always)]
fn port_wanted(cfg: &L7Config, c: &L7Conn) -> bool {
    let port = if c.role == ROLE_SERVER {
        c.local_port
    } else {
        c.remote_port
    };
    if cfg.ports[0] == 0 {
        return true;
    }
    let mut hit = false;
    for i in 0..L7_MAX_PORTS {
        hit |= cfg.ports[i] == port;
    }
    hit
}

/// Starts tracking the connection just opened as `fd`.
#[inline(always)]
fn track(fd: u64, role: u8) {
    let Some(cfg) = L7_CONFIG.get(0) else { return };
    // Whatever was tracked under this fd before is gone: its close was missed (dup2, exec,
    // close_range).
    let key = conn_key(fd);
    if let Some(old) = unsafe { L7_CONNS.get(&key) }.copied() {
        let _ = L7_CONNS.remove(&key);
        if old.proto != PROTO_OTHER {
            let now = unsafe { bpf_ktime_get_ns() };
            emit(&old, L7_CLOSE, fd, now, now, 0, 0, 0);
        }
    }
    let Some(mut c) = socket_of(fd, role) else {
        count(L7_C_SOCKET_UNREADABLE);
        return;
    };
    if !port_wanted(cfg, &c) {
        return;
    }
    let Some(n) = L7_NEXT_ID.get_ptr_mut(0) else {
        return;
    };
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    unsafe { *n += 1 };
    c.id = (unsafe { *n } << 12) | (cpu & 0xfff);
    if cfg.protocols & (1 << PROTO_DNS) != 0
        && ((role == ROLE_SERVER && c.local_port == 53)
            || (role == ROLE_CLIENT && c.remote_port == 53))
    {
        c.proto = PROTO_DNS;
    }
    if L7_CONNS.insert(&conn_key(fd), &c, BPF_ANY as u64).is_err() {
        count(L7_C_MAP_FULL);
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(bit) = L7_PIDS.get_ptr_mut(tgid & 0xffff) {
        unsafe { *bit = 1 };
    }
    count(L7_C_CONNECTIONS);
}

/// The current syscall's first four arguments, from the registers saved at its entry: on
/// x86-64 one read of the window that holds them all.
#[inline(always)]
fn args() -> Option<[u64; 4]> {
    let o = L7_OFFSETS.get(0)?;
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as u64;
    if o.args_window != u32::MAX {
        let w: [u64; 8] = kernel(regs, o.args_window)?;
        return Some([w[7], w[6], w[5], w[0]]);
    }
    Some([
        kernel(regs, o.args[0])?,
        kernel(regs, o.args[1])?,
        kernel(regs, o.args[2])?,
        kernel(regs, o.args[3])?,
    ])
}

#[tracepoint]
pub fn oxeye_l7_accept_exit(ctx: TracePointContext) -> u32 {
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret >= 0 && L7_CONFIG.get(0).is_some_and(admitted) {
        track(ret as u64, ROLE_SERVER);
    }
    0
}

#[tracepoint]
pub fn oxeye_l7_connect_exit(ctx: TracePointContext) -> u32 {
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if (ret == 0 || ret == -EINPROGRESS) && L7_CONFIG.get(0).is_some_and(admitted) {
        if let Some([fd, ..]) = args() {
            track(fd & 0xffff_ffff, ROLE_CLIENT);
        }
    }
    0
}

#[tracepoint]
pub fn oxeye_l7_close(ctx: TracePointContext) -> u32 {
    if !pid_tracked() {
        return 0;
    }
    let fd: u64 = unsafe { ctx.read_at(16) }.unwrap_or(u64::MAX);
    let key = conn_key(fd);
    let Some(c) = (unsafe { L7_CONNS.get(&key) }).copied() else {
        return 0;
    };
    let _ = L7_CONNS.remove(&key);
    if c.tls != 0 && c.proto == PROTO_UNKNOWN {
        count(L7_C_TLS_NO_PLAINTEXT);
    }
    if c.proto != PROTO_OTHER {
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&c, L7_CLOSE, fd, now, now, 0, 0, 0);
    }
    0
}

/// Whether the current process may have tracked connections (see `L7_PIDS`).
#[inline(always)]
fn pid_tracked() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    L7_PIDS.get(tgid & 0xffff).is_some_and(|b| *b != 0)
}

/// Where the bytes of a data call start, how many of them one read can take, and how many the
/// call moved (for all but mmsg calls, its return).
#[inline(always)]
fn data_start(p: &Pending, ret: u64) -> Option<(u64, u64, u64)> {
    match p.call & 0xf0 {
        BUF_PLAIN => Some((p.buf, ret.min(p.size), ret)),
        BUF_IOV => {
            let base: u64 = user(p.buf)?;
            let len: u64 = user(p.buf + 8)?;
            Some((base, len.min(ret), ret))
        }
        BUF_MSG => {
            // struct user_msghdr: msg_iov at 16.
            let iov: u64 = user(p.buf + 16)?;
            let base: u64 = user(iov)?;
            let len: u64 = user(iov + 8)?;
            Some((base, len.min(ret), ret))
        }
        BUF_MMSG => {
            // struct mmsghdr: a user_msghdr (56 bytes), then msg_len.
            let moved = user::<u32>(p.buf + 56)? as u64;
            let iov: u64 = user(p.buf + 16)?;
            let base: u64 = user(iov)?;
            let len: u64 = user(iov + 8)?;
            Some((base, len.min(moved), moved))
        }
        _ => None,
    }
}

/// The protocol the first bytes of a connection speak (among the configured ones).
#[inline(always)]
fn detect(cfg: &L7Config, head: u64) -> u8 {
    let w = head as u32;
    let http = [
        *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"PATC", *b"OPTI", *b"CONN", *b"TRAC",
        *b"HTTP",
    ];
    if cfg.protocols & (1 << PROTO_HTTP) != 0 {
        let mut hit = false;
        for m in http {
            hit |= w == u32::from_le_bytes(m);
        }
        if hit {
            return PROTO_HTTP;
        }
    }
    let (b0, b1) = (head as u8, (head >> 8) as u8);
    if cfg.protocols & (1 << PROTO_REDIS) != 0 && b0 == b'*' && b1.is_ascii_digit() {
        return PROTO_REDIS;
    }
    PROTO_OTHER
}

/// Exit of a data call: the event, with the first bytes. `flags_arg`: which argument holds
/// its `recv` flags (0: it has none).
#[inline(always)]
fn data_exit(ctx: &TracePointContext, call: u32, kind: u8, flags_arg: usize) -> u32 {
    if !pid_tracked() {
        return 0;
    }
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret <= 0 {
        return 0;
    }
    let end_ns = unsafe { bpf_ktime_get_ns() };
    let Some(a) = args() else { return 0 };
    let fd = a[0] & 0xffff_ffff;
    let Some(c) = L7_CONNS.get_ptr_mut(&conn_key(fd)) else {
        return 0;
    };
    // A peek reads what the next read reads again: only the real read is captured.
    if flags_arg != 0 && a[flags_arg & 3] & MSG_PEEK != 0 {
        return 0;
    }
    let p = Pending {
        call,
        buf: a[1],
        // A plain buffer's size is the third argument of read, write, recvfrom and sendto.
        size: if call & 0xf0 == BUF_PLAIN {
            a[2]
        } else {
            u64::MAX
        },
    };
    let c = unsafe { &mut *c };
    if c.tls != 0 {
        // Ciphertext: the plaintext comes from the SSL uprobes; learn which SSL object this is.
        ssl_link(fd);
        return 0;
    }
    if c.proto == PROTO_OTHER {
        return 0;
    }
    let Some(cfg) = L7_CONFIG.get(0) else {
        return 0;
    };
    let (start, len, moved) = data_start(&p, ret as u64).unwrap_or((0, 0, ret as u64));
    if moved == 0 {
        return 0;
    }
    if c.proto == PROTO_UNKNOWN && p.call & 0xf0 != BUF_NONE && len >= 4 {
        let head = user::<u32>(start).unwrap_or(0);
        // A TLS record: content type 20..=23 (handshake, alert...), then version 3.x.
        if cfg.protocols & L7_FOLLOW_TLS != 0
            && (20..=23).contains(&(head as u8))
            && (head >> 8) as u8 == 3
        {
            c.tls = 1;
            ssl_link(fd);
            return 0;
        }
    }
    // The exit is all these programs see of a call: it starts and ends there.
    capture(
        c,
        cfg,
        kind,
        fd,
        end_ns,
        end_ns,
        start,
        len,
        moved,
        p.call & 0xf0 == BUF_NONE,
    );
    0
}

/// Detects the protocol of a connection's first message and writes the event of a message
/// with `len` of its `moved` bytes readable at `start`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn capture(
    c: &mut L7Conn,
    cfg: &L7Config,
    kind: u8,
    fd: u64,
    start_ns: u64,
    end_ns: u64,
    start: u64,
    len: u64,
    moved: u64,
    no_bytes: bool,
) {
    if c.proto == PROTO_UNKNOWN {
        if no_bytes || len < 4 {
            return;
        }
        c.proto = detect(cfg, user::<u32>(start).unwrap_or(0) as u64);
        if c.proto == PROTO_OTHER {
            count(L7_C_OTHER_PROTOCOL);
            return;
        }
    }
    let cap = (cfg.capture_bytes as u64).min(L7_DATA_MAX as u64);
    let take = if start == 0 { 0 } else { len.min(cap) };
    if moved > take {
        count(L7_C_TRUNCATED);
    }
    emit(c, kind, fd, start_ns, end_ns, moved, start, take);
}

/// A socket call on TLS connection `fd` made inside an `SSL_*` call: that `SSL` object speaks
/// on `fd`.
#[inline(always)]
fn ssl_link(fd: u64) {
    let Some(s) = L7_SSL.get() else { return };
    let s = unsafe { &mut *s };
    if s.ssl == 0 {
        return;
    }
    s.fd = fd as u32;
    let key = [bpf_get_current_pid_tgid() >> 32, s.ssl];
    let _ = L7_SSL_FDS.insert(&key, &(fd as u32), BPF_ANY as u64);
}

/// Entry of `SSL_read(ssl, buf, num)`, `SSL_write(ssl, buf, num)` and their `_ex` forms (a
/// fourth argument: where the byte count goes).
#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, kind: u8, ex: bool) -> u32 {
    if !pid_tracked() {
        return 0;
    }
    let Some(s) = L7_SSL.get_or_create() else {
        return 0;
    };
    let s = unsafe { &mut *s };
    s.ssl = ctx.arg::<u64>(0).unwrap_or(0);
    s.buf = ctx.arg::<u64>(1).unwrap_or(0);
    s.size = ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff;
    s.count_at = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    s.start_ns = unsafe { bpf_ktime_get_ns() };
    s.fd = u32::MAX;
    s.kind = kind as u32;
    0
}

#[uprobe]
pub fn oxeye_l7_ssl_read(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, L7_READ, false)
}

#[uprobe]
pub fn oxeye_l7_ssl_read_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, L7_READ, true)
}

#[uprobe]
pub fn oxeye_l7_ssl_write(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, L7_WRITE, false)
}

#[uprobe]
pub fn oxeye_l7_ssl_write_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, L7_WRITE, true)
}

/// Return of any of the four: the plaintext moved, as an event of the connection.
#[uretprobe]
pub fn oxeye_l7_ssl_return(ctx: RetProbeContext) -> u32 {
    if !pid_tracked() {
        return 0;
    }
    let Some(s) = L7_SSL.get() else { return 0 };
    let s = unsafe { &mut *s };
    let call = *s;
    s.ssl = 0;
    if call.ssl == 0 {
        return 0;
    }
    let end_ns = unsafe { bpf_ktime_get_ns() };
    // An `int`: the upper half of the register is not part of it.
    let ret = ctx.ret::<u64>() as u32 as i32;
    let moved = if call.count_at != 0 {
        if ret != 1 {
            return 0;
        }
        user::<u64>(call.count_at).unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if moved == 0 {
        return 0;
    }
    let fd = if call.fd != u32::MAX {
        call.fd
    } else {
        let key = [bpf_get_current_pid_tgid() >> 32, call.ssl];
        match unsafe { L7_SSL_FDS.get(&key) } {
            Some(fd) => *fd,
            None => {
                count(L7_C_TLS_UNLINKED);
                return 0;
            }
        }
    } as u64;
    let Some(c) = L7_CONNS.get_ptr_mut(&conn_key(fd)) else {
        return 0;
    };
    let c = unsafe { &mut *c };
    if c.tls == 0 || c.proto == PROTO_OTHER {
        return 0;
    }
    let Some(cfg) = L7_CONFIG.get(0) else {
        return 0;
    };
    let len = moved.min(call.size);
    capture(
        c,
        cfg,
        call.kind as u8,
        fd,
        call.start_ns,
        end_ns,
        call.buf,
        len,
        moved,
        false,
    );
    0
}

/// Writes one event with `take` bytes from user memory at `src`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    c: &L7Conn,
    kind: u8,
    fd: u64,
    start_ns: u64,
    end_ns: u64,
    bytes: u64,
    src: u64,
    take: u64,
) {
    let Some(buf) = L7_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = buf as *mut L7Event;
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut take = take;
    unsafe {
        // Word by word: a struct assignment is a byte-at-a-time memcpy in BPF.
        let to = (&raw mut (*ev).conn).cast::<u64>();
        let from = (c as *const L7Conn).cast::<u64>();
        for k in 0..core::mem::size_of::<L7Conn>() / 8 {
            to.add(k).write_volatile(from.add(k).read());
        }
        (*ev).start_ns = start_ns;
        (*ev).end_ns = end_ns;
        (*ev).bytes = bytes;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).fd = fd as u32;
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).kind = kind;
        (*ev)._pad = 0;
        (*ev)._pad32 = 0;
        // Straight into the record: aya's wrapper zeroes a copy first, byte by byte.
        generated::bpf_get_current_comm((&raw mut (*ev).comm).cast(), 16);
        // Bounded here, right before the read, from a value the compiler cannot see the range
        // of: it would drop a check it proves redundant and spill the size across the calls
        // above, and the 6.1 verifier loses a spilled size's bounds ("R2 min value is
        // negative"; seen in the VM tier).
        take = core::ptr::read_volatile(&take);
        if take > L7_DATA_MAX as u64 {
            take = L7_DATA_MAX as u64;
        }
        if take > 0 {
            let dst = (buf as *mut u8).add(L7_EVENT_LEN);
            let r = generated::bpf_probe_read_user(
                dst.cast(),
                take as u32,
                src as *const core::ffi::c_void,
            );
            if r != 0 {
                take = 0;
            }
        }
        (*ev).captured = take as u16;
    }
    let len = (L7_EVENT_LEN as u64 + take) as usize;
    if len > L7_EVENT_LEN + L7_DATA_MAX {
        return;
    }
    // How much waits is asked every 64th event of a CPU only (the query reads both ring
    // positions, lines the reader writes from another CPU); the reader also drains on a timer.
    let seen = L7_COUNTERS
        .get_ptr(L7_C_EVENTS)
        .map_or(0, |c| unsafe { *c });
    let flags = if seen % 64 == 0
        && L7_EVENTS.query(BPF_RB_AVAIL_DATA as u64)
            >= unsafe { core::ptr::read_volatile(&L7_WAKEUP_BYTES) }
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64;
    let data = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
    if L7_EVENTS.output::<[u8]>(data, flags).is_err() {
        count(L7_C_RINGBUF_FULL);
        return;
    }
    count(L7_C_EVENTS);
}

/// The exit program of a data call; `$flags_arg`: which argument holds its `recv` flags (0:
/// it has none).
macro_rules! data_exit {
    ($exit:ident, $call:expr, $kind:expr) => {
        data_exit!($exit, $call, $kind, 0);
    };
    ($exit:ident, $call:expr, $kind:expr, $flags_arg:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            data_exit(&ctx, $call, $kind, $flags_arg)
        }
    };
}

data_exit!(oxeye_l7_read_exit, CALL_READ | BUF_PLAIN, L7_READ);
data_exit!(oxeye_l7_write_exit, CALL_WRITE | BUF_PLAIN, L7_WRITE);
data_exit!(oxeye_l7_readv_exit, CALL_READ | BUF_IOV, L7_READ);
data_exit!(oxeye_l7_writev_exit, CALL_WRITE | BUF_IOV, L7_WRITE);
data_exit!(oxeye_l7_recvfrom_exit, CALL_READ | BUF_PLAIN, L7_READ, 3);
data_exit!(oxeye_l7_recvmsg_exit, CALL_READ | BUF_MSG, L7_READ, 2);
data_exit!(oxeye_l7_sendmsg_exit, CALL_WRITE | BUF_MSG, L7_WRITE);
data_exit!(oxeye_l7_sendfile_exit, CALL_WRITE | BUF_NONE, L7_WRITE);

data_exit!(oxeye_l7_recvmmsg_exit, CALL_READ | BUF_MMSG, L7_READ, 3);
data_exit!(oxeye_l7_sendmmsg_exit, CALL_WRITE | BUF_MMSG, L7_WRITE);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
