//! One record in a segment file: a fixed header, then the payload.
//!
//! ```text
//! magic u32 | len u32 | records u32 | kind u8 | 3 zero bytes | crc32 u32 | payload (len bytes)
//! ```
//!
//! The checksum covers `records`, `kind`, the padding and the payload, so a flipped byte
//! anywhere but in `magic` or `len` fails it; a bad `magic` or `len` is found by the search
//! for the next record, which needs both the magic and a matching checksum.

/// The kind of the record that closes a sealed segment: its payload is the number of records
/// before it and where it starts (two u64, little-endian), so that recovery need not read every
/// header of a backlog (1.5 s of a cold 2 GB one). Never handed out; a segment without one is
/// counted by reading.
pub const SEAL: u8 = 0xFF;

/// The seal record of a segment of `records` records in its first `at` bytes.
pub fn seal(records: u64, at: u64) -> Vec<u8> {
    let mut payload = records.to_le_bytes().to_vec();
    payload.extend_from_slice(&at.to_le_bytes());
    let mut v = Header::new(SEAL, 0, &payload).to_bytes().to_vec();
    v.extend_from_slice(&payload);
    v
}

/// Bytes of a seal record.
pub const SEAL_LEN: usize = HEADER + 16;

/// The records count a seal record holds, if `b` is one, intact, and says it starts at `at`
/// (so a record's payload that merely ends in a seal's bytes is not taken for one).
pub fn parse_seal(b: &[u8; SEAL_LEN], at: u64) -> Option<u64> {
    let h = Header::parse(b[..HEADER].try_into().expect("a header"))?;
    let payload = &b[HEADER..];
    let u = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    (h.kind == SEAL && h.matches(payload) && u(8) == at).then(|| u(0))
}

/// Little-endian "OXQR".
pub const MAGIC: u32 = u32::from_le_bytes(*b"OXQR");
pub const HEADER: usize = 20;

/// A record's header, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub records: u32,
    pub kind: u8,
    pub crc: u32,
}

impl Header {
    /// The header for this payload.
    pub fn new(kind: u8, records: u32, payload: &[u8]) -> Header {
        let mut h = Header {
            len: payload.len() as u32,
            records,
            kind,
            crc: 0,
        };
        h.crc = h.checksum(payload);
        h
    }

    pub fn to_bytes(self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..12].copy_from_slice(&self.records.to_le_bytes());
        b[12] = self.kind;
        b[16..20].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// `None` when the magic is wrong or the padding is not zero.
    pub fn parse(b: &[u8; HEADER]) -> Option<Header> {
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if u(0) != MAGIC || b[13..16] != [0, 0, 0] {
            return None;
        }
        Some(Header {
            len: u(4),
            records: u(8),
            kind: b[12],
            crc: u(16),
        })
    }

    fn checksum(&self, payload: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.records.to_le_bytes());
        h.update(&[self.kind, 0, 0, 0]);
        h.update(payload);
        h.finalize()
    }

    /// Whether `payload` is the one this header was written for.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && self.checksum(payload) == self.crc
    }
}

/// Where the magic of a record may start in `buf`, at or after `from`.
pub fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    buf.get(from..)?
        .windows(4)
        .position(|w| w == magic)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(kind: u8, n: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header::new(kind, n, payload).to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_header_round_trips_and_checks_its_payload() {
        let h = Header::new(3, 17, b"hello");
        let parsed = Header::parse(&h.to_bytes()).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.matches(b"hello"));
        assert!(!parsed.matches(b"hellp"));
        assert!(!parsed.matches(b"hell"));
    }

    #[test]
    fn every_single_flipped_bit_is_caught() {
        let rec = framed(1, 5, b"some payload bytes");
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                let intact = Header::parse(bad[..HEADER].try_into().unwrap())
                    .is_some_and(|h| h.matches(&bad[HEADER..]));
                assert!(!intact, "flip at byte {byte} bit {bit} went unseen");
            }
        }
    }

    #[test]
    fn a_seal_round_trips_and_a_damaged_one_is_none() {
        let b: [u8; SEAL_LEN] = seal(12_345, 4096).try_into().unwrap();
        assert_eq!(parse_seal(&b, 4096), Some(12_345));
        assert_eq!(parse_seal(&b, 4000), None, "a seal elsewhere is no seal");
        let mut bad = b;
        bad[HEADER + 2] ^= 1;
        assert_eq!(parse_seal(&bad, 4096), None);
        let data: [u8; SEAL_LEN] = framed(1, 3, &[7; 16]).try_into().unwrap();
        assert_eq!(parse_seal(&data, 4096), None, "a data record is no seal");
    }

    #[test]
    fn the_magic_is_found_after_garbage() {
        let mut buf = b"garbage ".to_vec();
        let at = buf.len();
        buf.extend(framed(2, 1, b"first"));
        assert_eq!(find_magic(&buf, 0), Some(at));
        assert_eq!(find_magic(&buf, at + 1), None);
        assert_eq!(find_magic(&buf, 1000), None);
    }
}
