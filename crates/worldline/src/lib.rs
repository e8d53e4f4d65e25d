//! The WorldLine profile of the Converge ledger, as a pure model.
//!
//! A *worldline* is a stream of receipts in a reserved ledger context
//! (`wll/<hex id>`): commitment receipts (what was proposed, under which
//! policy, what was decided and granted) and outcome receipts (what came of
//! a commitment, with effects, proofs and state updates). This crate holds
//! everything about them that needs no I/O:
//!
//! - the types and their canonical, versioned encodings
//!   ([`Commitment`], [`Outcome`], [`Receipt::from_entry`]);
//! - the rules an append must satisfy ([`Commitment::validate`],
//!   [`Outcome::validate`], [`check_outcome_for`], [`State::check_updates`]);
//! - the state, its hash ([`State`], [`StateHasher`]) and snapshots
//!   ([`snapshot_entries`], [`SnapshotReader`]);
//! - the replay fold that rebuilds and verifies a worldline ([`Replay`]);
//! - projections as pure folds over an ordered key-value store
//!   ([`Projection`], [`KvRead`], [`KvBatch`] and the modules
//!   [`latest_state`], [`audit_index`], [`capability_grants`],
//!   [`provenance_dag`]);
//! - the runtime contracts of seed 004 ([`LedgerWriter`], [`LedgerReader`])
//!   and an in-memory model of them ([`MemoryLedger`]).
//!
//! Byte layouts, hash rules and test vectors are in `docs/design.md` §18;
//! the tests of this crate check the vectors.

pub mod audit_index;
mod batch;
pub mod capability_grants;
mod codec;
mod commitment;
mod commitment_id;
mod contracts;
mod error;
mod id;
mod keys;
mod kv;
pub mod latest_state;
mod limits;
mod memory_ledger;
mod outcome;
mod page;
mod projection;
pub mod provenance_dag;
mod receipt;
mod replay;
mod rules;
mod serving;
mod snapshot;
mod state;
#[cfg(test)]
mod testkit;
mod text;

pub use batch::{BatchView, KvBatch, KvTxn};
pub use commitment::{CapabilitySet, Commitment, Decision, EvidenceRef, PolicyRef};
pub use commitment_id::CommitmentId;
pub use contracts::{
    LedgerReader, LedgerWriter, ReaderLookup, SnapshotRef, check_range, replay_worldline,
};
pub use error::{ErrorCode, WorldlineError};
pub use id::{NAMESPACE, WorldlineId, is_reserved_context};
pub use kv::{Direction, KvPair, KvRead, MemoryKv};
pub use limits::WorldlineLimits;
pub use memory_ledger::MemoryLedger;
pub use outcome::{Effect, Outcome, OutcomeStatus, ProofRef, StateUpdate};
pub use page::{CURSOR_BYTES_MAX, Cursor, PAGE_ITEMS_MAX, Page};
pub use projection::{
    Applied, Projection, ProjectionCheckpoint, apply_receipt, checkpoint_key,
    projection_key_prefix, projections, read_checkpoint, worldline_key_prefix,
};
pub use receipt::{
    COMMITMENT_KEY, OUTCOME_KEY, Receipt, ReceiptBody, ReceiptKind, ReceiptReader, ReceiptRef,
    commitment_entry, commitment_idempotency_key, commitment_payload, outcome_entry,
    outcome_idempotency_key, outcome_payload,
};
pub use replay::{CommitmentLookup, NoLookup, Replay};
pub use rules::{check_decision, check_outcome_for, check_status};
pub use serving::{
    SERVING_KEY, Serving, StoredServing, holds_any, projection_version, stored_keys, superseded,
};
pub use snapshot::{
    SNAPSHOT_CHUNK_KEY, SNAPSHOT_KEY, SnapshotBatch, SnapshotHeader, SnapshotReader,
    VerifiedSnapshot, check_state_hash, read_snapshot, snapshot_entries,
};
pub use state::{State, StateHasher, empty_state_hash};
