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
