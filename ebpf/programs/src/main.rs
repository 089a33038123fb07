//! oxeye's flow programs: XDP on ingress, TC (clsact/tcx) on egress. Both always pass the packet.
//!
//! Each packet is parsed (Ethernet, up to two 802.1Q/802.1ad tags, IPv4 with options and
//! fragments, IPv6 with a bounded walk over extension headers, TCP/UDP/ICMP/ICMPv6) into a
//! [`FlowKey`] and counted in this CPU's region of a front cache (two-way sets of one-line slots,
//! the set chosen by a hash of the key); a flow that finds both slots of its set held by others
//! is counted in the active one of two LRU hashes shared by all CPUs (atomic updates, Linux
//! 5.12: a shared entry's value sits next to its key, where a per-CPU one is another line
//! away). A cache hit
//! touches one line of memory where a hash-map lookup touches two or more. User space
//! flips the active generation (cache regions and map), waits for in-flight programs, and drains
//! the other one: the cache slots through its mmap of the array, the map with a batch
//! lookup-and-delete, so no update is lost to a concurrent delete.
#![no_std]
#![no_main]
// Atomic adds and ORs on map values: BPF has the instructions, but not the compare-and-swap
// that core's atomic types need for their fetch methods.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE, BPF_NOEXIST, TC_ACT_OK},
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use oxeye_ebpf_common::{
    cache_entries, cache_index, CacheSlot, FlowKey, FlowStats, CACHE_SLOTS, COUNTERS_PER_PROGRAM,
    C_CACHE_MISSES, C_FLOWS_CREATED, C_MALFORMED, C_MAP_INSERT_FAILED, C_PACKETS, C_SAMPLED_OUT,
    DIR_EGRESS, DIR_INGRESS, PROG_TC, PROG_XDP,
};

/// User space sets the real size with `max_flows`.
#[map]
static FLOWS_A: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(65536, 0);
#[map]
static FLOWS_B: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(65536, 0);
/// `cache_index(cpu, generation, program, slot)`; user space sizes it for every possible CPU
/// and reads it through an mmap. A plain (not per-CPU) array: contiguous and page-aligned, so
/// every slot is one cache line and no per-CPU pointer is loaded on the way.
#[map]
static CACHE: Array<CacheSlot> = Array::with_max_entries(cache_entries(1), BPF_F_MMAPABLE);
/// Slot 0: which flow map is active (0 = A, 1 = B).
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);
/// `program * COUNTERS_PER_PROGRAM + counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(16, 0);

/// Slot 0: jiffies, slot 1: monotonic ns, written together by `oxeye_clock` when user space
/// test-runs it, so user space can turn the jiffies in flow records into time.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// Count 1 packet in N (scaled back up); 1 = every packet. Set by user space at load.
#[unsafe(no_mangle)]
static SAMPLE_EVERY: u32 = 1;

const EEXIST: i32 = 17;
/// Extension headers walked at most; a longer chain is malformed.
const MAX_IPV6_EXT: usize = 8;

#[inline(always)]
fn count(prog: u32, counter: u32, n: u64) -> u64 {
    match COUNTERS.get_ptr_mut(prog * COUNTERS_PER_PROGRAM + counter) {
        Some(slot) => unsafe {
            *slot += n;
            *slot
        },
        None => 0,
    }
}

