//! Process lifecycle events: `sched:sched_process_exec` and `sched:sched_process_exit`
//! tracepoints write one [`ProcessEvent`] each into a ring buffer — pid, parent, comm, cgroup,
//! and the executable and its (bounded) command line on exec, the wait status on the exit of a
//! process's last thread.
//!
//! Rust eBPF has no CO-RE relocations: the `task_struct` and `mm_struct` offsets come from the
//! running kernel's BTF, read in user space and set here at load (`u32::MAX`: unknown, the field
//! is left out).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use oxeye_ebpf::helpers::kernel;
use oxeye_ebpf_common::{
    ProcessEvent, PROCESS_CMDLINE_MAX, PROCESS_EXEC, PROCESS_EXIT, PR_EXECS, PR_EXITS,
    PR_RINGBUF_FULL,
};

/// User space sets the size (`ring_size`).
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// Indexed by `PR_*`.
#[map]
static PROCESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// `task_struct.real_parent` (set at load).
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFFSET: u32 = u32::MAX;
/// `task_struct.tgid`.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = u32::MAX;
/// `task_struct.exit_code`.
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFFSET: u32 = u32::MAX;
/// `task_struct.mm`.
#[unsafe(no_mangle)]
static TASK_MM_OFFSET: u32 = u32::MAX;
/// `mm_struct.arg_start`.
#[unsafe(no_mangle)]
static MM_ARG_START_OFFSET: u32 = u32::MAX;
/// `mm_struct.arg_end`.
#[unsafe(no_mangle)]
static MM_ARG_END_OFFSET: u32 = u32::MAX;
/// Offset of `group_dead` in the exit tracepoint's record (0: this kernel's has none; then
/// the exit of the thread-group leader stands for the process's).
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = 0;

#[inline(always)]
fn global(g: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(c) = PROCESS_COUNTERS.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
}

/// Fills what both events carry.
///
/// # Safety
/// `ev` points at a reserved [`ProcessEvent`].
#[inline(always)]
unsafe fn common(ev: *mut ProcessEvent, kind: u32, task: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ppid = kernel::<u64>(task, global(&TASK_REAL_PARENT_OFFSET))
        .and_then(|parent| kernel::<u32>(parent, global(&TASK_TGID_OFFSET)))
        .unwrap_or(0);
    unsafe {
        (*ev).kind = kind;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).ppid = ppid;
        (*ev).time_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).exit_code = 0;
        (*ev).filename_len = 0;
        (*ev).cmdline_len = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}

#[tracepoint]
pub fn oxeye_process_exec(ctx: TracePointContext) -> u32 {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        count(PR_RINGBUF_FULL);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    let task = unsafe { bpf_get_current_task() };
    unsafe {
        common(ev, PROCESS_EXEC, task);
        // `__data_loc char[] filename` at 8: offset in the low 16 bits, length in the high.
        let loc: u32 = ctx.read_at(8).unwrap_or(0);
        let src = ctx.as_ptr().add((loc & 0xffff) as usize) as *const u8;
        if let Ok(name) = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
            (*ev).filename_len = name.len() as u16;
        }
        // The new program's arguments, from its memory (set up before this tracepoint).
        let mm = kernel::<u64>(task, global(&TASK_MM_OFFSET)).unwrap_or(0);
        let start = kernel::<u64>(mm, global(&MM_ARG_START_OFFSET)).unwrap_or(0);
        let end = kernel::<u64>(mm, global(&MM_ARG_END_OFFSET)).unwrap_or(0);
        if start != 0 && end > start {
            let len = (end - start).min(PROCESS_CMDLINE_MAX as u64 - 1) as u32;
            // Masked so the verifier sees the bound.
            let len = len & (PROCESS_CMDLINE_MAX as u32 - 1);
            if len > 0
                && generated::bpf_probe_read_user(
                    (&raw mut (*ev).cmdline).cast(),
                    len,
                    start as *const core::ffi::c_void,
                ) == 0
            {
                (*ev).cmdline_len = len as u16;
            }
        }
    }
    count(PR_EXECS);
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    0
}

#[tracepoint]
pub fn oxeye_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let group_dead = global(&EXIT_GROUP_DEAD_OFFSET);
    let last = if group_dead != 0 {
        unsafe { ctx.read_at::<u8>(group_dead as usize) }.unwrap_or(0) != 0
    } else {
        (pid_tgid >> 32) as u32 == pid_tgid as u32
    };
    if !last {
        return 0;
    }
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        count(PR_RINGBUF_FULL);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    let task = unsafe { bpf_get_current_task() };
    unsafe {
        common(ev, PROCESS_EXIT, task);
        (*ev).exit_code = kernel::<u32>(task, global(&TASK_EXIT_CODE_OFFSET)).unwrap_or(0);
    }
    count(PR_EXITS);
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
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
