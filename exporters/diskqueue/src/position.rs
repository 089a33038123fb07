//! The `position` file: where sending resumes after a restart.
//!
//! Two 48-byte slots written in turn, each with a sequence number and a checksum: a write torn
//! by a crash spoils at most the slot being written, and the other one still holds the previous
//! position (at worst a few more batches are sent again; never fewer).
//!
//! ```text
//! magic u32 | seq u64 | acked (segment u64, offset u64) | handed out (segment u64, offset u64) | crc32 u32
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const MAGIC: u32 = u32::from_le_bytes(*b"OXQP");
const SLOT: usize = 48;

/// A place in the queue: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// What the file holds: everything before `acked` is delivered (or dropped and counted);
/// records from `acked` to `handed_out` were being sent when it was written, so after a crash
/// they are sent again and counted as possible duplicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub acked: Pos,
    pub handed_out: Pos,
}

pub struct PositionFile {
    file: File,
    seq: u64,
}

impl PositionFile {
    /// Opens (or creates) the file and reads the newer intact slot.
    pub fn open(file: File) -> io::Result<(PositionFile, Option<Saved>)> {
        let mut buf = [0u8; 2 * SLOT];
        let n = read_up_to(&file, &mut buf)?;
        let best = buf[..n]
            .chunks_exact(SLOT)
            .filter_map(parse)
            .max_by_key(|(seq, _)| *seq);
        let seq = best.map_or(0, |(s, _)| s);
        Ok((PositionFile { file, seq }, best.map(|(_, saved)| saved)))
    }

    /// Writes `saved` into the older slot (no fsync: see [`PositionFile::sync`]).
    pub fn write(&mut self, saved: Saved) -> io::Result<()> {
        self.seq += 1;
        let mut b = [0u8; SLOT];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.seq.to_le_bytes());
        for (i, v) in [
            saved.acked.segment,
            saved.acked.offset,
            saved.handed_out.segment,
            saved.handed_out.offset,
        ]
        .into_iter()
        .enumerate()
        {
            b[12 + 8 * i..20 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        let slot = (self.seq % 2) * SLOT as u64;
        self.file.write_all_at(&b, slot)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn parse(b: &[u8]) -> Option<(u64, Saved)> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(b[44..48].try_into().expect("4 bytes"));
    if magic != MAGIC || crc != crc32fast::hash(&b[..44]) {
        return None;
    }
    let pos = |i: usize| Pos {
        segment: u64_at(i),
        offset: u64_at(i + 8),
    };
    Some((
        u64_at(4),
        Saved {
            acked: pos(12),
            handed_out: pos(28),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(a: u64, h: u64) -> Saved {
        Saved {
            acked: Pos {
                segment: 1,
                offset: a,
            },
            handed_out: Pos {
                segment: 2,
                offset: h,
            },
        }
    }

    #[test]
    fn the_newest_intact_slot_wins_and_a_torn_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("position");
        let open = || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            PositionFile::open(f).unwrap()
        };
        let (mut p, none) = open();
        assert_eq!(none, None);
        p.write(saved(10, 20)).unwrap();
        p.write(saved(30, 40)).unwrap();
        let (mut p, got) = open();
        assert_eq!(got, Some(saved(30, 40)));
        // The next write goes to the other slot; tear it: the previous position survives.
        p.write(saved(50, 60)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let torn_slot = (p.seq % 2) * SLOT as u64;
        f.write_all_at(&[0xff; 7], torn_slot + 20).unwrap();
        let (_, got) = open();
        assert_eq!(got, Some(saved(30, 40)));
    }
}
