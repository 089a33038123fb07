//! Types shared by oxeye's eBPF programs and user space. Every type is `#[repr(C)]` with no
//! implicit padding: hash keys are compared byte for byte, so padding must be explicit and zeroed.
#![no_std]

/// Key of the flow maps: one entry per (addresses, ports, protocol, interface, direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address; IPv4 in the first 4 bytes (network order), rest zero.
    pub src: [u8; 16],
    /// Destination address, same layout.
    pub dst: [u8; 16],
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// Source port (host order); ICMP: 0.
    pub src_port: u16,
    /// Destination port (host order); ICMP: type << 8 | code.
    pub dst_port: u16,
    /// EtherType after VLAN tags (host order).
    pub ether_type: u16,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...); 0 for non-IP.
    pub proto: u8,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
}

/// Counters of one flow: a flow-map value, or one cache slot's share.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets (scaled by the sampling rate).
    pub packets: u64,
    /// Bytes of the frames (scaled by the sampling rate).
    pub bytes: u64,
    /// First packet, kernel jiffies (user space converts with the CLOCK samples).
    pub first_seen: u64,
    /// Last packet, kernel jiffies.
    pub last_seen: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
    /// Explicit padding, as scalars: a byte array would be zeroed by a `memset` call in BPF.
    pub _pad8: u8,
    /// Padding.
    pub _pad16: u16,
    /// Padding.
    pub _pad32: u32,
}

// The programs OR TCP flags into the 64-bit word that starts at `tcp_flags` (BPF has no
// byte-wide atomics): it must be aligned and end the struct, its other bytes padding.
const _: () = assert!(
    core::mem::offset_of!(FlowStats, tcp_flags) % 8 == 0
        && core::mem::offset_of!(FlowStats, tcp_flags) + 8 == core::mem::size_of::<FlowStats>()
);

/// One slot of the front cache that the flow programs check before their hash map: exactly one
/// cache line (the `CACHE` array is mmapable, hence page-aligned), so a hit touches one line of
/// memory where a hash-map lookup touches two or more (bucket, element). Counters are
/// 32-bit: a slot about to overflow `bytes` is moved to the hash map first; times are the low 32
/// bits of jiffies (see [`widen_jiffies`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSlot {
    /// The flow held, valid when `packets` is not 0.
    pub key: FlowKey,
    /// Packets (scaled by the sampling rate) since the slot was claimed; 0 = free slot.
    pub packets: u32,
    /// Bytes of those frames (scaled).
    pub bytes: u32,
    /// First packet, low 32 bits of jiffies.
    pub first_seen: u32,
    /// Last packet, low 32 bits of jiffies.
    pub last_seen: u32,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
    /// Padding.
    pub _pad8: u8,
    /// Padding.
    pub _pad16: u16,
}

const _: () = assert!(core::mem::size_of::<CacheSlot>() == 64);

impl CacheSlot {
    /// The slot's counters as a hash-map value, its times widened against `now` (jiffies).
    #[inline(always)]
    pub fn stats(&self, now: u64) -> FlowStats {
        FlowStats {
            packets: self.packets as u64,
            bytes: self.bytes as u64,
            first_seen: widen_jiffies(now, self.first_seen),
            last_seen: widen_jiffies(now, self.last_seen),
            tcp_flags: self.tcp_flags,
            _pad8: 0,
            _pad16: 0,
            _pad32: 0,
        }
    }
}

/// The full jiffies value whose low 32 bits are `low`, at most 2^32 jiffies before `now`.
#[inline(always)]
pub const fn widen_jiffies(now: u64, low: u32) -> u64 {
    now.wrapping_sub((now as u32).wrapping_sub(low) as u64)
}

/// Cache slots per (CPU, generation, program); a power of two (the slot is the hash's top bits).
/// 16 384 lines = 1 MiB a region, 4 MiB a CPU.
pub const CACHE_SLOTS: u32 = 16384;

/// Index of a slot in the `CACHE` array: each CPU has its own regions (user space sizes the
/// array for every possible CPU), generations and programs separate ones within it.
#[inline(always)]
pub const fn cache_index(cpu: u32, generation: u32, prog: u32, slot: u32) -> u32 {
    ((cpu * 2 + generation) * 2 + prog) * CACHE_SLOTS + slot
}

