//! What oxeye's exporters that send over the network share: TLS client settings ([`tls`]),
//! retry timing ([`retry`]) and the count of what is queued until it is settled ([`Ledger`]).

mod ledger;
pub mod retry;
pub mod tls;

pub use ledger::Ledger;