/// `N` bytes at `off`, if the packet has them.
#[inline(always)]
fn bytes<const N: usize>(data: usize, end: usize, off: usize) -> Option<&'static [u8; N]> {
    if data + off + N > end {
        return None;
    }
    Some(unsafe { &*((data + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    ((b[i] as u16) << 8) | b[i + 1] as u16
}

/// Transport header at `off`: ports and TCP flags. `Err` = truncated or malformed.
#[inline(always)]
fn l4(data: usize, end: usize, off: usize, key: &mut FlowKey) -> Result<u8, ()> {
    match key.proto {
        6 => {
            let t = bytes::<20>(data, end, off).ok_or(())?;
            if t[12] >> 4 < 5 {
                return Err(());
            }
            key.src_port = be16(t, 0);
            key.dst_port = be16(t, 2);
            Ok(t[13])
        }
        17 => {
            let u = bytes::<8>(data, end, off).ok_or(())?;
            key.src_port = be16(u, 0);
            key.dst_port = be16(u, 2);
            Ok(0)
        }
        1 | 58 => {
            let i = bytes::<4>(data, end, off).ok_or(())?;
            key.dst_port = be16(i, 0); // type << 8 | code
            Ok(0)
        }
        _ => Ok(0),
    }
}

#[inline(always)]
fn ipv4(data: usize, end: usize, off: usize, key: &mut FlowKey) -> Result<u8, ()> {
    let ip = bytes::<20>(data, end, off).ok_or(())?;
    if ip[0] >> 4 != 4 {
        return Err(());
    }
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    if hlen < 20 || data + off + hlen > end {
        return Err(());
    }
    key.src[..4].copy_from_slice(&ip[12..16]);
    key.dst[..4].copy_from_slice(&ip[16..20]);
    key.proto = ip[9];
    if be16(ip, 6) & 0x1fff != 0 {
        // A later fragment: no transport header, counted without ports.
        return Ok(0);
    }
    l4(data, end, off + hlen, key)
}

#[inline(always)]
fn ipv6(data: usize, end: usize, off: usize, key: &mut FlowKey) -> Result<u8, ()> {
    let ip = bytes::<40>(data, end, off).ok_or(())?;
    if ip[0] >> 4 != 6 {
        return Err(());
    }
    key.src.copy_from_slice(&ip[8..24]);
    key.dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let h = bytes::<2>(data, end, off).ok_or(())?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let h = bytes::<2>(data, end, off).ok_or(())?;
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            44 => {
                let h = bytes::<8>(data, end, off).ok_or(())?;
                next = h[0];
                off += 8;
                if be16(h, 2) & 0xfff8 != 0 {
                    key.proto = next;
                    return Ok(0);
                }
            }
            _ => break,
        }
        if off > 1024 {
            return Err(());
        }
    }
    if matches!(next, 0 | 43 | 60 | 51 | 44) {
        return Err(()); // chain longer than we walk
    }
    key.proto = next;
    l4(data, end, off, key)
}

/// Parses a frame into `key`; returns the TCP flags.
#[inline(always)]
fn parse(data: usize, end: usize, key: &mut FlowKey) -> Result<u8, ()> {
    let eth = bytes::<14>(data, end, 0).ok_or(())?;
    let mut ether_type = be16(eth, 12);
    let mut off = 14;
    for _ in 0..2 {
        if ether_type == 0x8100 || ether_type == 0x88a8 {
            let tag = bytes::<4>(data, end, off).ok_or(())?;
            ether_type = be16(tag, 2);
            off += 4;
        }
    }
    key.ether_type = ether_type;
    match ether_type {
        0x0800 => ipv4(data, end, off, key),
        0x86dd => ipv6(data, end, off, key),
        _ => Ok(0),
    }
}

/// Adds `add` into a flow's entry in the hash map, which other CPUs may merge into at the same
/// time: counters and flags by atomic adds and ORs (BPF atomics; the OR needs Linux 5.12), so
/// none is lost. First and last seen only ever move outwards, by plain loads and stores: two
/// CPUs racing on one entry can leave either's value (a spill of an old slot may then lose its
/// earlier `first_seen`), never a torn one.
///
/// # Safety
/// `s` points at a live map value.
#[inline(always)]
unsafe fn merge(s: *mut FlowStats, add: &FlowStats) {
    use core::intrinsics::{atomic_or, atomic_xadd, AtomicOrdering::Relaxed};
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).packets, add.packets);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).bytes, add.bytes);
        // tcp_flags is the first byte of an aligned 64-bit word whose other bytes (padding) stay
        // 0; a 32-bit atomic would need the alu32 instruction set.
        let word = (&raw mut (*s).tcp_flags).cast::<u64>();
        atomic_or::<u64, u64, { Relaxed }>(
            word,
            u64::from_ne_bytes([add.tcp_flags, 0, 0, 0, 0, 0, 0, 0]),
        );
        // Single 8-byte loads and stores (aligned, so never torn; volatile so each is exactly
        // one): BPF's `--cpu generic` has no atomic load or store to say so.
        let first = &raw mut (*s).first_seen;
        if add.first_seen < first.read_volatile() {
            first.write_volatile(add.first_seen);
        }
        let last = &raw mut (*s).last_seen;
        if add.last_seen > last.read_volatile() {
            last.write_volatile(add.last_seen);
        }
    }
}

