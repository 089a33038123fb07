//! A persistent sending queue: records appended to segment files, handed out to senders in
//! order, and deleted a whole segment at a time once every record in it is acknowledged.
//!
//! - `record.rs`: a record's header and checksum.
//! - `position.rs`: the acknowledged position, kept across restarts.
//! - `open.rs`: the directory (lock, format) and recovery of what a previous run left.
//! - `read.rs`: reading records back, skipping and counting corrupt ones.
//!
//! Everything here blocks on the disk: callers on an async runtime run it on blocking threads.
//! A process killed at any point loses nothing that `append` returned for (the page cache
//! outlives the process); with `fsync_every_append` nothing is lost to a power cut either.

mod open;
mod position;
mod read;
mod record;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

pub use open::{check, check_writable, OpenError};
use position::{Pos, PositionFile, Saved};

/// How the queue is bounded and synced.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of segment files at most (a record larger than this is written when the queue is
    /// otherwise empty, alone).
    pub max_size: u64,
    /// Bytes per segment file before a new one is started.
    pub segment_size: u64,
    /// `fdatasync` after every append (durable across power loss); otherwise the caller calls
    /// [`Queue::sync`] on its interval.
    pub fsync_every_append: bool,
}

impl Options {
    /// Segments of a sixteenth of `max_size`, between 1 and 64 MiB: `drop_oldest` drops a
    /// small share at a time, and a long backlog is not thousands of files.
    pub fn segment_size_for(max_size: u64) -> u64 {
        (max_size / 16).clamp(1 << 20, 64 << 20)
    }
}

/// What [`Queue::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written; `dropped` older records were deleted unsent to make room (only when asked to).
    Written { dropped: u64 },
    /// No room (`max_size`, or the disk itself when `disk_full`); nothing written.
    Full { disk_full: bool },
}

/// Records handed to a sender: one kind, consecutive, from one segment. Acknowledge with
/// [`Queue::ack`] once the backend has them (or they are dropped and counted).
#[derive(Debug)]
pub struct Chunk {
    pub kind: u8,
    pub records: u64,
    /// The records' payloads one after another.
    pub bytes: Vec<u8>,
    /// Records here that were already handed out before a restart: they may arrive twice.
    pub resent: u64,
    start: Pos,
}

/// Figures for `/metrics` and the final summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of segment files.
    pub bytes: u64,
    /// Records on disk not yet acknowledged (approximate after corruption: a corrupt stretch
    /// counts as one).
    pub records: u64,
    /// Corrupt or torn records skipped (each a record or a stretch of garbage).
    pub corrupt: u64,
    /// Records handed out again after a restart (possible duplicates).
    pub resent: u64,
    /// Records deleted unsent by `drop_oldest`.
    pub dropped_oldest: u64,
}

/// One segment file's bookkeeping.
#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes written and complete (readers never read past this).
    len: u64,
    /// Records in it (as counted when written or found at recovery).
    records: u64,
    /// Handed out to senders (or skipped as corrupt).
    handed: u64,
    /// Acknowledged.
    done: u64,
    /// No more appends (a newer segment exists).
    sealed: bool,
}

struct State {
    segments: VecDeque<Segment>,
    /// Chunks handed out and not acknowledged: start → (segment id, records).
    inflight: BTreeMap<Pos, (u64, u64)>,
    /// The reader's next position.
    read_at: Pos,
    /// Handed out before the last restart: chunks starting before this may be duplicates.
    resend_until: Pos,
    position: PositionFile,
    stats: Stats,
}

struct Writer {
    file: File,
    segment: u64,
    offset: u64,
}

