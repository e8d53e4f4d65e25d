use std::fmt;

use converge_ledger_core::LimitError;
use converge_ledger_store::{StoreError, WriteError};
use tonic::{Code, Status};

/// Why a ledger operation failed. Converted to a gRPC status in exactly one
/// place ([`From<LedgerError> for Status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerError {
    /// The request is malformed or outside the limits; nothing changed.
    InvalidArgument(String),
    /// The request would create something that exists (a used idempotency
    /// key, a non-empty context under `fail_if_exists`); nothing changed.
    AlreadyExists(String),
    /// The state of the context does not allow the request (a snapshot that
    /// does not extend it); nothing changed.
    FailedPrecondition(String),
    /// A position beyond the context's head (a proof for a tree that does
    /// not exist yet).
    OutOfRange(String),
    /// No such thing (an entry by hash).
    NotFound(String),
    /// A server limit (watchers, response size, queue) is reached.
    ResourceExhausted(String),
    /// Stored data failed verification.
    DataLoss(String),
    /// Storage failed or the server is shutting down; retry elsewhere or
    /// later (appends with an idempotency key are safe to retry).
    Unavailable(String),
    /// A bug in the server (a broken invariant); retrying will not help.
    Internal(String),
    /// A conditional append found another head: `FAILED_PRECONDITION`, with
    /// the actual head in the trailing metadata [`HEAD_SEQUENCE_METADATA`],
    /// so a client can tell this (retry on top of the new head) from any
    /// other precondition.
    HeadMismatch {
        /// What to tell the caller.
        message: String,
        /// The context's head sequence.
        actual: u64,
    },
}

/// Trailing metadata of a `FAILED_PRECONDITION` that a conditional append
/// met: the context's actual head sequence, in decimal.
pub const HEAD_SEQUENCE_METADATA: &str = "converge-ledger-head-sequence";

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::InvalidArgument(m)
            | LedgerError::AlreadyExists(m)
            | LedgerError::FailedPrecondition(m)
            | LedgerError::OutOfRange(m)
            | LedgerError::NotFound(m)
            | LedgerError::ResourceExhausted(m)
            | LedgerError::DataLoss(m)
            | LedgerError::Unavailable(m)
            | LedgerError::Internal(m)
            | LedgerError::HeadMismatch { message: m, .. } => f.write_str(m),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<LimitError> for LedgerError {
    fn from(e: LimitError) -> Self {
        LedgerError::InvalidArgument(e.message)
    }
}

impl From<StoreError> for LedgerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => LedgerError::DataLoss(e.to_string()),
            StoreError::Closed => LedgerError::Unavailable(e.to_string()),
            StoreError::NoSpace(_) => LedgerError::ResourceExhausted(format!(
                "{e}; nothing of the failed write was acknowledged, and the server accepts no \
                 writes until an operator frees space and restarts it"
            )),
            StoreError::Config(_) => LedgerError::FailedPrecondition(e.to_string()),
            StoreError::Internal(_) => LedgerError::Internal(e.to_string()),
            _ => LedgerError::Unavailable(format!(
                "{e}; nothing of the failed write was acknowledged"
            )),
        }
    }
}

impl From<WriteError> for LedgerError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(s) => s.into(),
            WriteError::TooLarge { .. } => LedgerError::ResourceExhausted(e.to_string()),
            _ => LedgerError::Unavailable(e.to_string()),
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Status {
        let code = match &e {
            LedgerError::InvalidArgument(_) => Code::InvalidArgument,
            LedgerError::AlreadyExists(_) => Code::AlreadyExists,
            LedgerError::FailedPrecondition(_) => Code::FailedPrecondition,
            LedgerError::OutOfRange(_) => Code::OutOfRange,
            LedgerError::NotFound(_) => Code::NotFound,
            LedgerError::ResourceExhausted(_) => Code::ResourceExhausted,
            LedgerError::DataLoss(_) => Code::DataLoss,
            LedgerError::Unavailable(_) => Code::Unavailable,
            LedgerError::Internal(_) => Code::Internal,
            LedgerError::HeadMismatch { actual, .. } => {
                let mut status = Status::failed_precondition(e.to_string());
                if let Ok(v) = actual.to_string().parse() {
                    status.metadata_mut().insert(HEAD_SEQUENCE_METADATA, v);
                }
                return status;
            }
        };
        Status::new(code, e.to_string())
    }
}
