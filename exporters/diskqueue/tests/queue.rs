//! The queue through its public API, on real files: restarts, torn tails, flipped bytes, a
//! full queue, a locked or foreign directory.

#![allow(clippy::unwrap_used)] // helpers of tests, as clippy.toml allows in tests themselves

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use oxeye_diskqueue::{Appended, OpenError, Options, Queue};

fn options(max_size: u64) -> Options {
    Options {
        max_size,
        segment_size: 4096,
        fsync_every_append: false,
    }
}

/// Record `i`: kind 1, `i % 3 + 1` records, payload naming `i`.
fn payload(i: u32) -> Vec<u8> {
    format!("record {i:05} ")
        .repeat(1 + (i % 7) as usize)
        .into_bytes()
}

fn fill(q: &Queue, n: u32) {
    for i in 0..n {
        let got = q.append(1, i % 3 + 1, &payload(i), false).unwrap();
        assert_eq!(got, Appended::Written { dropped: 0 });
    }
}

/// Every record's index found in the chunks' bytes, acknowledging each chunk.
fn drain(q: &Queue) -> Vec<u32> {
    let mut seen = Vec::new();
    while let Some(c) = q.next_chunk(1000, 1 << 20, &|_| true).unwrap() {
        let text = String::from_utf8(c.bytes.clone()).unwrap();
        let mut last = None;
        for word in text.split("record ").filter(|w| !w.is_empty()) {
            let i: u32 = word.trim().parse().unwrap();
            if last != Some(i) {
                seen.push(i);
                last = Some(i);
            }
        }
        q.ack(&c).unwrap();
    }
    seen
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn records_come_back_in_order_and_acknowledged_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    fill(&q, 200);
    assert!(segments(dir.path()).len() > 3, "several segments written");
    let s = q.stats();
    assert_eq!(
        s.records,
        (0..200u32).map(|i| u64::from(i % 3 + 1)).sum::<u64>()
    );
    assert_eq!(drain(&q), (0..200).collect::<Vec<_>>());
    assert!(q.is_drained());
    assert_eq!(q.stats().records, 0);
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the segment being written is left"
    );
}

#[test]
fn a_restart_resends_only_what_was_in_flight_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        fill(&q, 100);
        // Three chunks: the first acknowledged, two in flight when the process dies.
        let a = q.next_chunk(10, 1 << 20, &|_| true).unwrap().unwrap();
        q.ack(&a).unwrap();
        let b = q.next_chunk(10, 1 << 20, &|_| true).unwrap().unwrap();
        let _c = q.next_chunk(10, 1 << 20, &|_| true).unwrap().unwrap();
        let first_unacked = b.records;
        assert!(first_unacked > 0);
        std::mem::forget(q); // as kill -9: nothing runs at exit
    }
    // The lock died with the "process" only if the file is closed: a forgotten queue keeps it.
    // Release it the way the kernel would at exit.
    release_locks(dir.path());
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    let seen = drain(&q);
    let s = q.stats();
    assert!(
        s.resent > 0,
        "the two chunks in flight are counted as resent"
    );
    let unique: BTreeSet<u32> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice within a run");
    // Nothing acknowledged comes back; nothing unacknowledged is missing.
    let first = *seen.first().unwrap();
    assert_eq!(seen, (first..100).collect::<Vec<_>>());
    assert!(
        first > 0 && first < 10,
        "resumes inside the acknowledged range's end: {first}"
    );
}

