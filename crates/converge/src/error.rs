use std::fmt;

use converge_core::experience_store::ExperienceStoreError;
use converge_core::traits::StoreError;
use converge_ledger_client::ClientError;

/// Why an adapter operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A ledger call failed (after the client's own retries).
    Ledger {
        /// What the adapter was doing, naming the context.
        action: String,
        /// The client's error.
        source: ClientError,
    },
    /// A converge-core value could not be serialized into an entry payload.
    Encode(String),
    /// A stored entry is not what the adapter wrote: its payload or metadata
    /// does not decode.
    Decode {
        /// The ledger context.
        context: String,
        /// The entry's sequence.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored entries do not form a valid converge-core context (two
    /// different facts with one id, a missing fact, a Merkle root that does
    /// not match).
    InvalidContext(String),
    /// The recorder's buffer was full with [`crate::OnFull::Fail`]: the
    /// ledger holds the facts and events before the first refused one, none
    /// after it.
    BufferFull {
        /// The buffer's capacity (facts and events).
        capacity: usize,
        /// Facts and events the engine announced that were not recorded.
        unrecorded: u64,
    },
    /// The recorder was finished (or its writer stopped) before this work
    /// could be recorded.
    Closed {
        /// Facts and events the engine announced that were not recorded.
        unrecorded: u64,
    },
    /// The adapter could not start its background thread or runtime.
    Runtime(String),
}

impl Error {
    pub(crate) fn ledger(action: impl Into<String>, source: ClientError) -> Error {
        Error::Ledger {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn decode(context: &str, sequence: u64, reason: impl Into<String>) -> Error {
        Error::Decode {
            context: context.to_owned(),
            sequence,
            reason: reason.into(),
        }
    }

    /// Whether retrying the same operation may succeed (the ledger was
    /// unreachable or unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Ledger { source, .. } if source.is_transient())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Ledger { action, source } => write!(f, "{action}: {source}"),
            Error::Encode(m) => write!(f, "cannot encode for the ledger: {m}"),
            Error::Decode {
                context,
                sequence,
                reason,
            } => write!(
                f,
                "entry {sequence} of ledger context {context:?} does not decode: {reason}"
            ),
            Error::InvalidContext(m) => write!(f, "the ledger does not hold a valid context: {m}"),
            Error::BufferFull {
                capacity,
                unrecorded,
            } => write!(
                f,
                "the recorder's buffer of {capacity} was full: recording stopped there, \
                 {unrecorded} later facts/events are not in the ledger"
            ),
            Error::Closed { unrecorded } => write!(
                f,
                "the recorder was closed: {unrecorded} facts/events are not in the ledger"
            ),
            Error::Runtime(m) => write!(f, "cannot start the ledger adapter's runtime: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Ledger { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        let message = e.to_string();
        match e {
            Error::Ledger { source, .. } => match source {
                ClientError::Unavailable(_) | ClientError::Connect(_) => {
                    StoreError::Unavailable { message }
                }
                ClientError::InvalidArgument(_) => StoreError::InvalidQuery { message },
                ClientError::AlreadyExists(_) => StoreError::Conflict { event_id: message },
                ClientError::NotFound(_) => StoreError::NotFound { message },
                ClientError::DataLoss(_) | ClientError::Verification(_) => {
                    StoreError::InvariantViolation { message }
                }
                _ => StoreError::Internal { message },
            },
            Error::Encode(_) | Error::Decode { .. } => StoreError::SerializationFailed { message },
            Error::InvalidContext(_) => StoreError::InvariantViolation { message },
            _ => StoreError::Internal { message },
        }
    }
}

impl From<Error> for ExperienceStoreError {
    fn from(e: Error) -> ExperienceStoreError {
        ExperienceStoreError::StorageError {
            message: e.to_string(),
        }
    }
}
