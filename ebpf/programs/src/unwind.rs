//! The user-stack walker of `oxeye_profile_unwind`: the eBPF twin of `oxeye_unwind::walk`
//! (receivers/ebpf/unwind), one frame per `bpf_loop` iteration. User space fills the maps: a
//! process's executable mappings, each object's stack deltas (sorted `addr << 32 | rule`), and
//! the rules they index.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use oxeye_ebpf_common::{
    PyProc, UnwindProcess, UnwindRule, CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_RBP, PROFILE_STACK_DEPTH,
    PY_ENTRY_EVERY, PY_ENTRY_IS_ENTRY, PY_ENTRY_OWNER, PY_FRAME_TAG, PY_MAX_FRAMES,
    PY_THREAD_FSBASE, RBP_AT_CFA, RBP_AT_RBP, SAMPLE_PYTHON, SAMPLE_UNWOUND_COMPLETE,
    SAMPLE_UNWOUND_TRUNCATED, UNWIND_MAX_MAPPINGS, UNWIND_MAX_RULES, UR_FRAME, UR_PLT, UR_SIGNAL,
    UR_STOP,
};

/// By tgid; the least recently sampled processes make room (user space loads them again when
/// they are sampled again). User space sizes it (and the deltas) at load.
#[map]
pub static UNWIND_PROCS: LruHashMap<u32, UnwindProcess> = LruHashMap::with_max_entries(1, 0);
#[map]
static UNWIND_DELTAS: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static UNWIND_RULES: Array<UnwindRule> = Array::with_max_entries(UNWIND_MAX_RULES, 0);
/// CPython processes, by tgid (user space sizes it).
#[map]
static PY_PROCS: LruHashMap<u32, PyProc> = LruHashMap::with_max_entries(1, 0);

/// The walk in progress on this CPU (kept off the 512-byte stack).
#[repr(C)]
pub struct State {
    pid: u32,
    n: u32,
    max: u32,
    /// 1 while the pc is exact (the first frame, or one a signal interrupted); else a return
    /// address, looked up one byte earlier.
    exact: u32,
    /// `SAMPLE_*` once ended, 0 while walking.
    end: u32,
    /// A search in progress: its bounds and what it looks for.
    lo: u32,
    hi: u32,
    key: u64,
    /// Python: the frames read for this sample (innermost first), the next one to place, and
    /// the eval loop's address range (0, 0: not a Python process).
    py_n: u32,
    py_at: u32,
    eval_start: u64,
    eval_end: u64,
    /// While reading: the thread state found, and the frame being read.
    py_tstate: u64,
    py_frame: u64,
    py_code: [u64; PY_MAX_FRAMES],
    py_instr: [u64; PY_MAX_FRAMES],
    py_entry: [u8; PY_MAX_FRAMES],
    pc: u64,
    sp: u64,
    bp: u64,
    pub frames: [u64; PROFILE_STACK_DEPTH],
}

#[map]
pub static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);

