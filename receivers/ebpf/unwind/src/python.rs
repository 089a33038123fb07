//! CPython frames, read from a live interpreter's own structures (3.10 to 3.13, x86-64): the
//! model the eBPF walker of Python frames will follow, and how user space names a frame (code
//! object → function, file, line).
//!
//! A process runs CPython when one of its objects (the `python3.X` binary or
//! `libpython3.X.so`) defines `_PyRuntime`. From there: interpreters → thread states → the
//! thread whose `native_thread_id` is the sampled thread (3.10 has no such field: its
//! `thread_id` is `pthread_self()`, the thread's fs base) → its current frame → `previous` …,
//! each frame a code object and an instruction pointer. [`Layout`]s hold the offsets, taken
//! from each version's headers (`tests/python.rs` compiles a program against them and compares).

use crate::maps::Mapping;

/// Where a frame's "this frame ends a C-level call of the eval loop" mark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 3.10: every frame is one call of `_PyEval_EvalFrameDefault`.
    EveryFrame,
    /// 3.11: `bool is_entry` at this offset.
    IsEntry(u64),
    /// 3.12+: `char owner` at this offset; 3 (`FRAME_OWNED_BY_CSTACK`) is a shim frame the
    /// C stack owns, itself no Python code.
    Owner(u64),
}

