//! A persistent sending queue: records appended to segment files, handed out to senders in
//! order, and deleted a whole segment at a time once every record in it is acknowledged.
//!
//! - `record.rs`: a record's header and checksum.
//! - `position.rs`: the acknowledged position, kept across restarts.
//! - `open.rs`: the directory (lock, format) and recovery of what a previous run left.
//! - `read.rs`: reading records back, skipping and counting corrupt ones.
//! - `config.rs`: the settings exporters take (`storage`, `when_full`).
//! - `asynch.rs`: [`Disk`], the queue as an exporter uses it on an async runtime.
//!
//! [`Queue`] blocks on the disk: [`Disk`] runs it on blocking threads.
//! A process killed at any point loses nothing that `append` returned for (the page cache
//! outlives the process); with `fsync_every_append` nothing is lost to a power cut either.

mod asynch;
mod config;
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

pub use asynch::{blocking, Disk, Pending};
pub use config::{Fsync, StorageConfig, WhenFull};
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
    /// No room (`max_size`, or the disk itself when `disk_full`); nothing written, though
    /// `dropped` older records may have been deleted trying.
    Full { disk_full: bool, dropped: u64 },
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
    /// Bytes of the seal record at its end (0 when it has none): a reader before it has read
    /// every record.
    seal: u64,
}

impl Segment {
    fn new(id: u64, len: u64, records: u64, sealed: bool) -> Segment {
        Segment {
            id,
            len,
            records,
            handed: 0,
            done: 0,
            sealed,
            seal: 0,
        }
    }
}

struct State {
    segments: VecDeque<Segment>,
    /// Chunks handed out and not acknowledged: start → where they are.
    inflight: BTreeMap<Pos, Span>,
    /// Chunks handed out and given back unsent ([`Queue::unread`]): read again first.
    redo: BTreeMap<Pos, Span>,
    /// The reader's next position.
    read_at: Pos,
    /// Handed out before the last restart: chunks starting before this may be duplicates.
    resend_until: Pos,
    position: PositionFile,
    stats: Stats,
}

/// Where a chunk's records are: a segment, the end of the last record, how many.
#[derive(Clone, Copy, Debug)]
struct Span {
    segment: u64,
    end: u64,
    records: u64,
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
        if kind == record::SEAL {
            return Err(io::Error::other("record kind 0xFF is the queue's own"));
        }
        let header = record::Header::new(kind, records, payload);
        let need = (record::HEADER + payload.len()) as u64;
        let mut w = lock(&self.writer);
        let mut dropped = 0;
        loop {
            let mut s = lock(&self.state);
            // A record larger than `max_size` goes when nothing else is left. Room is kept for
            // the seal the segment being written gets when it is sealed.
            let seal = record::SEAL_LEN as u64;
            if s.stats.bytes + need + seal <= self.options.max_size || s.stats.bytes == 0 {
                break;
            }
            if make_room {
                if let Some(n) = self.drop_oldest(&mut s, w.segment) {
                    dropped += n;
                    continue;
                }
            }
            if w.offset == 0 {
                return Ok(Appended::Full {
                    disk_full: false,
                    dropped,
                });
            }
            // Seal the segment being written: once acknowledged (or, with `make_room`, at
            // once) it can go; only sealed segments are ever deleted.
            drop(s);
            if let Err(e) = self.rotate(&mut w) {
                return full_or(e, dropped);
            }
            self.collect(&mut lock(&self.state))?;
        }
        if w.offset > 0 && w.offset + need > self.options.segment_size {
            if let Err(e) = self.rotate(&mut w) {
                return full_or(e, dropped);
            }
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
            return full_or(e, dropped);
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
        // The seal is optional: when it cannot be written, recovery counts the records itself.
        let records = lock(&self.state).segments.back().map_or(0, |g| g.records);
        let seal = record::seal(records, w.offset);
        let sealed = w.file.write_all_at(&seal, w.offset).is_ok();
        let unseal = |w: &mut Writer| {
            let _ = w.file.set_len(w.offset);
        };
        if !sealed {
            unseal(w);
        }
        // What the interval sync has not reached yet in the old file is not left to writeback.
        let id = w.segment + 1;
        let file = match w
            .file
            .sync_data()
            .and_then(|()| open::create_segment(&self.dir, id, true))
        {
            Ok(f) => f,
            Err(e) => {
                unseal(w); // the segment goes on being written
                return Err(e);
            }
        };
        let mut s = lock(&self.state);
        if let Some(last) = s.segments.back_mut() {
            last.sealed = true;
            if sealed {
                last.seal = seal.len() as u64;
                last.len += seal.len() as u64;
                s.stats.bytes += seal.len() as u64;
            }
        }
        s.segments.push_back(Segment::new(id, 0, 0, false));
        *w = Writer {
            file,
            segment: id,
            offset: 0,
        };
        Ok(())
    }

    /// The next records of one kind, up to `max_records` (at least one record) and about
    /// `max_bytes`, several only of a kind that is `joinable`; `None` when nothing is waiting.
    /// Chunks given back with [`Queue::unread`] come first.
    pub fn next_chunk(
        &self,
        max_records: u64,
        max_bytes: usize,
        joinable: &dyn Fn(u8) -> bool,
    ) -> io::Result<Option<Chunk>> {
        let mut r = lock(&self.reader);
        r.next_chunk(self, max_records, max_bytes, joinable)
    }

    /// The backend has the chunk's records (or they were dropped and counted): they will not
    /// be sent again, and segments wholly acknowledged are deleted.
    pub fn ack(&self, chunk: &Chunk) -> io::Result<()> {
        let mut s = lock(&self.state);
        let Some(span) = s.inflight.remove(&chunk.start) else {
            return Ok(()); // acknowledged already
        };
        if let Some(seg) = s.segments.iter_mut().find(|g| g.id == span.segment) {
            seg.done += span.records;
        }
        self.collect(&mut s)
    }

    /// The chunk was not sent (its sender stopped): it is handed out again, first.
    pub fn unread(&self, chunk: &Chunk) {
        let mut s = lock(&self.state);
        if let Some(span) = s.inflight.remove(&chunk.start) {
            s.redo.insert(chunk.start, span);
        }
    }

    /// Saves the position and deletes the sealed segments wholly before it. The position is
    /// made durable first: a crash must never find it pointing at a deleted file's successor
    /// with the file's records unacknowledged.
    fn collect(&self, s: &mut State) -> io::Result<()> {
        self.save_position(s)?;
        let acked = acked(s);
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

/// Everything before this is acknowledged: the oldest chunk in flight or given back, or where
/// the reader is. The end of a sealed segment is the start of the next.
fn acked(s: &State) -> Pos {
    let p = [s.inflight.keys().next(), s.redo.keys().next()]
        .into_iter()
        .flatten()
        .copied()
        .fold(s.read_at, Pos::min);
    match s.segments.iter().position(|g| g.id == p.segment) {
        Some(i) if s.segments[i].sealed && p.offset + s.segments[i].seal >= s.segments[i].len => {
            s.segments.get(i + 1).map_or(p, |g| Pos {
                segment: g.id,
                offset: 0,
            })
        }
        _ => p,
    }
}

/// A failed write: `Full` when the disk is full, else the error.
fn full_or(e: io::Error, dropped: u64) -> io::Result<Appended> {
    if disk_full(&e) {
        Ok(Appended::Full {
            disk_full: true,
            dropped,
        })
    } else {
        Err(e)
    }
}

fn disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
