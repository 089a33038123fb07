//! The receiver-wide in-flight byte budget (`admission.request_limit_mib`).
//!
//! Every request is charged as it is read: its bytes as they arrive, its decompressed bytes,
//! and an estimate of its decoded spans. The charge then travels with the request's batches
//! through the pipeline's queues (the engine keeps it beside them) and is released when the
//! first stage has taken them all. A request that does not fit is refused at once — 429 with
//! Retry-After, RESOURCE_EXHAUSTED with RetryInfo — and counted, never buffered; so what clients
//! can make oxeye hold is bounded whatever the pipeline's queues and their speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of decoded spans charged per byte of the (decompressed) protobuf they came from: an
/// upper estimate for what OTLP SDKs send (the test `decoded_spans_fit_their_estimate` checks it
/// with [`oxeye_api::Span::size_bytes`]).
pub(crate) const DECODED_PER_BYTE: u64 = 3;

/// The most one request of `limit` bytes (after decompression) can be charged: its compressed
/// bytes and its decompressed ones while it is inflated, then the decompressed ones and its
/// decoded spans while it is decoded.
pub(crate) fn worst_case(limit: u64) -> u64 {
    limit.saturating_mul(1 + DECODED_PER_BYTE.max(1))
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
