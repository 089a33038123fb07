//! A process's executable mappings (`/proc/PID/maps`) and where each object is loaded.

use std::path::PathBuf;

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset of the mapping in the file.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    pub path: PathBuf,
}

/// The executable, file-backed mappings of `/proc/PID/maps` text.
pub fn parse(maps: &str) -> Vec<Mapping> {
    maps.lines().filter_map(line).collect()
}

fn line(l: &str) -> Option<Mapping> {
    let mut f = l.split_ascii_whitespace();
    let (range, perms, offset, dev, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let path = f.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path: PathBuf::from(path),
    })
}

/// The bias of `mapping` for an object: `pc - bias` is the object's own virtual address.
/// `None` when no loadable segment holds the mapping's file offset.
pub fn bias<'data, D: object::ReadRef<'data>>(
    file: &object::File<'data, D>,
    mapping: &Mapping,
) -> Option<u64> {
    use object::{Object, ObjectSegment};
    file.segments().find_map(|s| {
        let executable = matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
        if !executable {
            return None;
        }
        let (offset, size) = s.file_range();
        // Segments start on page boundaries in the file as mapped: compare pages.
        let page = offset & !0xfff;
        (page <= mapping.offset && mapping.offset < offset + size.max(1)).then(|| {
            // The segment's address at the mapping's start.
            let vaddr = s.address().wrapping_add(mapping.offset).wrapping_sub(offset);
            mapping.start.wrapping_sub(vaddr)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let text = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 123 /usr/bin/xz
55d0c8a02000-55d0c8a18000 r-xp 00002000 fd:01 123 /usr/bin/xz
7f00aa000000-7f00aa021000 rw-p 00000000 00:00 0 
7ffd1c000000-7ffd1c002000 r-xp 00000000 00:00 0                          [vdso]
7f00ab000000-7f00ab100000 r-xp 00028000 fd:01 456 /opt/my app/lib.so
";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].start, 0x55d0c8a02000);
        assert_eq!(m[0].offset, 0x2000);
        assert_eq!(m[1].path, PathBuf::from("/opt/my app/lib.so"));
    }
}
