//! oxeye's span programs: a probed call's entry and exit become one span.
//!
//! Entry pushes an open span on the thread's stack (`THREADS`, task-local storage: created on
//! the thread's first traced entry and freed by the kernel with the thread, so missed exits
//! cannot leak and untraced threads cost nothing); the first open span of a thread starts a
//! trace. Exit pops the matching open span and writes a [`SpanEvent`] to the ring buffer with
//! its parent (the span below it) and the stacks captured at entry. Sources: syscalls through
//! a `syscalls:` tracepoint pair per syscall, or (`attach: raw_tracepoint`) one shared
//! `raw_syscalls` raw-tracepoint pair where the syscall number picks the source in
//! `SYSCALL_SOURCES` (cheaper per traced call, but it runs on every syscall); uprobe/uretprobe
//! pairs (the source index is the attach cookie), and kprobe/kretprobe pairs (looked up by
//! function address, as kprobe links here carry no cookie).
//!
//! Ring-buffer wakeups are adaptive: a record wakes the reader only once `WAKEUP_BYTES` are
//! waiting; the reader also drains on a timer. A wakeup per record costs microseconds per span.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_func_arg, bpf_get_func_ip, bpf_get_func_ret, bpf_get_prandom_u32,
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated,
    },
    macros::{
        btf_map, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint, uprobe,
        uretprobe,
    },
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext,
};
mod task_storage;
use oxeye_ebpf_common::{
    SourceConfig, SpanEvent, SpanHeader, ThreadState, MAX_ARGS, MAX_DEPTH, MAX_SOURCES,
    MAX_SYSCALLS, SPAN_BRIEF_LEN, SPAN_COUNTERS_PER_SOURCE, STACK_DEPTH, STACK_KERNEL, STACK_USER,
    S_ORPHAN_ENTRIES, S_ORPHAN_EXITS, S_RINGBUF_FULL, S_SHORTER_THAN_MIN, S_SPANS,
    S_STACK_FAILURES, S_TOO_DEEP,
};
use task_storage::TaskStorage;

#[btf_map]
static THREADS: TaskStorage<ThreadState> = TaskStorage::new();
#[map]
static SOURCES: Array<SourceConfig> = Array::with_max_entries(MAX_SOURCES, 0);
/// Syscall number → source + 1 (0: not traced), for the `raw_syscalls` pair.
#[map]
static SYSCALL_SOURCES: Array<u32> = Array::with_max_entries(MAX_SYSCALLS, 0);
/// Kernel function address → source index (kprobe sources).
#[map]
static KFUNCS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SOURCES, 0);
/// User space sets the size (`ring_size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
/// `source * SPAN_COUNTERS_PER_SOURCE + counter`.
#[map]
static SPAN_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_SOURCES * SPAN_COUNTERS_PER_SOURCE, 0);

/// Offsets of `comm` and `pid` (`tgid` right after it) in this kernel's `task_struct`, from
/// its BTF, set at load; `u32::MAX`: unknown, ask helpers. Read-only data: the verifier sees
/// constants, and checks the direct reads against task_struct's BTF.
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = u32::MAX;
/// See [`TASK_COMM_OFFSET`].
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = u32::MAX;

/// Writes the current thread's name (16 bytes, NUL-padded) to `dst`: two loads from the task
/// where the kernel's BTF gave the offset, else the helper (~30 ns more: it copies with
/// strscpy and pads).
///
/// # Safety
/// `dst` points at 16 writable bytes, 8-byte aligned.
#[inline(always)]
unsafe fn write_comm(dst: *mut [u8; 16]) {
    let off = unsafe { core::ptr::read_volatile(&TASK_COMM_OFFSET) };
    if off == u32::MAX {
        unsafe { generated::bpf_get_current_comm(dst.cast(), 16) };
        return;
    }
    unsafe {
        let task = generated::bpf_get_current_task_btf() as *const u8;
        copy_words::<2>(dst.cast(), task.add(off as usize).cast());
    }
}

