//! The queue's directory: its lock, its format, and what a previous run left in it.
//!
//! ```text
//! DIR/lock                   held (flock) while a process uses the queue
//! DIR/format                 "oxeye-queue 1": refused if it says anything else
//! DIR/position               where sending resumes (position.rs)
//! DIR/00000000000000000001.seg ...  records (record.rs), oldest first
//! ```
//!
//! Recovery reads only record headers (one small read per record), so opening a large backlog
//! takes bounded memory; every run appends to a new segment, so a torn tail left by a crash is
//! never written after, only skipped (and counted) when read.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::position::{Pos, PositionFile};
use crate::read::Reader;
use crate::record::{self, Header, HEADER};
use crate::{Options, Queue, Segment, State, Stats, Writer};

const FORMAT: &str = "oxeye-queue 1\n";

/// Why a queue directory cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process holds the directory's lock.
    Locked(PathBuf),
    /// The directory holds something else: another format, another version, other files.
    Foreign { dir: PathBuf, found: String },
    /// The directory or a file in it cannot be created, read or written.
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Locked(dir) => write!(
                f,
                "{}: the queue directory is in use by another process (its lock is held); give each oxeye its own `storage.directory`",
                dir.display()
            ),
            OpenError::Foreign { dir, found } => write!(
                f,
                "{}: not an oxeye queue of this version ({found}); point `storage.directory` at an empty or oxeye-owned directory",
                dir.display()
            ),
            OpenError::Io { path, what, error } => {
                write!(f, "{}: cannot {what}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for OpenError {}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |error| OpenError::Io { path, what, error }
}

/// Opens a file for reading and writing, creating it if needed, keeping what it holds.
fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// A new, empty segment file (and, when syncing, its directory entry made durable).
pub(crate) fn create_segment(dir: &Path, id: u64, sync: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, id))?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

impl Queue {
    /// Opens (creating it if needed) the queue in `dir` and recovers what it holds.
    pub fn open(dir: &Path, options: Options) -> Result<Queue, OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "create the directory"))?;
        let lock_path = dir.join("lock");
        let lock = open_rw(&lock_path).map_err(io_err(&lock_path, "open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err(&lock_path, "lock the lock file")(e))
            }
        }
        check_format(dir)?;
        let position_path = dir.join("position");
        let position =
            open_rw(&position_path).map_err(io_err(&position_path, "open the position file"))?;
        let (position, saved) = PositionFile::open(position)
            .map_err(io_err(&position_path, "read the position file"))?;
        let saved = saved.unwrap_or_default();
        let mut segments = VecDeque::new();
        let mut bytes = 0;
        let listed = list_segments(dir)?;
        let last_listed = listed.last().map(|(id, _)| *id);
        for (id, path) in listed {
            let len = fs::metadata(&path)
                .map_err(io_err(&path, "read a segment"))?
                .len();
            // Wholly acknowledged before the restart, or never written to.
            if id < saved.acked.segment || len == 0 {
                fs::remove_file(&path).map_err(io_err(&path, "delete a finished segment"))?;
                continue;
            }
            let from = if id == saved.acked.segment {
                saved.acked.offset
            } else {
                0
            };
            let file = File::open(&path).map_err(io_err(&path, "read a segment"))?;
            // The last one was being written: it has no seal of its own.
            let seal = seal_of(&file, len).filter(|_| Some(id) != last_listed);
            let records = match seal {
                Some(n) if from == 0 => n,
                _ => count_records(&file, from, len).map_err(io_err(&path, "read a segment"))?,
            };
            bytes += len;
            let mut segment = Segment::new(id, len, records, true);
            if seal.is_some() {
                segment.seal = record::SEAL_LEN as u64;
            }
            segments.push_back(segment);
        }
        let last = segments.back().map_or(0, |g| g.id);
        let id = last.max(saved.acked.segment) + 1;
        let file = create_segment(dir, id, true).map_err(io_err(dir, "create a segment"))?;
        segments.push_back(Segment::new(id, 0, 0, false));
        let first = segments.front().expect("one was just added");
        let read_at = if first.id == saved.acked.segment {
            saved.acked
        } else {
            Pos {
                segment: first.id,
                offset: 0,
            }
        };
        Ok(Queue {
            dir: dir.to_path_buf(),
            options,
            writer: Mutex::new(Writer {
                file,
                segment: id,
                offset: 0,
            }),
            reader: Mutex::new(Reader::default()),
            state: Mutex::new(State {
                segments,
                inflight: BTreeMap::new(),
                redo: BTreeMap::new(),
                read_at,
                resend_until: saved.handed_out,
                position,
                stats: Stats {
                    bytes,
                    ..Stats::default()
                },
            }),
            _lock: lock,
        })
    }
}

