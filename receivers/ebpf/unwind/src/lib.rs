//! Unwind tables for stacks without frame pointers (x86-64).
//!
//! Each object's `.eh_frame` (or `.debug_frame`) is read with gimli and compacted into sorted
//! stack deltas ([`Table`]): from this address on, the caller's frame is found by this
//! [`Rule`]. [`walk`] is the walk the profile program makes with them, in Rust: the reference
//! its eBPF twin must agree with. Where no table covers a pc, the walk takes one frame-pointer
//! step if `rbp` plausibly holds a frame, and otherwise ends the stack and says so
//! ([`End::Lost`]): never a made-up frame.

mod cfi;
pub mod maps;
pub mod process;
pub mod python;
pub mod rule;
pub mod table;
pub mod walk;

pub use cfi::{rule_at, CfiCounts};
pub use process::{object, ObjectKey, Objects, Process};
pub use rule::{Cfa, Rbp, Rule};
pub use table::{Delta, Table};
pub use walk::{walk, End, Regs};

/// Why an object has no table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("not an object file oxeye can read: {0}")]
    Object(#[from] object::Error),
    #[error("unwind tables are built for x86-64 objects only, not {0:?}")]
    Architecture(object::Architecture),
}