/// The current thread's (tgid, tid).
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Writes the current thread's ids and name into a record: loads from the task (one pointer
/// for all three) where the kernel's BTF gave the offsets, else helpers.
///
/// # Safety
/// `h` points at a reservation of at least SPAN_BRIEF_LEN bytes.
#[inline(always)]
unsafe fn write_task(h: *mut SpanHeader) {
    let (comm, pid) = unsafe {
        (
            core::ptr::read_volatile(&TASK_COMM_OFFSET),
            core::ptr::read_volatile(&TASK_PID_OFFSET),
        )
    };
    unsafe {
        if comm == u32::MAX || pid == u32::MAX {
            ((*h).pid, (*h).tid) = current_ids();
            generated::bpf_get_current_comm((&raw mut (*h).comm).cast(), 16);
            return;
        }
        let task = generated::bpf_get_current_task_btf() as *const u8;
        // One load per field: the verifier refuses a load across two members.
        (*h).tid = (task.add(pid as usize) as *const u32).read();
        (*h).pid = (task.add(pid as usize + 4) as *const u32).read();
        copy_words::<2>((&raw mut (*h).comm).cast(), task.add(comm as usize).cast());
    }
}

/// Wake the reader once this many bytes wait in the ring (set at load).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 262144;

/// Copies `N` 8-byte words. Array assignments of this size compile to calls of BPF's
/// byte-at-a-time `memmove`/`memset` (16 iterations for a trace id, 512 for the stacks); the
/// volatile stores keep LLVM from turning the loop back into one.
///
/// # Safety
/// Both point at `N` words, 8-byte aligned.
#[inline(always)]
unsafe fn copy_words<const N: usize>(dst: *mut u64, src: *const u64) {
    for k in 0..N {
        unsafe { dst.add(k).write_volatile(src.add(k).read()) };
    }
}

/// Room for one `T` in the ring buffer, or None, counted against `source` (ring full).
#[inline(always)]
fn reserve<T: 'static>(source: u32) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(source, S_RINGBUF_FULL);
    }
    entry
}

#[inline(always)]
fn count(source: u32, counter: u32) {
    if let Some(c) = SPAN_COUNTERS.get_ptr_mut(source * SPAN_COUNTERS_PER_SOURCE + counter) {
        unsafe { *c += 1 };
    }
}

/// The next id of the thread's SplitMix64 stream (never 0): a few ALU operations instead of
/// two `bpf_get_prandom_u32` calls per 64 bits (measured: 6 helper calls cost ~20 ns a root
/// span). Each thread's stream starts at a seed from the kernel's PRNG.
#[inline(always)]
fn next_id(state: &mut ThreadState) -> u64 {
    if state.rng == 0 {
        state.rng = ((unsafe { bpf_get_prandom_u32() } as u64) << 32)
            | unsafe { bpf_get_prandom_u32() } as u64;
    }
    state.rng = state.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state.rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 {
        1
    } else {
        z
    }
}

/// The source's config, if this task passes its filters.
#[inline(always)]
fn admitted(source: u32) -> Option<&'static SourceConfig> {
    let cfg = SOURCES.get(source)?;
    if cfg.enabled == 0 {
        return None;
    }
    if cfg.pid != 0 || cfg.tid != 0 {
        let (tgid, tid) = current_ids();
        if (cfg.pid != 0 && cfg.pid != tgid) || (cfg.tid != 0 && cfg.tid != tid) {
            return None;
        }
    }
    if cfg.comm[0] != 0 {
        // Into an uninitialised buffer (all 16 bytes get written) and compared as two words:
        // aya's wrapper zeroes it first with BPF's byte-at-a-time memset.
        let mut comm = core::mem::MaybeUninit::<[u64; 2]>::uninit();
        unsafe { write_comm(comm.as_mut_ptr().cast()) };
        let comm = unsafe { comm.assume_init() };
        let want = cfg.comm.as_ptr() as *const u64;
        if unsafe { comm[0] != want.read() || comm[1] != want.add(1).read() } {
            return None;
        }
    }
    if cfg.cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } != cfg.cgroup_id {
        return None;
    }
    Some(cfg)
}

