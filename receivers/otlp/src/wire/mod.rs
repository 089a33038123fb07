//! OTLP trace request bytes → oxeye batches, read straight off the wire.
//!
//! Decoding into opentelemetry-proto's generated structs first costs a `String` per key and
//! value, and converting those into oxeye spans copies every string again; here each string is
//! copied once, from the request into its `Arc<str>`, and keys and names repeated in a request
//! are allocated once (interned by their bytes, borrowed from the request). The result is what
//! [`crate::convert::request`] makes of the prost-decoded request — same spans, same refusals,
//! same first reason (tested on the same bytes) — and what prost refuses is refused here too:
//! truncated or overlong fields, wrong wire types for known fields, invalid UTF-8 in strings.
//! Unknown fields are skipped, as protobuf requires.
//!
//! Two walks read a request: [`request`] decodes it ([`decode`]), [`encoded`] checks it can be
//! kept as received ([`check`]). Both read the typed fields of [`fields`], over [`reader`].

mod check;
mod decode;
mod fields;
mod reader;
mod signals;
#[cfg(test)]
mod tests;

pub use check::encoded;
pub use decode::request;
pub use reader::WireError;
pub use signals::{encoded_logs, encoded_metrics};

use crate::convert::Converted;

/// Reads a request: with `keep` (the pipeline takes encoded spans as they are), as [`encoded`]
/// batches when every span in it is clean; else, and otherwise, by [`request`].
pub fn read(buf: &bytes::Bytes, keep: bool) -> Result<Converted, WireError> {
    match keep.then(|| encoded(buf)).flatten() {
        Some(mut c) => {
            // The batches are slices of `buf`: they keep all of it.
            c.held_bytes = buf.len() as u64;
            Ok(c)
        }
        None => {
            let mut c = request(buf)?;
            c.held_bytes = crate::convert::decoded_size(&c.batches);
            Ok(c)
        }
    }
}
