//! Inflating a gzip'd request (HTTP `Content-Encoding: gzip`, gRPC `grpc-encoding: gzip`).
//!
//! A request is at hand whole, so libdeflate inflates it in one call into a buffer the size its
//! gzip trailer states — about twice as fast as a streaming inflater, and inflating was the
//! largest cost of a gzip gateway after deflating. A body that is not one member stating its size
//! (several members, as RFC 1952 allows and Go's readers take; a trailer that lies) goes
//! through flate2's streaming multi-member decoder instead. Either way nothing past `limit` is
//! inflated, every inflated byte is charged to the budget first, and no member is skipped.

use std::io::Read;

use crate::admission::Charge;

/// Why a body could not be inflated.
#[derive(Debug, PartialEq)]
pub(crate) enum Inflate {
    /// Inflated, it is larger than the limit.
    TooLarge,
    /// The inflated bytes do not fit in the in-flight budget now.
    OverBudget,
    /// Not gzip, or corrupt: the reason.
    Invalid(String),
}

/// Inflates `raw` (one or more gzip members) into at most `limit` bytes, charging them.
pub(crate) fn gunzip(raw: &[u8], limit: usize, charge: &mut Charge) -> Result<Vec<u8>, Inflate> {
    gunzip_member(raw, limit, charge).map(|(out, _)| out)
}

/// [`gunzip`], and whether `raw` was one member (checked by its CRC and size) that any gzip
/// reader inflates to the same bytes: only such a body may be forwarded as it came.
pub(crate) fn gunzip_member(
    raw: &[u8],
    limit: usize,
    charge: &mut Charge,
) -> Result<(Vec<u8>, bool), Inflate> {
    let before = charge.bytes();
    match one_member(raw, limit, charge)? {
        Some(out) => Ok((out, true)),
        None => {
            charge.shrink_to(before);
            streaming(raw, limit, charge).map(|out| (out, false))
        }
    }
}

/// The fast path: `Ok(None)` when `raw` is not exactly one member of the size its trailer states.
fn one_member(raw: &[u8], limit: usize, charge: &mut Charge) -> Result<Option<Vec<u8>>, Inflate> {
    let Some(trailer) = raw.len().checked_sub(4).filter(|_| raw.len() >= 18) else {
        return Ok(None);
    };
    if raw[3] & FHCRC != 0 {
        // libdeflate skips a header CRC unchecked; flate2 checks it, so a wrong one is refused.
        return Ok(None);
    }
    let mut isize = [0u8; 4];
    isize.copy_from_slice(&raw[trailer..]);
    let size = u32::from_le_bytes(isize) as usize;
    if size > limit {
        // A bomb, or a trailer that is not one (a truncated body): streaming tells which.
        return Ok(None);
    }
    if !charge.grow(size as u64) {
        // The trailer is not checked yet: a lying one must not turn a body into "retry later".
        return Ok(None);
    }
    // Not zeroed first (that was 4 % of a gzip gateway's CPU): libdeflate writes what it says.
    let mut out = Vec::with_capacity(size);
    match DECOMPRESSOR.with(|d| d.inflate(raw, out.spare_capacity_mut())) {
        Outcome::Whole(n) if n == size => {
            // SAFETY: libdeflate wrote `n` bytes at the start of the spare capacity.
            unsafe { out.set_len(n) };
            Ok(Some(out))
        }
        Outcome::Corrupt => Err(Inflate::Invalid("corrupt deflate data".to_string())),
        _ => Ok(None),
    }
}

/// The gzip header flag saying a CRC-16 of the header follows it (RFC 1952 § 2.3.1).
const FHCRC: u8 = 2;