/// Slots of the `CACHE` array for `cpus` possible CPUs.
pub const fn cache_entries(cpus: u32) -> u32 {
    cpus * 4 * CACHE_SLOTS
}

/// Packet seen on ingress (XDP).
pub const DIR_INGRESS: u8 = 0;
/// Packet seen on egress (TC).
pub const DIR_EGRESS: u8 = 1;

/// Indexes into the per-CPU `COUNTERS` array: `program * COUNTERS_PER_PROGRAM + counter`.
pub const PROG_XDP: u32 = 0;
/// TC egress program.
pub const PROG_TC: u32 = 1;
/// Slots per program.
pub const COUNTERS_PER_PROGRAM: u32 = 8;
/// Packets the program ran on.
pub const C_PACKETS: u32 = 0;
/// Truncated or malformed headers (counted, passed, not keyed beyond what parsed).
pub const C_MALFORMED: u32 = 1;
/// Flow map insert failures (map full, allocation failure).
pub const C_MAP_INSERT_FAILED: u32 = 2;
/// Packets skipped by 1-in-N sampling.
pub const C_SAMPLED_OUT: u32 = 3;
/// Entries created in the flow hash map (by cache misses, and by slots about to overflow);
/// minus those harvested = evicted by the LRU.
pub const C_FLOWS_CREATED: u32 = 4;
/// Packets counted in the hash map because another flow held their cache slot (the front
/// cache's misses; packets minus sampled out minus malformed minus these = cache hits).
pub const C_CACHE_MISSES: u32 = 5;
/// Names of the counters, by slot, for self-metrics.
pub const COUNTER_NAMES: [&str; 6] = [
    "ebpf_packets",
    "ebpf_malformed_packets",
    "ebpf_map_insert_failures",
    "ebpf_sampled_out_packets",
    "ebpf_flows_created",
    "ebpf_flow_cache_misses",
];

/// Index of the control array's slot holding the active flow map (0 = `FLOWS_A`, 1 = `FLOWS_B`).
pub const CONTROL_ACTIVE_MAP: u32 = 0;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: repr(C), only integers, no implicit padding (44 + 4 + 40 bytes, 8-aligned).
    unsafe impl aya::Pod for super::CacheSlot {}
}

// ---------------------------------------------------------------------------------------------
// Spans

/// Sources at most (index into `SOURCES`, the attach cookie of uprobes).
pub const MAX_SOURCES: u32 = 64;
/// Nesting depth tracked per thread; deeper calls are counted, not traced.
pub const MAX_DEPTH: usize = 8;
/// Raw arguments captured at most.
pub const MAX_ARGS: usize = 6;
/// Frames per captured stack.
pub const STACK_DEPTH: usize = 32;
/// Syscall numbers the `raw_syscalls` programs look up (`SYSCALL_SOURCES`).
pub const MAX_SYSCALLS: u32 = 1024;

/// `SourceConfig::stack` bits.
pub const STACK_KERNEL: u32 = 1;
/// User stack.
pub const STACK_USER: u32 = 2;

/// Per-source settings, read by the programs at entry and exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceConfig {
    /// Only this process (tgid); 0 = any.
    pub pid: u32,
    /// Only this thread; 0 = any.
    pub tid: u32,
    /// Only this cgroup (v2 id); 0 = any.
    pub cgroup_id: u64,
    /// Spans shorter than this are not emitted (decided at exit).
    pub min_duration_ns: u64,
    /// Only tasks with this comm (NUL-padded); all zero = any.
    pub comm: [u8; 16],
    /// Raw arguments to capture (0..=MAX_ARGS).
    pub nargs: u32,
    /// STACK_KERNEL | STACK_USER.
    pub stack: u32,
    /// 1 when configured (slots of unused sources are 0).
    pub enabled: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// A span still open on a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenSpan {
    /// Its span id.
    pub span_id: u64,
    /// Entry time, kernel monotonic ns.
    pub start_ns: u64,
    /// Source index.
    pub source: u32,
    /// Kernel stack length (frames).
    pub kstack_len: u32,
    /// User stack length (frames).
    pub ustack_len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Arguments at entry.
    pub args: [u64; MAX_ARGS],
}