/// `mem::forget` leaks the lock's file descriptor; close the descriptors of this process that
/// point at `dir`'s `lock` file, as exit would (other tests' queues are left alone).
fn release_locks(dir: &Path) {
    let lock = dir.join("lock");
    for fd in fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
    {
        if let Ok(target) = fs::read_link(fd.path()) {
            if target == lock {
                let fd: i32 = fd.file_name().to_str().unwrap().parse().unwrap();
                // SAFETY: the descriptor belongs to a leaked File nobody uses again.
                drop(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
        }
    }
}

#[test]
fn a_torn_tail_at_any_offset_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        fill(&q, 30);
    }
    let seg = segments(dir.path())[0].clone();
    let whole = fs::read(&seg).unwrap();
    let original = dir.path().join("original");
    fs::copy(&seg, &original).unwrap();
    for cut in (1..whole.len()).step_by(37) {
        fs::copy(&original, &seg).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        let seen = q_read_all(&q);
        let s = q.stats();
        // The records wholly before the cut all come back; the cut one is counted.
        let whole_before = records_ending_before(&whole, cut);
        assert_eq!(seen, (0..whole_before).collect::<Vec<_>>(), "cut at {cut}");
        let torn = usize::from(record_starts(&whole).contains(&cut)).abs_diff(1) as u64;
        assert_eq!(s.corrupt, torn, "cut at {cut}");
        drop(q);
        // Leave only the first segment for the next round.
        for extra in segments(dir.path()).into_iter().skip(1) {
            fs::remove_file(extra).unwrap();
        }
        fs::write(dir.path().join("position"), b"").unwrap();
    }
}

/// Reads without acknowledging (the next round starts from the same files).
fn q_read_all(q: &Queue) -> Vec<u32> {
    let mut seen = Vec::new();
    while let Some(c) = q.next_chunk(1, 1 << 20, &|_| true).unwrap() {
        let text = String::from_utf8(c.bytes).unwrap();
        let i: u32 = text
            .split("record ")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        seen.push(i);
    }
    seen
}

fn record_starts(seg: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut v = Vec::new();
    while at + 20 <= seg.len() {
        v.push(at);
        let len = u32::from_le_bytes(seg[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 20 + len;
    }
    v.push(at);
    v
}

fn records_ending_before(seg: &[u8], cut: usize) -> u32 {
    let starts = record_starts(seg);
    starts.windows(2).filter(|w| w[1] <= cut).count() as u32
}

#[test]
fn a_flipped_byte_costs_one_record_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        fill(&q, 20);
    }
    let seg = segments(dir.path())[0].clone();
    let whole = fs::read(&seg).unwrap();
    let starts = record_starts(&whole);
    // Every byte of record 5 in turn, header included.
    for byte in starts[5]..starts[6] {
        let mut bad = whole.clone();
        bad[byte] ^= 0x5a;
        fs::write(&seg, &bad).unwrap();
        fs::write(dir.path().join("position"), b"").unwrap();
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        let seen = q_read_all(&q);
        let expected: Vec<u32> = (0..20).filter(|&i| i != 5).collect();
        assert_eq!(seen, expected, "flip at {byte}");
        assert_eq!(q.stats().corrupt, 1, "flip at {byte}");
        drop(q);
        for extra in segments(dir.path()).into_iter().skip(1) {
            fs::remove_file(extra).unwrap();
        }
    }
}

#[test]
fn a_full_queue_refuses_or_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), options(16 << 10)).unwrap();
    let mut i = 0;
    while matches!(
        q.append(1, 1, &payload(i), false).unwrap(),
        Appended::Written { .. }
    ) {
        i += 1;
    }
    assert!(q.stats().bytes <= 16 << 10);
    assert!(i > 10);
    // drop_oldest: room is made a segment at a time and every unsent record counted.
    let mut dropped = 0;
    for j in 0..50 {
        match q.append(1, 1, &payload(i + j), true).unwrap() {
            Appended::Written { dropped: d } => dropped += d,
            Appended::Full { .. } => panic!("drop_oldest makes room"),
        }
    }
    assert!(dropped > 0);
    assert_eq!(q.stats().dropped_oldest, dropped);
    assert!(q.stats().bytes <= 16 << 10);
    let seen = drain(&q);
    assert_eq!(
        seen.len() as u64 + dropped,
        u64::from(i) + 50,
        "kept + dropped = written"
    );
    assert_eq!(*seen.last().unwrap(), i + 49, "the newest are kept");
}