/// The general path: members one after another, `limit` bytes at most, charged as they come.
fn streaming(raw: &[u8], limit: usize, charge: &mut Charge) -> Result<Vec<u8>, Inflate> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
    let mut inflate = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    let mut chunk = [0u8; 64 << 10];
    loop {
        let n = inflate
            .read(&mut chunk)
            .map_err(|e| Inflate::Invalid(e.to_string()))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(Inflate::TooLarge);
        }
        if !charge.grow(n as u64) {
            return Err(Inflate::OverBudget);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// What one call to libdeflate made of a body.
enum Outcome {
    /// One member, the whole body, this many bytes.
    Whole(usize),
    /// A member that is not valid gzip.
    Corrupt,
    /// Bytes after the first member, or a member larger than the buffer.
    Other,
}

thread_local! {
    static DECOMPRESSOR: Decompressor = Decompressor::new();
}

/// A libdeflate decompressor (about 10 KiB of tables), one per thread. Through libdeflate-sys
/// because `libdeflater` does not say how much input a member took, and a second member would
/// otherwise be dropped unseen.
struct Decompressor(std::ptr::NonNull<libdeflate_sys::libdeflate_decompressor>);

impl Decompressor {
    fn new() -> Decompressor {
        // SAFETY: no preconditions; null only when out of memory.
        let p = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        Decompressor(std::ptr::NonNull::new(p).expect("out of memory for a gzip decompressor"))
    }

    fn inflate(&self, raw: &[u8], out: &mut [std::mem::MaybeUninit<u8>]) -> Outcome {
        let (mut taken, mut written) = (0usize, 0usize);
        // SAFETY: the decompressor is this thread's own and used by one call at a time; the
        // pointers and lengths come from live slices; libdeflate only writes within `out` (never
        // reads it), and says how much it wrote.
        let result = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                raw.as_ptr().cast(),
                raw.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut taken,
                &mut written,
            )
        };
        match result {
            libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS if taken == raw.len() => {
                Outcome::Whole(written)
            }
            libdeflate_sys::libdeflate_result_LIBDEFLATE_BAD_DATA => Outcome::Corrupt,
            _ => Outcome::Other,
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: allocated by `new`, freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn charge() -> Charge {
        crate::admission::Budget::new(64 << 20).charge()
    }

    /// Differential: what flate2 reads from a body, libdeflate's path reads too, or both refuse.
    fn same_as_flate2(raw: &[u8], limit: usize) {
        let mut c = charge();
        let ours = gunzip(raw, limit, &mut c);
        let mut reference = Vec::new();
        let theirs = flate2::read::MultiGzDecoder::new(raw).read_to_end(&mut reference);
        match (ours, theirs) {
            (Ok(a), Ok(_)) if reference.len() <= limit => {
                assert_eq!(a, reference);
                assert_eq!(c.bytes(), a.len() as u64, "charged the inflated bytes");
            }
            (Err(Inflate::TooLarge), Ok(_)) => assert!(reference.len() > limit),
            (Err(Inflate::Invalid(_)), Err(_)) => {}
            (ours, theirs) => panic!("libdeflate path {ours:?}, flate2 {theirs:?}"),
        }
    }

    #[test]
    fn one_member_several_members_and_bad_bodies_read_as_flate2_reads_them() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let one = gzip(&text);
        same_as_flate2(&one, 64 << 20);
        // Two members, even identical ones: both read (the second is not silently dropped).
        let twice = [one.clone(), one.clone()].concat();
        let mut c = charge();
        assert_eq!(
            gunzip(&twice, 64 << 20, &mut c).expect("two members").len(),
            text.len() * 2
        );
        same_as_flate2(&twice, 64 << 20);
        same_as_flate2(&[gzip(b"a"), gzip(&text)].concat(), 64 << 20);
        // Over the limit, however it is told.
        same_as_flate2(&one, 1000);
        same_as_flate2(&twice, text.len() + 10);
        // A trailer that lies about the size, both ways.
        for isize in [1u32, 1 << 24] {
            let mut lie = one.clone();
            let n = lie.len();
            lie[n - 4..].copy_from_slice(&isize.to_le_bytes());
            let mut c = charge();
            assert!(gunzip(&lie, 64 << 20, &mut c).is_err(), "isize {isize}");
        }
        // Corrupt, truncated, empty, not gzip.
        let mut corrupt = one.clone();
        corrupt[40] ^= 0xff;
        same_as_flate2(&corrupt, 64 << 20);
        same_as_flate2(&one[..one.len() / 2], 64 << 20);
        same_as_flate2(b"", 64 << 20);
        same_as_flate2(b"not gzip at all, but long enough", 64 << 20);
        // A header CRC that does not match its header (found by the fuzz target).
        let bad_header_crc = [
            31, 139, 8, 10, 205, 154, 255, 75, 76, 74, 78, 28, 21, 107, 2, 9, 2, 0, 0, 255, 75, 76,
            74, 78, 28, 69, 196, 33, 0, 132, 184, 196, 208, 44, 1, 0, 0,
        ];
        same_as_flate2(&bad_header_crc, 64 << 20);
    }

    #[test]
    fn a_bomb_is_inflated_no_further_than_the_limit_and_the_budget() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let mut c = charge();
        assert_eq!(gunzip(&bomb, 4 << 20, &mut c), Err(Inflate::TooLarge));
        assert!(c.bytes() <= 4 << 20);
        // Within the limit but not within the budget: refused, charged no further than it.
        let budget = crate::admission::Budget::new(1 << 20);
        let mut c = budget.charge();
        assert_eq!(
            gunzip(&gzip(&vec![0u8; 2 << 20]), 4 << 20, &mut c),
            Err(Inflate::OverBudget)
        );
        assert!(c.bytes() <= 1 << 20, "charged no further than the budget");
    }
}
