use std::fmt;

use tonic::{Code, Status};

/// Trailing metadata of a `FAILED_PRECONDITION` met by a conditional append:
/// the context's actual head sequence (the server's
/// `HEAD_SEQUENCE_METADATA`).
const HEAD_SEQUENCE_METADATA: &str = "converge-ledger-head-sequence";

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is malformed or the server cannot be reached.
    Connect(String),
    /// The request was refused as malformed or beyond a limit; nothing changed.
    InvalidArgument(String),
    /// Exists already (idempotency key reused for other content, or Load with
    /// `fail_if_exists` into a non-empty context); nothing changed.
    AlreadyExists(String),
    /// The context's state does not allow it (a snapshot that does not
    /// extend it); nothing changed.
    FailedPrecondition(String),
    /// A conditional append found the context at another head; nothing was
    /// appended. Read what was appended since, then retry on top of it.
    HeadMismatch {
        /// The server's message.
        message: String,
        /// The context's head sequence.
        actual: u64,
    },
    /// A server limit was reached (response size, watchers, queue).
    ResourceExhausted(String),
    /// The server or its storage is unavailable (after retries).
    Unavailable(String),
    /// The server reports stored data that failed verification.
    DataLoss(String),
    /// The server answered something that is not a valid ledger response.
    Protocol(String),
    /// What the server returned fails verification: an entry whose hash does
    /// not recompute, a broken chain link, a bad signature, or a head that is
    /// not consistent with one seen before (history was rewritten).
    Verification(String),
    /// No such entry.
    NotFound(String),
    /// A position beyond the context's head.
    OutOfRange(String),
    /// Writing what was received failed (a snapshot sink).
    Io(String),
    /// The server does not know the caller: no, or an unknown, token or
    /// client certificate.
    Unauthenticated(String),
    /// The caller lacks the right the call needs on the context; nothing
    /// changed.
    PermissionDenied(String),
    /// Any other gRPC status.
    Rpc {
        /// The status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl ClientError {
    /// Whether retrying the same request (with the same idempotency key) may
    /// succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unavailable(_) | ClientError::Connect(_))
            || matches!(self, ClientError::Rpc { code, .. } if matches!(code, Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::Unknown))
    }
}

impl From<converge_ledger_worldline::WorldlineError> for ClientError {
    fn from(e: converge_ledger_worldline::WorldlineError) -> Self {
        use converge_ledger_worldline::ErrorCode;
        let m = e.message().to_owned();
        match e.code() {
            ErrorCode::InvalidArgument => ClientError::InvalidArgument(m),
            ErrorCode::FailedPrecondition => ClientError::FailedPrecondition(m),
            ErrorCode::NotFound => ClientError::NotFound(m),
            ErrorCode::AlreadyExists => ClientError::AlreadyExists(m),
            ErrorCode::ResourceExhausted => ClientError::ResourceExhausted(m),
            ErrorCode::DataLoss => ClientError::Verification(m),
            _ => ClientError::Unavailable(m),
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::OutOfRange => ClientError::OutOfRange(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::FailedPrecondition => match s
                .metadata()
                .get(HEAD_SEQUENCE_METADATA)
                .and_then(|v| v.to_str().ok()?.parse().ok())
            {
                Some(actual) => ClientError::HeadMismatch { message, actual },
                None => ClientError::FailedPrecondition(message),
            },
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DataLoss => ClientError::DataLoss(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            code => ClientError::Rpc { code, message },
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(m) => write!(f, "cannot connect: {m}"),
            ClientError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ClientError::AlreadyExists(m) => write!(f, "already exists: {m}"),
            ClientError::FailedPrecondition(m) | ClientError::HeadMismatch { message: m, .. } => {
                write!(f, "failed precondition: {m}")
            }
            ClientError::ResourceExhausted(m) => write!(f, "resource exhausted: {m}"),
            ClientError::Unavailable(m) => write!(f, "unavailable: {m}"),
            ClientError::DataLoss(m) => write!(f, "data loss: {m}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Verification(m) => write!(f, "verification failed: {m}"),
            ClientError::NotFound(m) => write!(f, "not found: {m}"),
            ClientError::OutOfRange(m) => write!(f, "out of range: {m}"),
            ClientError::Io(m) => write!(f, "I/O error: {m}"),
            ClientError::Unauthenticated(m) => write!(f, "not authenticated: {m}"),
            ClientError::PermissionDenied(m) => write!(f, "permission denied: {m}"),
            ClientError::Rpc { code, message } => write!(f, "{code:?}: {message}"),
        }
    }
}

impl std::error::Error for ClientError {}
