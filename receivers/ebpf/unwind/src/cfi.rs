//! Call-frame information → [`Rule`]s, one block per FDE, with gimli.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, Operation, RegisterRule,
    RunTimeEndian, UnwindContext, UnwindExpression, UnwindSection, UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection};

use crate::rule::{Cfa, Rbp, Rule};
use crate::Error;

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// One FDE's rows: `rows[i].1` holds from `rows[i].0` to the next row's address or `end`.
#[derive(Debug)]
pub(crate) struct Block {
    pub start: u64,
    pub end: u64,
    pub rows: Vec<(u64, Rule)>,
}

/// What the object's call-frame information held, for the table's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CfiCounts {
    /// FDEs read.
    pub fdes: usize,
    /// Rows read.
    pub rows: usize,
    /// Rows no rule could express (they become [`Rule::Invalid`]).
    pub unsupported_rows: usize,
    /// FDEs or CIEs gimli could not parse (skipped).
    pub bad_entries: usize,
}

/// The blocks of `.eh_frame`, or of `.debug_frame` when there is no `.eh_frame`.
pub(crate) fn blocks<'data, D: object::ReadRef<'data>>(
    file: &object::File<'data, D>,
) -> Result<(Vec<Block>, CfiCounts), Error> {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section_address = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(a) = section_address(".text") {
        bases = bases.set_text(a);
    }
    if let Some(a) = section_address(".got") {
        bases = bases.set_got(a);
    }
    let mut counts = CfiCounts::default();
    if let Some(section) = file.section_by_name(".eh_frame") {
        let data = section.uncompressed_data()?;
        let mut eh = EhFrame::new(&data, endian);
        eh.set_address_size(8);
        let bases = bases.clone().set_eh_frame(section.address());
        let blocks = read(&eh, &bases, &mut counts);
        if !blocks.is_empty() {
            return Ok((blocks, counts));
        }
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        let data = section.uncompressed_data()?;
        let mut df = DebugFrame::new(&data, endian);
        df.set_address_size(8);
        return Ok((read(&df, &bases, &mut counts), counts));
    }
    Ok((Vec::new(), counts))
}

fn read<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    counts: &mut CfiCounts,
) -> Vec<Block> {
    let mut ctx = Box::new(UnwindContext::new());
    let mut blocks = Vec::new();
    let mut entries = section.entries(bases);
    loop {
        let fde = match entries.next() {
            Ok(None) => break,
            Ok(Some(CieOrFde::Cie(_))) => continue,
            Ok(Some(CieOrFde::Fde(partial))) => {
                match partial.parse(|s, b, o| s.cie_from_offset(b, o)) {
                    Ok(fde) => fde,
                    Err(_) => {
                        counts.bad_entries += 1;
                        continue;
                    }
                }
            }
            // The rest of the section cannot be walked.
            Err(_) => {
                counts.bad_entries += 1;
                break;
            }
        };
        counts.fdes += 1;
        let (start, end) = (fde.initial_address(), fde.end_address());
        if fde.is_signal_trampoline() {
            blocks.push(Block {
                start,
                end,
                rows: vec![(start, Rule::Signal)],
            });
            continue;
        }
        let mut rows = Vec::new();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            counts.bad_entries += 1;
            continue;
        };
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    counts.rows += 1;
                    let rule = rule(row, section);
                    if rule == Rule::Invalid {
                        counts.unsupported_rows += 1;
                    }
                    rows.push((row.start_address(), rule));
                }
                Ok(None) => break,
                Err(_) => {
                    counts.bad_entries += 1;
                    break;
                }
            }
        }
        if !rows.is_empty() {
            blocks.push(Block { start, end, rows });
        }
    }
    blocks
}