/// Refuses a directory that holds anything but an oxeye queue of this format; marks a new one.
fn check_format(dir: &Path) -> Result<(), OpenError> {
    if !format_of(dir)? {
        // Written whole or not at all: a crash must not leave an empty `format` behind.
        let path = dir.join("format");
        let tmp = dir.join("format.tmp");
        fs::write(&tmp, FORMAT)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(&path, "write the format file"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "sync the directory"))?;
    }
    Ok(())
}

/// `true` for a queue of this format, `false` for a directory without one that holds nothing
/// else (a lock file at most); refused otherwise.
fn format_of(dir: &Path) -> Result<bool, OpenError> {
    let path = dir.join("format");
    match fs::read(&path) {
        Ok(found) if found == FORMAT.as_bytes() => Ok(true),
        Ok(found) => Err(OpenError::Foreign {
            dir: dir.to_path_buf(),
            found: format!(
                "its `format` file says {:?}, this oxeye writes {:?}",
                String::from_utf8_lossy(&found[..found.len().min(40)]).trim_end(),
                FORMAT.trim_end()
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let entries = fs::read_dir(dir).map_err(io_err(dir, "list the directory"))?;
            let other = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n != "lock" && n != "format.tmp");
            match other {
                Some(name) => Err(OpenError::Foreign {
                    dir: dir.to_path_buf(),
                    found: format!("it holds `{name}` and no `format` file"),
                }),
                None => Ok(false),
            }
        }
        Err(e) => Err(io_err(&path, "read the format file")(e)),
    }
}

/// Segment files by id, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, OpenError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "list the directory"))? {
        let entry = entry.map_err(io_err(dir, "list the directory"))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((id, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The records count in a segment's seal, if it ends with an intact one.
fn seal_of(file: &File, len: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; record::SEAL_LEN];
    let at = len.checked_sub(record::SEAL_LEN as u64)?;
    file.read_exact_at(&mut b, at).ok()?;
    record::parse_seal(&b, at)
}

/// Records in a segment from `from`, by their headers; counting stops at a bad header (the
/// records after it are found, and counted, when read).
fn count_records(file: &File, mut from: u64, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    let mut b = [0u8; HEADER];
    while from + HEADER as u64 <= len {
        file.read_exact_at(&mut b, from)?;
        let Some(h) = Header::parse(&b) else { break };
        n += u64::from(h.records);
        from += HEADER as u64 + u64::from(h.len);
    }
    Ok(n)
}

/// What [`Queue::open`] would refuse, without creating or locking anything that stays (for
/// `validate`): a directory of another format or holding other files; a directory (or the
/// nearest existing one above it) where no file can be created. A lock held by a running
/// process is not checked: validating a running agent's config must not fail on it.
pub fn check(dir: &Path) -> Result<(), OpenError> {
    if dir.is_dir() {
        format_of(dir)?;
    }
    check_writable(dir)
}

/// Whether files can be created in `dir`, or (when it does not exist yet) in the nearest
/// existing directory above it; nothing is left behind.
pub fn check_writable(dir: &Path) -> Result<(), OpenError> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        return Err(OpenError::Io {
            path: at.to_path_buf(),
            what: "use it as a directory",
            error: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let probe = at.join(format!(".oxeye-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(io_err(at, "create files in it"))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Queues open in this process by directory: a component rebuilt by a config reload takes over
/// its predecessor's queue (the lock keeps other processes out, not this one).
static OPEN: Mutex<Vec<(PathBuf, std::sync::Weak<Queue>)>> = Mutex::new(Vec::new());

impl Queue {
    /// [`Queue::open`], or the queue this process already has open in `dir` (then with the
    /// options it was opened with).
    pub fn open_shared(dir: &Path, options: Options) -> Result<std::sync::Arc<Queue>, OpenError> {
        let mut open = crate::lock(&OPEN);
        open.retain(|(_, q)| q.strong_count() > 0);
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if let Some(q) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, q)| q.upgrade())
        {
            return Ok(q);
        }
        let q = std::sync::Arc::new(Queue::open(dir, options)?);
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        open.push((key, std::sync::Arc::downgrade(&q)));
        Ok(q)
    }
}
