//! Tables against gimli's own row search, at random addresses of real objects: the compaction
//! (merged rows, padding, gaps, PLT stubs, signal trampolines) keeps every rule.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use object::{Object, ObjectSection};
use oxeye_unwind::{rule_at, Rule, Table};

fn objects() -> Vec<String> {
    let mut v = vec![
        "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        "/usr/bin/xz".to_string(),
        std::env::current_exe().unwrap().display().to_string(),
    ];
    // libpython, where this Debian has one.
    if let Ok(dir) = std::fs::read_dir("/usr/lib/x86_64-linux-gnu") {
        let mut py: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.contains("libpython3") && p.contains(".so."))
            .collect();
        py.sort();
        v.extend(py.into_iter().take(1));
    }
    v
}

#[test]
fn every_rule_of_a_table_is_the_rule_gimli_finds() {
    for path in objects() {
        let data = std::fs::read(&path).unwrap();
        let t0 = Instant::now();
        let table = Table::from_elf(&data).unwrap();
        let built = t0.elapsed();
        let deltas = table.deltas();
        assert!(deltas.len() > 100, "{path}: {} deltas", deltas.len());
        eprintln!(
            "{path}: {} FDEs, {} rows → {} deltas, {} distinct rules, {} unsupported rows, {} PLT sections synthesized; built in {built:?}",
            table.cfi.fdes,
            table.cfi.rows,
            deltas.len(),
            table.distinct_rules(),
            table.cfi.unsupported_rows,
            table.synthesized
        );
        let file = object::File::parse(&*data).unwrap();
        let plt: Vec<(u64, u64)> = [".plt", ".plt.sec", ".plt.got"]
            .iter()
            .filter_map(|n| file.section_by_name(n))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        let (lo, hi) = (deltas[0].addr, deltas[deltas.len() - 1].addr + 16);
        // Random addresses, plus each side of a sample of delta boundaries.
        let mut addrs: Vec<u64> = (0..1000).map(|_| fastrand::u64(lo..hi)).collect();
        for _ in 0..300 {
            let d = deltas[fastrand::usize(..deltas.len())];
            addrs.extend([d.addr, d.addr.wrapping_sub(1)]);
        }
        let (mut covered, mut padding, mut stubs) = (0, 0, 0);
        for a in addrs {
            let got = table.lookup(a);
            match rule_at(&data, a).unwrap() {
                Some(want) => {
                    // A trampoline's rule starts one byte early (return addresses look up - 1).
                    let early_signal =
                        got == Rule::Signal && rule_at(&data, a + 1).unwrap() == Some(Rule::Signal);
                    assert!(
                        got == want || early_signal,
                        "{path} at {a:#x}: table {got:?}, gimli {want:?}"
                    );
                    covered += 1;
                }
                None if plt.iter().any(|&(s, e)| s <= a && a < e) => {
                    assert_eq!(got, Rule::ENTRY, "{path} at {a:#x}: a PLT stub without FDE");
                    stubs += 1;
                }
                None if got == Rule::Invalid => {}
                None => {
                    // Padding after a function carries its last rule; no further.
                    let before = (1..=15).find_map(|k| rule_at(&data, a - k).unwrap());
                    assert_eq!(
                        Some(got),
                        before,
                        "{path} at {a:#x}: no FDE, yet table says {got:?}"
                    );
                    padding += 1;
                }
            }
        }
        assert!(covered > 700, "{path}: only {covered} addresses had an FDE");
        eprintln!(
            "  {covered} addresses agreed with gimli, {padding} in padding, {stubs} in PLT stubs"
        );
    }
}