/// Pushes an open span of `source` on the thread's stack. Returns the thread's state when the
/// call counts on it — pushed, or too deep (its exit then only unwinds `overflow`) — and None
/// when it is filtered out.
#[inline(always)]
fn enter<C: EbpfContext>(
    ctx: &C,
    source: u32,
    arg: impl Fn(usize) -> u64,
) -> Option<&'static mut ThreadState> {
    let cfg = admitted(source)?;
    // Zero-initialised by the kernel on the thread's first traced entry.
    let state = unsafe { &mut *THREADS.get_or_create()? };
    let d = state.depth as usize;
    if d >= MAX_DEPTH {
        state.overflow += 1;
        count(source, S_TOO_DEEP);
        return Some(state);
    }
    if d == 0 {
        // Two words, in the byte order the id is read in (trace_id is 8-byte aligned).
        let (hi, lo) = (next_id(state).to_be(), next_id(state).to_be());
        let id = state.trace_id.as_mut_ptr() as *mut u64;
        unsafe { (id.write(hi), id.add(1).write(lo)) };
    }
    let span_id = next_id(state);
    let open = &mut state.open[d];
    open.span_id = span_id;
    open.source = source;
    let n = cfg.nargs as usize;
    for i in 0..MAX_ARGS {
        open.args[i] = if i < n { arg(i) } else { 0 };
    }
    open.kstack_len = 0;
    open.ustack_len = 0;
    let stacks = &mut state.stacks[d];
    if cfg.stack & STACK_KERNEL != 0 {
        let r = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                stacks.as_mut_ptr() as *mut _,
                (STACK_DEPTH * 8) as u32,
                0,
            )
        };
        if r < 0 {
            count(source, S_STACK_FAILURES);
        } else {
            open.kstack_len = (r / 8) as u32;
        }
    }
    if cfg.stack & STACK_USER != 0 {
        let user = unsafe { stacks.as_mut_ptr().add(STACK_DEPTH) };
        let r = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                user as *mut _,
                (STACK_DEPTH * 8) as u32,
                BPF_F_USER_STACK as u64,
            )
        };
        if r < 0 {
            count(source, S_STACK_FAILURES);
        } else {
            open.ustack_len = (r / 8) as u32;
        }
    }
    // Read the clock last, so the span does not include our own work.
    open.start_ns = unsafe { bpf_ktime_get_ns() };
    state.depth = d as u32 + 1;
    Some(state)
}

#[inline(always)]
fn exit(source: u32, ret: i64) {
    let end_ns = unsafe { bpf_ktime_get_ns() };
    let Some(cfg) = admitted(source) else {
        return;
    };
    let Some(state) = THREADS.get() else {
        count(source, S_ORPHAN_EXITS);
        return;
    };
    let state = unsafe { &mut *state };
    close(state, source, cfg, end_ns, ret);
}

/// Pops the innermost open span of `source` and writes it to the ring buffer.
#[inline(always)]
fn close(state: &mut ThreadState, source: u32, cfg: &SourceConfig, end_ns: u64, ret: i64) {
    if state.overflow > 0 {
        state.overflow -= 1;
        return;
    }
    // The innermost open span of this source; anything above it missed its exit. Constant
    // indexes (the loop unrolls) keep the verifier's bounds simple.
    let depth = state.depth as usize;
    let mut found = MAX_DEPTH;
    for k in 0..MAX_DEPTH {
        if k < depth && state.open[k].source == source {
            found = k;
        }
    }
    if found >= MAX_DEPTH {
        count(source, S_ORPHAN_EXITS);
        return;
    }
    let i = found;
    for k in 0..MAX_DEPTH {
        if k > i && k < depth {
            // Charged to the source whose exit was missed, not to the one exiting now.
            count(state.open[k].source, S_ORPHAN_ENTRIES);
        }
    }
    state.depth = i as u32;
    let open = &state.open[i];
    if end_ns.saturating_sub(open.start_ns) < cfg.min_duration_ns {
        count(source, S_SHORTER_THAN_MIN);
        return;
    }
    // How much waits is asked every 64th span of a CPU and source only (the query reads both
    // ring positions, lines the reader touches from another CPU): the wakeup comes at most 63
    // spans a CPU late, and the reader also drains on its timer.
    let spans = SPAN_COUNTERS.get_ptr_mut(source * SPAN_COUNTERS_PER_SOURCE + S_SPANS);
    let seen = spans.map_or(0, |c| unsafe { *c });
    let flags = if seen % 64 == 0
        && EVENTS.query(BPF_RB_AVAIL_DATA as u64)
            >= unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64;
    let parent = if i > 0 && i - 1 < MAX_DEPTH {
        state.open[i - 1].span_id
    } else {
        0
    };
    // Writes everything but the arguments: a brief record has room for nothing more.
    // SAFETY (of every call): `h` points at a reservation of at least SPAN_BRIEF_LEN bytes.
    let fill = |h: *mut SpanHeader| unsafe {
        copy_words::<2>(
            (&raw mut (*h).trace_id).cast(),
            state.trace_id.as_ptr().cast(),
        );
        (*h).span_id = open.span_id;
        (*h).parent_span_id = parent;
        (*h).start_ns = open.start_ns;
        (*h).end_ns = end_ns;
        (*h).ret = ret;
        write_task(h);
        (*h).cpu = bpf_get_smp_processor_id();
        (*h).source = source;
        (*h).kstack_len = open.kstack_len;
        (*h).ustack_len = open.ustack_len;
    };
    if open.kstack_len == 0 && open.ustack_len == 0 {
        if cfg.nargs == 0 {
            // No arguments, no stacks: the brief record, 96 bytes (104 with the ring's header)
            // instead of 144.
            let Some(mut entry) = reserve::<[u8; SPAN_BRIEF_LEN]>(source) else {
                return;
            };
            fill(entry.as_mut_ptr().cast());
            entry.submit(flags);
        } else {
            // Without stacks the record is a quarter of the size: less ring traffic, fewer
            // wakeups.
            let Some(mut entry) = reserve::<SpanHeader>(source) else {
                return;
            };
            let h = entry.as_mut_ptr();
            fill(h);
            unsafe { copy_words::<MAX_ARGS>((&raw mut (*h).args).cast(), open.args.as_ptr()) };
            entry.submit(flags);
        }
    } else {
        let Some(mut entry) = reserve::<SpanEvent>(source) else {
            return;
        };
        let ev = entry.as_mut_ptr();
        unsafe {
            fill(&raw mut (*ev).header);
            copy_words::<MAX_ARGS>((&raw mut (*ev).header.args).cast(), open.args.as_ptr());
            copy_words::<{ 2 * STACK_DEPTH }>(
                (&raw mut (*ev).stacks).cast(),
                state.stacks[i].as_ptr(),
            );
        }
        entry.submit(flags);
    }
    if let Some(c) = spans {
        unsafe { *c = seen + 1 };
    }
}