/// Per-thread state: the stack of open spans and the trace they belong to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadState {
    /// Open spans.
    pub depth: u32,
    /// Calls entered beyond MAX_DEPTH and not yet exited (not traced).
    pub overflow: u32,
    /// Source + 1 of the syscall this thread is in, traced through the `raw_syscalls` pair
    /// (0: none); a thread is in one syscall at a time.
    pub in_syscall: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The thread's id generator (SplitMix64 state; seeded from the kernel's PRNG on the
    /// thread's first traced entry).
    pub rng: u64,
    /// Trace id of the current tree.
    pub trace_id: [u8; 16],
    /// The open spans, outermost first.
    pub open: [OpenSpan; MAX_DEPTH],
    /// Stacks captured at entry, per open span: kernel then user.
    pub stacks: [[u64; 2 * STACK_DEPTH]; MAX_DEPTH],
}

/// A finished span without stacks, as written to the ring buffer. A source that captures no
/// arguments writes only the first [`SPAN_BRIEF_LEN`] bytes (everything before `args`): a
/// third less ring traffic per span.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpanHeader {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Span id.
    pub span_id: u64,
    /// Parent span id; 0 for a root.
    pub parent_span_id: u64,
    /// Entry, kernel monotonic ns.
    pub start_ns: u64,
    /// Exit, kernel monotonic ns.
    pub end_ns: u64,
    /// Return value.
    pub ret: i64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU of the exit.
    pub cpu: u32,
    /// Source index.
    pub source: u32,
    /// Task comm.
    pub comm: [u8; 16],
    /// Kernel stack length (frames, in `stacks[..kstack_len]`).
    pub kstack_len: u32,
    /// User stack length (frames, in `stacks[STACK_DEPTH..STACK_DEPTH + ustack_len]`).
    pub ustack_len: u32,
    /// Arguments at entry (last: absent from brief records).
    pub args: [u64; MAX_ARGS],
}

/// Bytes of a brief span record: a [`SpanHeader`] without its arguments.
pub const SPAN_BRIEF_LEN: usize = core::mem::offset_of!(SpanHeader, args);

// The span programs copy ids, comm and arguments as 8-byte words (a byte array's copy is a
// byte-at-a-time loop in BPF): those fields must be 8-byte aligned.
const _: () = assert!(
    core::mem::offset_of!(SpanHeader, trace_id) % 8 == 0
        && core::mem::offset_of!(SpanHeader, comm) % 8 == 0
        && core::mem::offset_of!(SpanHeader, args) % 8 == 0
        && core::mem::offset_of!(ThreadState, trace_id) % 8 == 0
        && core::mem::offset_of!(SpanEvent, stacks) % 8 == 0
        && core::mem::offset_of!(SourceConfig, comm) % 8 == 0
);

/// A finished span with its stacks (written only when a stack was captured: 4x the bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpanEvent {
    /// Everything but the stacks.
    pub header: SpanHeader,
    /// Kernel frames then user frames.
    pub stacks: [u64; 2 * STACK_DEPTH],
}

/// Slots of the span programs' per-CPU `SPAN_COUNTERS`.
pub const S_SPANS: u32 = 0;
/// Ring buffer full: span lost (counted).
pub const S_RINGBUF_FULL: u32 = 1;
/// Exits whose entry was never seen or was evicted.
pub const S_ORPHAN_EXITS: u32 = 2;
/// Entries whose exit never came (popped when an outer exit arrived).
pub const S_ORPHAN_ENTRIES: u32 = 3;
/// Stack capture failures.
pub const S_STACK_FAILURES: u32 = 4;
/// Calls nested deeper than MAX_DEPTH (not traced).
pub const S_TOO_DEEP: u32 = 5;
/// Spans shorter than `min_duration` (filtered in the kernel).
pub const S_SHORTER_THAN_MIN: u32 = 6;
/// Slots per source.
pub const SPAN_COUNTERS_PER_SOURCE: u32 = 8;
/// Names of the span counters, by slot.
pub const SPAN_COUNTER_NAMES: [&str; 7] = [
    "ebpf_spans",
    "ebpf_ringbuf_full",
    "ebpf_orphan_exits",
    "ebpf_orphan_entries",
    "ebpf_stack_failures",
    "ebpf_calls_too_deep",
    "ebpf_spans_shorter_than_min",
];

