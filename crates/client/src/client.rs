use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_core::{Digest, Entry, Metadata, PublicKey, SignedHead, genesis_hash};
use converge_ledger_core::{merkle, snapshot};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::context::v1::context_service_client::ContextServiceClient;
use converge_ledger_proto::ledger::v1 as ext;
use converge_ledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, Watch};

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
}

/// A connection to a ledger server. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    context: ContextServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    options: ClientOptions,
    /// The last verified head per context, shared by clones.
    verified: Arc<Mutex<HashMap<String, HeadInfo>>>,
    /// The pinned server key (from options or first use).
    pinned: Arc<Mutex<Option<PublicKey>>>,
    /// Serialises [`Client::verify_head`], so two concurrent calls cannot
    /// each accept a head that forks from the other's.
    verifying: Arc<tokio::sync::Mutex<()>>,
}

static KEY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh idempotency key, unique across processes and time without a
/// random-number dependency: a hash of pid, wall clock, a process counter and
/// an address.
fn generated_key() -> String {
    let n = KEY_COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let local = &n as *const u64 as usize;
    let d = Digest::of(&[
        &std::process::id().to_be_bytes(),
        &now.to_be_bytes(),
        &n.to_be_bytes(),
        &local.to_be_bytes(),
    ]);
    format!("auto-{}", &d.to_hex()[..32])
}

