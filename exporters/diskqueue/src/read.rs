//! Reading records back in order. A record whose header or checksum is wrong is skipped: the
//! search resumes one byte further for the next magic whose record checks out, and each
//! stretch skipped counts once in `corrupt`. Memory is bounded by a chunk's bytes and one
//! search window, whatever the backlog.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::position::Pos;
use crate::record::{self, Header, HEADER};
use crate::{lock, Chunk, Queue, Span};

/// A listed, sealed segment whose file is gone (deleted by someone else): forgotten, its unsent
/// records counted as one corrupt stretch. `false` for the segment being written.
fn gone(q: &Queue, segment: u64) -> bool {
    let mut s = lock(&q.state);
    let Some(i) = s.segments.iter().position(|g| g.id == segment && g.sealed) else {
        return false;
    };
    let g = s.segments.remove(i).expect("listed");
    s.stats.bytes -= g.len;
    s.stats.corrupt += 1;
    if s.read_at.segment == segment {
        if let Some(next) = s.segments.iter().find(|g| g.id > segment) {
            s.read_at = Pos {
                segment: next.id,
                offset: 0,
            };
        }
    }
    true
}

const WINDOW: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct Reader {
    /// The open segment file and its id.
    file: Option<(u64, File)>,
}

/// The reader's view of one segment, taken under the state lock.
struct Where {
    pos: Pos,
    len: u64,
}

impl Reader {
    pub(crate) fn next_chunk(
        &mut self,
        q: &Queue,
        max_records: u64,
        max_bytes: usize,
        joinable: &dyn Fn(u8) -> bool,
    ) -> io::Result<Option<Chunk>> {
        if let Some(chunk) = self.redo(q, joinable)? {
            return Ok(Some(chunk));
        }
        loop {
            let Some(at) = self.locate(q) else {
                return Ok(None);
            };
            let file = match self.file_for(q, at.pos.segment) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && gone(q, at.pos.segment) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let read = read_records(
                file,
                at.pos.offset,
                at.len,
                max_records,
                max_bytes,
                joinable,
            )?;
            let mut s = lock(&q.state);
            // Moved meanwhile (`drop_oldest` deleted the segment): what was read is not ours.
            if s.read_at != at.pos {
                continue;
            }
            s.read_at = Pos {
                segment: at.pos.segment,
                offset: read.end,
            };
            s.stats.corrupt += read.corrupt;
            if let Some(seg) = s.segments.iter_mut().find(|g| g.id == at.pos.segment) {
                seg.handed += read.records + read.corrupt;
                seg.done += read.corrupt;
            }
            if !read.taken {
                // Only corruption was skipped (perhaps a segment's torn tail: it can go now).
                // A position not saved costs resends, not data.
                let _ = q.collect(&mut s);
                continue;
            }
            let resent = if at.pos < s.resend_until {
                read.records
            } else {
                0
            };
            s.stats.resent += resent;
            let span = Span {
                segment: at.pos.segment,
                end: read.end,
                records: read.records,
            };
            s.inflight.insert(at.pos, span);
            let _ = q.save_position(&mut s);
            return Ok(Some(Chunk {
                kind: read.kind,
                records: read.records,
                bytes: read.bytes,
                resent,
                start: at.pos,
            }));
        }
    }

    /// A chunk given back ([`Queue::unread`]), read again as it was.
    fn redo(&mut self, q: &Queue, joinable: &dyn Fn(u8) -> bool) -> io::Result<Option<Chunk>> {
        loop {
            let Some((start, span)) = lock(&q.state).redo.pop_first() else {
                return Ok(None);
            };
            let file = match self.file_for(q, span.segment) {
                Ok(f) => f,
                // Deleted by `drop_oldest` meanwhile: its records count as dropped there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    lock(&q.state).stats.dropped_oldest += span.records;
                    continue;
                }
                Err(e) => {
                    lock(&q.state).redo.insert(start, span);
                    return Err(e);
                }
            };
            let read = read_records(file, start.offset, span.end, u64::MAX, usize::MAX, joinable)?;
            let mut s = lock(&q.state);
            s.stats.resent += read.records;
            s.inflight.insert(start, span);
            return Ok(Some(Chunk {
                kind: read.kind,
                records: read.records,
                bytes: read.bytes,
                resent: read.records,
                start,
            }));
        }
    }

    /// Where to read next: the reader's segment if it has unread bytes, else the next one.
    fn locate(&self, q: &Queue) -> Option<Where> {
        let mut s = lock(&q.state);
        loop {
            let at = s.read_at;
            // The reader's segment, or the first after it if that one was dropped.
            let i = s.segments.iter().position(|g| g.id >= at.segment)?;
            let seg = &s.segments[i];
            if seg.id != at.segment {
                s.read_at = Pos {
                    segment: seg.id,
                    offset: 0,
                };
                continue;
            }
            if at.offset < seg.len {
                return Some(Where {
                    pos: at,
                    len: seg.len,
                });
            }
            let next = s.segments.get(i + 1).map(|g| g.id);
            match next {
                Some(id) if seg.sealed => {
                    s.read_at = Pos {
                        segment: id,
                        offset: 0,
                    }
                }
                _ => return None,
            }
        }
    }

    fn file_for(&mut self, q: &Queue, segment: u64) -> io::Result<&File> {
        if self.file.as_ref().is_none_or(|(id, _)| *id != segment) {
            self.file = Some((segment, File::open(q.segment_path(segment))?));
        }
        Ok(&self.file.as_ref().expect("just set").1)
    }
}