#[cfg(feature = "user")]
mod span_pod {
    // SAFETY: plain #[repr(C)] data with explicit padding.
    unsafe impl aya::Pod for super::SourceConfig {}
}

// ---------------------------------------------------------------------------------------------
// CPU profiles

/// Frames per stack in a profile sample (the kernel's default `perf_event_max_stack`).
pub const PROFILE_STACK_DEPTH: usize = 127;

/// Settings of the profile program (slot 0 of `PROFILE_CONFIG`), read on every sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Only this process (tgid); 0 = any.
    pub pid: u32,
    /// STACK_KERNEL | STACK_USER.
    pub stack: u32,
    /// Only this cgroup (v2 id); 0 = any.
    pub cgroup_id: u64,
    /// Only tasks with this comm (NUL-padded); all zero = any.
    pub comm: [u8; 16],
    /// Frames kept per stack (1..=PROFILE_STACK_DEPTH).
    pub max_depth: u32,
    /// Not this process (oxeye's own); 0 = none excluded.
    pub exclude_pid: u32,
}

// Unwinding user stacks with tables (`profiles.unwind: tables`, program `oxeye_profile_unwind`).

/// Executable mappings per process the walker knows (sorted by start; further ones have none).
pub const UNWIND_MAX_MAPPINGS: usize = 64;
/// Distinct rules over all objects (`UNWIND_RULES`).
pub const UNWIND_MAX_RULES: u32 = 1 << 14;

/// One executable mapping of a process: `pc - bias` is an address of its object, whose deltas
/// are `UNWIND_DELTAS[first..first + count]` (count 0: no table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first: u32,
    pub count: u32,
}

/// A process's mappings (`UNWIND_PROCS`, by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProcess {
    /// Mappings used, sorted by start.
    pub n: u32,
    pub _pad: u32,
    pub mappings: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

/// A rule (`UNWIND_RULES`): how to find the caller's registers (see `oxeye_unwind::Rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRule {
    /// `UR_*`.
    pub kind: u8,
    /// `CFA_*` (kind `UR_FRAME`).
    pub cfa: u8,
    /// `RBP_*` (kind `UR_FRAME`).
    pub rbp: u8,
    /// `UR_PLT`'s threshold.
    pub threshold: u8,
    pub cfa_off: i32,
    pub rbp_off: i32,
}

pub const UR_FRAME: u8 = 0;
pub const UR_PLT: u8 = 1;
pub const UR_SIGNAL: u8 = 2;
pub const UR_STOP: u8 = 3;
pub const UR_INVALID: u8 = 4;
pub const CFA_RSP: u8 = 0;
pub const CFA_RBP: u8 = 1;
pub const CFA_DEREF_RSP: u8 = 2;
pub const CFA_DEREF_RBP: u8 = 3;
pub const RBP_SAME: u8 = 0;
pub const RBP_AT_CFA: u8 = 1;
pub const RBP_AT_RBP: u8 = 2;

/// `ProfileSampleEvent::flags`: the user stack was walked with tables and ended at the
/// outermost frame.
pub const SAMPLE_UNWOUND_COMPLETE: u32 = 1;
/// Walked with tables, and cut short (no table and no frame pointer, unreadable memory, depth).
pub const SAMPLE_UNWOUND_TRUNCATED: u32 = 2;
/// The process has no tables loaded yet: frame pointers were used; user space loads them.
pub const SAMPLE_UNWIND_UNKNOWN_PROCESS: u32 = 4;
/// The user stack holds Python frames: each a pair, `code object | PY_FRAME_TAG` then its
/// instruction pointer, before the native `_PyEval_EvalFrameDefault` frame that ran it.
pub const SAMPLE_PYTHON: u32 = 8;
/// Marks the first word of a Python frame in a user stack (user addresses never have it).
pub const PY_FRAME_TAG: u64 = 1 << 63;
/// Python frames read per sample at most.
pub const PY_MAX_FRAMES: usize = 64;