#[test]
fn a_second_process_and_a_foreign_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    let err = Queue::open(dir.path(), options(1 << 20)).err().unwrap();
    assert!(matches!(err, OpenError::Locked(_)), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );

    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("data.db"), b"not ours").unwrap();
    let err = Queue::open(other.path(), options(1 << 20)).err().unwrap();
    assert!(err.to_string().contains("`data.db`"), "{err}");
    assert!(fs::read(other.path().join("data.db")).unwrap() == b"not ours");

    let newer = tempfile::tempdir().unwrap();
    fs::write(newer.path().join("format"), "oxeye-queue 2\n").unwrap();
    let err = Queue::open(newer.path(), options(1 << 20)).err().unwrap();
    assert!(err.to_string().contains("oxeye-queue 2"), "{err}");
}

#[test]
fn chunks_hold_one_kind_and_at_most_max_records() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    for (kind, n) in [(1, 4), (1, 4), (1, 4), (2, 1), (1, 4)] {
        q.append(kind, n, b"x", false).unwrap();
    }
    let mut got = Vec::new();
    while let Some(c) = q.next_chunk(8, 1 << 20, &|_| true).unwrap() {
        got.push((c.kind, c.records, c.bytes.len()));
        q.ack(&c).unwrap();
    }
    assert_eq!(got, vec![(1, 8, 2), (1, 4, 1), (2, 1, 1), (1, 4, 1)]);
}

/// A queue of 1 MiB (the least `max_size`), whose segments are 1 MiB too; and its size.
fn one_segment_queue(dir: &Path) -> (Queue, u64) {
    let max = 1 << 20;
    let options = Options {
        max_size: max,
        segment_size: Options::segment_size_for(max),
        fsync_every_append: false,
    };
    (Queue::open(dir, options).unwrap(), max)
}

#[test]
fn a_queue_of_one_segment_frees_room_once_acknowledged() {
    // max_size 1 MiB gives segments of 1 MiB: the one being written must be sealed to go.
    let dir = tempfile::tempdir().unwrap();
    let (q, max) = one_segment_queue(dir.path());
    let payload = vec![7u8; 10_000];
    for round in 0..5 {
        let mut written = 0;
        while let Appended::Written { .. } = q.append(1, 1, &payload, false).unwrap() {
            written += 1;
        }
        assert!(written > 50, "round {round}: only {written} fit");
        let mut read = 0;
        while let Some(c) = q.next_chunk(1000, 1 << 20, &|_| true).unwrap() {
            read += c.records;
            q.ack(&c).unwrap();
        }
        assert_eq!(read, written, "round {round}");
        // Everything acknowledged: the next append fits again.
        assert_eq!(
            q.append(1, 1, &payload, false).unwrap(),
            Appended::Written { dropped: 0 },
            "round {round}"
        );
        let c = q.next_chunk(1000, 1 << 20, &|_| true).unwrap().unwrap();
        q.ack(&c).unwrap();
        assert!(q.stats().bytes <= max, "round {round}: {:?}", q.stats());
    }
}

#[test]
fn a_chunk_given_back_is_handed_out_again_first() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    fill(&q, 10);
    let a = q.next_chunk(2, 1 << 20, &|_| true).unwrap().unwrap();
    let b = q.next_chunk(2, 1 << 20, &|_| true).unwrap().unwrap();
    q.unread(&a);
    let again = q.next_chunk(2, 1 << 20, &|_| true).unwrap().unwrap();
    assert_eq!(again.bytes, a.bytes);
    assert_eq!(again.resent, a.records);
    q.ack(&again).unwrap();
    q.ack(&b).unwrap();
    let rest = drain(&q);
    assert!(!rest.is_empty() && !rest.contains(&0), "{rest:?}");
}

#[test]
fn kinds_that_cannot_be_joined_go_one_record_a_chunk_and_empty_records_join_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    for (kind, n) in [(4, 3), (4, 3), (2, 0), (3, 2), (3, 2)] {
        q.append(kind, n, b"y", false).unwrap();
    }
    let mut got = Vec::new();
    while let Some(c) = q.next_chunk(100, 1 << 20, &|k| k != 4).unwrap() {
        got.push((c.kind, c.records, c.bytes.len()));
        q.ack(&c).unwrap();
    }
    assert_eq!(got, vec![(4, 3, 1), (4, 3, 1), (2, 0, 1), (3, 4, 2)]);
}