#[inline(always)]
fn tp_u64(ctx: &TracePointContext, off: usize) -> u64 {
    unsafe { *(ctx.as_ptr().add(off) as *const u64) }
}

/// `syscalls:sys_enter_*`: the arguments from offset 16. The source is the attach cookie.
/// Arguments are read with a helper: a direct read past the syscall's last argument would make
/// the kernel refuse the attachment (EACCES) for syscalls with fewer arguments.
#[tracepoint]
pub fn oxeye_sys_enter(ctx: TracePointContext) -> u32 {
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    enter(&ctx, source, |i| {
        unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
    });
    0
}

/// `syscalls:sys_exit_*`: `ret` at 16.
#[tracepoint]
pub fn oxeye_sys_exit(ctx: TracePointContext) -> u32 {
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    exit(source, tp_u64(&ctx, 16) as i64);
    0
}

/// x86_64 `struct pt_regs` offsets of the syscall arguments (di, si, dx, r10, r8, r9): the
/// user-space ABI (`user_regs_struct` has the same layout). User space uses the `raw_syscalls`
/// pair on x86_64 only.
const SYSCALL_ARG_OFFSETS: [usize; MAX_ARGS] = [112, 104, 96, 56, 72, 64];

/// `raw_syscalls:sys_enter(regs, id)`, on every syscall of every task: one array lookup by
/// syscall number decides, before anything else is read.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn oxeye_raw_enter(ctx: RawTracePointContext) -> i32 {
    let args = ctx.as_ptr() as *const u64;
    let nr = unsafe { *args.add(1) };
    let Some(&traced) = SYSCALL_SOURCES.get(nr as u32) else {
        return 0;
    };
    if traced == 0 {
        return 0;
    }
    let regs = unsafe { *args } as *const u8;
    let state = enter(&ctx, traced - 1, |i| {
        if i >= MAX_ARGS {
            return 0;
        }
        unsafe { bpf_probe_read_kernel(regs.add(SYSCALL_ARG_OFFSETS[i]) as *const u64) }
            .unwrap_or(0)
    });
    // Set for a too-deep call too: its exit must unwind `overflow`.
    if let Some(state) = state {
        state.in_syscall = traced;
    }
    0
}

