use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use converge_ledger_core::{Digest, Entry, Metadata};
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            message_bytes_max: 64 * 1024 * 1024,
            attempts: 6,
            backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
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
}

/// A connection to a ledger server. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    context: ContextServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    options: ClientOptions,
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
            async move {
                let resp = c.append(r).await?.into_inner();
                entry_from_proto(resp.entry.ok_or_else(|| {
                    ClientError::Protocol("append response without an entry".into())
                })?)
            }
        })
        .await
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
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.get(r).await?.into_inner();
                Ok(GetResult {
                    entries: resp
                        .entries
                        .into_iter()
                        .map(entry_from_proto)
                        .collect::<Result<_, _>>()?,
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
        let mut stream = self.ledger.clone().read(request).await?.into_inner();
        let mut latest = 0;
        while let Some(msg) = stream.message().await? {
            latest = msg.latest_sequence;
            for e in msg.entries {
                visit(entry_from_proto(e)?);
            }
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
                let meta = resp.metadata.unwrap_or_default();
                Ok(SnapshotBlob {
                    bytes: resp.snapshot,
                    sequence: resp.sequence,
                    entry_count: meta.entry_count,
                    version: meta.version,
                    created_at_ns: meta.created_at_ns,
                })
            }
        })
        .await
    }

    /// Restores a snapshot into `context` (verified by the server before
    /// anything is written). Safe to retry: Load is idempotent.
    pub async fn load(
        &self,
        context: &str,
        snapshot: Vec<u8>,
        fail_if_exists: bool,
    ) -> Result<LoadResult, ClientError> {
        let request = pb::LoadRequest {
            context_id: context.to_owned(),
            snapshot,
            fail_if_exists,
        };
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.load(r).await?.into_inner();
                Ok(LoadResult {
                    entries_restored: resp.entries_restored,
                    latest_sequence: resp.latest_sequence,
                })
            }
        })
        .await
    }

    /// The head of a context.
    pub async fn head(&self, context: &str) -> Result<HeadInfo, ClientError> {
        let request = ext::HeadRequest {
            context_id: context.to_owned(),
        };
        self.retry(|| {
            let mut c = self.ledger.clone();
            let r = self.request(request.clone());
            async move {
                let h = c.head(r).await?.into_inner();
                Ok(HeadInfo {
                    context_id: h.context_id,
                    sequence: h.sequence,
                    hash: digest(&h.hash, "head hash")?,
                    merkle_root: digest(&h.merkle_root, "Merkle root")?,
                    lamport: h.lamport,
                    appended_at_ns: h.appended_at_ns,
                })
            }
        })
        .await
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

fn digest(bytes: &[u8], what: &str) -> Result<Digest, ClientError> {
    Digest::from_slice(bytes)
        .ok_or_else(|| ClientError::Protocol(format!("{what} is {} bytes, not 32", bytes.len())))
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
