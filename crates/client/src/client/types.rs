//! Options and results of the client's calls.

use std::time::Duration;

use converge_ledger_core::{Digest, Entry, LoadedFrom, Metadata, PublicKey, SignedHead};

/// How the client talks to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest message sent or received, in bytes.
    pub message_bytes_max: usize,
    /// Attempts per call for transient failures (1: no retry).
    pub attempts: u32,
    /// First retry delay; doubles each attempt.
    pub backoff: Duration,
    /// Deadline of each unary call.
    pub request_timeout: Duration,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
    /// The server key heads must be signed with. `None`: the key the server
    /// reports on first use is pinned for the life of the client.
    pub trusted_key: Option<PublicKey>,
    /// A bearer token sent with every call (`authorization: Bearer ...`),
    /// for servers that authenticate (`converge-ledger token create`).
    pub token: Option<String>,
    /// TLS settings for `https://` addresses (without them, `https://`
    /// trusts the public web PKI roots).
    pub tls: Option<TlsOptions>,
    /// The limits WorldLine receipts are validated under, sent and
    /// received: the server's (the defaults, unless its operator raised
    /// them), or a receipt it accepted could fail the client's checks.
    pub worldline_limits: converge_ledger_worldline::WorldlineLimits,
    /// Pipeline appends: while other appends of this client (or its clones)
    /// are in flight, [`Client::append`](crate::Client::append) goes
    /// through one shared `AppendStream` (many appends per message, each
    /// acknowledged once durable) instead of a call of its own. Falls back
    /// to calls, under the same idempotency keys, when the server has no
    /// such stream or it breaks. On by default.
    pub pipeline_appends: bool,
}

/// How the client checks the server, and proves itself, over TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) the server's certificate must chain to; `None`:
    /// the public web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM), for servers that
    /// authenticate principals by certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host.
    pub domain: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            message_bytes_max: 64 * 1024 * 1024,
            attempts: 6,
            backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            trusted_key: None,
            token: None,
            tls: None,
            worldline_limits: converge_ledger_worldline::WorldlineLimits::default(),
            pipeline_appends: true,
        }
    }
}

/// Optional parts of an append.
#[derive(Debug, Clone, Default)]
pub struct AppendOptions {
    /// Metadata pairs.
    pub metadata: Metadata,
    /// Idempotency key; when `None` the client generates one, so its own
    /// retries can never append twice. Set it yourself to make *your*
    /// retries (across processes) safe too.
    pub idempotency_key: Option<String>,
    /// A Lamport time received from elsewhere (0: none).
    pub lamport: u64,
}

/// One entry of [`Client::append_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchEntry {
    /// Entry key.
    pub key: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Metadata pairs.
    pub metadata: Metadata,
}

/// Optional parts of a batch append.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// Idempotency key of the whole batch; when `None` the client generates
    /// one, so its own retries can never append the batch twice.
    pub idempotency_key: Option<String>,
    /// Append only if the context's head sequence is exactly this (0: the
    /// context must be empty); otherwise [`ClientError::FailedPrecondition`]
    /// and nothing is appended.
    pub expected_sequence: Option<u64>,
    /// A Lamport time received from elsewhere (0: none).
    pub lamport: u64,
}

/// The entries of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    /// The entries as stored, in order, with consecutive sequences.
    pub entries: Vec<Entry>,
    /// The batch had already been appended under its idempotency key (a
    /// retry); nothing new was appended.
    pub duplicate: bool,
}

/// What the server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The key heads and snapshots are signed with.
    pub public_key: PublicKey,
    /// The server's version.
    pub version: String,
    /// Most entries one [`Client::append_batch`] may carry.
    pub batch_entries_max: u32,
    /// Most bytes the server's streamed loads hold at once (a snapshot
    /// counts twice its size).
    pub load_stream_bytes_max: u64,
    /// The largest request message the server accepts (0: not reported).
    pub request_bytes_max: u64,
    /// How the server serves the WorldLine profile; `None` from a server
    /// that does not say (older, or without the profile).
    pub worldline: Option<WorldlineInfo>,
}

/// How a server serves the WorldLine profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldlineInfo {
    /// Whether the projections are kept up to date and queryable.
    pub projections: bool,
    /// The limits the server validates receipts under: set them as
    /// [`ClientOptions::worldline_limits`] to check what is read under the
    /// same ones.
    pub limits: converge_ledger_worldline::WorldlineLimits,
}

/// Which entries [`Client::get`] returns.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Only this key (None: all keys).
    pub key: Option<String>,
    /// Only entries after this sequence.
    pub after: u64,
    /// At most this many (0: all, within the server's response limit).
    pub limit: u32,
}

/// Entries and the context's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The entries, in sequence order.
    pub entries: Vec<Entry>,
    /// The context's head sequence, whatever the filter.
    pub latest_sequence: u64,
}

/// A snapshot blob with what the server said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBlob {
    /// The portable, self-verifying snapshot.
    pub bytes: Vec<u8>,
    /// Head sequence it ends at.
    pub sequence: u64,
    /// Number of entries.
    pub entry_count: u64,
    /// Format version.
    pub version: u32,
    /// Server time it was taken.
    pub created_at_ns: u64,
}

/// Result of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadResult {
    /// Entries written.
    pub entries_restored: u64,
    /// Head sequence afterwards.
    pub latest_sequence: u64,
}

/// The head of a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    /// Context id.
    pub context_id: String,
    /// Sequence of the last entry (0: empty).
    pub sequence: u64,
    /// Hash of the last entry (genesis hash when empty).
    pub hash: Digest,
    /// Merkle root over all entries.
    pub merkle_root: Digest,
    /// Lamport clock.
    pub lamport: u64,
    /// Time of the last entry.
    pub appended_at_ns: u64,
    /// Signer's public key.
    pub public_key: PublicKey,
    /// Ed25519 signature over the head.
    pub signature: [u8; 64],
    /// Whether, and from which signer, entries `1..=through` were loaded
    /// from a snapshot rather than appended through the ledger: the server
    /// signs for having loaded them, not for their origin.
    pub loaded: Option<LoadedFrom>,
}

impl HeadInfo {
    /// The head as a signed statement, for [`SignedHead::verify`].
    pub fn signed(&self) -> SignedHead {
        SignedHead {
            context: self.context_id.clone(),
            size: self.sequence,
            root: self.merkle_root,
            head_hash: self.hash,
            timestamp_ns: self.appended_at_ns,
            loaded: self.loaded,
            public_key: self.public_key,
            signature: self.signature,
        }
    }
}

/// A verified inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProofInfo {
    /// The entry's sequence.
    pub sequence: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The entry's hash.
    pub entry_hash: Digest,
    /// Audit path, leaf side first.
    pub path: Vec<Digest>,
    /// Root of the tree.
    pub root: Digest,
    /// The signed head the proof is anchored to: its signature checked
    /// against the trusted key, and `root` either its Merkle root or proven
    /// (by a consistency proof) to be the root of a prefix of it.
    pub anchor: HeadInfo,
}

/// A verified consistency proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProofInfo {
    /// Older tree size.
    pub old_size: u64,
    /// Newer tree size.
    pub new_size: u64,
    /// The proof.
    pub proof: Vec<Digest>,
    /// Older root.
    pub old_root: Digest,
    /// Newer root.
    pub new_root: Digest,
    /// The signed head the proof is anchored to (see
    /// [`InclusionProofInfo::anchor`]); `None` only for proofs the client
    /// fetches internally to link two heads it verifies itself.
    pub anchor: Option<HeadInfo>,
}
