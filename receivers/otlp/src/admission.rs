//! The receiver-wide in-flight byte budget (`admission.request_limit_mib`).
//!
//! Every request is charged as it is read: its bytes as they arrive, its decompressed bytes,
//! and an estimate of its decoded records. The charge then travels with the request's batches
//! through the pipeline's queues (the engine keeps it beside them) and is released when the
//! first stage has taken them all. A request that does not fit is refused at once — 429 with
//! Retry-After, RESOURCE_EXHAUSTED with RetryInfo — and counted, never buffered; so what clients
//! can make oxeye hold is bounded whatever the pipeline's queues and their speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oxeye_api::Signal;

pub(crate) use crate::body::Body;

/// Bytes charged per byte of protobuf before a request is decoded (then the charge is set to
/// what the decoded spans take, measured with [`oxeye_api::Span::size_bytes`]): most requests
/// decode within it, so the charge rarely has to grow after the memory exists.
const PRECHARGE_PER_BYTE: u64 = 3;

/// The most one request of `limit` bytes (its largest size, after decompression) is charged
/// before it is decoded: compressed bytes and decompressed ones. The budget must hold that,
/// or a request of the largest size could never be read.
pub(crate) fn worst_case(limit: u64) -> u64 {
    limit.saturating_mul(2).saturating_add(64)
}

/// Why a request was not taken, once read.
pub(crate) enum Refused {
    /// The budget is full now: retry later (429 / RESOURCE_EXHAUSTED with a delay).
    OverBudget,
    /// Decoded, this request alone takes more than the whole budget: it can never be taken
    /// (413 / RESOURCE_EXHAUSTED without retry).
    TooLarge(u64),
    /// Not an OTLP request of its signal.
    Malformed(String),
}

/// Decodes a request of `signal` (traces, metrics or logs), charging its records: a precharge
/// before (refused if the budget cannot take it), then the charge set to what the records take.
/// A request kept encoded (`keep`, and clean) holds its bytes only.
pub(crate) fn decode(
    signal: Signal,
    body: &bytes::Bytes,
    kind: Body,
    keep: bool,
    charge: &mut Charge,
) -> Result<crate::convert::Converted, Refused> {
    let len = body.len() as u64;
    let before = charge.bytes;
    let precharge = if keep && kind == Body::Protobuf {
        0
    } else {
        len.saturating_mul(PRECHARGE_PER_BYTE)
    };
    if !charge.grow(precharge) {
        return Err(refusal(charge, before + precharge));
    }
    // Decoded on the async worker: handing large ones to another thread (`block_in_place`)
    // was measured to cost ~50 MiB of RSS under a flood of 15 MiB requests (each thread's
    // allocator heap), more than the stall it saves.
    let converted = crate::body::read(signal, body, kind, keep).map_err(Refused::Malformed)?;
    // The body and the spans both exist until the body is dropped: charge both.
    let needed = before + converted.held_bytes;
    if needed > charge.bytes && !charge.grow(needed - charge.bytes) {
        return Err(refusal(charge, needed));
    }
    Ok(converted)
}

/// Over the budget now, or more than all of it.
fn refusal(charge: &Charge, needed: u64) -> Refused {
    if needed > charge.budget.limit {
        Refused::TooLarge(needed)
    } else {
        Refused::OverBudget
    }
}

/// The budget shared by both protocols of one receiver.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// An empty charge on this budget.
    pub(crate) fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_add(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                let after = used.checked_add(n)?;
                (after <= self.limit).then_some(after)
            })
            .is_ok()
    }
}

/// Bytes charged to a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Charge {
    /// Charges `n` more bytes; false (nothing charged) when they do not fit.
    pub(crate) fn grow(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.try_add(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Bytes charged now.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keeps at most `n` bytes charged (what the request's batches still hold).
    pub(crate) fn shrink_to(&mut self, n: u64) {
        if n < self.bytes {
            self.budget.used.fetch_sub(self.bytes - n, Ordering::AcqRel);
            self.bytes = n;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_are_given_back() {
        let b = Budget::new(100);
        let mut a = b.charge();
        assert!(a.grow(60));
        let mut c = b.charge();
        assert!(!c.grow(41), "over the limit: refused, nothing charged");
        assert_eq!(b.used(), 60);
        assert!(c.grow(40));
        assert!(!a.grow(1));
        a.shrink_to(10);
        assert_eq!(b.used(), 50);
        assert!(a.grow(50));
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn concurrent_charges_never_pass_the_limit() {
        let b = Budget::new(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut peak = 0;
                    for _ in 0..10_000 {
                        let mut c = b.charge();
                        if c.grow(300) {
                            peak = peak.max(b.used());
                        }
                    }
                    peak
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().expect("thread") <= 1000);
        }
        assert_eq!(b.used(), 0);
    }
}