struct Read {
    /// At least one record was read (a record may hold no records, e.g. an empty request).
    taken: bool,
    kind: u8,
    records: u64,
    bytes: Vec<u8>,
    corrupt: u64,
    /// Where the next unread record starts.
    end: u64,
}

/// Consecutive records of one kind from `from`, up to `len` (the segment's complete bytes).
fn read_records(
    file: &File,
    from: u64,
    len: u64,
    max_records: u64,
    max_bytes: usize,
    joinable: &dyn Fn(u8) -> bool,
) -> io::Result<Read> {
    let mut out = Read {
        taken: false,
        kind: 0,
        records: 0,
        bytes: Vec::new(),
        corrupt: 0,
        end: from,
    };
    while out.end < len {
        if out.taken && !joinable(out.kind) {
            break; // not even the next header is read
        }
        let at = out.end;
        let Some(h) = header_at(file, at, len)? else {
            out.corrupt += 1;
            out.end = resync(file, at + 1, len)?;
            if out.taken {
                break; // hand out what is whole; the reader goes on from the next record
            }
            continue;
        };
        if out.taken
            && (h.kind != out.kind
                || out.records + u64::from(h.records) > max_records
                || out.bytes.len() + h.len as usize > max_bytes)
        {
            break;
        }
        let start = out.bytes.len();
        out.bytes.resize(start + h.len as usize, 0);
        file.read_exact_at(&mut out.bytes[start..], at + HEADER as u64)?;
        if !h.matches(&out.bytes[start..]) {
            out.bytes.truncate(start);
            out.corrupt += 1;
            out.end = resync(file, at + 1, len)?;
            if out.taken {
                break;
            }
            continue;
        }
        if h.kind == record::SEAL {
            // The segment's own bookkeeping, not a record to send.
            out.bytes.truncate(start);
            out.end = at + HEADER as u64 + u64::from(h.len);
            continue;
        }
        out.taken = true;
        out.kind = h.kind;
        out.records += u64::from(h.records);
        out.end = at + HEADER as u64 + u64::from(h.len);
    }
    Ok(out)
}

/// The header at `at`, if it parses and its record ends within `len`.
fn header_at(file: &File, at: u64, len: u64) -> io::Result<Option<Header>> {
    if at + HEADER as u64 > len {
        return Ok(None);
    }
    let mut b = [0u8; HEADER];
    file.read_exact_at(&mut b, at)?;
    Ok(Header::parse(&b).filter(|h| at + HEADER as u64 + u64::from(h.len) <= len))
}

/// The start of the next intact record at or after `from`, or `len` when none is left.
fn resync(file: &File, mut from: u64, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; WINDOW];
    while from < len {
        let n = (len - from).min(WINDOW as u64) as usize;
        file.read_exact_at(&mut buf[..n], from)?;
        let mut i = 0;
        while let Some(m) = record::find_magic(&buf[..n], i) {
            let at = from + m as u64;
            if let Some(h) = header_at(file, at, len)? {
                let mut payload = vec![0u8; h.len as usize];
                file.read_exact_at(&mut payload, at + HEADER as u64)?;
                if h.matches(&payload) {
                    return Ok(at);
                }
            }
            i = m + 1;
        }
        // A magic cut by the window's end is looked at again in the next window.
        from += n.saturating_sub(3).max(1) as u64;
        if n < 4 {
            break;
        }
    }
    Ok(len)
}
