//! The walk the profile program makes, modelled in Rust: the reference its eBPF twin is tested
//! against, and what the tests run on real processes (`ptrace`) and on this one.

use crate::rule::{Cfa, Rbp, Rule};

/// The registers a step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Why a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// At the outermost frame: the stack is complete.
    Complete,
    /// A frame without table whose frame pointer does not look like one: the stack is cut
    /// here (and says so).
    Lost,
    /// Memory the walk needed could not be read.
    Unreadable,
    /// `max` frames.
    Depth,
}

/// Offset of `uc_mcontext` in the `ucontext` a signal trampoline finds at `rsp` (x86-64:
/// flags, link, the 24-byte `stack_t`), and of rbp, rsp, rip in its register array.
const MCONTEXT: u64 = 40;
const MC_RBP: u64 = 10 * 8;
const MC_RSP: u64 = 15 * 8;
const MC_RIP: u64 = 16 * 8;

/// A frame pointer is trusted only this far above the stack pointer.
const MAX_FRAME: u64 = 8 << 20;

/// Walks from `regs`: the program counters, innermost first (`regs.pc`, then return addresses),
/// and why it stopped. `rule(pc)` gives the rule at an absolute address, `None` where no table
/// covers it; `read` reads 8 bytes of the process's memory.
pub fn walk(
    rule: impl Fn(u64) -> Option<Rule>,
    read: impl Fn(u64) -> Option<u64>,
    mut regs: Regs,
    max: usize,
) -> (Vec<u64>, End) {
    let mut pcs = Vec::new();
    // Return addresses point after the call: their rule is looked up one byte earlier. Not so
    // for the first frame, nor for a pc a signal interrupted.
    let mut exact = true;
    loop {
        if pcs.len() == max {
            return (pcs, End::Depth);
        }
        pcs.push(regs.pc);
        let at = if exact { regs.pc } else { regs.pc - 1 };
        exact = false;
        let r = rule(at).unwrap_or(Rule::Invalid);
        let next = match r {
            Rule::Stop => return (pcs, End::Complete),
            Rule::Frame { cfa, rbp } => {
                let cfa = match cfa {
                    Cfa::Rsp(n) => Some(regs.sp.wrapping_add_signed(n.into())),
                    Cfa::Rbp(n) => Some(regs.bp.wrapping_add_signed(n.into())),
                    Cfa::DerefRsp(n) => read(regs.sp.wrapping_add_signed(n.into())),
                    Cfa::DerefRbp(n) => read(regs.bp.wrapping_add_signed(n.into())),
                };
                cfa.and_then(|cfa| {
                    let bp = match rbp {
                        Rbp::Same => Some(regs.bp),
                        Rbp::AtCfa(n) => read(cfa.wrapping_add_signed(n.into())),
                        Rbp::AtRbp(n) => read(regs.bp.wrapping_add_signed(n.into())),
                    }?;
                    Some(Regs {
                        pc: read(cfa - 8)?,
                        sp: cfa,
                        bp,
                    })
                })
            }
            Rule::Plt { threshold } => {
                let extra = if regs.pc & 15 >= u64::from(threshold) {
                    8
                } else {
                    0
                };
                let cfa = regs.sp + 8 + extra;
                read(cfa - 8).map(|pc| Regs {
                    pc,
                    sp: cfa,
                    bp: regs.bp,
                })
            }
            Rule::Signal => {
                exact = true;
                let mc = regs.sp + MCONTEXT;
                (|| {
                    Some(Regs {
                        pc: read(mc + MC_RIP)?,
                        sp: read(mc + MC_RSP)?,
                        bp: read(mc + MC_RBP)?,
                    })
                })()
            }
            // One frame-pointer step, only where rbp plausibly points at a frame record.
            _ => {
                let bp = regs.bp;
                if bp <= regs.sp || bp - regs.sp > MAX_FRAME || !bp.is_multiple_of(8) {
                    return (pcs, End::Lost);
                }
                (|| {
                    Some(Regs {
                        pc: read(bp + 8)?,
                        sp: bp + 16,
                        bp: read(bp)?,
                    })
                })()
            }
        };
        let Some(next) = next else {
            return (pcs, End::Unreadable);
        };
        // A zero return address ends some hand-written outermost frames.
        if next.pc == 0 {
            return (pcs, End::Complete);
        }
        regs = next;
    }
}
