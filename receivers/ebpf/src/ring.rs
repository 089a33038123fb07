//! A BPF ring-buffer reader that hands its position back to the kernel once per batch.
//!
//! aya's `RingBuf` (like libbpf's) stores the consumer position after every record. The
//! programs' `bpf_ringbuf_reserve` reads that position on every record, so while the reader
//! drains, each record the programs write misses on a cache line the reader keeps writing from
//! another CPU: the span exit program ran 40–80 ns longer at ~2.5 M spans/s (the span benchmark,
//! BPF run-time statistics). Here the position is published every
//! [`PUBLISH_EVERY`] records and at the end of each drain, so the line stays shared. The
//! programs always pass `BPF_RB_NO_WAKEUP` or `BPF_RB_FORCE_WAKEUP`, so no wakeup depends on
//! the consumer position being current.
//!
//! Layout (kernel/bpf/ringbuf.c, stable since 5.8): page 0, the consumer position, mapped
//! read-write; from page 1, the producer position page then the data pages mapped twice in a
//! row (a record that wraps reads as contiguous), read-only. Each record: a u32 length with
//! the busy (31) and discard (30) bits, a u32 page offset, then the data, 8-byte aligned.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use aya::maps::{Map, MapData};
use tokio::io::unix::AsyncFd;

use crate::ProbeError;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;
/// Records between two stores of the consumer position (and so space given back to the
/// programs): 1 024 records of a few hundred bytes is a small part of any ring size allowed.
const PUBLISH_EVERY: usize = 1024;

/// Reads one ring-buffer map.
pub struct Ring {
    map: MapData,
    consumer: *mut u8,
    producer: *mut u8,
    page: usize,
    mask: usize,
    /// Next record to read.
    pos: usize,
    /// The producer position last read.
    produced: usize,
}

// SAFETY: the mappings belong to this value only. Through `&Ring` only the fd is reachable
// (reading and publishing positions take `&mut self`), so sharing it is sound too.
unsafe impl Send for Ring {}
// SAFETY: see above.
unsafe impl Sync for Ring {}

impl Ring {
    /// Takes ring buffer map `name` out of `ebpf`, maps it, and watches it for wakeups.
    pub fn watch(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<AsyncFd<Ring>, ProbeError> {
        let ring = Ring::new(ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?)?;
        // SAFETY: the Ring owns its fd for as long as the AsyncFd owns the Ring.
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(
            |e| ProbeError::Syscall {
                what: format!("watching ring buffer {name}"),
                io_error: e.into_parts().1,
            },
        )
    }

    /// Maps the ring of `map` (a `BPF_MAP_TYPE_RINGBUF`).
    pub fn new(map: Map) -> Result<Ring, ProbeError> {
        let Map::RingBuf(map) = map else {
            return Err(ProbeError::Kernel("not a ring buffer map".into()));
        };
        let size = map
            .info()
            .map_err(|source| ProbeError::Map {
                what: "ring buffer info".into(),
                source,
            })?
            .max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = mmap(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(fd, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above, with this length.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        let mut ring = Ring {
            map,
            consumer,
            producer,
            page,
            mask: size - 1,
            pos: 0,
            produced: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.produced = ring.pos;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: page 0 of the map is the consumer position, an aligned unsigned long.
        unsafe { &*(self.consumer as *const AtomicUsize) }
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the first mapped page of the producer area starts with its position.
        // Acquire pairs with the kernel's release store: the records before it are visible.
        unsafe { &*(self.producer as *const AtomicUsize) }.load(Ordering::Acquire)
    }

    /// Calls `f` with each committed record, up to `max` of them (discarded records are
    /// skipped, not counted); returns how many. Stops at a record still being written.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let data = self.producer.wrapping_add(self.page);
        let mut n = 0;
        let mut unpublished = 0;
        while n < max {
            if self.pos == self.produced {
                self.produced = self.producer_pos();
                if self.pos == self.produced {
                    break;
                }
            }
            let offset = self.pos & self.mask;
            // SAFETY: offset < size; the data is mapped twice, so a header, and the record
            // after it, are readable up to `size` bytes past any offset.
            let header = unsafe { &*(data.add(offset) as *const AtomicU32) };
            // Acquire pairs with the kernel's commit (an xchg clearing the busy bit).
            let len_word = header.load(Ordering::Acquire);
            if len_word & BUSY != 0 {
                break;
            }
            let len = (len_word & !(BUSY | DISCARD)) as usize;
            if len_word & DISCARD == 0 {
                // SAFETY: as above; a committed record's data is `len` bytes after its header.
                let record = unsafe { std::slice::from_raw_parts(data.add(offset + HEADER), len) };
                f(record);
                n += 1;
            }
            self.pos += (HEADER + len).next_multiple_of(8);
            unpublished += 1;
            if unpublished == PUBLISH_EVERY {
                self.publish();
                unpublished = 0;
            }
        }
        if unpublished > 0 {
            self.publish();
        }
        n
    }

    /// Gives the space read so far back to the programs. Release: the reads of those records
    /// happen before the kernel may reuse their storage.
    fn publish(&self) {
        self.consumer_pos().store(self.pos, Ordering::Release);
    }
}

fn mmap(fd: RawFd, len: usize, prot: i32, offset: usize) -> Result<*mut u8, ProbeError> {
    // SAFETY: a fresh shared mapping of the map's fd; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(ProbeError::Syscall {
            what: "mapping the ring buffer".into(),
            io_error: std::io::Error::last_os_error(),
        });
    }
    Ok(p.cast())
}

impl Drop for Ring {
    fn drop(&mut self) {
        let size = self.mask + 1;
        // SAFETY: both were mapped in `new` with these lengths and are not used after this.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * size);
        }
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}