/// The offsets oxeye reads for one CPython minor version (x86-64, default build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: (u8, u8),
    /// `_PyRuntime.interpreters.head`.
    pub interpreters_head: u64,
    /// `PyInterpreterState.threads.head` (3.10: `tstate_head`) and `.next`.
    pub threads_head: u64,
    pub interp_next: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.native_thread_id` (the kernel's tid), or for 3.10 `thread_id`
    /// (`pthread_self()`: the thread's fs base).
    pub tstate_thread: u64,
    pub thread_is_tid: bool,
    /// The current frame: `*(tstate + tstate_frame)`, then `+ cframe_frame` for 3.11 and 3.12
    /// (`tstate->cframe->current_frame`).
    pub tstate_frame: u64,
    pub cframe_frame: Option<u64>,
    pub frame_code: u64,
    pub frame_previous: u64,
    /// 3.11+: a pointer into the code's bytecode; 3.10: `int f_lasti`, a code-unit index.
    pub frame_instr: u64,
    pub entry: Entry,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: Option<u64>,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    /// 3.11+: the bytecode's offset in the code object (`co_code_adaptive`); 3.10: the offset of
    /// `co_code` (a bytes object).
    pub code_bytecode: u64,
    /// `sizeof(PyASCIIObject)`, `sizeof(PyCompactUnicodeObject)`.
    pub unicode_ascii: u64,
    pub unicode_compact: u64,
}

const fn base(version: (u8, u8)) -> Layout {
    Layout {
        version,
        interpreters_head: 40,
        threads_head: 16,
        interp_next: 0,
        tstate_next: 8,
        tstate_thread: 160,
        thread_is_tid: true,
        tstate_frame: 56,
        cframe_frame: Some(8),
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        entry: Entry::IsEntry(68),
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_firstlineno: 72,
        code_linetable: 136,
        code_bytecode: 184,
        unicode_ascii: 48,
        unicode_compact: 72,
    }
}

/// The layouts oxeye knows.
pub const LAYOUTS: [Layout; 4] = [
    Layout {
        interpreters_head: 32,
        threads_head: 8,
        tstate_thread: 176,
        thread_is_tid: false,
        tstate_frame: 24,
        cframe_frame: None,
        frame_code: 32,
        frame_previous: 24,
        frame_instr: 96,
        entry: Entry::EveryFrame,
        code_filename: 104,
        code_name: 112,
        code_qualname: None,
        code_firstlineno: 40,
        code_linetable: 120,
        code_bytecode: 48,
        ..base((3, 10))
    },
    base((3, 11)),
    Layout {
        threads_head: 72,
        tstate_thread: 144,
        cframe_frame: Some(0),
        frame_code: 0,
        frame_previous: 8,
        entry: Entry::Owner(70),
        code_firstlineno: 68,
        code_bytecode: 192,
        unicode_ascii: 40,
        unicode_compact: 56,
        ..base((3, 12))
    },
    Layout {
        interpreters_head: 632,
        threads_head: 7344,
        interp_next: 7264,
        tstate_frame: 72,
        cframe_frame: None,
        frame_code: 0,
        frame_previous: 8,
        entry: Entry::Owner(70),
        code_firstlineno: 68,
        code_bytecode: 200,
        unicode_ascii: 40,
        unicode_compact: 56,
        ..base((3, 13))
    },
];

/// The layout of CPython `major.minor`, if oxeye knows it.
pub fn layout(version: (u8, u8)) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.version == version)
}

/// The CPython version an object is, from its file name (`python3.11`, `libpython3.11.so.1.0`).
pub fn version_of(path: &std::path::Path) -> Option<(u8, u8)> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A process's interpreter: its version's layout and where `_PyRuntime` is.
#[derive(Clone, Copy, Debug)]
pub struct Interpreter {
    pub layout: &'static Layout,
    pub runtime: u64,
    /// `_PyEval_EvalFrameDefault`, [start, end), when the object names it.
    pub eval: Option<(u64, u64)>,
}

/// Why a process's Python frames cannot be read.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotPython {
    /// No object defines `_PyRuntime`.
    NoRuntime,
    /// CPython of a version oxeye has no layout for.
    UnknownVersion(u8, u8),
}

/// What an object defines for CPython, in its own addresses: `_PyRuntime`, the eval loop, and
/// its executable segments (file offset, size, address) to place a mapping of it. Callers
/// cache it per object: reading the symbol tables is the costly part of [`find`].
#[derive(Clone, Debug)]
pub struct Symbols {
    pub runtime: u64,
    pub eval: Option<(u64, u64)>,
    pub segments: Vec<(u64, u64, u64)>,
}

/// The [`Symbols`] of the object at `path`, `None` when it does not define `_PyRuntime`. One
/// pass over its dynamic symbols, then its symbol table if needed.
pub fn symbols(path: &std::path::Path) -> Option<Symbols> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let f = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(&f);
    let file = object::File::parse(&cache).ok()?;
    let (mut runtime, mut eval) = (None, None);
    for s in file.dynamic_symbols().chain(file.symbols()) {
        match s.name() {
            Ok("_PyRuntime") => runtime = Some(s.address()),
            Ok("_PyEval_EvalFrameDefault") if s.size() > 0 => {
                eval = Some((s.address(), s.address() + s.size()))
            }
            _ => {}
        }
        if runtime.is_some() && eval.is_some() {
            break;
        }
    }
    let segments = file
        .segments()
        .filter(|s| {
            matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .collect();
    Some(Symbols {
        runtime: runtime?,
        eval,
        segments,
    })
}

impl Symbols {
    /// `pc - bias` is an address of the object, for `mapping` of it (as `maps::bias`).
    fn bias(&self, mapping: &Mapping) -> Option<u64> {
        self.segments.iter().find_map(|&(offset, size, vaddr)| {
            let page = offset & !0xfff;
            (page <= mapping.offset && mapping.offset < offset + size.max(1)).then(|| {
                let at = vaddr.wrapping_add(mapping.offset).wrapping_sub(offset);
                mapping.start.wrapping_sub(at)
            })
        })
    }
}

/// The interpreter of process `pid`, from its mappings: the first object whose symbols define
/// `_PyRuntime`, read through `/proc/PID/root`.
pub fn find(pid: u32, mappings: &[Mapping]) -> Result<Interpreter, NotPython> {
    find_cached(pid, mappings, &mut std::collections::HashMap::new())
}

/// [`find`], with each object's [`Symbols`] read once into `cache`.
pub fn find_cached(
    pid: u32,
    mappings: &[Mapping],
    cache: &mut std::collections::HashMap<crate::ObjectKey, Option<Symbols>>,
) -> Result<Interpreter, NotPython> {
    for m in mappings {
        let Some(version) = version_of(&m.path) else {
            continue;
        };
        let Ok((path, key)) = crate::object(pid, m) else {
            continue;
        };
        let symbols = cache.entry(key).or_insert_with(|| symbols(&path));
        let Some(sym) = symbols.as_ref() else {
            continue;
        };
        let Some(bias) = sym.bias(m) else {
            continue;
        };
        let Some(layout) = layout(version) else {
            return Err(NotPython::UnknownVersion(version.0, version.1));
        };
        return Ok(Interpreter {
            layout,
            runtime: sym.runtime.wrapping_add(bias),
            eval: sym
                .eval
                .map(|(a, b)| (a.wrapping_add(bias), b.wrapping_add(bias))),
        });
    }
    Err(NotPython::NoRuntime)
}

/// One Python frame: its code object and instruction (see [`Layout::frame_instr`]), and
/// whether it is the last of its C-level call of the eval loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
    pub entry: bool,
}

/// Reads `buf.len()` bytes of the process at `addr`.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    fn u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    fn u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn u8(&self, addr: u64) -> Option<u8> {
        let mut b = [0; 1];
        self.read(addr, &mut b).then_some(b[0])
    }
}

/// At most this many interpreters, threads and frames are walked.
const MAX_INTERPRETERS: usize = 8;
const MAX_THREADS: usize = 64;
pub const MAX_FRAMES: usize = 128;

impl Interpreter {
    /// The thread state of thread `thread` (its tid; for 3.10 its fs base).
    pub fn thread_state(&self, mem: &impl Memory, thread: u64) -> Option<u64> {
        let l = self.layout;
        let mut interp = mem.u64(self.runtime + l.interpreters_head)?;
        for _ in 0..MAX_INTERPRETERS {
            if interp == 0 {
                return None;
            }
            let mut t = mem.u64(interp + l.threads_head)?;
            for _ in 0..MAX_THREADS {
                if t == 0 {
                    break;
                }
                if mem.u64(t + l.tstate_thread)? == thread {
                    return Some(t);
                }
                t = mem.u64(t + l.tstate_next)?;
            }
            interp = mem.u64(interp + l.interp_next)?;
        }
        None
    }

    /// The thread's frames, innermost first (shim frames of 3.12+ left out, as they are no
    /// Python code).
    pub fn frames(&self, mem: &impl Memory, tstate: u64) -> Vec<PyFrame> {
        let l = self.layout;
        let mut out = Vec::new();
        let mut f = mem.u64(tstate + l.tstate_frame).unwrap_or(0);
        if let (Some(off), true) = (l.cframe_frame, f != 0) {
            f = mem.u64(f + off).unwrap_or(0);
        }
        while f != 0 && out.len() < MAX_FRAMES {
            let (Some(code), Some(previous)) =
                (mem.u64(f + l.frame_code), mem.u64(f + l.frame_previous))
            else {
                break;
            };
            let instr = match l.entry {
                Entry::EveryFrame => mem.u32(f + l.frame_instr).map(u64::from),
                _ => mem.u64(f + l.frame_instr),
            }
            .unwrap_or(0);
            let (entry, shim) = match l.entry {
                Entry::EveryFrame => (true, false),
                Entry::IsEntry(o) => (mem.u8(f + o).unwrap_or(0) != 0, false),
                Entry::Owner(o) => {
                    let owner = mem.u8(f + o).unwrap_or(0);
                    (false, owner == 3)
                }
            };
            if shim {
                // The frame below a shim ends a C-level call.
                if let Some(last) = out.last_mut() {
                    let last: &mut PyFrame = last;
                    last.entry = true;
                }
            } else {
                out.push(PyFrame { code, instr, entry });
            }
            f = previous;
        }
        out
    }

    /// Function, file and line of a frame, read from its code object.
    pub fn describe(&self, mem: &impl Memory, frame: &PyFrame) -> Option<Location> {
        let l = self.layout;
        let c = frame.code;
        let name = match l.code_qualname {
            Some(q) => string(mem, l, mem.u64(c + q)?),
            None => string(mem, l, mem.u64(c + l.code_name)?),
        }?;
        let file = string(mem, l, mem.u64(c + l.code_filename)?)?;
        let first = mem.u32(c + l.code_firstlineno)? as i32;
        let table = bytes(mem, mem.u64(c + l.code_linetable)?)?;
        let line = if l.version >= (3, 11) {
            let start = c + l.code_bytecode;
            let index = frame.instr.checked_sub(start)? / 2;
            line_311(&table, first, index as usize)
        } else {
            line_310(&table, first, frame.instr as usize * 2)
        };
        Some(Location {
            function: name,
            file,
            line,
        })
    }
}

/// Where a Python frame is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The qualified name (`Class.method`; 3.10: the name).
    pub function: String,
    pub file: String,
    pub line: Option<i32>,
}

/// A `str` object's text (compact strings: ASCII and Latin-1 exactly, others lossily).
fn string(mem: &impl Memory, l: &Layout, s: u64) -> Option<String> {
    let len = mem.u64(s + 16)? as usize;
    let state = mem.u32(s + 32)?;
    // state bits: interned 2, kind 3, compact 1, ascii 1 (3.12+ dropped `ready`).
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    // Whatever the memory holds (an object freed and reused meanwhile), never more than a
    // well-formed string: kinds 1, 2 and 4 only.
    if !compact || len > 4096 || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let data = if ascii {
        s + l.unicode_ascii
    } else {
        s + l.unicode_compact
    };
    let mut buf = vec![0; len * kind as usize];
    if !mem.read(data, &mut buf) {
        return None;
    }
    Some(match kind {
        1 => buf.iter().map(|&b| b as char).collect(),
        2 => String::from_utf16_lossy(
            &buf.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        ),
        _ => buf
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?'))
            .collect(),
    })
}

/// A `bytes` object's contents (at most 1 MiB).
fn bytes(mem: &impl Memory, b: u64) -> Option<Vec<u8>> {
    let len = mem.u64(b + 16)? as usize;
    if len > 1 << 20 {
        return None;
    }
    let mut buf = vec![0; len];
    mem.read(b + 32, &mut buf).then_some(buf)
}

/// The line of code unit `index` from a 3.11+ location table (`Objects/locations.md`).
pub fn line_311(table: &[u8], first: i32, index: usize) -> Option<i32> {
    let mut line = first;
    let (mut at, mut i) = (0usize, 0usize);
    let varint = |i: &mut usize| -> Option<u32> {
        let (mut v, mut shift) = (0u32, 0);
        loop {
            let b = *table.get(*i)?;
            *i += 1;
            v |= u32::from(b & 63) << shift;
            shift += 6;
            if b & 64 == 0 || shift > 30 {
                return Some(v);
            }
        }
    };
    let svarint = |i: &mut usize| -> Option<i32> {
        let v = varint(i)?;
        Some(if v & 1 != 0 {
            -((v >> 1) as i32)
        } else {
            (v >> 1) as i32
        })
    };
    while i < table.len() {
        let b = table[i];
        i += 1;
        let code = (b >> 3) & 15;
        let length = usize::from(b & 7) + 1;
        let known = match code {
            15 => false,
            14 => {
                line += svarint(&mut i)?;
                for _ in 0..3 {
                    varint(&mut i)?;
                }
                true
            }
            13 => {
                line += svarint(&mut i)?;
                true
            }
            10..=12 => {
                line += i32::from(code) - 10;
                i += 2;
                true
            }
            _ => {
                i += 1;
                true
            }
        };
        if index < at + length {
            return known.then_some(line);
        }
        at += length;
    }
    None
}

/// The line of bytecode offset `offset` (bytes) from a 3.10 line table: pairs of (bytes
/// advanced, line delta; -128: no line).
pub fn line_310(table: &[u8], first: i32, offset: usize) -> Option<i32> {
    let mut line = first;
    let mut end = 0usize;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += usize::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i32::from(delta);
        }
        if start <= offset && offset < end {
            return (delta != -128).then_some(line);
        }
    }
    None
}

/// The memory of process `pid`, read with `process_vm_readv` (a read of unmapped memory
/// fails, never faults).
pub struct ProcessMemory(pub u32);

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the local iovec is `buf`, valid for its length; the remote one is only
        // read by the kernel, which checks it.
        let n = unsafe { libc::process_vm_readv(self.0 as i32, &local, 1, &remote, 1, 0) };
        n == buf.len() as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory of random bytes (a freed, reused object): reading it as a string or a frame
    /// gives `None` or some text, never a panic.
    struct Garbage(u64);

    impl Memory for Garbage {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            // Small numbers (a random low byte in each word): lengths and kinds that pass the
            // first checks.
            let mut x = self.0 ^ addr;
            for (i, b) in buf.iter_mut().enumerate() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = if i % 8 == 0 { (x >> 56) as u8 } else { 0 };
            }
            true
        }
    }

    #[test]
    fn garbage_memory_never_panics() {
        for seed in 0..2000u64 {
            let mem = Garbage(seed);
            for l in &LAYOUTS {
                let _ = string(&mem, l, seed * 64);
                let interp = Interpreter {
                    layout: l,
                    runtime: seed,
                    eval: None,
                };
                let frame = PyFrame {
                    code: seed * 128,
                    instr: seed * 128 + 200,
                    entry: false,
                };
                let _ = interp.describe(&mem, &frame);
                let _ = interp.thread_state(&mem, seed);
                let _ = interp.frames(&mem, seed);
            }
        }
    }

    #[test]
    fn versions_from_file_names() {
        let v = |p: &str| version_of(std::path::Path::new(p));
        assert_eq!(v("/usr/bin/python3.11"), Some((3, 11)));
        assert_eq!(v("/opt/lib/libpython3.13.so.1.0"), Some((3, 13)));
        assert_eq!(v("/usr/bin/python3"), None);
        assert_eq!(v("/usr/lib/libc.so.6"), None);
    }

    #[test]
    fn location_tables() {
        // 3.11: a one-line form (+1 line, 2 units), a no-column form (+2, 3 units), none (1).
        let table = [
            0x80 | (11 << 3) | 1,
            0,
            0,
            0x80 | (13 << 3) | 2,
            4,
            0x80 | (15 << 3),
        ];
        assert_eq!(line_311(&table, 10, 0), Some(11));
        assert_eq!(line_311(&table, 10, 1), Some(11));
        assert_eq!(line_311(&table, 10, 4), Some(13));
        assert_eq!(line_311(&table, 10, 5), None);
        assert_eq!(line_311(&table, 10, 6), None);
        // 3.10: 6 bytes on line +0, 4 bytes on +1, 2 bytes without a line.
        let table = [6, 0, 4, 1, 2, 0x80];
        assert_eq!(line_310(&table, 20, 0), Some(20));
        assert_eq!(line_310(&table, 20, 8), Some(21));
        assert_eq!(line_310(&table, 20, 10), None);
    }
}
