//! Field offsets of kernel structs from the running kernel's BTF (/sys/kernel/btf/vmlinux), so
//! the programs can read a field directly where its offset differs between kernels. aya parses
//! BTF but keeps its type lookups private, and a struct member's offset is all we need: the
//! format (Documentation/bpf/btf.rst) is walked here, type by type.

use std::sync::OnceLock;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Bytes that follow a type's 12-byte header, by kind (btf.rst §2.2); `None` = unknown kind.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: nothing.
        2 | 7..=12 | 16 | 18 => 0,
        // ARRAY: type, index type, count.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per member.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes per member.
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

/// The byte offset of `member` in `struct name`, from raw BTF (`data`).
pub fn member_offset(data: &[u8], name: &str, member: &str) -> Result<u32, String> {
    let u32_at = |off: usize| -> Result<u32, String> {
        data.get(off..)
            .and_then(|b| b.first_chunk::<4>())
            .map(|b| u32::from_le_bytes(*b))
            .ok_or_else(|| format!("BTF truncated at byte {off}"))
    };
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
        return Err("not little-endian BTF".into());
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let string = |off: u32| -> &[u8] {
        let rest = data.get(strings + off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let mut at = types;
    while at + 12 <= types + type_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let bitfields = info >> 31 == 1;
        if kind == KIND_STRUCT && string(name_off) == name.as_bytes() {
            for m in 0..vlen {
                let rec = at + 12 + 12 * m;
                if string(u32_at(rec)?) == member.as_bytes() {
                    // With the kind flag, the low 24 bits are the bit offset.
                    let bits = u32_at(rec + 8)?;
                    let bits = if bitfields { bits & 0xff_ffff } else { bits };
                    return Ok(bits / 8);
                }
            }
            return Err(format!("struct {name} has no member {member}"));
        }
        at += 12 + extra_len(kind, vlen).ok_or_else(|| format!("unknown BTF kind {kind}"))?;
    }
    Err(format!("no struct {name} in the kernel's BTF"))
}

/// Where the span programs read the current thread's name and ids directly (two loads each
/// instead of a helper call): `task_struct`'s `comm` and `pid` (with `tgid` right after it)
/// in the running kernel, from its BTF, read once. `None` without kernel BTF or for a layout
/// those loads cannot take (comm not 8-byte aligned, tgid not after pid): the programs then
/// ask helpers, ~35 ns more a span. `'static` because loaders borrow the globals they set.
pub fn task_offsets() -> Option<&'static TaskOffsets> {
    static OFFSETS: OnceLock<Option<TaskOffsets>> = OnceLock::new();
    OFFSETS
        .get_or_init(|| {
            let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
            task_offsets_in(&data).ok()
        })
        .as_ref()
}

/// Offsets in `task_struct` the span programs read directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `comm`: 16 bytes, 8-byte aligned.
    pub comm: u32,
    /// `pid`, with `tgid` the next 4 bytes.
    pub pid: u32,
}

fn task_offsets_in(data: &[u8]) -> Result<TaskOffsets, String> {
    let comm = member_offset(data, "task_struct", "comm")?;
    let pid = member_offset(data, "task_struct", "pid")?;
    let tgid = member_offset(data, "task_struct", "tgid")?;
    if comm % 8 != 0 || tgid != pid + 4 || pid % 4 != 0 {
        return Err(format!(
            "task_struct layout comm {comm}, pid {pid}, tgid {tgid}"
        ));
    }
    Ok(TaskOffsets { comm, pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with an int and `struct s { int a; int b; }` (b at byte 4).
    fn blob(kind_flag: bool) -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = Vec::new();
        let mut word = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] int: name "int", kind INT, size 4, encoding.
        word(1);
        word(1 << 24);
        word(4);
        word(32);
        // [2] struct s, two members.
        word(5);
        word((KIND_STRUCT << 24) | 2 | if kind_flag { 1 << 31 } else { 0 });
        word(8);
        for (name, bits) in [(7u32, 0u32), (9, 32)] {
            word(name);
            word(1);
            word(bits);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_members_and_names_what_is_missing() {
        for kind_flag in [false, true] {
            let b = blob(kind_flag);
            assert_eq!(member_offset(&b, "s", "a"), Ok(0));
            assert_eq!(member_offset(&b, "s", "b"), Ok(4));
            assert!(member_offset(&b, "s", "c")
                .unwrap_err()
                .contains("no member c"));
            assert!(member_offset(&b, "t", "a")
                .unwrap_err()
                .contains("no struct t"));
        }
        assert!(member_offset(&blob(false)[..30], "s", "a").is_err());
        assert!(member_offset(b"nope", "s", "a").is_err());
    }

    #[test]
    fn this_kernel_has_task_struct_comm_pid_and_tgid() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: no kernel BTF");
            return;
        }
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let off = member_offset(&data, "task_struct", "comm").expect("task_struct.comm");
        // Far into the struct on every kernel (after the scheduler's fields).
        assert!(off > 256, "comm at {off}");
        assert_eq!(task_offsets().copied(), task_offsets_in(&data).ok());
        // Debian's 6.1, 6.12 and the host's 6.18 all have the layout the programs read.
        let t = task_offsets().expect("task_struct offsets");
        assert_eq!(t.comm, off);
        assert!(t.pid > 256 && t.pid < t.comm, "{t:?}");
    }
}