/// The queue in one directory (locked: one process at a time).
pub struct Queue {
    dir: PathBuf,
    options: Options,
    writer: Mutex<Writer>,
    reader: Mutex<read::Reader>,
    state: Mutex<State>,
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// Appends one record of `records` records of `kind`. With `make_room`, the oldest
    /// segments are deleted (their unsent records counted in `dropped`) when it would not fit.
    pub fn append(
        &self,
        kind: u8,
        records: u32,
        payload: &[u8],
        make_room: bool,
    ) -> io::Result<Appended> {
        let header = record::Header::new(kind, records, payload);
        let need = (record::HEADER + payload.len()) as u64;
        let mut w = lock(&self.writer);
        let mut dropped = 0;
        {
            let mut s = lock(&self.state);
            while s.stats.bytes + need > self.options.max_size && s.stats.bytes > 0 {
                if !make_room {
                    return Ok(Appended::Full { disk_full: false });
                }
                match self.drop_oldest(&mut s, w.segment) {
                    Some(n) => dropped += n,
                    None => return Ok(Appended::Full { disk_full: false }),
                }
            }
        }
        if w.offset > 0 && w.offset + need > self.options.segment_size {
            self.rotate(&mut w)?;
        }
        let at = w.offset;
        let written = w
            .file
            .write_all_at(&header.to_bytes(), at)
            .and_then(|()| w.file.write_all_at(payload, at + record::HEADER as u64))
            .and_then(|()| {
                if self.options.fsync_every_append {
                    w.file.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Nothing half-written stays behind (a reader stops at `len` anyway).
            let _ = w.file.set_len(at);
            return if disk_full(&e) {
                Ok(Appended::Full { disk_full: true })
            } else {
                Err(e)
            };
        }
        w.offset += need;
        let mut s = lock(&self.state);
        s.stats.bytes += need;
        if let Some(seg) = s.segments.back_mut() {
            seg.len += need;
            seg.records += u64::from(records);
        }
        Ok(Appended::Written { dropped })
    }

    /// Deletes the oldest segment not being written (e.g. when the disk itself is full);
    /// returns its unsent records, counted in `dropped_oldest`, or `None` if there is none.
    pub fn drop_oldest_segment(&self) -> Option<u64> {
        let w = lock(&self.writer);
        let mut s = lock(&self.state);
        self.drop_oldest(&mut s, w.segment)
    }

    fn drop_oldest(&self, s: &mut State, writing: u64) -> Option<u64> {
        let seg = s.segments.front().filter(|g| g.id != writing)?;
        let unsent = seg.records.saturating_sub(seg.handed);
        let gone = s.segments.pop_front().expect("front exists");
        s.stats.bytes -= gone.len;
        s.stats.dropped_oldest += unsent;
        if s.read_at.segment <= gone.id {
            s.read_at = Pos {
                segment: s.segments.front().map_or(writing, |g| g.id),
                offset: 0,
            };
        }
        let _ = std::fs::remove_file(self.segment_path(gone.id));
        Some(unsent)
    }

    fn rotate(&self, w: &mut Writer) -> io::Result<()> {
        let id = w.segment + 1;
        let file = open::create_segment(&self.dir, id, self.options.fsync_every_append)?;
        let mut s = lock(&self.state);
        if let Some(last) = s.segments.back_mut() {
            last.sealed = true;
        }
        s.segments.push_back(Segment {
            id,
            len: 0,
            records: 0,
            handed: 0,
            done: 0,
            sealed: false,
        });
        *w = Writer {
            file,
            segment: id,
            offset: 0,
        };
        Ok(())
    }

    /// The next records of one kind, up to `max_records` (at least one record) and about
    /// `max_bytes`; `None` when nothing is waiting.
    pub fn next_chunk(&self, max_records: u64, max_bytes: usize) -> io::Result<Option<Chunk>> {
        let mut r = lock(&self.reader);
        r.next_chunk(self, max_records, max_bytes)
    }

    /// The backend has the chunk's records (or they were dropped and counted): they will not
    /// be sent again, and segments wholly acknowledged are deleted.
    pub fn ack(&self, chunk: &Chunk) -> io::Result<()> {
        let mut s = lock(&self.state);
        let Some((segment, records)) = s.inflight.remove(&chunk.start) else {
            return Ok(()); // acknowledged already
        };
        if let Some(seg) = s.segments.iter_mut().find(|g| g.id == segment) {
            seg.done += records;
        }
        self.save_position(&mut s)?;
        let acked = acked(&s);
        // Whole segments before the acknowledged position go. The position is made durable
        // first: a crash must never find it pointing into a deleted file's predecessor.
        let mut synced = false;
        while let Some(front) = s.segments.front() {
            if front.id >= acked.segment || !front.sealed {
                break;
            }
            if !synced {
                s.position.sync()?;
                synced = true;
            }
            let gone = s.segments.pop_front().expect("front exists");
            s.stats.bytes -= gone.len;
            std::fs::remove_file(self.segment_path(gone.id))?;
        }
        Ok(())
    }

    fn save_position(&self, s: &mut State) -> io::Result<()> {
        let saved = Saved {
            acked: acked(s),
            handed_out: s.read_at.max(s.resend_until),
        };
        s.position.write(saved)
    }

    /// Makes everything appended so far durable (the interval fsync policy).
    pub fn sync(&self) -> io::Result<()> {
        lock(&self.writer).file.sync_data()?;
        lock(&self.state).position.sync()
    }

    pub fn stats(&self) -> Stats {
        let s = lock(&self.state);
        Stats {
            records: s
                .segments
                .iter()
                .map(|g| g.records.saturating_sub(g.done))
                .sum(),
            ..s.stats
        }
    }

    /// Nothing on disk waits to be handed out.
    pub fn is_drained(&self) -> bool {
        let s = lock(&self.state);
        let at = s.read_at;
        s.segments
            .iter()
            .all(|g| g.id < at.segment || (g.id == at.segment && at.offset >= g.len) || g.len == 0)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        open::segment_path(&self.dir, id)
    }
}

/// Everything before this is acknowledged: the oldest chunk in flight, or where the reader is.
fn acked(s: &State) -> Pos {
    s.inflight
        .keys()
        .next()
        .copied()
        .unwrap_or(s.read_at)
        .min(s.read_at)
}

fn disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
