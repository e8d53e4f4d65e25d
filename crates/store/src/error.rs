use std::fmt;

/// A storage failure.
///
/// Cloneable so that one failed group commit can be reported to every request
/// that was part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine failed (I/O error, full disk, poisoned after a
    /// failed fsync). Nothing of the failed write became visible and no head
    /// moved.
    Io(String),
    /// Data read back from storage failed its checks (checksum, hash chain).
    Corrupt {
        /// The context the bad data belongs to.
        context: String,
        /// The sequence of the bad entry, 0 for a head.
        sequence: u64,
        /// What check failed.
        reason: String,
    },
    /// The store (or its writer) is shut down.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(m) => write!(f, "storage failure: {m}"),
            StoreError::Corrupt {
                context,
                sequence,
                reason,
            } => write!(
                f,
                "stored data of context {context:?} at sequence {sequence} is corrupt: {reason}"
            ),
            StoreError::Closed => f.write_str("the store is shut down"),
        }
    }
}

impl std::error::Error for StoreError {}
