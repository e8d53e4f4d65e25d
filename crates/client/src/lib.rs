//! Rust client of the Converge ledger.
//!
//! ```no_run
//! # async fn demo() -> Result<(), converge_ledger_client::ClientError> {
//! use converge_ledger_client::{AppendOptions, Client};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let entry = client.append("job-42", "facts", b"market_size: 2.4B".to_vec(), AppendOptions::default()).await?;
//! let mut watch = client.watch("job-42", None, 0);
//! while let Some(entry) = watch.next().await {
//!     println!("{}", entry?.sequence);
//! }
//! # Ok(()) }
//! ```
//!
//! Appends carry an idempotency key (one is generated when the caller gives
//! none), so the client retries transient failures without ever appending
//! twice. Every entry received is checked (its hash recomputes, it links to
//! the entry before it); [`Client::verify_head`] checks signed heads and, with
//! consistency proofs, that history the client saw was never rewritten.
//! [`Watch`] resumes from its last sequence after a dropped
//! connection or a server restart, without gaps or duplicates.

mod client;
mod error;
mod watch;

pub use client::{
    AppendOptions, BatchEntry, BatchOptions, BatchResult, BlockingWorldlines, Client,
    ClientOptions, ConsistencyProofInfo, GetOptions, GetResult, HeadInfo, InclusionProofInfo,
    LoadResult, ServerInfo, SnapshotBlob, TlsOptions, WorldlineInfo, WorldlineState,
    WorldlineVerdict, projection_query,
};
pub use converge_ledger_core::{Digest, Entry, Metadata, PublicKey};
/// The messages of the wire contract and of the ledger's extension
/// services (projection queries answer with these).
pub use converge_ledger_proto as proto;
/// The WorldLine model the worldline methods take and return.
pub use converge_ledger_worldline as worldline;
pub use error::ClientError;
pub use watch::Watch;
