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

/// Per-CPU counters of one flow.
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
    /// Explicit padding.
    pub _pad: [u8; 7],
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
/// New flow entries created (minus those harvested = evicted by the LRU).
pub const C_FLOWS_CREATED: u32 = 4;
/// Names of the counters, by slot, for self-metrics.
pub const COUNTER_NAMES: [&str; 5] = [
    "ebpf_packets",
    "ebpf_malformed_packets",
    "ebpf_map_insert_failures",
    "ebpf_sampled_out_packets",
    "ebpf_flows_created",
];

/// Index of the control array's slot holding the active flow map (0 = `FLOWS_A`, 1 = `FLOWS_B`).
pub const CONTROL_ACTIVE_MAP: u32 = 0;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}