/// The rule of one row of the CFI table (what `Table::lookup` must agree with).
pub(crate) fn rule<'a, S: UnwindSection<R<'a>>>(row: &UnwindTableRow<usize>, section: &S) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => return Rule::Stop,
        _ => return Rule::Invalid,
    }
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                return Rule::Invalid;
            };
            match *register {
                X86_64::RSP => Cfa::Rsp(offset),
                X86_64::RBP => Cfa::Rbp(offset),
                _ => return Rule::Invalid,
            }
        }
        CfaRule::Expression(e) => match ops(e, section).as_deref() {
            Some(ops) if plt_threshold(ops).is_some() => {
                return plt_threshold(ops)
                    .map_or(Rule::Invalid, |threshold| Rule::Plt { threshold })
            }
            Some(
                [Operation::RegisterOffset {
                    register, offset, ..
                }, Operation::Deref { .. }],
            ) => {
                let Ok(offset) = i32::try_from(*offset) else {
                    return Rule::Invalid;
                };
                match *register {
                    X86_64::RSP => Cfa::DerefRsp(offset),
                    X86_64::RBP => Cfa::DerefRbp(offset),
                    _ => return Rule::Invalid,
                }
            }
            _ => return Rule::Invalid,
        },
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => Rbp::Same,
        Some(RegisterRule::Offset(n)) => match i32::try_from(n) {
            Ok(n) => Rbp::AtCfa(n),
            Err(_) => return Rule::Invalid,
        },
        Some(RegisterRule::Expression(e)) => match ops(&e, section).as_deref() {
            Some(
                [Operation::RegisterOffset {
                    register: X86_64::RBP,
                    offset,
                    ..
                }],
            ) => match i32::try_from(*offset) {
                Ok(n) => Rbp::AtRbp(n),
                Err(_) => return Rule::Invalid,
            },
            _ => return Rule::Invalid,
        },
        Some(_) => return Rule::Invalid,
    };
    Rule::Frame { cfa, rbp }
}

type Op<'a> = Operation<R<'a>>;

/// An expression's operations, or `None` when it does not parse.
fn ops<'a, S: UnwindSection<R<'a>>>(
    e: &UnwindExpression<usize>,
    section: &S,
) -> Option<Vec<Op<'a>>> {
    let expr = e.get(section).ok()?;
    let encoding = gimli::Encoding {
        address_size: 8,
        format: gimli::Format::Dwarf32,
        version: 4,
    };
    let mut iter = expr.operations(encoding);
    let mut out = Vec::new();
    while let Some(op) = iter.next().ok()? {
        out.push(op);
        if out.len() > 16 {
            return None;
        }
    }
    Some(out)
}

/// gcc's PLT rule, `rsp + 8 + ((rip & 15) >= threshold) << 3`: its threshold.
fn plt_threshold(ops: &[Op<'_>]) -> Option<u8> {
    use Operation::{And, Ge, Plus, RegisterOffset, Shl, UnsignedConstant};
    match ops {
        [RegisterOffset {
            register: X86_64::RSP,
            offset: 8,
            ..
        }, RegisterOffset {
            register: X86_64::RA,
            offset: 0,
            ..
        }, UnsignedConstant { value: 15 }, And, UnsignedConstant { value: t }, Ge, UnsignedConstant { value: 3 }, Shl, Plus] => {
            u8::try_from(*t).ok()
        }
        _ => None,
    }
}

/// The rule at object address `addr` straight from gimli's own row search
/// (`unwind_info_for_address`), without a table: slow, the reference tables are tested
/// against. `None` where no FDE covers `addr`.
pub fn rule_at(data: &[u8], addr: u64) -> Result<Option<Rule>, Error> {
    let file = object::File::parse(data)?;
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let Some(section) = file.section_by_name(".eh_frame") else {
        return Ok(None);
    };
    let bytes = section.uncompressed_data()?;
    let mut eh = EhFrame::new(&bytes, endian);
    eh.set_address_size(8);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(s) = file.section_by_name(".text") {
        bases = bases.set_text(s.address());
    }
    if let Some(s) = file.section_by_name(".got") {
        bases = bases.set_got(s.address());
    }
    let fde = match eh.fde_for_address(&bases, addr, EhFrame::cie_from_offset) {
        Ok(fde) => fde,
        Err(_) => return Ok(None),
    };
    if fde.is_signal_trampoline() {
        return Ok(Some(Rule::Signal));
    }
    let mut ctx = Box::new(UnwindContext::new());
    Ok(fde
        .unwind_info_for_address(&eh, &bases, &mut ctx, addr)
        .ok()
        .map(|row| rule(row, &eh)))
}