/// `pt_regs` offsets (x86-64): rbp, rip, rsp.
const REG_BP: usize = 4 * 8;
const REG_IP: usize = 16 * 8;
const REG_SP: usize = 19 * 8;
/// The `ucontext` a signal trampoline finds at rsp: `uc_mcontext` at 40; rbp, rsp, rip at
/// indexes 10, 15, 16 of its registers.
const MC_BP: u64 = 40 + 10 * 8;
const MC_SP: u64 = 40 + 15 * 8;
const MC_IP: u64 = 40 + 16 * 8;
/// A frame pointer is trusted only this far above the stack pointer.
const MAX_FRAME: u64 = 8 << 20;

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Walks the current task's user stack into `STATE.frames`; returns the frame count and the
/// `SAMPLE_*` flags it ended with. The state is only touched through its raw pointer: the
/// `bpf_loop` callbacks write to it meanwhile, and a `&mut` held across the call would let the
/// compiler keep stale copies.
#[inline(always)]
pub fn walk(pid: u32, tid: u32, max: u32) -> (u32, u32) {
    let Some(s) = STATE.get_ptr_mut(0) else {
        return (0, SAMPLE_UNWOUND_TRUNCATED);
    };
    // The user registers: saved at the top of the kernel stack on any entry from user mode
    // (the sample's own registers are the kernel's when it hit in kernel mode).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
    let reg = |off: usize| unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.ok();
    let (Some(pc), Some(sp), Some(bp)) = (reg(REG_IP), reg(REG_SP), reg(REG_BP)) else {
        return (0, SAMPLE_UNWOUND_TRUNCATED);
    };
    if pc == 0 {
        return (0, SAMPLE_UNWOUND_TRUNCATED);
    }
    unsafe {
        (*s).pid = pid;
        (*s).n = 0;
        (*s).max = max;
        (*s).exact = 1;
        (*s).end = 0;
        (*s).pc = pc;
        (*s).sp = sp;
        (*s).bp = bp;
        (*s).py_n = 0;
        (*s).py_at = 0;
        (*s).eval_start = 0;
        (*s).eval_end = 0;
    }
    if let Some(py) = PY_PROCS.get_ptr(&pid) {
        python_frames(s, unsafe { &*py }, tid);
    }
    unsafe {
        bpf_loop(
            PROFILE_STACK_DEPTH as u32,
            step as *mut _,
            core::ptr::null_mut(),
            0,
        )
    };
    let (n, end, placed) = unsafe {
        (
            core::ptr::read_volatile(&(*s).n),
            core::ptr::read_volatile(&(*s).end),
            core::ptr::read_volatile(&(*s).py_at),
        )
    };
    let end = if end == 0 {
        SAMPLE_UNWOUND_TRUNCATED
    } else {
        end
    };
    let python = if placed > 0 { SAMPLE_PYTHON } else { 0 };
    (n, end | python)
}

/// Reads the Python frames of thread `tid` into `s.py_*` (none when it has no thread state).
#[inline(always)]
fn python_frames(s: *mut State, py: &PyProc, tid: u32) {
    let Some(interp) = read(py.runtime + py.interpreters_head as u64) else {
        return;
    };
    let Some(first) = read(interp + py.threads_head as u64) else {
        return;
    };
    // 3.10 knows its threads by `pthread_self()`: the task's fs base.
    let thread = if py.thread_kind == PY_THREAD_FSBASE {
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        let Ok(fsbase) =
            (unsafe { bpf_probe_read_kernel((task + py.task_fsbase as u64) as *const u64) })
        else {
            return;
        };
        fsbase
    } else {
        tid as u64
    };
    unsafe {
        (*s).key = thread;
        (*s).py_tstate = 0;
        (*s).py_frame = first;
        bpf_loop(64, find_tstate as *mut _, core::ptr::null_mut(), 0);
    }
    let tstate = unsafe { core::ptr::read_volatile(&(*s).py_tstate) };
    if tstate == 0 {
        return;
    }
    let Some(mut f) = read(tstate + py.tstate_frame as u64) else {
        return;
    };
    if py.cframe_frame != u16::MAX && f != 0 {
        let Some(current) = read(f + py.cframe_frame as u64) else {
            return;
        };
        f = current;
    }
    unsafe {
        (*s).py_frame = f;
        (*s).eval_start = py.eval_start;
        (*s).eval_end = py.eval_end;
        bpf_loop(
            PY_MAX_FRAMES as u32,
            read_py_frame as *mut _,
            core::ptr::null_mut(),
            0,
        );
    }
}

/// One thread state of the interpreter's list: the one of thread `key` ends the search.
extern "C" fn find_tstate(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = state() else { return 1 };
    let s = unsafe { &mut *s };
    let Some(py) = PY_PROCS.get_ptr(&s.pid) else {
        return 1;
    };
    let py = unsafe { &*py };
    let t = s.py_frame;
    if t == 0 {
        return 1;
    }
    if read(t + py.tstate_thread as u64) == Some(s.key) {
        s.py_tstate = t;
        return 1;
    }
    match read(t + py.tstate_next as u64) {
        Some(next) => {
            s.py_frame = next;
            0
        }
        None => 1,
    }
}