/// A seal record (kind 0xFF) holding `records`, written at `at`, as the queue writes one.
fn seal(records: u64, at: u64) -> Vec<u8> {
    let mut payload = records.to_le_bytes().to_vec();
    payload.extend_from_slice(&at.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&0u32.to_le_bytes());
    crc.update(&[0xFF, 0, 0, 0]);
    crc.update(&payload);
    let mut v = b"OXQR".to_vec();
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&[0xFF, 0, 0, 0]);
    v.extend_from_slice(&crc.finalize().to_le_bytes());
    v.extend_from_slice(&payload);
    v
}

#[test]
fn a_sealed_segment_is_counted_from_its_seal_and_a_damaged_seal_by_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300;
    let records: u64 = (0..n).map(|i| u64::from(i % 3 + 1)).sum();
    {
        let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
        fill(&q, n);
        assert_eq!(q.stats().records, records);
    }
    let segs = segments(dir.path());
    assert!(segs.len() > 3, "{} segments", segs.len());
    // Every segment but the one being written ends with a seal of its records.
    let mut sealed = 0;
    for s in &segs[..segs.len() - 1] {
        let b = fs::read(s).unwrap();
        let starts = record_starts(&b);
        let in_it: u64 = starts
            .windows(2)
            .filter(|w| b[w[0] + 12] == 1)
            .map(|w| {
                u64::from(u32::from_le_bytes(
                    b[w[0] + 8..w[0] + 12].try_into().unwrap(),
                ))
            })
            .sum();
        let at = b.len() as u64 - 36;
        assert_eq!(b[b.len() - 36..], seal(in_it, at)[..], "{}", s.display());
        sealed += in_it;
    }
    assert!(sealed > 0 && sealed < records);

    // The count comes from the seal: a forged one shows (recovery read no other header).
    let first = fs::read(&segs[0]).unwrap();
    let at = first.len() - 36;
    let honest = u64::from_le_bytes(first[at + 20..at + 28].try_into().unwrap());
    let mut forged = first.clone();
    forged[at..].copy_from_slice(&seal(honest + 1000, at as u64));
    fs::write(&segs[0], &forged).unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(q.stats().records, records + 1000);
    drop(q);

    // A damaged seal: that segment is counted by reading it; every record is read back, the
    // seal is one corrupt stretch, no seal is handed out as a record.
    let mut damaged = first;
    damaged[at + 22] ^= 0x5a;
    fs::write(&segs[0], &damaged).unwrap();
    let q = Queue::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(q.stats().records, records);
    assert_eq!(q_read_all(&q), (0..n).collect::<Vec<_>>());
    assert_eq!(q.stats().corrupt, 1);
}

#[test]
fn a_caught_up_reader_lets_the_sealed_segment_go_when_room_is_needed() {
    // Everything read and acknowledged, the segment being written still counts against
    // max_size until it is sealed; sealing it to make room must free it at once (the reader
    // is at its seal, not before it).
    let dir = tempfile::tempdir().unwrap();
    let (q, max) = one_segment_queue(dir.path());
    let payload = vec![7u8; 10_000];
    let mut written = 0;
    while let Appended::Written { .. } = q.append(1, 1, &payload, false).unwrap() {
        written += 1;
        // Stop just short of full: the next one needs the segment sealed and freed.
        if q.stats().bytes + 10_100 > max {
            break;
        }
    }
    assert!(written > 90, "{written}");
    while let Some(c) = q.next_chunk(1000, 1 << 20, &|_| true).unwrap() {
        q.ack(&c).unwrap();
    }
    for i in 0..30 {
        assert_eq!(
            q.append(1, 1, &payload, false).unwrap(),
            Appended::Written { dropped: 0 },
            "append {i} after everything was acknowledged"
        );
    }
    assert_eq!(q.stats().records, 30);
}
