//! Field offsets of kernel structs from the running kernel's BTF (/sys/kernel/btf/vmlinux), so
//! the programs can read a field directly where its offset differs between kernels. aya parses
//! BTF but keeps its type lookups private, and a struct member's offset is all we need: the
//! format (Documentation/bpf/btf.rst) is walked here, type by type.

use std::sync::OnceLock;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
/// TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: names or qualifiers over another type.
const KINDS_ALIAS: [u32; 5] = [8, 9, 10, 11, 18];

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

/// Raw BTF with an index of where each type starts (type id `n` at `types[n - 1]`).
struct Btf<'a> {
    data: &'a [u8],
    strings: usize,
    types: Vec<usize>,
}

/// What a type resolves to, under typedefs and qualifiers.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// An integer of this many bytes.
    Int(u32),
    /// An array of this many elements of the type with this id.
    Array(u32, u32),
    /// Anything else (its kind).
    Other(u32),
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err("not little-endian BTF".into());
        }
        let mut btf = Btf {
            data,
            strings: 0,
            types: Vec::new(),
        };
        let hdr_len = btf.u32_at(4)? as usize;
        let (type_off, type_len) = (btf.u32_at(8)? as usize, btf.u32_at(12)? as usize);
        btf.strings = hdr_len + btf.u32_at(16)? as usize;
        let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while at + 12 <= end {
            btf.types.push(at);
            let (kind, vlen) = btf.kind_vlen(at)?;
            at += 12 + extra_len(kind, vlen).ok_or_else(|| format!("unknown BTF kind {kind}"))?;
        }
        Ok(btf)
    }

    fn u32_at(&self, off: usize) -> Result<u32, String> {
        self.data
            .get(off..)
            .and_then(|b| b.first_chunk::<4>())
            .map(|b| u32::from_le_bytes(*b))
            .ok_or_else(|| format!("BTF truncated at byte {off}"))
    }

    fn kind_vlen(&self, at: usize) -> Result<(u32, usize), String> {
        let info = self.u32_at(at + 4)?;
        Ok(((info >> 24) & 0x1f, (info & 0xffff) as usize))
    }

    fn string(&self, off: u32) -> &[u8] {
        let rest = self
            .data
            .get(self.strings + off as usize..)
            .unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (byte offset, type id) of `member` in `struct name`.
    fn member(&self, name: &str, member: &str) -> Result<(u32, u32), String> {
        for &at in &self.types {
            let (kind, vlen) = self.kind_vlen(at)?;
            if kind != KIND_STRUCT || self.string(self.u32_at(at)?) != name.as_bytes() {
                continue;
            }
            return self
                .member_at(at, vlen, member, 0)?
                .ok_or_else(|| format!("struct {name} has no member {member}"));
        }
        Err(format!("no struct {name} in the kernel's BTF"))
    }

    /// `member` in the struct or union at `at` (with `vlen` members), looking inside its
    /// anonymous structs and unions too (`mm_struct` keeps most fields in one); nested at most
    /// `depth` 4 deep.
    fn member_at(
        &self,
        at: usize,
        vlen: usize,
        member: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, String> {
        let bitfields = self.u32_at(at + 4)? >> 31 == 1;
        for m in 0..vlen {
            let rec = at + 12 + 12 * m;
            let name = self.string(self.u32_at(rec)?);
            // With the kind flag, the low 24 bits are the bit offset.
            let bits = self.u32_at(rec + 8)?;
            let bytes = if bitfields { bits & 0xff_ffff } else { bits } / 8;
            let type_id = self.u32_at(rec + 4)?;
            if name == member.as_bytes() {
                return Ok(Some((bytes, type_id)));
            }
            if name.is_empty() && depth < 4 {
                let Some(&inner) = type_id
                    .checked_sub(1)
                    .and_then(|i| self.types.get(i as usize))
                else {
                    continue;
                };
                let (kind, inner_vlen) = self.kind_vlen(inner)?;
                // STRUCT or UNION.
                if kind == KIND_STRUCT || kind == 5 {
                    if let Some((off, t)) = self.member_at(inner, inner_vlen, member, depth + 1)? {
                        return Ok(Some((bytes + off, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Type `id` under its typedefs and qualifiers (a chain of at most 32).
    fn resolve(&self, mut id: u32) -> Result<Resolved, String> {
        for _ in 0..32 {
            let at = *id
                .checked_sub(1)
                .and_then(|i| self.types.get(i as usize))
                .ok_or_else(|| format!("BTF type {id} missing"))?;
            let (kind, _) = self.kind_vlen(at)?;
            match kind {
                KIND_INT => return Ok(Resolved::Int(self.u32_at(at + 8)?)),
                KIND_ARRAY => {
                    return Ok(Resolved::Array(
                        self.u32_at(at + 12)?,
                        self.u32_at(at + 20)?,
                    ))
                }
                k if KINDS_ALIAS.contains(&k) => id = self.u32_at(at + 8)?,
                k => return Ok(Resolved::Other(k)),
            }
        }
        Err(format!("BTF type chain at {id} too long"))
    }
}

/// The byte offset of `member` in `struct name`, from raw BTF (`data`).
#[cfg(test)]
fn member_offset(data: &[u8], name: &str, member: &str) -> Result<u32, String> {
    Ok(Btf::parse(data)?.member(name, member)?.0)
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

/// The offset of `task_struct.thread.fsbase` (x86-64: the thread pointer, which glibc's
/// `pthread_self()` returns) in the running kernel, from its BTF, read once; `None` without
/// BTF or on other architectures. The profile walker finds a CPython 3.10 thread's state by it.
pub fn fsbase_offset() -> Option<u32> {
    static OFFSET: OnceLock<Option<u32>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
        let btf = Btf::parse(&data).ok()?;
        let (thread, _) = btf.member("task_struct", "thread").ok()?;
        let (fsbase, _) = btf.member("thread_struct", "fsbase").ok()?;
        Some(thread + fsbase)
    })
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
    let btf = Btf::parse(data)?;
    let (comm, comm_type) = btf.member("task_struct", "comm")?;
    let (pid, pid_type) = btf.member("task_struct", "pid")?;
    let (tgid, tgid_type) = btf.member("task_struct", "tgid")?;
    // What the programs' loads assume: char comm[16], 8-byte aligned; 4-byte pid, tgid next.
    let comm_ok = match btf.resolve(comm_type)? {
        Resolved::Array(elem, 16) => btf.resolve(elem)? == Resolved::Int(1),
        _ => false,
    };
    let ids_ok =
        btf.resolve(pid_type)? == Resolved::Int(4) && btf.resolve(tgid_type)? == Resolved::Int(4);
    if !comm_ok || !ids_ok || comm % 8 != 0 || tgid != pid + 4 || pid % 4 != 0 {
        return Err(format!(
            "task_struct layout comm {comm}, pid {pid}, tgid {tgid} is not what the programs read"
        ));
    }
    Ok(TaskOffsets { comm, pid })
}

/// Where the process-event programs read a task's parent, exit status and arguments: offsets
/// of `task_struct` (`real_parent`, `tgid`, `exit_code`, `mm`) and `mm_struct` (`arg_start`,
/// `arg_end`) in the running kernel, from its BTF, read once. A field not found is `u32::MAX`
/// (the programs then leave it out). `'static` because loaders borrow the globals they set.
pub fn process_offsets() -> &'static ProcessOffsets {
    static OFFSETS: OnceLock<ProcessOffsets> = OnceLock::new();
    OFFSETS.get_or_init(|| {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        let btf = Btf::parse(&data).ok();
        let at = |s: &str, m: &str| {
            btf.as_ref()
                .and_then(|b| b.member(s, m).ok())
                .map_or(u32::MAX, |(offset, _)| offset)
        };
        ProcessOffsets {
            real_parent: at("task_struct", "real_parent"),
            tgid: at("task_struct", "tgid"),
            exit_code: at("task_struct", "exit_code"),
            mm: at("task_struct", "mm"),
            arg_start: at("mm_struct", "arg_start"),
            arg_end: at("mm_struct", "arg_end"),
        }
    })
}

/// Offsets the process-event programs read; `u32::MAX`: not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessOffsets {
    /// `task_struct.real_parent`.
    pub real_parent: u32,
    /// `task_struct.tgid`.
    pub tgid: u32,
    /// `task_struct.exit_code`.
    pub exit_code: u32,
    /// `task_struct.mm`.
    pub mm: u32,
    /// `mm_struct.arg_start`.
    pub arg_start: u32,
    /// `mm_struct.arg_end`.
    pub arg_end: u32,
}

/// Where the request programs find a connection's addresses: from the task to its socket
/// (`task_struct.files`, `files_struct.fdt`, `fdtable.fd`, `file.private_data`, `socket.sk`)
/// and the addresses in `sock_common`, in the running kernel, from its BTF. The IPv6 fields
/// are `u32::MAX` in a kernel without IPv6; any other field missing is an error naming it.
pub fn socket_offsets() -> Result<oxeye_ebpf_common::SocketOffsets, String> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))?;
    socket_offsets_in(&data)
}

fn socket_offsets_in(data: &[u8]) -> Result<oxeye_ebpf_common::SocketOffsets, String> {
    let btf = Btf::parse(data)?;
    let at = |s: &str, m: &str| btf.member(s, m).map(|(offset, _)| offset);
    // `struct sock` begins with its `sock_common`; add where, should that ever change.
    let common = at("sock", "__sk_common")?;
    let skc = |m: &str| at("sock_common", m).map(|o| o + common);
    let args = syscall_args(&btf)?;
    // x86-64: r10 at the window's start, dx, si, di its last three words.
    let args_window = match args {
        [di, si, dx, r10] if dx + 8 == si && si + 8 == di && di == r10 + 56 => r10,
        _ => u32::MAX,
    };
    Ok(oxeye_ebpf_common::SocketOffsets {
        task_files: at("task_struct", "files")?,
        files_fdt: at("files_struct", "fdt")?,
        fdt_fd: at("fdtable", "fd")?,
        file_private_data: at("file", "private_data")?,
        socket_sk: at("socket", "sk")?,
        skc_family: skc("skc_family")?,
        skc_num: skc("skc_num")?,
        skc_dport: skc("skc_dport")?,
        skc_rcv_saddr: skc("skc_rcv_saddr")?,
        skc_daddr: skc("skc_daddr")?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr").unwrap_or(u32::MAX),
        skc_v6_daddr: skc("skc_v6_daddr").unwrap_or(u32::MAX),
        // A plain u16 since Linux 5.6 (a bitfield before, which the programs cannot load).
        sk_type: match btf.member("sock", "sk_type") {
            Ok((offset, t)) if btf.resolve(t)? == Resolved::Int(2) => offset,
            _ => u32::MAX,
        },
        args,
        args_window,
    })
}

/// Where `struct pt_regs` keeps a syscall's first four arguments (as the kernel saved them at
/// entry; at exit, arm64 keeps the first only in `orig_x0`, its `x0` being the return value).
fn syscall_args(btf: &Btf) -> Result<[u32; 4], String> {
    let at = |m: &str| btf.member("pt_regs", m).map(|(offset, _)| offset);
    if let (Ok(di), Ok(si), Ok(dx), Ok(r10)) = (at("di"), at("si"), at("dx"), at("r10")) {
        return Ok([di, si, dx, r10]);
    }
    if let Ok(orig_x0) = at("orig_x0") {
        // arm64: `user_pt_regs regs[31]` begins the struct.
        return Ok([orig_x0, 8, 16, 24]);
    }
    Err("this kernel's `struct pt_regs` is neither x86-64's nor arm64's: request spans read syscall arguments from it".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: [1] int (4 bytes), [2] an enum (sized per member: walked over), [3] char,
    /// [4] char[16], [5] typedef pid_t = int, [6] `struct s { int a; pid_t b; char c[16]; }`
    /// (b at byte 4, c at 8), its members' offsets with bitfield sizes when `kind_flag`.
    fn blob(kind_flag: bool) -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0e\0x\0y\0char\0pid_t\0c\0";
        let mut types = Vec::new();
        let mut word = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] int: kind INT, size 4, encoding.
        word(1);
        word(KIND_INT << 24);
        word(4);
        word(32);
        // [2] enum e { x, y }: 8 bytes per member.
        word(11);
        word((6 << 24) | 2);
        word(4);
        for (name, value) in [(13u32, 0u32), (15, 1)] {
            word(name);
            word(value);
        }
        // [3] char.
        word(17);
        word(KIND_INT << 24);
        word(1);
        word(8);
        // [4] char[16]: type, index type, count.
        word(0);
        word(KIND_ARRAY << 24);
        word(0);
        word(3);
        word(1);
        word(16);
        // [5] typedef pid_t = int.
        word(22);
        word(8 << 24);
        word(1);
        // [6] struct s.
        word(5);
        word((KIND_STRUCT << 24) | 3 | if kind_flag { 1 << 31 } else { 0 });
        word(24);
        for (name, ty, bits) in [(7u32, 1u32, 0u32), (9, 5, 32), (28, 4, 64)] {
            word(name);
            word(ty);
            // With the kind flag, the bitfield size sits in the top 8 bits.
            word(if kind_flag { (32 << 24) | bits } else { bits });
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
            assert_eq!(member_offset(&b, "s", "c"), Ok(8));
            assert!(member_offset(&b, "s", "d")
                .unwrap_err()
                .contains("no member d"));
            assert!(member_offset(&b, "t", "a")
                .unwrap_err()
                .contains("no struct t"));
            let btf = Btf::parse(&b).expect("parse");
            assert_eq!(
                btf.resolve(btf.member("s", "b").expect("b").1),
                Ok(Resolved::Int(4))
            );
            assert_eq!(
                btf.resolve(btf.member("s", "c").expect("c").1),
                Ok(Resolved::Array(3, 16))
            );
            assert_eq!(btf.resolve(3), Ok(Resolved::Int(1)));
            assert_eq!(btf.resolve(2), Ok(Resolved::Other(6)));
            assert!(btf.resolve(7).is_err());
        }
        assert!(member_offset(&blob(false)[..30], "s", "a").is_err());
        assert!(member_offset(b"nope", "s", "a").is_err());
    }

    #[test]
    fn this_kernel_gives_the_socket_path_of_the_request_programs() {
        let o = socket_offsets().expect("this host's kernel has BTF");
        // sock_common's layout since 4.x: the address pair first, then the port pair.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert_eq!(o.skc_dport, 12);
        assert_eq!(o.skc_num, 14);
        assert!(o.skc_v6_daddr != u32::MAX);
        assert!(o.sk_type != u32::MAX, "sock.sk_type is a u16 on 6.x");
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