impl Client {
    /// Connects to `addr` (e.g. `http://127.0.0.1:50051`) with default options.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, ClientError> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(
        addr: impl Into<String>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let addr = addr.into();
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| ClientError::Connect(format!("{addr:?} is not a valid address: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        Ok(Self::from_channel(channel, options))
    }

    /// Connects to several ledger nodes serving the same contexts (over a
    /// shared store). Requests are balanced over the nodes that are up; when
    /// a node fails, retries (with the same idempotency key) and resumed
    /// watches go to the others. Connections are made lazily, so this
    /// succeeds while some nodes are down.
    ///
    /// Must be called within a Tokio runtime (the balancer runs as a task).
    pub fn connect_many<S: AsRef<str>>(
        addrs: &[S],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Connect("no node address given".into()));
        }
        let mut endpoints = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let addr = addr.as_ref();
            endpoints.push(
                Endpoint::from_shared(addr.to_owned())
                    .map_err(|e| {
                        ClientError::Connect(format!("{addr:?} is not a valid address: {e}"))
                    })?
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true),
            );
        }
        Ok(Self::from_channel(
            Channel::balance_list(endpoints.into_iter()),
            options,
        ))
    }

    /// A client over an existing channel (e.g. an in-memory one in tests).
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Client {
        let max = options.message_bytes_max;
        Client {
            context: ContextServiceClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            ledger: LedgerServiceClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            pinned: Arc::new(Mutex::new(options.trusted_key)),
            verified: Arc::default(),
            verifying: Arc::default(),
            options,
        }
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.options.request_timeout);
        r
    }

    /// A load: retried when it is idempotent (without `fail_if_exists`, a
    /// repeated load restores nothing more); once otherwise, so that a
    /// retry of a load that did commit is not reported as `AlreadyExists`.
    async fn load_call<F, Fut>(
        &self,
        fail_if_exists: bool,
        call: F,
    ) -> Result<LoadResult, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<LoadResult, ClientError>>,
    {
        let mut call = call;
        if fail_if_exists {
            call().await
        } else {
            self.retry(call).await
        }
    }

    /// Runs `call` until it succeeds, fails for good, or attempts run out.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut delay = self.options.backoff;
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if e.is_transient() && attempt < self.options.attempts => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Appends one entry and returns it as stored. Transient failures are
    /// retried with the same idempotency key: exactly one entry results.
    pub async fn append(
        &self,
        context: &str,
        key: &str,
        payload: Vec<u8>,
        options: AppendOptions,
    ) -> Result<Entry, ClientError> {
        let request = pb::AppendRequest {
            context_id: context.to_owned(),
            key: key.to_owned(),
            payload,
            metadata: options.metadata.into_iter().collect(),
            idempotency_key: options.idempotency_key.unwrap_or_else(generated_key),
            lamport: options.lamport,
        };
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            let sent = &request;
            async move {
                let resp = c.append(r).await?.into_inner();
                let e = entry_from_proto(resp.entry.ok_or_else(|| {
                    ClientError::Protocol("append response without an entry".into())
                })?)?;
                EntryCheck::new(context).check(&e)?;
                if e.key != sent.key || e.payload != sent.payload || e.metadata.len() != sent.metadata.len()
                    || e.metadata.iter().any(|(k, v)| sent.metadata.get(k) != Some(v))
                {
                    return Err(ClientError::Verification(format!(
                        "the server acknowledged entry {} of {context:?} with other content than was appended",
                        e.sequence
                    )));
                }
                Ok(e)
            }
        })
        .await
    }

    /// Appends `entries` to `context` in order, atomically: they get
    /// consecutive sequences and become durable in one commit, or nothing
    /// is appended. One round trip whatever the count (up to the server's
    /// [`ServerInfo::batch_entries_max`] and the message limit). Transient
    /// failures are retried under one idempotency key, so the batch is
    /// appended exactly once. Every returned entry is checked: its hash
    /// recomputes from what was sent, and each links to the one before.
    pub async fn append_batch(
        &self,
        context: &str,
        entries: Vec<BatchEntry>,
        options: BatchOptions,
    ) -> Result<BatchResult, ClientError> {
        let request = ext::AppendBatchRequest {
            context_id: context.to_owned(),
            entries: entries
                .into_iter()
                .map(|e| ext::BatchEntry {
                    key: e.key,
                    payload: e.payload,
                    metadata: e.metadata.into_iter().collect(),
                })
                .collect(),
            idempotency_key: options.idempotency_key.unwrap_or_else(generated_key),
            expected_sequence: options.expected_sequence,
            lamport: options.lamport,
        };
        let resp = self
            .retry(|| {
                let mut c = self.ledger.clone();
                let r = self.request(request.clone());
                async move { Ok(c.append_batch(r).await?.into_inner()) }
            })
            .await?;
        let n = request.entries.len();
        if resp.receipts.len() != n {
            return Err(ClientError::Protocol(format!(
                "a batch of {n} entries was acknowledged with {} receipts",
                resp.receipts.len()
            )));
        }
        let first = resp.first_sequence;
        if first == 0 {
            return Err(ClientError::Protocol(
                "a batch was acknowledged at sequence 0".into(),
            ));
        }
        if let Some(expected) = options.expected_sequence
            && !resp.duplicate
            && first != expected + 1
        {
            return Err(ClientError::Verification(format!(
                "a batch conditional on head {expected} of {context:?} was appended at sequence {first}"
            )));
        }
        let mut prev = digest(&resp.prev_hash, "previous hash")?;
        if first == 1 && prev != genesis_hash(context) {
            return Err(ClientError::Verification(format!(
                "the first entry of {context:?} does not link to the context's genesis hash"
            )));
        }
        let mut out = Vec::with_capacity(n);
        for (i, (e, receipt)) in request.entries.into_iter().zip(resp.receipts).enumerate() {
            let entry = Entry {
                sequence: first + i as u64,
                key: e.key,
                payload: e.payload,
                metadata: e.metadata.into_iter().collect(),
                appended_at_ns: receipt.appended_at_ns,
                lamport: receipt.lamport,
                prev_hash: prev,
                hash: digest(&receipt.hash, "entry hash")?,
            };
            if entry.compute_hash(context) != entry.hash {
                return Err(ClientError::Verification(format!(
                    "the server acknowledged entry {} of {context:?} with a hash that does not \
                     match what was appended",
                    entry.sequence
                )));
            }
            prev = entry.hash;
            out.push(entry);
        }
        Ok(BatchResult {
            entries: out,
            duplicate: resp.duplicate,
        })
    }

    /// Entries of a context (one message; see [`Client::read_all`] for
    /// contexts beyond the message limit).
    pub async fn get(&self, context: &str, options: GetOptions) -> Result<GetResult, ClientError> {
        let request = pb::GetRequest {
            context_id: context.to_owned(),
            key: options.key.unwrap_or_default(),
            after_sequence: options.after,
            limit: options.limit,
        };
        let (filtered, after, unlimited) = (
            !request.key.is_empty(),
            request.after_sequence,
            request.limit == 0,
        );
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.get(r).await?.into_inner();
                let entries: Vec<Entry> = resp
                    .entries
                    .into_iter()
                    .map(entry_from_proto)
                    .collect::<Result<_, _>>()?;
                let mut check = match filtered {
                    false => EntryCheck::contiguous(context, after),
                    true => EntryCheck::new(context),
                };
                for e in &entries {
                    check.check(e)?;
                }
                if unlimited {
                    check.finish(resp.latest_sequence)?;
                }
                Ok(GetResult {
                    entries,
                    latest_sequence: resp.latest_sequence,
                })
            }
        })
        .await
    }

    /// Streams entries in chunks through the extension `Read`, calling
    /// `visit` for each; memory stays bounded whatever the context's size.
    /// Returns the head sequence at the start of the read.
    pub async fn read_all(
        &self,
        context: &str,
        options: GetOptions,
        mut visit: impl FnMut(Entry),
    ) -> Result<u64, ClientError> {
        let request = ext::ReadRequest {
            context_id: context.to_owned(),
            key: options.key.unwrap_or_default(),
            after_sequence: options.after,
            limit: options.limit as u64,
        };
        let (key_filtered, after, limited) = (
            !request.key.is_empty(),
            request.after_sequence,
            request.limit != 0,
        );
        let mut stream = self.ledger.clone().read(request).await?.into_inner();
        let mut latest = 0;
        let mut check = match key_filtered {
            false => EntryCheck::contiguous(context, after),
            true => EntryCheck::new(context),
        };
        while let Some(msg) = stream.message().await? {
            latest = msg.latest_sequence;
            for e in msg.entries {
                let e = entry_from_proto(e)?;
                check.check(&e)?;
                visit(e);
            }
        }
        if !limited {
            check.finish(latest)?;
        }
        Ok(latest)
    }

    /// A snapshot of the whole context.
    pub async fn snapshot(&self, context: &str) -> Result<SnapshotBlob, ClientError> {
        let request = pb::SnapshotRequest {
            context_id: context.to_owned(),
        };
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.snapshot(r).await?.into_inner();
                Ok(snapshot_blob(
                    resp.snapshot,
                    resp.sequence,
                    resp.metadata.unwrap_or_default(),
                ))
            }
        })
        .await
    }

    /// Restores a snapshot into `context` (verified by the server before
    /// anything is written). A snapshot signed by a key the server does not
    /// trust needs `allow_unknown_signer`. Transient failures are retried
    /// (Load is idempotent) except with `fail_if_exists`: a retry after a
    /// lost reply would report `AlreadyExists` for a load that succeeded, so
    /// that case returns the transient error for the caller to check.
    pub async fn load(
        &self,
        context: &str,
        snapshot: Vec<u8>,
        fail_if_exists: bool,
        allow_unknown_signer: bool,
    ) -> Result<LoadResult, ClientError> {
        let request = pb::LoadRequest {
            context_id: context.to_owned(),
            snapshot,
            fail_if_exists,
            allow_unknown_signer,
        };
        let call = || {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move { Ok(load_result(c.load(r).await?.into_inner())) }
        };
        self.load_call(fail_if_exists, call).await
    }

    /// A snapshot of any size (`converge.ledger.v1` SnapshotStream): its
    /// bytes are written to `out` piece by piece as they arrive, and what
    /// the server says about it is returned (with `bytes` empty). Not
    /// retried: after an error `out` holds a prefix; start again.
    pub async fn snapshot_to(
        &self,
        context: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<SnapshotBlob, ClientError> {
        let mut c = self.ledger.clone();
        let mut stream = c
            .snapshot_stream(Request::new(ext::SnapshotStreamRequest {
                context_id: context.to_owned(),
            }))
            .await?
            .into_inner();
        let mut info: Option<SnapshotBlob> = None;
        let mut check = snapshot::PieceCheck::new();
        while let Some(chunk) = stream.message().await? {
            check.update(&chunk.data);
            if let Some(meta) = chunk.metadata {
                info = Some(snapshot_blob(Vec::new(), chunk.sequence, meta));
            }
            out.write_all(&chunk.data).map_err(|e| {
                ClientError::Io(format!("writing the snapshot of {context:?}: {e}"))
            })?;
        }
        let info = info.ok_or_else(|| {
            ClientError::Protocol(format!(
                "the snapshot stream of {context:?} ended without its metadata"
            ))
        })?;
        // A stream that ended early (the server failed mid-way) ends OK on
        // the wire; only the checksum tells.
        check
            .finish()
            .map_err(|e| ClientError::Verification(format!("the snapshot of {context:?}: {e}")))?;
        Ok(info)
    }

    /// [`Client::snapshot_to`] into memory: a snapshot beyond the message
    /// limit, as one blob.
    pub async fn snapshot_streamed(&self, context: &str) -> Result<SnapshotBlob, ClientError> {
        let mut bytes = Vec::new();
        let mut blob = self.snapshot_to(context, &mut bytes).await?;
        blob.bytes = bytes;
        Ok(blob)
    }

    /// [`Client::load`] for a snapshot of any size (`converge.ledger.v1`
    /// LoadStream): sent in pieces, verified completely by the server
    /// before anything is written, within its streamed-load budget
    /// ([`ServerInfo::load_stream_bytes_max`]).
    pub async fn load_streamed(
        &self,
        context: &str,
        snapshot: Vec<u8>,
        fail_if_exists: bool,
        allow_unknown_signer: bool,
    ) -> Result<LoadResult, ClientError> {
        // Below any server's request limit (never under one maximal
        // entry, which is larger whatever the limits).
        const PIECE: usize = 64 * 1024;
        let snapshot = Arc::new(snapshot);
        let call = || {
            let mut c = self.ledger.clone();
            let snapshot = snapshot.clone();
            let context = context.to_owned();
            async move {
                let pieces = snapshot.len().div_ceil(PIECE).max(1);
                let messages = (0..pieces).map(move |i| ext::LoadChunk {
                    context_id: if i == 0 {
                        context.clone()
                    } else {
                        String::new()
                    },
                    fail_if_exists,
                    allow_unknown_signer,
                    data: snapshot
                        [(i * PIECE).min(snapshot.len())..((i + 1) * PIECE).min(snapshot.len())]
                        .to_vec(),
                });
                let resp = c
                    .load_stream(Request::new(tokio_stream::iter(messages)))
                    .await?
                    .into_inner();
                Ok(load_result(resp))
            }
        };
        self.load_call(fail_if_exists, call).await
    }

    /// The head of a context.
    pub async fn head(&self, context: &str) -> Result<HeadInfo, ClientError> {
        Ok(self.head_request(context, false).await?.0)
    }

    /// The head of a context and its last entry (`None`: the context is
    /// empty), read together in one call: the entry is the one the head
    /// names, checked against the head's hash.
    pub async fn last_entry(
        &self,
        context: &str,
    ) -> Result<(HeadInfo, Option<Entry>), ClientError> {
        let (head, entry) = self.head_request(context, true).await?;
        match &entry {
            None if head.sequence > 0 => Err(ClientError::Protocol(format!(
                "the head of {context:?} is at sequence {} but came without its entry",
                head.sequence
            ))),
            Some(e) if e.sequence != head.sequence || e.hash != head.hash => {
                Err(ClientError::Verification(format!(
                    "the last entry of {context:?} (sequence {}) is not the one its head names \
                     (sequence {})",
                    e.sequence, head.sequence
                )))
            }
            _ => Ok((head, entry)),
        }
    }

    async fn head_request(
        &self,
        context: &str,
        include_entry: bool,
    ) -> Result<(HeadInfo, Option<Entry>), ClientError> {
        let request = ext::HeadRequest {
            context_id: context.to_owned(),
            include_entry,
        };
        self.retry(|| {
            let mut c = self.ledger.clone();
            let r = self.request(request.clone());
            async move {
                let mut h = c.head(r).await?.into_inner();
                let entry = match h.entry.take() {
                    Some(e) => {
                        let e = entry_from_proto(e)?;
                        EntryCheck::new(context).check(&e)?;
                        Some(e)
                    }
                    None => None,
                };
                let signature = <[u8; 64]>::try_from(h.signature.as_slice()).map_err(|_| {
                    ClientError::Protocol(format!(
                        "head signature is {} bytes, not 64",
                        h.signature.len()
                    ))
                })?;
                let info = HeadInfo {
                    context_id: h.context_id,
                    sequence: h.sequence,
                    hash: digest(&h.hash, "head hash")?,
                    merkle_root: digest(&h.merkle_root, "Merkle root")?,
                    lamport: h.lamport,
                    appended_at_ns: h.appended_at_ns,
                    public_key: PublicKey(digest(&h.public_key, "public key")?.0),
                    signature,
                };
                if info.context_id != context {
                    return Err(ClientError::Verification(format!(
                        "asked for the head of {context:?}, the server answered with the head of {:?}",
                        info.context_id
                    )));
                }
                info.signed()
                    .verify()
                    .map_err(|e| ClientError::Verification(e.0))?;
                Ok((info, entry))
            }
        })
        .await
    }

    /// The server's signing key, as it reports it.
    pub async fn server_public_key(&self) -> Result<PublicKey, ClientError> {
        Ok(self.server_info().await?.public_key)
    }

    /// The server's key, version and limits.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        let info = self
            .ledger
            .clone()
            .server_info(self.request(ext::ServerInfoRequest {}))
            .await?
            .into_inner();
        Ok(ServerInfo {
            public_key: PublicKey(digest(&info.public_key, "public key")?.0),
            version: info.version,
            batch_entries_max: info.batch_entries_max,
            load_stream_bytes_max: info.load_stream_bytes_max,
            request_bytes_max: info.request_bytes_max,
        })
    }

    /// The key heads must be signed with: the configured one, or the one the
    /// server reported first (pinned from then on).
    pub async fn trusted_key(&self) -> Result<PublicKey, ClientError> {
        if let Some(k) = *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(k);
        }
        let k = self.server_public_key().await?;
        Ok(*self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(k))
    }

    /// Fetches the head of `context`, checks its signature is by the trusted
    /// key, and — if this client verified a head of the context before —
    /// checks with a consistency proof that the new head extends it. Any
    /// rewrite of history the client has seen is reported as
    /// [`ClientError::Verification`]; on success the new head is remembered.
    pub async fn verify_head(&self, context: &str) -> Result<HeadInfo, ClientError> {
        let _one_at_a_time = self.verifying.lock().await;
        let trusted = self.trusted_key().await?;
        let head = self.head(context).await?;
        if head.public_key != trusted {
            return Err(ClientError::Verification(format!(
                "the head of {context:?} is signed by {}, not by the trusted key {trusted}",
                head.public_key
            )));
        }
        let previous = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(context)
            .cloned();
        if let Some(old) = previous {
            if head.sequence < old.sequence {
                return Err(ClientError::Verification(format!(
                    "context {context:?} shrank from {} to {} entries: history was rewritten",
                    old.sequence, head.sequence
                )));
            }
            if old.sequence > 0 {
                let p = self
                    .fetch_consistency(context, old.sequence, head.sequence)
                    .await?;
                merkle::verify_consistency(old.sequence, head.sequence, &old.merkle_root, &head.merkle_root, &p.proof)
                    .map_err(|e| {
                        ClientError::Verification(format!(
                            "context {context:?} at size {} is not an extension of the size {} verified before: {e}",
                            head.sequence, old.sequence
                        ))
                    })?;
            }
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(context.to_owned(), head.clone());
        Ok(head)
    }

    /// Fetches and verifies a proof that entry `sequence` is in the tree of
    /// `tree_size` entries (0: the head) of `context`.
    pub async fn inclusion_proof(
        &self,
        context: &str,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProofInfo, ClientError> {
        let r = self
            .ledger
            .clone()
            .inclusion_proof(self.request(ext::InclusionProofRequest {
                context_id: context.to_owned(),
                sequence,
                tree_size,
            }))
            .await?
            .into_inner();
        if r.sequence != sequence || (tree_size != 0 && r.tree_size != tree_size) {
            return Err(ClientError::Verification(format!(
                "asked for entry {sequence} in a tree of {tree_size}, the server proved entry {} in a tree of {}",
                r.sequence, r.tree_size
            )));
        }
        let info = InclusionProofInfo {
            sequence: r.sequence,
            tree_size: r.tree_size,
            entry_hash: digest(&r.entry_hash, "entry hash")?,
            path: r
                .path
                .iter()
                .map(|p| digest(p, "proof node"))
                .collect::<Result<_, _>>()?,
            root: digest(&r.root, "root")?,
        };
        merkle::verify_inclusion(
            &merkle::leaf_hash(&info.entry_hash.0),
            info.sequence.saturating_sub(1),
            info.tree_size,
            &info.path,
            &info.root,
        )
        .map_err(|e| ClientError::Verification(e.0))?;
        Ok(info)
    }

    /// Fetches and verifies a consistency proof between two tree sizes of
    /// `context` (`new_size` 0: the head).
    pub async fn consistency_proof(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProofInfo, ClientError> {
        let p = self.fetch_consistency(context, old_size, new_size).await?;
        if p.old_size != old_size || (new_size != 0 && p.new_size != new_size) {
            return Err(ClientError::Verification(format!(
                "asked for a proof from {old_size} to {new_size}, the server proved {} to {}",
                p.old_size, p.new_size
            )));
        }
        merkle::verify_consistency(p.old_size, p.new_size, &p.old_root, &p.new_root, &p.proof)
            .map_err(|e| ClientError::Verification(e.0))?;
        Ok(p)
    }

    async fn fetch_consistency(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProofInfo, ClientError> {
        let r = self
            .ledger
            .clone()
            .consistency_proof(self.request(ext::ConsistencyProofRequest {
                context_id: context.to_owned(),
                old_size,
                new_size,
            }))
            .await?
            .into_inner();
        Ok(ConsistencyProofInfo {
            old_size: r.old_size,
            new_size: r.new_size,
            proof: r
                .proof
                .iter()
                .map(|p| digest(p, "proof node"))
                .collect::<Result<_, _>>()?,
            old_root: digest(&r.old_root, "old root")?,
            new_root: digest(&r.new_root, "new root")?,
        })
    }

    /// The entry with `hash` and its context, verified against the hash.
    pub async fn get_by_hash(&self, hash: &Digest) -> Result<(String, Entry), ClientError> {
        let r = self
            .ledger
            .clone()
            .get_by_hash(self.request(ext::GetByHashRequest {
                hash: hash.0.to_vec(),
            }))
            .await?
            .into_inner();
        let entry = entry_from_proto(
            r.entry
                .ok_or_else(|| ClientError::Protocol("no entry in the response".into()))?,
        )?;
        EntryCheck::new(&r.context_id).check(&entry)?;
        if entry.hash != *hash {
            return Err(ClientError::Verification(format!(
                "asked for entry {hash}, got {}",
                entry.hash
            )));
        }
        Ok((r.context_id, entry))
    }

    /// Non-empty contexts with their head sequences, one page.
    pub async fn list_contexts(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, ClientError> {
        let request = ext::ListContextsRequest {
            after_context_id: after.to_owned(),
            limit,
        };
        let resp = self
            .ledger
            .clone()
            .list_contexts(self.request(request))
            .await?
            .into_inner();
        Ok(resp
            .contexts
            .into_iter()
            .map(|c| (c.context_id, c.sequence))
            .collect())
    }

    /// Watches `context` from after sequence `from`, resuming after
    /// disconnects. See [`Watch`].
    pub fn watch(&self, context: &str, key: Option<&str>, from: u64) -> Watch {
        Watch::new(self.clone(), context, key, from)
    }

    pub(crate) async fn open_watch(
        &self,
        context: &str,
        key: &str,
        from: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, ClientError> {
        let request = pb::WatchRequest {
            context_id: context.to_owned(),
            key: key.to_owned(),
            from_sequence: from,
        };
        Ok(self.context.clone().watch(request).await?.into_inner())
    }
}

fn snapshot_blob(bytes: Vec<u8>, sequence: u64, meta: pb::SnapshotMetadata) -> SnapshotBlob {
    SnapshotBlob {
        bytes,
        sequence,
        entry_count: meta.entry_count,
        version: meta.version,
        created_at_ns: meta.created_at_ns,
    }
}

fn load_result(r: pb::LoadResponse) -> LoadResult {
    LoadResult {
        entries_restored: r.entries_restored,
        latest_sequence: r.latest_sequence,
    }
}

fn digest(bytes: &[u8], what: &str) -> Result<Digest, ClientError> {
    Digest::from_slice(bytes)
        .ok_or_else(|| ClientError::Protocol(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// Checks entries of one context as they arrive: each hash recomputes, and
/// each entry that directly follows the previous one links to it.
pub(crate) struct EntryCheck<'a> {
    context: &'a str,
    last: Option<(u64, Digest)>,
    /// For unfiltered reads: the sequence the next entry must have (a
    /// server that skips entries is caught).
    next: Option<u64>,
}

impl<'a> EntryCheck<'a> {
    /// Checks hashes and links of entries that may skip sequences (filtered
    /// reads, single entries).
    pub(crate) fn new(context: &'a str) -> Self {
        Self {
            context,
            last: None,
            next: None,
        }
    }

    /// Also requires every sequence after `after`, without gaps.
    pub(crate) fn contiguous(context: &'a str, after: u64) -> Self {
        Self {
            context,
            last: None,
            next: Some(after + 1),
        }
    }

    /// Continues a check after `last` (a resumed watch).
    pub(crate) fn resume(context: &'a str, last: Option<(u64, Digest)>, next: Option<u64>) -> Self {
        Self {
            context,
            last,
            next,
        }
    }

    /// For contiguous checks of a complete read: the entries must reach
    /// `latest` (the head the server reported).
    pub(crate) fn finish(&self, latest: u64) -> Result<(), ClientError> {
        match self.next {
            Some(n) if n <= latest => Err(ClientError::Verification(format!(
                "the server reported {latest} entries in {:?} but returned none after {}",
                self.context,
                n - 1
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) fn last(&self) -> Option<(u64, Digest)> {
        self.last
    }

    pub(crate) fn check(&mut self, e: &Entry) -> Result<(), ClientError> {
        let computed = e.compute_hash(self.context);
        if computed != e.hash {
            return Err(ClientError::Verification(format!(
                "entry {} of {:?} hashes to {computed}, not to the {} it claims",
                e.sequence, self.context, e.hash
            )));
        }
        if let Some(n) = self.next {
            if e.sequence != n {
                return Err(ClientError::Verification(format!(
                    "expected entry {n} of {:?}, the server sent entry {}",
                    self.context, e.sequence
                )));
            }
            self.next = Some(n + 1);
        }
        if let Some((seq, hash)) = self.last {
            if e.sequence <= seq {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} arrived after entry {seq}",
                    e.sequence, self.context
                )));
            }
            if e.sequence == seq + 1 && e.prev_hash != hash {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} does not link to entry {seq}",
                    e.sequence, self.context
                )));
            }
        }
        self.last = Some((e.sequence, e.hash));
        Ok(())
    }
}

/// Converts a wire entry, checking that its hashes are well-formed and that
/// its id is its hash.
pub(crate) fn entry_from_proto(e: pb::Entry) -> Result<Entry, ClientError> {
    let hash = digest(&e.hash, "entry hash")?;
    let prev_hash = digest(&e.prev_hash, "previous hash")?;
    if e.id != hash.to_hex() {
        return Err(ClientError::Protocol(format!(
            "entry {} has id {:?}, which is not its hash {hash}",
            e.sequence, e.id
        )));
    }
    Ok(Entry {
        sequence: e.sequence,
        key: e.key,
        payload: e.payload,
        metadata: e.metadata.into_iter().collect(),
        appended_at_ns: e.appended_at_ns,
        lamport: e.lamport,
        prev_hash,
        hash,
    })
}
