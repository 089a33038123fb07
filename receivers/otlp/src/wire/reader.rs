//! Protobuf's wire format, read: varints, keys, length-delimited and fixed fields, skipping
//! unknown fields; and what makes bytes not a protobuf message.

use oxeye_otlp_wire::{END_GROUP, I32, I64, LEN, START_GROUP, VARINT};

pub(super) type Result<T> = std::result::Result<T, WireError>;

/// Why a request is not an OTLP message (prost refuses each of these too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A varint runs past the end of its message.
    #[error("a varint runs past the end of its message")]
    VarintPastEnd,
    /// A 10-byte varint with more than 64 bits.
    #[error("a varint overflows 64 bits")]
    VarintOverflow,
    /// A varint of more than 10 bytes.
    #[error("a varint is longer than 10 bytes")]
    VarintTooLong,
    /// Field number 0, or above 2^29 - 1.
    #[error("invalid field number {0}")]
    InvalidField(u64),
    /// A length-delimited field longer than what is left of its message.
    #[error("a length-delimited field runs past the end of its message")]
    LenPastEnd,
    /// A fixed-size field longer than what is left of its message.
    #[error("a fixed-size field runs past the end of its message")]
    FixedPastEnd,
    /// Wire types 6 and 7 do not exist.
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    /// Unknown groups nested deeper than [`MAX_NESTING`].
    #[error("groups are nested deeper than {MAX_NESTING}")]
    GroupsTooDeep,
    /// A group's end with another field number than its start.
    #[error("a group ends with another field's number")]
    GroupMismatch,
    /// A group's end without its start.
    #[error("a group ends that was not started")]
    GroupNotStarted,
    /// A known field with another wire type than its own.
    #[error("field {field} of {message} has wire type {wire}, not its own")]
    WrongType {
        /// The message, as the protos name it (`Span`, `KeyValue`, ...).
        message: &'static str,
        /// The field number.
        field: u32,
        /// The wire type it came with.
        wire: u8,
    },
    /// A string field that is not UTF-8.
    #[error("a string field is not valid UTF-8")]
    InvalidUtf8,
    /// Arrays and maps nested deeper than [`MAX_NESTING`].
    #[error("values are nested deeper than {MAX_NESTING}")]
    ValuesTooDeep,
}

/// Arrays and maps (and unknown groups) nested deeper than this are refused: a request of a few
/// MiB could otherwise nest values a million deep and overflow the stack. (prost's recursion
/// limit, also 100, counts every message level from the request down, so it refuses values
/// about 48 arrays deep inside a span; this decoder takes up to 100.)
pub(super) const MAX_NESTING: usize = 100;

/// A cursor over one message's bytes.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline(always)]
    pub(super) fn more(&self) -> bool {
        self.pos < self.buf.len()
    }

    #[inline(always)]
    pub(super) fn varint(&mut self) -> Result<u64> {
        // One byte: most keys, lengths and small numbers; kept inline, the rest out of line.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b.into());
            }
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::VarintPastEnd);
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(WireError::VarintOverflow);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError::VarintTooLong)
    }

    /// The next field's number and wire type.
    #[inline(always)]
    pub(super) fn key(&mut self) -> Result<(u32, u8)> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(WireError::InvalidField(field));
        }
        Ok((field as u32, (k & 7) as u8))
    }

    #[inline(always)]
    pub(super) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::LenPastEnd)?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or(WireError::FixedPastEnd)?;
        self.pos += N;
        Ok(b.try_into().expect("N bytes"))
    }

    pub(super) fn fixed64(&mut self) -> Result<u64> {
        self.fixed::<8>().map(u64::from_le_bytes)
    }

    pub(super) fn fixed32(&mut self) -> Result<u32> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    /// Skips a field this decoder does not know. Groups are skipped with a stack of the open
    /// ones' field numbers, not by recursion: a small request of nested group starts must not
    /// overflow the stack; more than [`MAX_NESTING`] open at once are refused.
    pub(super) fn skip(&mut self, field: u32, wire: u8) -> Result<()> {
        let mut open: Vec<u32> = Vec::new();
        let (mut field, mut wire) = (field, wire);
        loop {
            match wire {
                VARINT => self.varint().map(drop)?,
                I64 => self.fixed::<8>().map(drop)?,
                LEN => self.bytes().map(drop)?,
                I32 => self.fixed::<4>().map(drop)?,
                START_GROUP => {
                    if open.len() >= MAX_NESTING {
                        return Err(WireError::GroupsTooDeep);
                    }
                    open.push(field);
                }
                END_GROUP => match open.pop() {
                    Some(f) if f == field => {}
                    Some(_) => return Err(WireError::GroupMismatch),
                    None => return Err(WireError::GroupNotStarted),
                },
                w => return Err(WireError::InvalidWireType(w)),
            }
            if open.is_empty() {
                return Ok(());
            }
            (field, wire) = self.key()?;
        }
    }
}

/// Checks a string field, as prost does. simdutf8 rather than `std::str::from_utf8`: log
/// bodies are long strings, and std's check was 6 % of a logs gateway's CPU.
#[inline]
pub(super) fn utf8(b: &[u8]) -> Result<&str> {
    simdutf8::basic::from_utf8(b).map_err(|_| WireError::InvalidUtf8)
}

/// How many length-delimited fields `field` a message holds (a sizing hint: a message that
/// cannot be read stops the count, and the real pass reports why).
pub(super) fn count(buf: &[u8], field: u32) -> usize {
    let mut r = Reader::new(buf);
    let mut n = 0;
    while r.more() {
        let Ok((f, w)) = r.key() else { break };
        n += usize::from(f == field && w == LEN);
        if r.skip(f, w).is_err() {
            break;
        }
    }
    n
}