/// Moves a flow's counters out of the cache into the hash map.
#[inline(always)]
fn spill(map: &LruHashMap<FlowKey, FlowStats>, prog: u32, key: &FlowKey, stats: &FlowStats) {
    if let Some(s) = map.get_ptr_mut(key) {
        unsafe { merge(s, stats) };
        return;
    }
    match map.insert(key, stats, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(prog, C_FLOWS_CREATED, 1);
        }
        Err(e) if e == -EEXIST => {
            // Another CPU created the entry between our lookup and insert.
            match map.get_ptr_mut(key) {
                Some(s) => unsafe { merge(s, stats) },
                None => {
                    count(prog, C_MAP_INSERT_FAILED, 1);
                }
            }
        }
        Err(_) => {
            count(prog, C_MAP_INSERT_FAILED, 1);
        }
    }
}

/// Word `i` of a key (FlowKey is 11 aligned u32s): hashed and compared in place, without
/// copies or memcmp (which BPF lacks).
#[inline(always)]
fn word(key: &FlowKey, i: usize) -> u32 {
    unsafe { (key as *const FlowKey as *const u32).add(i).read() }
}

/// Zeroes a key in place, word by word, and returns it: `FlowKey::default()` (or zeroing a
/// copy) compiles to a call of BPF's byte-at-a-time `memset`, 32 iterations on every packet.
#[inline(always)]
fn zero_key(key: &mut core::mem::MaybeUninit<FlowKey>) -> &mut FlowKey {
    let words = key.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < 11 {
        // SAFETY: FlowKey is 11 u32-aligned words; volatile keeps LLVM from making it a memset.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written (all-zero is a valid FlowKey).
    unsafe { key.assume_init_mut() }
}

/// The home slot of a key; its set is that slot and its neighbour (`slot ^ 1`), so half the
/// flows are at home in each slot of a set. Two XOR lanes (short dependency chains) and one
/// multiply: a weak hash only costs a spill to the hash map, never a wrong count.
#[inline(always)]
fn home_of(k: &FlowKey) -> u32 {
    let w = |i| word(k, i);
    let a = w(0) ^ w(2) ^ w(4) ^ w(6) ^ w(8) ^ w(10);
    let b = w(1) ^ w(3) ^ w(5) ^ w(7) ^ w(9);
    let h = (a ^ b.rotate_left(16) ^ w(4).rotate_left(7)).wrapping_mul(0x9e37_79b1);
    h >> (32 - CACHE_SLOTS.trailing_zeros())
}

/// Whether `slot` holds a flow other than `key` (not when it holds `key` or is free).
#[inline(always)]
fn held_by_other(slot: &CacheSlot, key: &FlowKey) -> bool {
    let mut diff = 0u32;
    let mut i = 0;
    while i < 11 {
        diff |= word(&slot.key, i) ^ word(key, i);
        i += 1;
    }
    // Opaque to LLVM, which would otherwise compare word by word with a branch each: the
    // verifier then walks every combination of those branches (over 1 M instructions).
    core::hint::black_box(diff) != 0 && slot.packets != 0
}

/// The counters of one packet (or one sampled packet, scaled), first and last seen now.
#[inline(always)]
fn fresh(packets: u64, bytes: u64, now: u64, flags: u8) -> FlowStats {
    FlowStats {
        packets,
        bytes,
        first_seen: now,
        last_seen: now,
        tcp_flags: flags,
        _pad8: 0,
        _pad16: 0,
        _pad32: 0,
    }
}

#[inline(always)]
fn update(
    map: &LruHashMap<FlowKey, FlowStats>,
    generation: u32,
    prog: u32,
    key: &FlowKey,
    packets: u64,
    bytes: u64,
    flags: u8,
) {
    // Jiffies cost ~4 ns against ~25 for a clock read; user space converts them (see CLOCK).
    let now = unsafe { bpf_jiffies64() };
    // Programs run with migration disabled: the CPU cannot change under us.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Two-way sets: a flow lives in either slot of its set, the first two flows seen keep them
    // for the generation. (Taking a held slot would spill its holder, often a busy flow that
    // would spill the newcomer straight back: two map updates instead of one.)
    let home = cache_index(cpu, generation, prog, home_of(key));
    let (Some(s0), Some(s1)) = (CACHE.get_ptr_mut(home), CACHE.get_ptr_mut(home ^ 1)) else {
        return;
    };
    let (s0, s1) = unsafe { (&mut *s0, &mut *s1) };
    // Touch the neighbour's line now, so that its fetch from memory overlaps the home slot's
    // instead of following it when the flow lives next door (an out-of-order CPU starts both
    // loads at once; the compare below would only start the second after the first).
    core::hint::black_box(unsafe { core::ptr::read_volatile(&s1.packets) });
    // Only ever branch on these, never index with them: an index must be exact to the
    // verifier, which would then walk every combination of the key compares separately.
    let other0 = held_by_other(s0, key);
    if other0 && held_by_other(s1, key) {
        count(prog, C_CACHE_MISSES, 1);
        spill(map, prog, key, &fresh(packets, bytes, now, flags));
        return;
    }
    // This flow's slot, or the free one it claims (its home slot if both are).
    let slot = if other0 { s1 } else { s0 };
    if slot.packets != 0 {
        let sum = slot.bytes as u64 + bytes;
        if sum <= u32::MAX as u64 {
            slot.packets += packets as u32;
            slot.bytes = sum as u32;
            slot.last_seen = now as u32;
            slot.tcp_flags |= flags;
            return;
        }
        // This flow would overflow its 32-bit counters: move them to the hash map and start
        // the slot again.
        let (old_key, old_stats) = (slot.key, slot.stats(now));
        spill(map, prog, &old_key, &old_stats);
    }
    if bytes > u32::MAX as u64 {
        // Only with a huge sampling scale: straight to the map.
        slot.packets = 0;
        spill(map, prog, key, &fresh(packets, bytes, now, flags));
        return;
    }
    slot.key = *key;
    slot.packets = packets as u32;
    slot.bytes = bytes as u32;
    slot.first_seen = now as u32;
    slot.last_seen = now as u32;
    slot.tcp_flags = flags;
}

#[inline(always)]
fn handle(prog: u32, data: usize, end: usize, len: u64, ifindex: u32, direction: u8) {
    let seen = count(prog, C_PACKETS, 1);
    let every = unsafe { core::ptr::read_volatile(&SAMPLE_EVERY) } as u64;
    if every > 1 && seen % every != 0 {
        count(prog, C_SAMPLED_OUT, 1);
        return;
    }
    let scale = if every > 1 { every } else { 1 };
    let mut storage = core::mem::MaybeUninit::uninit();
    let key = zero_key(&mut storage);
    key.ifindex = ifindex;
    key.direction = direction;
    let Ok(flags) = parse(data, end, key) else {
        count(prog, C_MALFORMED, 1);
        return;
    };
    let active = CONTROL.get(0).copied().unwrap_or(0);
    if active == 0 {
        update(&FLOWS_A, 0, prog, key, scale, len * scale, flags);
    } else {
        update(&FLOWS_B, 1, prog, key, scale, len * scale, flags);
    }
}

#[xdp]
pub fn oxeye_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    handle(
        PROG_XDP,
        data,
        end,
        (end - data) as u64,
        ifindex,
        DIR_INGRESS,
    );
    xdp_action::XDP_PASS
}

/// Samples jiffies and the monotonic clock at one instant (run by user space, never attached).
#[xdp]
pub fn oxeye_clock(_ctx: XdpContext) -> u32 {
    if let (Some(j), Some(ns)) = (CLOCK.get_ptr_mut(0), CLOCK.get_ptr_mut(1)) {
        unsafe {
            *j = bpf_jiffies64();
            *ns = bpf_ktime_get_ns();
        }
    }
    xdp_action::XDP_PASS
}

/// The cheapest XDP program: the baseline of the flow benchmark (never attached by oxeye).
#[xdp]
pub fn oxeye_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn oxeye_tc(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Headers may sit outside the linear area: pull what the parser can need.
    let want = if len < 128 { len } else { 128 };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    handle(
        PROG_TC,
        ctx.data(),
        ctx.data_end(),
        len as u64,
        ifindex,
        DIR_EGRESS,
    );
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