/// A CPython process (`PY_PROCS`, by tgid): where its runtime and eval loop are, and the
/// offsets of its version (see `oxeye_unwind::python::Layout`; 3.11+).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// `&_PyRuntime`.
    pub runtime: u64,
    /// `_PyEval_EvalFrameDefault`, [start, end).
    pub eval_start: u64,
    pub eval_end: u64,
    pub interpreters_head: u16,
    pub threads_head: u16,
    pub tstate_next: u16,
    /// `native_thread_id`.
    pub tstate_thread: u16,
    pub tstate_frame: u16,
    /// `cframe->current_frame` (3.11, 3.12); `u16::MAX`: none (3.13).
    pub cframe_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    /// `PY_ENTRY_EVERY` (3.10), `PY_ENTRY_IS_ENTRY` (3.11) or `PY_ENTRY_OWNER` (3.12+, at
    /// `entry_offset`).
    pub entry_kind: u16,
    pub entry_offset: u16,
    /// `PY_THREAD_TID`: `tstate_thread` holds the thread's tid (3.11+); `PY_THREAD_FSBASE`: its
    /// `pthread_self()`, the task's fs base at `task_fsbase` in `task_struct` (3.10).
    pub thread_kind: u16,
    pub task_fsbase: u32,
    pub _pad: u32,
}

pub const PY_ENTRY_EVERY: u16 = 0;
pub const PY_THREAD_TID: u16 = 0;
pub const PY_THREAD_FSBASE: u16 = 1;

pub const PY_ENTRY_IS_ENTRY: u16 = 1;
pub const PY_ENTRY_OWNER: u16 = 2;

/// One stack sample, as written to the ring buffer (fixed size: a reservation must be).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProfileSampleEvent {
    /// Trace of the span open on the thread, all zero when none.
    pub trace_id: [u8; 16],
    /// That span's id; 0 when none.
    pub span_id: u64,
    /// When the sample was taken, kernel monotonic ns.
    pub time_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU it ran on.
    pub cpu: u32,
    /// Kernel frames in `kernel[..kstack_len]`.
    pub kstack_len: u32,
    /// User frames in `user[..ustack_len]`.
    pub ustack_len: u32,
    /// `SAMPLE_*` bits (0 with frame pointers only).
    pub flags: u32,
    /// Task comm.
    pub comm: [u8; 16],
    /// Kernel stack, innermost first.
    pub kernel: [u64; PROFILE_STACK_DEPTH],
    /// User stack, innermost first.
    pub user: [u64; PROFILE_STACK_DEPTH],
}

/// Slots of the profile program's per-CPU `PROFILE_COUNTERS`.
pub const P_SAMPLES: u32 = 0;
/// Ring buffer full: sample lost.
pub const P_RINGBUF_FULL: u32 = 1;
/// Kernel stack capture failures (the sample was sent without it).
pub const P_KSTACK_FAILURES: u32 = 2;
/// User stack capture failures.
pub const P_USTACK_FAILURES: u32 = 3;
/// Samples of tasks the filters (pid, comm, cgroup) leave out.
pub const P_FILTERED: u32 = 4;
/// Samples of an idle CPU (pid 0): not sent.
pub const P_IDLE: u32 = 5;
/// Samples of oxeye itself (`include_oxeye: false`): not sent.
pub const P_OWN: u32 = 6;
/// User stacks walked with tables to the outermost frame.
pub const P_UNWOUND_COMPLETE: u32 = 7;
/// User stacks walked with tables and cut short.
pub const P_UNWOUND_TRUNCATED: u32 = 8;
/// Samples of processes without tables yet (frame pointers used).
pub const P_UNWIND_UNKNOWN_PROCESS: u32 = 9;
/// Counter names, by slot.
pub const PROFILE_COUNTER_NAMES: [&str; 10] = [
    "ebpf_profile_samples",
    "ebpf_profile_ringbuf_full",
    "ebpf_profile_kernel_stack_failures",
    "ebpf_profile_user_stack_failures",
    "ebpf_profile_filtered_samples",
    "ebpf_profile_idle_samples",
    "ebpf_profile_own_samples",
    "ebpf_profile_unwound_complete",
    "ebpf_profile_unwound_truncated",
    "ebpf_profile_unwind_unknown_process",
];