/// Reads one Python frame (code, instruction, whether it ends a C-level call of the eval
/// loop); shim frames (3.12+, owned by the C stack) are not kept but mark the frame before.
extern "C" fn read_py_frame(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = state() else { return 1 };
    let s = unsafe { &mut *s };
    let Some(py) = PY_PROCS.get_ptr(&s.pid) else {
        return 1;
    };
    let py = unsafe { &*py };
    let f = s.py_frame;
    let n = s.py_n as usize;
    if f == 0 || n >= PY_MAX_FRAMES {
        return 1;
    }
    let (Some(code), Some(previous), Some(instr)) = (
        read(f + py.frame_code as u64),
        read(f + py.frame_previous as u64),
        read(f + py.frame_instr as u64),
    ) else {
        return 1;
    };
    let mark =
        unsafe { bpf_probe_read_user((f + py.entry_offset as u64) as *const u8) }.unwrap_or(0);
    s.py_frame = previous;
    if py.entry_kind == PY_ENTRY_OWNER && mark == 3 {
        if n > 0 {
            s.py_entry[(n - 1) & (PY_MAX_FRAMES - 1)] = 1;
        }
        return 0;
    }
    s.py_code[n] = code;
    s.py_instr[n] = instr;
    s.py_entry[n] = (py.entry_kind == PY_ENTRY_EVERY
        || (py.entry_kind == PY_ENTRY_IS_ENTRY && mark != 0)) as u8;
    s.py_n += 1;
    0
}

/// Places the next Python frame (two words) in the stack; stops after one that ends its
/// C-level call, or when none or no room is left.
extern "C" fn place_py_frame(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = state() else { return 1 };
    let s = unsafe { &mut *s };
    let (at, n) = (s.py_at as usize, s.n as usize);
    if at >= s.py_n as usize
        || at >= PY_MAX_FRAMES
        || n + 2 > PROFILE_STACK_DEPTH
        || s.n + 2 > s.max
    {
        return 1;
    }
    s.frames[n] = s.py_code[at] | PY_FRAME_TAG;
    if n + 1 < PROFILE_STACK_DEPTH {
        s.frames[n + 1] = s.py_instr[at];
    }
    s.n += 2;
    s.py_at += 1;
    (s.py_entry[at] != 0) as i64
}

/// The walk's state on this CPU, as a raw pointer: the search callbacks below write to it
/// while a step holds it.
#[inline(always)]
fn state() -> Option<*mut State> {
    STATE.get_ptr_mut(0)
}

/// One halving of the search for the last mapping starting at or before `key`.
extern "C" fn find_mapping(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = state() else { return 1 };
    let (lo, hi, pid, key) = unsafe { ((*s).lo, (*s).hi, (*s).pid, (*s).key) };
    if lo >= hi {
        return 1;
    }
    let Some(p) = UNWIND_PROCS.get_ptr(&pid) else {
        return 1;
    };
    let mid = (lo + hi) / 2;
    let start = unsafe { (*p).mappings[(mid as usize) & (UNWIND_MAX_MAPPINGS - 1)].start };
    unsafe {
        if start <= key {
            (*s).lo = mid + 1;
        } else {
            (*s).hi = mid;
        }
    }
    0
}

/// One halving of the search for the last delta at or before `key`.
extern "C" fn find_delta(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = state() else { return 1 };
    let (lo, hi, key) = unsafe { ((*s).lo, (*s).hi, (*s).key) };
    if lo >= hi {
        return 1;
    }
    let mid = lo + (hi - lo) / 2;
    let Some(d) = UNWIND_DELTAS.get(mid) else {
        return 1;
    };
    unsafe {
        if *d >> 32 <= key {
            (*s).lo = mid + 1;
        } else {
            (*s).hi = mid;
        }
    }
    0
}

/// The rule at `pc` of process `pid`; `None` where no table covers it. Both searches run as
/// `bpf_loop`s, so the verifier checks one halving, not every path through all of them.
#[inline(always)]
fn lookup(s: *mut State, pid: u32, pc: u64) -> Option<UnwindRule> {
    let n = unsafe { (*UNWIND_PROCS.get_ptr(&pid)?).n }.min(UNWIND_MAX_MAPPINGS as u32);
    unsafe {
        (*s).lo = 0;
        (*s).hi = n;
        (*s).key = pc;
        bpf_loop(7, find_mapping as *mut _, core::ptr::null_mut(), 0);
    }
    let lo = unsafe { core::ptr::read_volatile(&(*s).lo) };
    if lo == 0 {
        return None;
    }
    let p = UNWIND_PROCS.get_ptr(&pid)?;
    let m = unsafe { (*p).mappings[((lo - 1) as usize) & (UNWIND_MAX_MAPPINGS - 1)] };
    if pc >= m.end || m.count == 0 {
        return None;
    }
    let v = pc.wrapping_sub(m.bias);
    if v > u32::MAX as u64 {
        return None;
    }
    unsafe {
        (*s).lo = m.first;
        (*s).hi = m.first + m.count;
        (*s).key = v;
        bpf_loop(24, find_delta as *mut _, core::ptr::null_mut(), 0);
    }
    let lo = unsafe { core::ptr::read_volatile(&(*s).lo) };
    if lo == m.first {
        return None;
    }
    let d = *UNWIND_DELTAS.get(lo - 1)?;
    UNWIND_RULES.get(d as u32).copied()
}

