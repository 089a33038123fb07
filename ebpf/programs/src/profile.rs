//! oxeye's CPU profiler: a perf_event program on a CPU-clock software event of every online CPU.
//!
//! Each sample of a task that passes the filters becomes one [`ProfileSampleEvent`] in the ring
//! buffer — kernel and user stacks (frame pointers), thread, time, and the span open on the
//! thread, looked up in the span programs' `THREADS` map (user space shares it by pinning when
//! `spans:` run too). Samples are counted per thread and stack in user space: measured here,
//! sending each sample costs less in the kernel than hashing stacks into a stack map and
//! counting them there (`oxeye_profile_counted`, kept for that benchmark only; see the README).
//!
//! Ring-buffer wakeups are adaptive, as for spans: a sample wakes the reader only once
//! `WAKEUP_BYTES` wait; the reader also drains on a timer.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::{btf_map, map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, PerfEventContext},
    EbpfContext,
};
// Samples only read the span programs' state: `get_or_create` is unused here.
#[allow(dead_code)]
mod task_storage;
use oxeye_ebpf_common::{
    CountedKey, ProfileConfig, ProfileSampleEvent, ThreadState, MAX_DEPTH, PROFILE_STACK_DEPTH,
    P_FILTERED, P_IDLE, P_KSTACK_FAILURES, P_OWN, P_RINGBUF_FULL, P_SAMPLES,
    P_UNWIND_UNKNOWN_PROCESS, P_UNWOUND_COMPLETE, P_UNWOUND_TRUNCATED, P_USTACK_FAILURES,
    SAMPLE_UNWIND_UNKNOWN_PROCESS, SAMPLE_UNWOUND_COMPLETE, STACK_KERNEL, STACK_USER,
};
use task_storage::TaskStorage;
mod unwind;
use unwind::UNWIND_PROCS;

/// The span programs' per-thread state (same definition as in `spans.rs`): reused through a
/// pin when spans run, so a sample knows the span open on its thread.
#[btf_map]
static THREADS: TaskStorage<ThreadState> = TaskStorage::new();
/// User space sets the size (`ring_size`).
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static PROFILE_CONFIG: Array<ProfileConfig> = Array::with_max_entries(1, 0);
/// Indexed by `P_*`.
#[map]
static PROFILE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(16, 0);

/// Wake the reader once this many bytes wait in the ring (set at load).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 262144;
/// 1 when `THREADS` is the span programs' (set at load): only then is the span open on the
/// thread looked up.
#[unsafe(no_mangle)]
static LINK_SPANS: u32 = 0;

#[inline(always)]
fn count(counter: u32) {
    if let Some(c) = PROFILE_COUNTERS.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
}

/// The filters' verdict for the current task: `Some((tgid, tid, comm))` when it is profiled.
#[inline(always)]
fn admitted(cfg: &ProfileConfig) -> Option<(u32, u32, [u8; 16])> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid == 0 {
        count(P_IDLE);
        return None;
    }
    if tgid == cfg.exclude_pid {
        count(P_OWN);
        return None;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if (cfg.pid != 0 && cfg.pid != tgid)
        || (cfg.comm[0] != 0 && comm != cfg.comm)
        || (cfg.cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } != cfg.cgroup_id)
    {
        count(P_FILTERED);
        return None;
    }
    Some((tgid, tid, comm))
}

/// The trace and span id of the innermost span open on the current thread (zeros: none).
#[inline(always)]
fn open_span() -> ([u8; 16], u64) {
    if unsafe { core::ptr::read_volatile(&LINK_SPANS) } == 0 {
        return ([0; 16], 0);
    }
    let Some(state) = THREADS.get() else {
        return ([0; 16], 0);
    };
    let state = unsafe { &*state };
    let d = state.depth as u64;
    if d == 0 || d > MAX_DEPTH as u64 {
        return ([0; 16], 0);
    }
    // MAX_DEPTH is a power of two: the mask shows the verifier the index is in bounds.
    let i = ((d - 1) & (MAX_DEPTH as u64 - 1)) as usize;
    (state.trace_id, state.open[i].span_id)
}

#[perf_event]
pub fn oxeye_profile(ctx: PerfEventContext) -> u32 {
    sample(ctx, false)
}

