//! The client: connection, retries and pinned keys here; one file per
//! group of operations.

mod pipeline;
mod read;
mod snapshots;
mod types;
mod verify;
mod worldline;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_core::{Digest, PublicKey};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::context::v1::context_service_client::ContextServiceClient;
use converge_ledger_proto::ledger::v1 as ext;
use converge_ledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{ClientError, Watch};

pub(crate) use read::{EntryCheck, entry_from_proto};
pub use types::*;
pub use worldline::{BlockingWorldlines, WorldlineState, WorldlineVerdict, projection_query};

/// A connection to a ledger server. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    context: ContextServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    worldline: converge_ledger_proto::ledger::v1::worldline_service_client::WorldlineServiceClient<
        Channel,
    >,
    options: ClientOptions,
    /// The last verified head per context, shared by clones.
    verified: Arc<Mutex<HashMap<String, HeadInfo>>>,
    /// The pinned server key (from options or first use).
    pinned: Arc<Mutex<Option<PublicKey>>>,
    /// Serialises [`Client::verify_head`], so two concurrent calls cannot
    /// each accept a head that forks from the other's.
    verifying: Arc<tokio::sync::Mutex<()>>,
    /// `Bearer <token>`, sent with every call when a token is configured.
    authorization: Option<MetadataValue<Ascii>>,
    /// Pipelined appends (one stream shared by clones).
    pipe: Arc<pipeline::Pipe>,
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
        bearer(&options)?;
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| ClientError::Connect(format!("{addr:?} is not a valid address: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let endpoint = with_tls(endpoint, &addr, &options)?;
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
        bearer(&options)?;
        let mut endpoints = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let addr = addr.as_ref();
            let endpoint = Endpoint::from_shared(addr.to_owned())
                .map_err(|e| ClientError::Connect(format!("{addr:?} is not a valid address: {e}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            endpoints.push(with_tls(endpoint, addr, &options)?);
        }
        Ok(Self::from_channel(
            Channel::balance_list(endpoints.into_iter()),
            options,
        ))
    }

    /// A client over an existing channel (e.g. an in-memory one in tests).
    /// A token that cannot be sent as metadata (not visible ASCII) is
    /// dropped; [`Client::connect_with`] refuses it instead.
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Client {
        let max = options.message_bytes_max;
        let authorization = bearer(&options).ok().flatten();
        Client {
            context: ContextServiceClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            ledger: LedgerServiceClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            worldline:
                converge_ledger_proto::ledger::v1::worldline_service_client::WorldlineServiceClient::new(
                    channel,
                )
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            pinned: Arc::new(Mutex::new(options.trusted_key)),
            verified: Arc::default(),
            verifying: Arc::default(),
            options,
            authorization,
            pipe: Arc::default(),
        }
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = self.stream_request(msg);
        r.set_timeout(self.options.request_timeout);
        r
    }

    /// What the append stream's task needs (it holds no client, so a
    /// dropped client ends it).
    fn link(&self) -> pipeline::Link {
        pipeline::Link {
            ledger: self.ledger.clone(),
            authorization: self.authorization.clone(),
        }
    }

    /// Appends this client acknowledged through its append stream.
    pub fn pipelined_appends(&self) -> u64 {
        self.pipe
            .streamed
            .load(std::sync::atomic::Ordering::Relaxed) as u64
    }

    /// A request without a deadline (streams), with the token if any.
    pub(crate) fn stream_request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert("authorization", a.clone());
        }
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
            worldline: info.worldline.map(|w| WorldlineInfo {
                projections: w.projections,
                limits: converge_ledger_worldline::WorldlineLimits {
                    identifier_bytes_max: w.identifier_bytes_max as usize,
                    text_bytes_max: w.text_bytes_max as usize,
                    uri_bytes_max: w.uri_bytes_max as usize,
                    list_items_max: w.list_items_max as usize,
                    state_updates_max: w.state_updates_max as usize,
                    state_key_bytes_max: w.state_key_bytes_max as usize,
                    state_value_bytes_max: usize::try_from(w.state_value_bytes_max)
                        .unwrap_or(usize::MAX),
                    state_bytes_max: w.state_bytes_max,
                    snapshot_chunk_bytes_max: usize::try_from(w.snapshot_chunk_bytes_max)
                        .unwrap_or(usize::MAX),
                },
            }),
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
        Ok(self
            .context
            .clone()
            .watch(self.stream_request(request))
            .await?
            .into_inner())
    }
}

/// TLS for an `https://` address; `http://` with TLS options is refused
/// (they would be ignored).
fn with_tls(
    endpoint: Endpoint,
    addr: &str,
    options: &ClientOptions,
) -> Result<Endpoint, ClientError> {
    let https = addr.starts_with("https://");
    let Some(tls) = options
        .tls
        .clone()
        .or_else(|| https.then(TlsOptions::default))
    else {
        return Ok(endpoint);
    };
    if !https {
        return Err(ClientError::Connect(format!(
            "TLS settings (a CA certificate or a client certificate) were given for {addr}, which \
             is not https://"
        )));
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_pem {
        Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        None => config.with_webpki_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    endpoint
        .tls_config(config)
        .map_err(|e| ClientError::Connect(format!("TLS settings for {addr}: {e}")))
}

/// The `authorization` metadata of `options.token`.
fn bearer(options: &ClientOptions) -> Result<Option<MetadataValue<Ascii>>, ClientError> {
    let Some(token) = &options.token else {
        return Ok(None);
    };
    format!("Bearer {token}")
        .parse()
        .map(Some)
        .map_err(|_| ClientError::Connect("the token holds characters that cannot be sent as gRPC metadata (use the token as printed by `converge-ledger token create`)".into()))
}

fn digest(bytes: &[u8], what: &str) -> Result<Digest, ClientError> {
    Digest::from_slice(bytes)
        .ok_or_else(|| ClientError::Protocol(format!("{what} is {} bytes, not 32", bytes.len())))
}
