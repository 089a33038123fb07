//! Typed errors of the receiver's parts, in aya's style (`SyscallError { call, io_error }`):
//! what failed is a variant a caller can match; its text is what a user reads.

/// Why the flow programs cannot load, attach or be harvested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The process may not load or attach eBPF programs.
    #[error(
        "the ebpf receiver needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; this process lacks {}. \
         Run as root, or grant them: setcap cap_bpf,cap_net_admin,cap_perfmon+ep $(command -v oxeye)",
        missing.join(", ")
    )]
    Privileges {
        /// The capabilities missing (`CAP_BPF`, ...).
        missing: Vec<&'static str>,
    },
    /// `interfaces: default` in a namespace without a default route.
    #[error("no default route in this network namespace: list the interfaces to watch under `flows.interfaces`")]
    NoDefaultRoute,
    /// `interfaces: all` found only loopback.
    #[error("`interfaces: all` found no non-loopback interface")]
    NoInterface,
    /// A listed interface does not exist.
    #[error("interface `{name}` does not exist (interfaces here: {})", present.join(", "))]
    NoSuchInterface {
        /// The interface asked for.
        name: String,
        /// The interfaces there are.
        present: Vec<String>,
    },
    /// The kernel refused to load the programs (the text explains why and what to do).
    #[error("{0}")]
    Load(String),
    /// Attaching to an interface failed (the text names it, and another tool holding it).
    #[error("{0}")]
    Attach(String),
    /// A map the programs define is missing or of another type.
    #[error("map {0} missing or of the wrong type")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A program is missing from the object or of another type.
    #[error(transparent)]
    Program(#[from] ProbeError),
    /// A system call failed.
    #[error("{what}: {io_error}")]
    Syscall {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        io_error: std::io::Error,
    },
}

/// Why span sources or the profiler cannot load, attach or be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The kernel refused to load the object (the text explains why and what to do).
    #[error("{0}")]
    Load(String),
    /// A program the code expects is not in the object.
    #[error("program {0} missing from the eBPF object")]
    NoProgram(String),
    /// A program is of another type than the code expects.
    #[error("{name}: {source}")]
    ProgramType {
        /// The program.
        name: String,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The verifier or the kernel refused a program.
    #[error("the kernel rejected {program}: {}", crate::flows::chain(source))]
    Rejected {
        /// The program (or what it is for).
        program: String,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Attaching (or loading for a target) failed.
    #[error("{what}: {}", crate::flows::chain(source))]
    Attach {
        /// What was being attached, e.g. `uprobe:/bin/bash:readline: attaching`.
        what: String,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the programs define is missing.
    #[error("map {0} missing")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A system call or file operation failed.
    #[error("{what}: {io_error}")]
    Syscall {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        io_error: std::io::Error,
    },
    /// Neither fentry nor kprobe can trace kernel functions here.
    #[error(
        "kprobe:{func}: kernel functions cannot be traced on this kernel: fentry failed ({fentry}); \
         kprobe failed ({kprobe}). Use a `syscall:` source (tracepoints work here), or run where \
         CONFIG_KPROBES or fentry is available (`oxeye doctor` shows what this kernel supports)"
    )]
    KernelFunctions {
        /// The function.
        func: String,
        /// Why fentry cannot be used.
        fentry: String,
        /// Why kprobe cannot be used.
        kprobe: String,
    },
    /// The kernel has no such function.
    #[error("kprobe:{0}: no such kernel function in /proc/kallsyms")]
    NoKernelFunction(String),
    /// The kernel has no `syscalls:` tracepoint for this name.
    #[error(
        "{label}: no tracepoint syscalls:{tracepoint} on this kernel (is `{name}` a syscall name?)"
    )]
    NoTracepoint {
        /// The source, e.g. `syscall:opnat`.
        label: String,
        /// The tracepoint looked for, e.g. `sys_enter_opnat`.
        tracepoint: String,
        /// The syscall name given.
        name: String,
    },
    /// A source cannot be attached the way it asks (the text says why and what to write).
    #[error("{0}")]
    Source(String),
    /// A source's or the profiler's filter names something absent (a cgroup, a process).
    #[error("{0}")]
    Filter(String),
    /// A CPU-clock perf event could not be opened (the text names the kernel feature or
    /// setting).
    #[error("{}", crate::profiles::perf_message(source, *cpu, *frequency))]
    PerfEvent {
        /// The CPU.
        cpu: u32,
        /// The sampling frequency asked for.
        frequency: u64,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The programs were detached (the receiver is stopping).
    #[error("the span programs are detached")]
    Detached,
    /// No BTF or tracefs, or bpffs could not be mounted (the text says what is needed).
    #[error("{0}")]
    Kernel(String),
}
