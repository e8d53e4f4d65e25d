//! Tools for feeding decoders bytes they never expect: a seeded generator,
//! arbitrary inputs, mutations of valid encodings (flips, truncations,
//! insertions, length fields rewritten to huge values), and a global
//! allocator that counts the bytes one thread allocates, so a test can
//! bound what a decode allocates by the size of its input.
//!
//! A test binary installs the allocator with
//! `#[global_allocator] static A: converge_ledger_fuzz::Counting = converge_ledger_fuzz::Counting;`
//! and measures with [`allocated_by`].

mod alloc;
mod rng;

pub use alloc::{Counting, allocated_by};
pub use rng::{Rng, arbitrary, mutations};

/// Cases per decoder: `CONVERGE_LEDGER_FUZZ_CASES`, or `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("CONVERGE_LEDGER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
