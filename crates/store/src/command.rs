use std::sync::Arc;

use converge_ledger_core::{Entry, NewEntry, PublicKey};

use crate::StoreError;

/// One unit of work for [`crate::Store::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCommand {
    /// Append one entry.
    Append(AppendCommand),
    /// Append several entries to one context, all or none.
    AppendBatch(BatchCommand),
    /// Restore verified entries (a Load).
    Import(ImportCommand),
}

impl WriteCommand {
    /// Approximate bytes of the command, for queue accounting.
    pub fn approximate_size(&self) -> usize {
        match self {
            WriteCommand::Append(a) => a.context.len() + new_entry_size(&a.entry),
            WriteCommand::AppendBatch(b) => {
                b.context.len() + b.entries.iter().map(new_entry_size).sum::<usize>()
            }
            WriteCommand::Import(i) => {
                i.context.len() + i.entries.iter().map(Entry::approximate_size).sum::<usize>()
            }
        }
    }
}

fn new_entry_size(e: &NewEntry) -> usize {
    e.key.len()
        + e.payload.len()
        + e.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + 64
}

/// Append `entry` to `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCommand {
    /// Target context (already validated against the limits).
    pub context: String,
    /// What to append.
    pub entry: NewEntry,
    /// A client-chosen key that makes retries safe: a second append with the
    /// same key in the same context returns the first entry and appends
    /// nothing, forever (the key is stored with the entry). No control
    /// characters (the ledger's limits refuse them): U+0001 marks the
    /// records of batch keys (`sequencer::batch_end_key`).
    pub idempotency_key: Option<String>,
}

/// Append `entries` to `context` in order, atomically: they take
/// consecutive sequences in one commit, or nothing is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommand {
    /// Target context (already validated against the limits).
    pub context: String,
    /// What to append, in order (at least one; each already validated). The
    /// Lamport time of the first is merged into the clock; those of the
    /// others too, so a caller may carry one per entry.
    pub entries: Vec<NewEntry>,
    /// Identifies the whole batch: a batch with a key already used in this
    /// context and the same entries (key, payload, metadata) returns the
    /// entries appended the first time and appends nothing; with other
    /// entries it is an [`WriteOutcome::IdempotencyConflict`]. Stored with
    /// the first entry's sequence, forever.
    pub idempotency_key: Option<String>,
    /// Append only if the context's head sequence is exactly this (0: the
    /// context is empty) at commit; checked after the idempotency key.
    pub expected_sequence: Option<u64>,
}

/// Restore `entries` into `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportCommand {
    /// Target context.
    pub context: String,
    /// Entries with sequences `1..=n`, already verified and chained for
    /// `context` (their hashes are those of `context`).
    pub entries: Vec<Entry>,
    /// Refuse if the context already has entries.
    pub fail_if_exists: bool,
    /// The key that signed the snapshot, recorded in the head
    /// ([`converge_ledger_core::Head::loaded`]) when the import writes
    /// entries, so that signed heads tell loaded history from appended.
    pub signer: PublicKey,
}

/// What became of one command of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The entry was appended.
    Appended(Arc<Entry>),
    /// A retry: the idempotency key was already used for this entry, with the
    /// same key, payload and metadata; nothing was appended.
    Duplicate(Arc<Entry>),
    /// The batch was appended: its entries, in order.
    AppendedBatch(Vec<Arc<Entry>>),
    /// A retried batch: the idempotency key was already used for a batch of
    /// the same entries; these are the entries appended then.
    DuplicateBatch(Vec<Arc<Entry>>),
    /// The idempotency key was already used for a *different* entry (or
    /// batch).
    IdempotencyConflict {
        /// Sequence of the entry the key belongs to (the first of its batch).
        sequence: u64,
    },
    /// A conditional batch found another head; nothing was appended.
    SequenceMismatch {
        /// The head sequence the batch required.
        expected: u64,
        /// The context's actual head sequence.
        actual: u64,
    },
    /// The import committed.
    Imported {
        /// Entries written (0 when the snapshot was already contained).
        restored: u64,
        /// Head sequence of the context afterwards.
        head: u64,
    },
    /// The import was refused; nothing was written for it.
    ImportRejected(ImportRejection),
    /// Stored data this command had to read (the entry an idempotency key
    /// names, an import's overlap) failed its checks; nothing was written
    /// for this command, and the rest of the batch committed as usual.
    Failed(StoreError),
}

/// Why an import was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportRejection {
    /// `fail_if_exists` and the context has entries.
    AlreadyExists {
        /// The context's head sequence.
        head: u64,
    },
    /// The snapshot does not extend the context's chain.
    Diverged {
        /// First sequence whose entry differs.
        sequence: u64,
    },
}

/// The result of a committed [`crate::Store::write`].
#[derive(Debug, Default)]
pub struct Committed {
    /// One outcome per command, in order.
    pub outcomes: Vec<WriteOutcome>,
    /// Every entry that became durable, in commit order (per context in
    /// sequence order), for publication to watchers.
    pub entries: Vec<(Arc<str>, Arc<Entry>)>,
}
