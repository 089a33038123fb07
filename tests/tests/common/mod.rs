//! Helpers shared by several test files; each file uses a part, hence the allowance.
#![allow(dead_code)]

pub mod load;
pub mod otlp;
pub mod run;
pub mod tls;
