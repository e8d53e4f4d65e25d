use std::fmt;

/// A storage failure.
///
/// Each kind tells the caller what to do about it: [`StoreError::Io`] and
/// [`StoreError::Closed`] are transient (retry, elsewhere or later);
/// [`StoreError::NoSpace`] needs an operator; [`StoreError::Corrupt`] is
/// data loss; [`StoreError::Config`] and [`StoreError::Internal`] will fail
/// the same way again, so retrying them is pointless.
///
/// Cloneable so that one failed group commit can be reported to every request
/// that was part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine or its connection failed (an I/O error, a database
    /// that is unreachable or restarting, an operation past its deadline).
    /// Nothing of the failed write became visible and no head moved; the
    /// same request may succeed later.
    Io(String),
    /// The disk (or the database) is full. Nothing of the failed write
    /// became visible; an embedded store refuses every later write until it
    /// is reopened, because its engine cannot tell what reached the disk.
    NoSpace(String),
    /// Data read back from storage failed its checks (checksum, hash chain).
    Corrupt {
        /// The context the bad data belongs to.
        context: String,
        /// The sequence of the bad entry, 0 for a head.
        sequence: u64,
        /// What check failed.
        reason: String,
    },
    /// The configuration or the stored data's version does not allow the
    /// operation (a bad option, a storage format or schema from another
    /// build, a directory that holds something else): the same call fails
    /// again until an operator changes something.
    Config(String),
    /// A bug: a broken internal invariant or a request that the layers above
    /// should have refused (e.g. NUL in an id given to a store directly).
    /// Nothing was written.
    Internal(String),
    /// The store (or its writer) is shut down.
    Closed,
}

impl StoreError {
    /// Whether the same call may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Closed)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(m) => write!(f, "storage failure: {m}"),
            StoreError::NoSpace(m) => write!(f, "no space left: {m}"),
            StoreError::Corrupt {
                context,
                sequence,
                reason,
            } => write!(
                f,
                "stored data of context {context:?} at sequence {sequence} is corrupt: {reason}"
            ),
            StoreError::Config(m) => f.write_str(m),
            StoreError::Internal(m) => write!(f, "internal error (a bug): {m}"),
            StoreError::Closed => f.write_str("the store is shut down"),
        }
    }
}

impl std::error::Error for StoreError {}