/// Key of the benchmark-only in-kernel aggregation (`oxeye_profile_counted`): one count per
/// (thread, kernel stack id, user stack id, open span) — what oxeye's records carry, but time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CountedKey {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Kernel stack id in the stack map (negative: none).
    pub kstack: i32,
    /// User stack id (negative: none).
    pub ustack: i32,
    /// The span open on the thread (0: none).
    pub span_id: u64,
}

#[cfg(feature = "user")]
mod process_pod {
    // SAFETY: plain #[repr(C)] data: four u32 then two u64 at 8-aligned offsets (16 and 24),
    // a u32 and two u16 filling 8 bytes, then byte arrays; 568 bytes, no padding.
    unsafe impl aya::Pod for super::ProcessEvent {}
}

#[cfg(feature = "user")]
mod profile_pod {
    // SAFETY: plain #[repr(C)] data with explicit padding.
    unsafe impl aya::Pod for super::ProfileConfig {}
    // SAFETY: as above (four 4-byte integers and a u64: no padding).
    unsafe impl aya::Pod for super::CountedKey {}
    // SAFETY: plain #[repr(C)] data: u64s and u32s, no padding (32 bytes).
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: two u32s then 32-byte mappings: no padding.
    unsafe impl aya::Pod for super::UnwindProcess {}
    // SAFETY: four u8s then two i32s: no padding (12 bytes).
    unsafe impl aya::Pod for super::UnwindRule {}
    // SAFETY: three u64s, twelve u16s, two u32s: no padding (56 bytes).
    unsafe impl aya::Pod for super::PyProc {}
}

/// Longest executable path kept from an exec (bytes, with the NUL).
pub const PROCESS_PATH_MAX: usize = 256;
/// Longest command line kept from an exec (bytes; arguments NUL-separated).
pub const PROCESS_CMDLINE_MAX: usize = 256;
/// [`ProcessEvent::kind`]: a process replaced its program (`sched_process_exec`).
pub const PROCESS_EXEC: u32 = 1;
/// [`ProcessEvent::kind`]: the last thread of a process exited (`sched_process_exit`).
pub const PROCESS_EXIT: u32 = 2;

/// One process lifecycle event in the `PROCESS_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessEvent {
    /// [`PROCESS_EXEC`] or [`PROCESS_EXIT`].
    pub kind: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// The thread that ran the event.
    pub tid: u32,
    /// Parent's process id (0: unknown).
    pub ppid: u32,
    /// When, kernel monotonic ns.
    pub time_ns: u64,
    /// cgroup v2 id (the inode of its directory).
    pub cgroup_id: u64,
    /// Exit: the wait status (`code << 8 | signal`).
    pub exit_code: u32,
    /// Bytes of `filename` used, without the NUL.
    pub filename_len: u16,
    /// Bytes of `cmdline` used.
    pub cmdline_len: u16,
    /// The thread's comm (after exec: the new program's name).
    pub comm: [u8; 16],
    /// Exec: the path given to execve.
    pub filename: [u8; PROCESS_PATH_MAX],
    /// Exec: the arguments, NUL-separated, cut at [`PROCESS_CMDLINE_MAX`].
    pub cmdline: [u8; PROCESS_CMDLINE_MAX],
}

/// `PROCESS_COUNTERS` index: exec events written.
pub const PR_EXECS: u32 = 0;
/// Exit events written.
pub const PR_EXITS: u32 = 1;
/// Events lost: the ring buffer was full.
pub const PR_RINGBUF_FULL: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Requests (L7): connections and the first bytes of their messages

