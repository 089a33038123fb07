//! Symbolization (root, for real kernel addresses): cold-start cost of the first kernel and
//! user lookups, then frames/s with a warm cache — spans of 32 frames (16 kernel addresses from
//! /proc/kallsyms, 16 addresses of functions in this binary) through the processor.
//!
//!     cargo bench -p oxeye-tests --bench symbolization

use std::sync::Arc;
use std::time::Instant;

use oxeye_api::testing::ProcessorHarness;
use oxeye_api::{Batch, Span, TaskContext};
use oxeye_processor_symbolization::SymbolizationFactory;

fn kernel_addresses(n: usize) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, t) = (f.next()?, f.next()?);
            matches!(t, "T" | "t")
                .then(|| u64::from_str_radix(a, 16).ok())
                .flatten()
        })
        .filter(|&a| a != 0)
        .step_by(997)
        .take(n)
        .collect()
}

fn batch(spans: usize, kernel: &[u64], user: &[u64]) -> Batch {
    let pid = std::process::id();
    let s = Span {
        task: Some(TaskContext {
            pid,
            tid: pid,
            ..Default::default()
        }),
        kernel_stack: kernel.to_vec(),
        user_stack: user.to_vec(),
        ..Span::default()
    };
    Batch::spans(Arc::default(), vec![s; spans])
}

fn main() {
    oxeye_tests::netns::require_root();
    let quick = oxeye_tests::bench::quick();
    let kernel = kernel_addresses(16);
    assert_eq!(
        kernel.len(),
        16,
        "run as root: kallsyms addresses are hidden otherwise"
    );
    let user: Vec<u64> = [
        main as *const () as u64,
        batch as *const () as u64,
        kernel_addresses as *const () as u64,
    ]
    .iter()
    .cycle()
    .take(16)
    .enumerate()
    .map(|(i, a)| a + i as u64)
    .collect();
    let mut h = ProcessorHarness::new::<SymbolizationFactory>("{code_stacktrace: false}")
        .expect("processor");
    let t = Instant::now();
    h.process(batch(1, &kernel[..1], &[])).expect("cold kernel");
    let cold_kernel = t.elapsed();
    let t = Instant::now();
    h.process(batch(1, &[], &user[..1])).expect("cold user");
    let cold_user = t.elapsed();
    h.process(batch(1, &kernel, &user)).expect("warm up");
    let rounds = if quick { 2 } else { 50 };
    let per = 1000;
    let t = Instant::now();
    for _ in 0..rounds {
        h.process(batch(per, &kernel, &user)).expect("warm");
    }
    let secs = t.elapsed().as_secs_f64();
    let frames = (rounds * per * 32) as f64;
    println!("symbolization: cold start {:.1} ms for the first kernel address (kallsyms), {:.1} ms for the first user address (maps + ELF/DWARF)", cold_kernel.as_secs_f64() * 1e3, cold_user.as_secs_f64() * 1e3);
    println!(
        "symbolization, warm cache: {:.2} M frames/s ({:.0} ns/frame) over {} frames",
        frames / secs / 1e6,
        secs * 1e9 / frames,
        frames as u64
    );
}
