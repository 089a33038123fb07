//! An object's stack deltas: its CFI rows compacted into one sorted list of `(address, rule)`,
//! each holding up to the next. This is the form the profile program searches.

use object::{Object, ObjectSection};

use crate::cfi::{self, Block, CfiCounts};
use crate::rule::Rule;
use crate::Error;

/// Bytes between two functions that may be padding: the first function's last rule is carried
/// over them instead of an [`Rule::Invalid`] entry (padding is never executed).
const PADDING: u64 = 15;

/// From `addr` on (until the next delta), `rule` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub addr: u64,
    pub rule: Rule,
}

/// One object's unwind table, in the object's own virtual addresses (before relocation: the
/// caller subtracts the mapping's bias).
#[derive(Debug, Default)]
pub struct Table {
    deltas: Vec<Delta>,
    /// What the call-frame information held.
    pub cfi: CfiCounts,
    /// PLT sections given [`Rule::ENTRY`] because no FDE covered them.
    pub synthesized: usize,
    /// FDEs dropped because they overlapped an earlier one.
    pub overlapping: usize,
}

impl Table {
    /// The table of an ELF object (an executable or a shared library), in memory.
    pub fn from_elf(data: &[u8]) -> Result<Table, Error> {
        Table::from_object(&object::File::parse(data)?)
    }

    /// The table of a parsed object. Over an `object::ReadCache` of an open file only the
    /// headers and the CFI sections are read (a 150 MB binary read whole would be 150 MB of
    /// memory for a moment; mapped, it would crash the reader if the file were truncated
    /// meanwhile).
    pub fn from_object<'data, D: object::ReadRef<'data>>(
        file: &object::File<'data, D>,
    ) -> Result<Table, Error> {
        if file.architecture() != object::Architecture::X86_64 {
            return Err(Error::Architecture(file.architecture()));
        }
        let (mut blocks, cfi) = cfi::blocks(file)?;
        if blocks.is_empty() {
            // No call-frame information (stripped of `.eh_frame`): no table, not one of PLT
            // stubs alone, so the object is counted as without one.
            return Ok(Table {
                cfi,
                ..Table::default()
            });
        }
        // Stubs with no FDE (`.plt.sec`, `.plt.got` with IBT) jump without touching the stack.
        let mut synthesized = 0;
        for name in [".plt", ".plt.sec", ".plt.got"] {
            let Some(s) = file.section_by_name(name) else {
                continue;
            };
            let (start, end) = (s.address(), s.address() + s.size());
            if s.size() > 0 && !blocks.iter().any(|b| b.start < end && start < b.end) {
                blocks.push(Block {
                    start,
                    end,
                    rows: vec![(start, Rule::ENTRY)],
                });
                synthesized += 1;
            }
        }
        let mut table = Table::from_blocks(blocks);
        table.cfi = cfi;
        table.synthesized = synthesized;
        Ok(table)
    }

    fn from_blocks(mut blocks: Vec<Block>) -> Table {
        blocks.sort_by_key(|b| (b.start, b.end));
        let mut table = Table::default();
        let mut end = 0u64;
        for b in blocks {
            if b.start < end {
                table.overlapping += 1;
                continue;
            }
            if !table.deltas.is_empty() && b.start - end > PADDING {
                table.push(end, Rule::Invalid);
            }
            for &(addr, rule) in &b.rows {
                // Return addresses are looked up at `ra - 1`: a trampoline's rule must hold one
                // byte before it, where the handler "returns" to.
                let addr = if rule == Rule::Signal {
                    addr.saturating_sub(1)
                } else {
                    addr
                };
                table.push(addr, rule);
            }
            end = b.end;
        }
        if !table.deltas.is_empty() {
            table.push(end, Rule::Invalid);
        }
        table
    }

    /// Appends a delta, keeping addresses increasing and merging equal neighbours.
    fn push(&mut self, addr: u64, rule: Rule) {
        match self.deltas.last_mut() {
            Some(last) if addr < last.addr => {}
            Some(last) if addr == last.addr => last.rule = rule,
            _ => self.deltas.push(Delta { addr, rule }),
        }
        let n = self.deltas.len();
        if n >= 2 && self.deltas[n - 2].rule == self.deltas[n - 1].rule {
            self.deltas.pop();
        }
    }

    /// The rule at object address `addr`.
    pub fn lookup(&self, addr: u64) -> Rule {
        match self.deltas.partition_point(|d| d.addr <= addr) {
            0 => Rule::Invalid,
            i => self.deltas[i - 1].rule,
        }
    }

    pub fn deltas(&self) -> &[Delta] {
        &self.deltas
    }

    /// How many different rules the table uses.
    pub fn distinct_rules(&self) -> usize {
        let mut rules: Vec<Rule> = Vec::new();
        for d in &self.deltas {
            if !rules.contains(&d.rule) {
                rules.push(d.rule);
            }
        }
        rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Cfa, Rbp};

    fn frame(n: i32) -> Rule {
        Rule::Frame {
            cfa: Cfa::Rsp(n),
            rbp: Rbp::Same,
        }
    }

    #[test]
    fn compaction_merges_pads_and_closes_gaps() {
        let blocks = vec![
            Block {
                start: 0x1100,
                end: 0x1200,
                rows: vec![(0x1100, frame(8)), (0x1101, frame(16)), (0x11f0, frame(8))],
            },
            // After 8 bytes of padding, starting with the rule the last one ended with.
            Block {
                start: 0x1208,
                end: 0x1300,
                rows: vec![(0x1208, frame(8)), (0x1210, frame(24))],
            },
            Block {
                start: 0x2000,
                end: 0x2010,
                rows: vec![(0x2000, Rule::Signal)],
            },
        ];
        let t = Table::from_blocks(blocks);
        let got: Vec<(u64, Rule)> = t.deltas().iter().map(|d| (d.addr, d.rule)).collect();
        assert_eq!(
            got,
            vec![
                (0x1100, frame(8)),
                (0x1101, frame(16)),
                (0x11f0, frame(8)),
                (0x1210, frame(24)),
                (0x1300, Rule::Invalid),
                (0x1fff, Rule::Signal),
                (0x2010, Rule::Invalid),
            ]
        );
        assert_eq!(t.lookup(0x10ff), Rule::Invalid);
        assert_eq!(t.lookup(0x1204), frame(8));
        assert_eq!(t.lookup(0x2000), Rule::Signal);
        assert_eq!(t.lookup(0x2010), Rule::Invalid);
    }
}
