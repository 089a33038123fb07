//! Nothing lost silently, whatever goes wrong: random pipelines of real processors and exporters
//! with a component made to hold, fail, panic or stall at a random batch, random queues, random
//! shutdown times and deadlines. After each run, for every processor and exporter, the records
//! sent to it = passed on + dropped (with a reason) + merged; and the final totals agree.

use std::fmt::Write as _;
use std::time::Duration;

use oxeye_api::Kind;

/// xorshift64*: a seeded, reproducible random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A chaos component's settings: hold some batches, and maybe one misdeed at a random batch.
fn chaos(rng: &mut Rng, processor: bool) -> String {
    let mut c = String::from("{");
    if processor {
        let _ = write!(c, "hold: {}, ", rng.below(4));
    }
    let _ = write!(c, "delay: {}ms", rng.below(3));
    let at = rng.below(30);
    match rng.below(5) {
        0 => {
            let _ = write!(c, ", fail_at: {at}");
        }
        1 => {
            let _ = write!(c, ", panic_at: {at}");
        }
        2 => {
            let _ = write!(c, ", stall_at: {at}");
        }
        _ => {}
    }
    c.push('}');
    c
}

/// One random pipeline: its YAML and when to stop it. A long stop lets most runs end by
/// themselves (their receiver's count reached) — and still ends one that a stalled stage holds.
fn scenario(seed: u64) -> (String, Option<Duration>) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let flows = rng.chance(30);
    let count = 2_000 + rng.below(20_000);
    let rate = if rng.chance(50) {
        0
    } else {
        20_000 + rng.below(200_000)
    };
    let batch = 32 + rng.below(480);
    let receiver = if flows {
        format!("synthetic: {{seed: {seed}, batch_size: {batch}, flows: {{count: {count}, rate: {rate}, distinct: 200}}}}")
    } else {
        format!("synthetic: {{seed: {seed}, batch_size: {batch}, spans: {{count: {count}, rate: {rate}}}}}")
    };
    let candidates: &[(&str, String)] = &if flows {
        vec![
            ("nop", "nop:".to_string()),
            (
                "aggregation",
                format!("aggregation: {{window: {}ms}}", 50 + rng.below(500)),
            ),
            (
                "memory_limiter",
                "memory_limiter: {check_interval: 50ms, limit_mib: 1000000}".to_string(),
            ),
        ]
    } else {
        vec![
            ("nop", "nop:".to_string()),
            ("sampling", "sampling: {ratio: 0.5}".to_string()),
            (
                "tail_sampling",
                format!(
                    "tail_sampling: {{decision_wait: {}ms, policies: [{{name: half, type: probabilistic, probabilistic: {{sampling_percentage: 50}}}}]}}",
                    20 + rng.below(1000)
                ),
            ),
            (
                "memory_limiter",
                "memory_limiter: {check_interval: 50ms, limit_mib: 1000000}".to_string(),
            ),
        ]
    };
    let mut processors = Vec::new();
    let mut declared = String::new();
    for _ in 0..rng.below(3) {
        let (id, yaml) = &candidates[rng.below(candidates.len() as u64) as usize];
        if !processors.contains(id) {
            processors.push(*id);
            let _ = writeln!(declared, "  {yaml}");
        }
    }
    // The misbehaving one, somewhere among them (or not at all).
    if rng.chance(70) {
        let at = rng.below(processors.len() as u64 + 1) as usize;
        processors.insert(at, "chaos");
        let _ = writeln!(declared, "  chaos: {}", chaos(&mut rng, true));
    }
    let mut exporters = vec![format!("nop: {{delay: {}us}}", rng.below(500))];
    let mut ids = vec!["nop"];
    if rng.chance(60) {
        exporters.push(format!("chaos: {}", chaos(&mut rng, false)));
        ids.push("chaos");
    }
    let when_full = if rng.chance(50) {
        "block"
    } else {
        "drop_newest"
    };
    let yaml = format!(
        "receivers:
  {receiver}
processors:
{declared}exporters:
{}
service:
  shutdown_timeout: {}ms
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    {}:
      receivers: [synthetic]
      processors: [{}]
      exporters: [{}]
      queue: {{capacity: {}, when_full: {when_full}}}
",
        exporters
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
        200 + rng.below(800),
        if flows { "flows" } else { "traces" },
        processors.join(", "),
        ids.join(", "),
        1 + rng.below(16),
    );
    let stop = if rng.chance(60) {
        Duration::from_millis(20 + rng.below(800))
    } else {
        Duration::from_secs(3)
    };
    (yaml, Some(stop))
}

#[test]
fn every_record_is_passed_on_dropped_or_merged_whatever_fails() {
    let cases: u64 = std::env::var("OXEYE_CHAOS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80);
    let mut clean = 0;
    for seed in 1..=cases {
        let (yaml, stop) = scenario(seed);
        if std::env::var("OXEYE_CHAOS_VERBOSE").is_ok() {
            eprintln!("seed {seed}, stop {stop:?}:\n{yaml}");
        }
        let report = oxeye_tests::run_with_stop(&yaml, stop);
        let reg = &report.registry;
        let mut problems = Vec::new();
        for c in reg.components() {
            if c.kind == Kind::Receiver {
                continue;
            }
            let label = c.label();
            let sent = reg.sent_to(&label);
            let t = &c.telemetry;
            let accounted = t.emitted() + t.dropped_total() + t.merged();
            if sent != accounted {
                problems.push(format!(
                    "{label}: {sent} sent to it, but {} out + {} dropped {:?} + {} merged",
                    t.emitted(),
                    t.dropped_total(),
                    t.dropped(),
                    t.merged()
                ));
            }
        }
        // With one exporter, the totals of the final line add up too.
        let exporters = reg
            .components()
            .iter()
            .filter(|c| c.kind == Kind::Exporter)
            .count();
        let merged: u64 = reg.components().iter().map(|c| c.telemetry.merged()).sum();
        if exporters == 1 && reg.records_in() != reg.records_out() + reg.records_dropped() + merged
        {
            problems.push(format!(
                "final line: {} in, {} out, {} dropped, {merged} merged",
                reg.records_in(),
                reg.records_out(),
                reg.records_dropped()
            ));
        }
        assert!(
            problems.is_empty(),
            "seed {seed} (stop {stop:?}; failures {:?}; abandoned {:?}):\n{}\n{yaml}",
            report.failures,
            report.abandoned,
            problems.join("\n")
        );
        if report.clean() {
            clean += 1;
        }
    }
    println!(
        "{cases} random pipelines, {} with a failure or an abandoned component: every record accounted for",
        cases - clean
    );
    assert!(cases - clean >= cases / 4, "the chaos must bite");
}