/// Bytes of a message a request event can carry at most (`capture_bytes` is 1..=this).
pub const L7_DATA_MAX: usize = 1024;
/// Ports the `ports:` filter holds at most.
pub const L7_MAX_PORTS: usize = 16;

/// [`L7Conn::role`]: the traced process accepted the connection (it answers requests).
pub const ROLE_SERVER: u8 = 1;
/// The traced process connected (it makes requests).
pub const ROLE_CLIENT: u8 = 2;

/// [`L7Conn::proto`] before the first message is seen.
pub const PROTO_UNKNOWN: u8 = 0;
/// HTTP/1.x.
pub const PROTO_HTTP: u8 = 1;
/// DNS over UDP or TCP.
pub const PROTO_DNS: u8 = 2;
/// Redis (RESP).
pub const PROTO_REDIS: u8 = 3;
/// None of the configured protocols: the connection's data is not captured.
pub const PROTO_OTHER: u8 = 0xff;

/// Settings of the request programs (slot 0 of `L7_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Config {
    /// Only this process (tgid); 0 = any.
    pub pid: u32,
    /// Bytes captured per message (1..=L7_DATA_MAX).
    pub capture_bytes: u32,
    /// Only this cgroup (v2 id); 0 = any.
    pub cgroup_id: u64,
    /// Only tasks with this comm (NUL-padded); all zero = any.
    pub comm: [u8; 16],
    /// Ports of interest (the server's port of a connection); 0 ends the list, empty = any.
    pub ports: [u16; L7_MAX_PORTS],
    /// Bit `1 << PROTO_*` for each protocol to detect, and [`L7_FOLLOW_TLS`].
    pub protocols: u32,
    /// Not this process (oxeye's own).
    pub exclude_pid: u32,
}

/// [`L7Config::protocols`] bit: connections that start with a TLS record are followed through
/// the libssl uprobes (their plaintext) instead of being left as another protocol.
pub const L7_FOLLOW_TLS: u32 = 1 << 16;

/// A tracked connection (value of `L7_CONNS`, keyed by `pid << 32 | fd`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Conn {
    /// Unique per connection over the programs' life (never 0).
    pub id: u64,
    /// Local address (IPv4 in the first 4 bytes, network order).
    pub local: [u8; 16],
    /// Peer address.
    pub remote: [u8; 16],
    /// Local port (host order).
    pub local_port: u16,
    /// Peer port (host order).
    pub remote_port: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// ROLE_SERVER or ROLE_CLIENT.
    pub role: u8,
    /// PROTO_* (detected from the first message).
    pub proto: u8,
    /// The socket's type: SOCK_STREAM (1) or SOCK_DGRAM (2); 0: unknown.
    pub sock_type: u8,
    /// 1: the connection carries TLS; its events hold the plaintext `SSL_read`/`SSL_write`
    /// saw, not the bytes on the wire.
    pub tls: u8,
    /// Explicit padding.
    pub _pad16: u16,
    /// Explicit padding.
    pub _pad32: u32,
}

/// [`L7Event::kind`]: bytes read from the connection.
pub const L7_READ: u8 = 1;
/// Bytes written to it.
pub const L7_WRITE: u8 = 2;
/// The connection was closed by the process (`close`).
pub const L7_CLOSE: u8 = 3;

/// One read, write or close of a tracked connection, as written to the ring buffer: the header,
/// then `captured` bytes of data (the record is only as long as that).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Event {
    /// The connection, as tracked when it was opened.
    pub conn: L7Conn,
    /// Syscall entry, kernel monotonic ns.
    pub start_ns: u64,
    /// Syscall exit.
    pub end_ns: u64,
    /// Bytes the syscall moved (all of them, captured or not).
    pub bytes: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The connection's file descriptor.
    pub fd: u32,
    /// CPU of the syscall's exit.
    pub cpu: u32,
    /// Bytes of data that follow (at most `capture_bytes`).
    pub captured: u16,
    /// L7_READ, L7_WRITE or L7_CLOSE.
    pub kind: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Explicit padding.
    pub _pad32: u32,
    /// Task comm.
    pub comm: [u8; 16],
}