/// `raw_syscalls:sys_exit(regs, ret)`: only threads that entered a traced syscall have storage
/// with `in_syscall` set; every other exit returns after one lookup.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn oxeye_raw_exit(ctx: RawTracePointContext) -> i32 {
    let Some(state) = THREADS.get() else {
        return 0;
    };
    let state = unsafe { &mut *state };
    let traced = state.in_syscall;
    if traced == 0 {
        return 0;
    }
    let end_ns = unsafe { bpf_ktime_get_ns() };
    state.in_syscall = 0;
    let source = traced - 1;
    let Some(cfg) = SOURCES.get(source) else {
        return 0;
    };
    let ret = unsafe { *(ctx.as_ptr() as *const i64).add(1) };
    close(state, source, cfg, end_ns, ret);
    0
}

#[kprobe]
pub fn oxeye_kprobe(ctx: ProbeContext) -> u32 {
    let ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    if let Some(&source) = unsafe { KFUNCS.get(&ip) } {
        enter(&ctx, source, |i| ctx.arg::<u64>(i).unwrap_or(0));
    }
    0
}

#[kretprobe]
pub fn oxeye_kretprobe(ctx: RetProbeContext) -> u32 {
    let ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    if let Some(&source) = unsafe { KFUNCS.get(&ip) } {
        exit(source, ctx.ret::<i64>());
    }
    0
}

/// The source of `oxeye_fentry`/`oxeye_fexit`: user space loads the object once per fentry source
/// (sharing the other maps by pinning) with this set.
#[unsafe(no_mangle)]
static FENTRY_SOURCE: u32 = 0;

#[inline(always)]
fn fentry_source() -> u32 {
    unsafe { core::ptr::read_volatile(&FENTRY_SOURCE) }
}

/// fentry: the target function is chosen at load (`FEntry::load(function, btf)`); arguments come
/// through `bpf_get_func_arg`, which is safe past the function's last argument.
#[fentry(function = "do_sys_openat2")]
pub fn oxeye_fentry(ctx: FEntryContext) -> i32 {
    enter(&ctx, fentry_source(), |i| {
        let mut v = 0u64;
        unsafe { bpf_get_func_arg(ctx.as_ptr(), i as u32, &mut v) };
        v
    });
    0
}

#[fexit(function = "do_sys_openat2")]
pub fn oxeye_fexit(ctx: FExitContext) -> i32 {
    let mut ret = 0u64;
    unsafe { bpf_get_func_ret(ctx.as_ptr(), &mut ret) };
    exit(fentry_source(), ret as i64);
    0
}

/// Loaded (never attached) by `oxeye doctor` and `attach: auto` to learn whether fentry works.
#[fentry(function = "do_sys_openat2")]
pub fn oxeye_fentry_probe(_ctx: FEntryContext) -> u32 {
    0
}

#[uprobe]
pub fn oxeye_uprobe(ctx: ProbeContext) -> u32 {
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    enter(&ctx, source, |i| ctx.arg::<u64>(i).unwrap_or(0));
    0
}

#[uretprobe]
pub fn oxeye_uretprobe(ctx: RetProbeContext) -> u32 {
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    exit(source, ctx.ret::<i64>());
    0
}

/// Benchmark only (never attached by oxeye): what a `syscalls:` tracepoint pair costs with
/// nothing in it.
#[tracepoint]
pub fn oxeye_empty_tp(_ctx: TracePointContext) -> u32 {
    0
}

/// Benchmark only: the same for a `raw_syscalls` raw-tracepoint pair (fires on every syscall).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn oxeye_empty_raw_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Benchmark only: see `oxeye_empty_raw_enter`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn oxeye_empty_raw_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Benchmark only: where the clock reads of [`oxeye_clock_raw_enter`] go.
#[map]
static BENCH_CLOCK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Benchmark only: the `raw_syscalls` pair with one clock read on each edge and nothing else —
/// the floor under any span path that records a start and an end time.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn oxeye_clock_raw_enter(_ctx: RawTracePointContext) -> i32 {
    if let Some(t) = BENCH_CLOCK.get_ptr_mut(0) {
        unsafe { *t = bpf_ktime_get_ns() };
    }
    0
}

/// Benchmark only: see `oxeye_clock_raw_enter`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn oxeye_clock_raw_exit(_ctx: RawTracePointContext) -> i32 {
    if let Some(t) = BENCH_CLOCK.get_ptr_mut(1) {
        unsafe { *t = bpf_ktime_get_ns() };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