/// The same, with user stacks walked with unwind tables (`profiles.unwind: tables`).
#[perf_event]
pub fn oxeye_profile_unwind(ctx: PerfEventContext) -> u32 {
    sample(ctx, true)
}

#[inline(always)]
fn sample(ctx: PerfEventContext, tables: bool) -> u32 {
    let Some(cfg) = PROFILE_CONFIG.get(0) else {
        return 0;
    };
    let Some((tgid, tid, comm)) = admitted(cfg) else {
        return 0;
    };
    let Some(mut entry) = SAMPLES.reserve::<ProfileSampleEvent>(0) else {
        count(P_RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.time_ns = unsafe { bpf_ktime_get_ns() };
    ev.pid = tgid;
    ev.tid = tid;
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    ev.comm = comm;
    ev.flags = 0;
    (ev.trace_id, ev.span_id) = open_span();
    let mut depth = cfg.max_depth as usize;
    if depth > PROFILE_STACK_DEPTH {
        depth = PROFILE_STACK_DEPTH;
    }
    let size = (depth * 8) as u32;
    ev.kstack_len = 0;
    ev.ustack_len = 0;
    if cfg.stack & STACK_KERNEL != 0 {
        let r = unsafe { bpf_get_stack(ctx.as_ptr(), ev.kernel.as_mut_ptr() as *mut _, size, 0) };
        if r < 0 {
            count(P_KSTACK_FAILURES);
        } else {
            ev.kstack_len = (r / 8) as u32;
        }
    }
    if cfg.stack & STACK_USER != 0 && tables && UNWIND_PROCS.get_ptr(&tgid).is_some() {
        let (n, flags) = unwind::walk(tgid, tid, depth as u32);
        if let Some(state) = unwind::STATE.get_ptr(0) {
            // A fixed-size copy (the verifier wants constant bounds); frames past `n` unused.
            ev.user = unsafe { (*state).frames };
        }
        ev.ustack_len = n;
        ev.flags = flags;
        count(if flags & SAMPLE_UNWOUND_COMPLETE != 0 {
            P_UNWOUND_COMPLETE
        } else {
            P_UNWOUND_TRUNCATED
        });
    } else if cfg.stack & STACK_USER != 0 {
        if tables {
            ev.flags = SAMPLE_UNWIND_UNKNOWN_PROCESS;
            count(P_UNWIND_UNKNOWN_PROCESS);
        }
        let r = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                ev.user.as_mut_ptr() as *mut _,
                size,
                BPF_F_USER_STACK as u64,
            )
        };
        if r < 0 {
            count(P_USTACK_FAILURES);
        } else {
            ev.ustack_len = (r / 8) as u32;
        }
    }
    let flags = if SAMPLES.query(BPF_RB_AVAIL_DATA as u64)
        >= unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64;
    entry.submit(flags);
    count(P_SAMPLES);
    0
}

/// Benchmark only (never attached by oxeye): the other way samples can leave the kernel —
/// stacks hashed into a stack map and counted per (thread, stack ids, span) in a hash map that
/// user space reads once a window.
#[map]
static STACK_IDS: StackTrace = StackTrace::with_max_entries(16384, 0);
#[map]
static COUNTS: HashMap<CountedKey, u64> = HashMap::with_max_entries(16384, 0);

#[perf_event]
pub fn oxeye_profile_counted(ctx: PerfEventContext) -> u32 {
    let Some(cfg) = PROFILE_CONFIG.get(0) else {
        return 0;
    };
    let Some((tgid, tid, _comm)) = admitted(cfg) else {
        return 0;
    };
    // A sample taken in user mode has no kernel stack: that is no failure.
    let kstack = ctx.get_stackid(&STACK_IDS, 0).map_or(-1, |id| id as i32);
    let ustack = match ctx.get_stackid(&STACK_IDS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(_) => {
            count(P_USTACK_FAILURES);
            -1
        }
    };
    let key = CountedKey {
        pid: tgid,
        tid,
        kstack,
        ustack,
        span_id: open_span().1,
    };
    // The key holds the thread, and a thread runs on one CPU at a time: no other CPU updates
    // this entry concurrently.
    match COUNTS.get_ptr_mut(&key) {
        Some(c) => unsafe { *c += 1 },
        None => {
            if COUNTS.insert(&key, &1, 0).is_err() {
                count(P_RINGBUF_FULL);
            }
        }
    }
    count(P_SAMPLES);
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
