//! The unwinding workload, Rust: tests/workloads/tree.c's call tree (five deep under `main`,
//! 3 : 1 between two leaves) for SECONDS (the first argument). Built by the tests with
//! `rustc -O -C force-frame-pointers=no`.
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// With a file name as the second argument, the CPU time each leaf took (ns) is measured and
/// their ratio written there at the end (what a profile's split is checked against).
static TIMED: AtomicU64 = AtomicU64::new(0);
static SPENT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut [i64; 2]) -> i32;
}

/// This thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`).
fn cpu() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: a valid `struct timespec` (two longs on x86-64 Linux).
    unsafe { clock_gettime(3, &mut ts) };
    (ts[0] * 1_000_000_000 + ts[1]) as u64
}

#[inline(never)]
fn leaf_a(s: &mut u64) {
    for i in 0..300_000u64 {
        *s = black_box(*s + i * 7);
    }
}

#[inline(never)]
fn leaf_b(s: &mut u64) {
    for i in 0..100_000u64 {
        *s = black_box(*s + i * 3);
    }
}

// Work after each call keeps it a call (a tail call leaves no frame to find).
#[inline(never)]
fn level4(s: &mut u64) -> u64 {
    let timed = TIMED.load(Relaxed) != 0;
    let t0 = if timed { cpu() } else { 0 };
    leaf_a(s);
    let t1 = if timed { cpu() } else { 0 };
    leaf_b(s);
    if timed {
        SPENT[0].fetch_add(t1 - t0, Relaxed);
        SPENT[1].fetch_add(cpu() - t1, Relaxed);
    }
    black_box(*s) + 1
}

#[inline(never)]
fn level3(s: &mut u64) -> u64 {
    black_box(level4(s)) + 1
}

#[inline(never)]
fn level2(s: &mut u64) -> u64 {
    black_box(level3(s)) + 1
}

#[inline(never)]
fn level1(s: &mut u64) -> u64 {
    black_box(level2(s)) + 1
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let out = std::env::args().nth(2);
    TIMED.store(out.is_some() as u64, Relaxed);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut s = 0;
    while std::time::Instant::now() < end {
        black_box(level1(&mut s));
    }
    if let Some(out) = out {
        let ratio = SPENT[0].load(Relaxed) as f64 / SPENT[1].load(Relaxed).max(1) as f64;
        std::fs::write(out, format!("{ratio:.4}\n")).expect("write the measured split");
    }
}
