use std::sync::Arc;

use converge_ledger_core::{Entry, NewEntry};

/// One unit of work for [`crate::Store::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCommand {
    /// Append one entry.
    Append(AppendCommand),
    /// Restore verified entries (a Load).
    Import(ImportCommand),
}

impl WriteCommand {
    /// Approximate bytes of the command, for queue accounting.
    pub fn approximate_size(&self) -> usize {
        match self {
            WriteCommand::Append(a) => {
                a.context.len()
                    + a.entry.key.len()
                    + a.entry.payload.len()
                    + a.entry
                        .metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                    + 64
            }
            WriteCommand::Import(i) => {
                i.context.len() + i.entries.iter().map(Entry::approximate_size).sum::<usize>()
            }
        }
    }
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
    /// nothing, forever (the key is stored with the entry).
    pub idempotency_key: Option<String>,
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
}

/// What became of one command of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The entry was appended.
    Appended(Arc<Entry>),
    /// A retry: the idempotency key was already used for this entry, with the
    /// same key, payload and metadata; nothing was appended.
    Duplicate(Arc<Entry>),
    /// The idempotency key was already used for a *different* entry.
    IdempotencyConflict {
        /// Sequence of the entry the key belongs to.
        sequence: u64,
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
