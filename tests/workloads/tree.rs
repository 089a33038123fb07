//! The unwinding workload, Rust: tests/workloads/tree.c's call tree (five deep under `main`,
//! 3 : 1 between two leaves) for SECONDS (the first argument). Built by the tests with
//! `rustc -O -C force-frame-pointers=no`.
use std::hint::black_box;

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
    leaf_a(s);
    leaf_b(s);
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
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut s = 0;
    while std::time::Instant::now() < end {
        black_box(level1(&mut s));
    }
}