/// One frame: record the pc, step to the caller. Returns 1 to stop the loop.
extern "C" fn step(_i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(sp) = state() else {
        return 1;
    };
    // The eval loop running Python code: its Python frames go first (they are inside it).
    let (pc, eval_start, eval_end) = unsafe { ((*sp).pc, (*sp).eval_start, (*sp).eval_end) };
    if pc >= eval_start && pc < eval_end {
        unsafe {
            bpf_loop(
                PY_MAX_FRAMES as u32,
                place_py_frame as *mut _,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    let (pid, at) = {
        let s = unsafe { &mut *sp };
        let i = s.n as usize;
        if i >= PROFILE_STACK_DEPTH || s.n >= s.max {
            return 1;
        }
        s.frames[i] = s.pc;
        s.n += 1;
        let at = if s.exact != 0 { s.pc } else { s.pc - 1 };
        s.exact = 0;
        (s.pid, at)
    };
    let rule = lookup(sp, pid, at);
    let s = unsafe { &mut *sp };
    let next = match rule {
        Some(r) if r.kind == UR_STOP => {
            s.end = SAMPLE_UNWOUND_COMPLETE;
            return 1;
        }
        Some(r) if r.kind == UR_FRAME => frame(s, &r),
        Some(r) if r.kind == UR_PLT => {
            let extra = if s.pc & 15 >= r.threshold as u64 {
                8
            } else {
                0
            };
            let cfa = s.sp + 8 + extra;
            read(cfa - 8).map(|pc| (pc, cfa, s.bp))
        }
        Some(r) if r.kind == UR_SIGNAL => {
            s.exact = 1;
            let mc = s.sp;
            match (read(mc + MC_IP), read(mc + MC_SP), read(mc + MC_BP)) {
                (Some(pc), Some(sp), Some(bp)) => Some((pc, sp, bp)),
                _ => None,
            }
        }
        // No table: one frame-pointer step, only where rbp plausibly points at a frame.
        _ => {
            let bp = s.bp;
            if bp <= s.sp || bp - s.sp > MAX_FRAME || bp & 7 != 0 {
                s.end = SAMPLE_UNWOUND_TRUNCATED;
                return 1;
            }
            match (read(bp + 8), read(bp)) {
                (Some(pc), Some(saved)) => Some((pc, bp + 16, saved)),
                _ => None,
            }
        }
    };
    let Some((pc, sp, bp)) = next else {
        s.end = SAMPLE_UNWOUND_TRUNCATED;
        return 1;
    };
    if pc == 0 {
        s.end = SAMPLE_UNWOUND_COMPLETE;
        return 1;
    }
    s.pc = pc;
    s.sp = sp;
    s.bp = bp;
    0
}

#[inline(always)]
fn frame(s: &State, r: &UnwindRule) -> Option<(u64, u64, u64)> {
    let off = r.cfa_off as i64;
    let cfa = match r.cfa {
        CFA_RBP => s.bp.wrapping_add_signed(off),
        CFA_DEREF_RSP => read(s.sp.wrapping_add_signed(off))?,
        CFA_DEREF_RBP => read(s.bp.wrapping_add_signed(off))?,
        _ => s.sp.wrapping_add_signed(off),
    };
    let bp = match r.rbp {
        RBP_AT_CFA => read(cfa.wrapping_add_signed(r.rbp_off as i64))?,
        RBP_AT_RBP => read(s.bp.wrapping_add_signed(r.rbp_off as i64))?,
        _ => s.bp,
    };
    Some((read(cfa - 8)?, cfa, bp))
}