/// Bytes of an [`L7Event`] header in the ring (its data follows).
pub const L7_EVENT_LEN: usize = core::mem::size_of::<L7Event>();

/// Slots of the request programs' per-CPU `L7_COUNTERS`.
pub const L7_C_EVENTS: u32 = 0;
/// Events lost: the ring buffer was full.
pub const L7_C_RINGBUF_FULL: u32 = 1;
/// Connections accepted or made and tracked.
pub const L7_C_CONNECTIONS: u32 = 2;
/// Connections not tracked: the connection map was full.
pub const L7_C_MAP_FULL: u32 = 3;
/// Messages longer than `capture_bytes`: the rest was not captured.
pub const L7_C_TRUNCATED: u32 = 4;
/// Connections whose first message is none of the configured protocols (not captured).
pub const L7_C_OTHER_PROTOCOL: u32 = 5;
/// Connections whose socket could not be read (addresses unknown; not tracked).
pub const L7_C_SOCKET_UNREADABLE: u32 = 6;
/// `SSL_read`/`SSL_write` calls of a traced process whose `SSL` object is tied to no tracked
/// connection: its socket is not tracked (filtered out, opened before oxeye), or it made no
/// socket call inside an `SSL_*` call yet (a memory BIO does its socket I/O outside them).
/// Not captured.
pub const L7_C_TLS_UNLINKED: u32 = 7;
/// TLS connections closed without any plaintext seen: their process does not call a probed
/// libssl (Go's crypto/tls, rustls, OpenSSL linked in statically).
pub const L7_C_TLS_NO_PLAINTEXT: u32 = 8;
/// Counter names, by slot.
pub const L7_COUNTER_NAMES: [&str; 9] = [
    "ebpf_l7_events",
    "ebpf_l7_ringbuf_full",
    "ebpf_l7_connections",
    "ebpf_l7_connections_map_full",
    "ebpf_l7_capture_truncated",
    "ebpf_l7_other_protocol",
    "ebpf_l7_socket_unreadable",
    "ebpf_l7_tls_unlinked",
    "ebpf_l7_tls_no_plaintext",
];

/// Offsets the request programs follow from a task to a socket's addresses (from the kernel's
/// BTF; slot 0 of `L7_OFFSETS`; `u32::MAX`: unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock_common.skc_family` (in `struct sock` at 0).
    pub skc_family: u32,
    /// `sock_common.skc_num` (local port, host order).
    pub skc_num: u32,
    /// `sock_common.skc_dport` (peer port, network order).
    pub skc_dport: u32,
    /// `sock_common.skc_rcv_saddr`.
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_daddr`.
    pub skc_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (`u32::MAX` without IPv6).
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr`.
    pub skc_v6_daddr: u32,
    /// `sock.sk_type` (a u16 since Linux 5.6; `u32::MAX` where it is a bitfield).
    pub sk_type: u32,
    /// Where a syscall's first four arguments are in `struct pt_regs` (x86-64: `di`, `si`,
    /// `dx`, `r10`; arm64: `orig_x0`, `regs[1..4]`): the exit programs read them there.
    pub args: [u32; 4],
    /// Where the x86-64 window `r10..=di` begins (64 bytes: `r10` first, `dx`, `si`, `di`
    /// last), read in one go; `u32::MAX`: not that layout, each argument is read alone.
    pub args_window: u32,
}

#[cfg(feature = "user")]
mod l7_pod {
    // SAFETY: plain #[repr(C)] data: u32s, a u64 at 8, bytes, u16s; 72 bytes, no padding.
    unsafe impl aya::Pod for super::L7Config {}
    // SAFETY: a u64, 32 bytes, three u16s, four u8s, a u16 and a u32: 56 bytes, no padding.
    unsafe impl aya::Pod for super::L7Conn {}
    // SAFETY: eighteen u32s.
    unsafe impl aya::Pod for super::SocketOffsets {}
}

const _: () = assert!(
    core::mem::size_of::<L7Config>() == 72
        && core::mem::size_of::<L7Conn>() == 56
        && core::mem::size_of::<L7Event>() == 56 + 24 + 24 + 16
);
