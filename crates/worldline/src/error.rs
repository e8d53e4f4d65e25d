//! The one error type of the WorldLine model, and the status class each
//! variant belongs to.

use std::fmt;

use converge_ledger_core::Digest;

/// Everything that can go wrong in this crate.
///
/// Each variant names a *situation*, not a layer, so that a server maps it
/// to a status code in one place ([`WorldlineError::code`]) and a client
/// knows whether retrying or fixing the request helps. Every message says
/// what was wrong and what is allowed ("class is 300 bytes; at most 256
/// allowed").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorldlineError {
    /// A field is missing, malformed, or beyond a limit; or bytes handed in
    /// are not a canonical encoding. Fixing the request helps; retrying it
    /// does not.
    Invalid {
        /// The field at fault, e.g. `class` or `evidence[3].uri`.
        field: String,
        /// The whole explanation, starting with the field.
        message: String,
    },
    /// An outcome's status does not fit its commitment's decision
    /// (`Succeeded`/`Failed` for a rejected commitment, `Rejection` for an
    /// accepted one). The request is well-formed but the ledger's history
    /// forbids it.
    DecisionMismatch {
        /// What the commitment decided and what the outcome said.
        message: String,
    },
    /// An outcome names a commitment this worldline does not have (or a
    /// receipt that is not a commitment).
    UnknownCommitment {
        /// The receipt hash the outcome named.
        commitment: Digest,
        /// What was looked for and where.
        message: String,
    },
    /// A commitment already has its outcome (L4: at most one), or a
    /// commitment id was used twice in one worldline.
    AlreadyExists {
        /// What exists already.
        message: String,
    },
    /// An outcome would take the worldline's state past
    /// [`WorldlineLimits::state_bytes_max`](crate::WorldlineLimits::state_bytes_max).
    /// A quota, not a malformed request: a later outcome that deletes keys
    /// first can succeed.
    StateLimit {
        /// The size the state would reach and the limit.
        message: String,
    },
    /// A client-supplied snapshot anchor or state hash disagrees with what
    /// the ledger computed by replay (L5: client state is only compared).
    SnapshotMismatch {
        /// What the client said and what the ledger found.
        message: String,
    },
    /// A receipt handed to a fold does not follow the one before it: a gap,
    /// a repeat with a different hash, or a broken link. The caller fed
    /// receipts in the wrong order; the stored data may be fine.
    OutOfOrder {
        /// The position expected and the one found.
        message: String,
    },
    /// Stored bytes fail decoding or verification: a receipt, a snapshot or
    /// a projection record read back from storage is not what the ledger
    /// wrote. Never retried; reported.
    Corrupt {
        /// Where the damage is and what is wrong.
        message: String,
    },
    /// The storage below a [`KvRead`](crate::KvRead) or a contract
    /// implementation failed transiently; safe to retry.
    Unavailable {
        /// The backend's explanation.
        message: String,
    },
}

/// The status class of an error, named after the gRPC codes a server maps
/// them to (this crate does not depend on tonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
    /// `FAILED_PRECONDITION`.
    FailedPrecondition,
    /// `NOT_FOUND`.
    NotFound,
    /// `ALREADY_EXISTS`.
    AlreadyExists,
    /// `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// `DATA_LOSS`.
    DataLoss,
    /// `UNAVAILABLE`.
    Unavailable,
}

impl WorldlineError {
    /// An [`WorldlineError::Invalid`] whose message is `"{field} {problem}"`,
    /// e.g. `invalid("class", "is 300 bytes; at most 256 allowed")`.
    pub fn invalid(field: impl fmt::Display, problem: impl fmt::Display) -> Self {
        let field = field.to_string();
        WorldlineError::Invalid {
            message: format!("{field} {problem}"),
            field,
        }
    }

    /// A [`WorldlineError::Corrupt`] with the given explanation.
    pub fn corrupt(message: impl Into<String>) -> Self {
        WorldlineError::Corrupt {
            message: message.into(),
        }
    }

    /// The status class (and so the gRPC code) of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WorldlineError::Invalid { .. } => ErrorCode::InvalidArgument,
            WorldlineError::DecisionMismatch { .. }
            | WorldlineError::SnapshotMismatch { .. }
            | WorldlineError::OutOfOrder { .. } => ErrorCode::FailedPrecondition,
            WorldlineError::UnknownCommitment { .. } => ErrorCode::NotFound,
            WorldlineError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            WorldlineError::StateLimit { .. } => ErrorCode::ResourceExhausted,
            WorldlineError::Corrupt { .. } => ErrorCode::DataLoss,
            WorldlineError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }

    /// The message, without the variant name.
    pub fn message(&self) -> &str {
        match self {
            WorldlineError::Invalid { message, .. }
            | WorldlineError::DecisionMismatch { message }
            | WorldlineError::UnknownCommitment { message, .. }
            | WorldlineError::AlreadyExists { message }
            | WorldlineError::StateLimit { message }
            | WorldlineError::SnapshotMismatch { message }
            | WorldlineError::OutOfOrder { message }
            | WorldlineError::Corrupt { message }
            | WorldlineError::Unavailable { message } => message,
        }
    }

    /// The same problem found in data read back from storage: everything
    /// but [`WorldlineError::Unavailable`] becomes
    /// [`WorldlineError::Corrupt`], prefixed with where it was found. A
    /// stored receipt that fails a rule the ledger checked before writing it
    /// was damaged after it was written.
    pub fn in_stored(self, location: impl fmt::Display) -> Self {
        match self {
            WorldlineError::Unavailable { .. } | WorldlineError::Corrupt { .. } => self,
            other => WorldlineError::corrupt(format!("{location}: {}", other.message())),
        }
    }
}

impl fmt::Display for WorldlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for WorldlineError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_messages_start_with_the_field() {
        let e = WorldlineError::invalid("class", "is 300 bytes; at most 256 allowed");
        assert_eq!(e.to_string(), "class is 300 bytes; at most 256 allowed");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
    }

    #[test]
    fn problems_in_stored_data_become_data_loss_but_storage_outages_stay_retryable() {
        let e = WorldlineError::invalid("class", "is empty").in_stored("receipt 3");
        assert_eq!(e.code(), ErrorCode::DataLoss);
        assert_eq!(e.message(), "receipt 3: class is empty");
        let u = WorldlineError::Unavailable {
            message: "disk".into(),
        };
        assert_eq!(u.clone().in_stored("receipt 3"), u);
    }
}
