//! Shared by the integration tests: a seeded generator and byte mutations.

#![allow(unused_imports)]

pub use converge_ledger_fuzz::{Rng, arbitrary, mutations};
