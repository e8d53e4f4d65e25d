//! Storage for the Converge ledger.
//!
//! The [`Store`] trait is the narrow contract every backend implements; its
//! documentation is the written contract and the [`testkit`] conformance
//! suite checks it. Two backends live here: [`MemoryStore`] (RAM only, like
//! Mnesia's `ram_copies`) and [`EmbeddedStore`] (fjall on local disk). The
//! [`Writer`] in front of any store turns concurrent appends into group
//! commits: one storage batch and one fsync for many requests from many
//! contexts.

mod command;
pub mod derived;
#[cfg(feature = "embedded")]
mod embedded;
mod error;
#[cfg(feature = "embedded")]
pub mod journal;
mod memory;
pub mod proofs;
pub mod sequencer;
pub mod stats;
mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod verify;
mod writer;

pub use command::{
    AppendCommand, BatchCommand, Committed, ImportCommand, ImportRejection, WriteCommand,
    WriteOutcome,
};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedOptions, EmbeddedStore, FsyncPolicy};
pub use error::StoreError;
pub use memory::MemoryStore;
pub use store::{Scan, Store};
pub use writer::{Clock, Pending, SystemClock, WriteError, Writer, WriterConfig};
