use std::time::Duration;

use converge_ledger_core::{Limits, PublicKey};
use converge_ledger_store::WriterConfig;

use std::sync::Arc;

use crate::{Authority, HubLimits, RequestBudget, TlsServer};

/// Bounds of the in-process ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Per-request field limits.
    pub limits: Limits,
    /// Group-commit queue and batch bounds.
    pub writer: WriterConfig,
    /// Largest response (Get, Snapshot) in bytes; larger ones are refused with
    /// a message that says how to page. Never below one maximal entry.
    pub response_bytes_max: usize,
    /// Most concurrent watchers.
    pub watchers_max: usize,
    /// Bounds of the recent entries kept per watched context for live
    /// delivery (entries and bytes, per context and in all); a watcher that
    /// falls further behind reads from storage instead.
    pub hub: HubLimits,
    /// Entries a watcher reads from storage per step while catching up.
    pub watch_catch_up_chunk: usize,
    /// Bytes a watcher reads from storage per step (at least one entry): what
    /// a watcher whose client stopped reading holds at most, besides the
    /// transport's buffers.
    pub watch_chunk_bytes: usize,
    /// Most concurrent Read, SnapshotStream and LoadStream streams, over all
    /// connections (watches and AppendStreams have their own limits).
    pub streams_max: usize,
    /// Most snapshot bytes streamed loads (LoadStream) hold at once, over
    /// all streams; a load that would exceed it is refused.
    pub load_stream_bytes_max: usize,
    /// Keys whose signed snapshots Load accepts besides the server's own.
    pub trusted_keys: Vec<PublicKey>,
    /// Whether a Load that asks for it (`allow_unknown_signer`) may bring
    /// in a snapshot signed by any other key (`--accept-unknown-signers`).
    /// Off by default: then only a principal with the admin right on the
    /// target context may. Loaded history is marked in signed heads either
    /// way.
    pub accept_unknown_signers: bool,
    /// How far in the future of the server clock a loaded entry's time may
    /// be.
    pub clock_skew_max: Duration,
    /// Most AppendStreams open at once, over all connections (each SDK
    /// client that appends concurrently holds one).
    pub append_streams_max: usize,
    /// Most AppendStreams open at once on one connection, so that one
    /// client cannot take every slot of `append_streams_max`.
    pub append_streams_per_connection_max: usize,
    /// Most appends one AppendStream request message may carry.
    pub append_stream_message_appends_max: usize,
    /// Most appends one AppendStream holds unacknowledged: past it, the
    /// server reads no further message until acknowledgements are sent.
    pub append_stream_inflight_max: usize,
    /// Most bytes of appends one AppendStream holds unacknowledged (one
    /// message may go over it when nothing else is in flight).
    pub append_stream_inflight_bytes_max: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            writer: WriterConfig::default(),
            response_bytes_max: 4 * 1024 * 1024 + 128 * 1024,
            watchers_max: 4096,
            hub: HubLimits::default(),
            watch_catch_up_chunk: 512,
            watch_chunk_bytes: 256 * 1024,
            streams_max: 1024,
            load_stream_bytes_max: 256 * 1024 * 1024,
            trusted_keys: Vec::new(),
            accept_unknown_signers: false,
            clock_skew_max: Duration::from_secs(300),
            append_streams_max: 1024,
            append_streams_per_connection_max: 16,
            append_stream_message_appends_max: 4096,
            append_stream_inflight_max: 4096,
            append_stream_inflight_bytes_max: 16 * 1024 * 1024,
        }
    }
}

impl LedgerConfig {
    /// The response limit actually enforced: at least one maximal entry must
    /// always fit.
    pub fn effective_response_bytes_max(&self) -> usize {
        self.response_bytes_max.max(self.limits.entry_bytes_max())
    }

    /// Bytes per watch catch-up step, never above the response limit.
    pub fn watch_chunk_bytes_max(&self) -> usize {
        self.watch_chunk_bytes
            .clamp(1, self.effective_response_bytes_max())
    }
}

/// Bounds of the gRPC server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most open client connections; further ones are closed at once.
    pub connections_max: usize,
    /// Most concurrent requests on one connection.
    pub requests_per_connection_max: usize,
    /// Most open HTTP/2 streams (requests in flight plus open watches and
    /// reads) on one connection, announced to the client, whose further
    /// calls wait for a free stream instead of flooding the server.
    pub streams_per_connection_max: u32,
    /// Largest request message in bytes (Append, Load).
    pub request_bytes_max: usize,
    /// HTTP/2 keepalive ping interval, so dead peers are noticed.
    pub keepalive: Duration,
    /// How long shutdown waits for in-flight requests and streams to finish
    /// before closing connections anyway (a client that stopped reading
    /// must not keep the server alive). Writes already queued are committed
    /// either way.
    pub shutdown_grace: Duration,
    /// Who may do what (the open ledger by default: no authentication).
    pub auth: Arc<Authority>,
    /// TLS (rustls), reloadable; `None`: plain TCP.
    pub tls: Option<Arc<TlsServer>>,
    /// Most connections still in their handshake (TLS, HTTP/2 preface).
    pub pending_connections_max: usize,
    /// How long a connection may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection may stay without a request in flight.
    pub idle_timeout: Duration,
    /// How long the server waits for a keepalive ping's answer before it
    /// closes the connection (a half-open peer).
    pub keepalive_timeout: Duration,
    /// Bytes of requests being received and handled, over all
    /// connections, how long a request waits for them before
    /// `RESOURCE_EXHAUSTED`, and how long a request body may send nothing.
    pub request_budget: Arc<RequestBudget>,
    /// Where to serve `/metrics`, `/healthz` and the web view over HTTP;
    /// `None`: nowhere.
    pub http_listener: Option<Arc<std::net::TcpListener>>,
    /// The storage backend's name (for metrics and the web view).
    pub storage_name: String,
    /// Limits of WorldLine receipts and state (docs/design.md §18).
    pub worldline_limits: converge_ledger_worldline::WorldlineLimits,
    /// Memory for cached worldline replays (state and commitments), in
    /// bytes; least recently used ones are dropped past it.
    pub worldline_cache_bytes: u64,
    /// Keep the WorldLine projections up to date (seed 4.6; their queries
    /// answer `FAILED_PRECONDITION` when off). They cost CPU on the write
    /// path's cores: BENCHMARKS.md measures it.
    pub worldline_projections: bool,
    /// How many steps of niceness below the server's the projector thread
    /// runs (0 to 19; 0: the same priority). Folding then uses the time
    /// the appends leave instead of competing with them for the cores.
    pub worldline_projector_nice: i32,
    /// How long a retired projection version's records are kept after the
    /// queries moved to its successor (the time a rolling upgrade has to
    /// replace the nodes that still answer from it).
    pub worldline_projection_retire_after: std::time::Duration,
    /// Bytes of projection records the projector keeps in memory between
    /// folds (0: none), so that a fold reads from storage only what it has
    /// not seen.
    pub worldline_projector_cache_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connections_max: 1024,
            requests_per_connection_max: 256,
            streams_per_connection_max: 1024,
            request_bytes_max: 64 * 1024 * 1024,
            keepalive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            auth: Arc::new(Authority::open()),
            tls: None,
            pending_connections_max: 128,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_timeout: Duration::from_secs(20),
            request_budget: RequestBudget::new(
                512 * 1024 * 1024,
                Duration::from_secs(5),
                Duration::from_secs(30),
            ),
            http_listener: None,
            storage_name: "unnamed".into(),
            worldline_limits: converge_ledger_worldline::WorldlineLimits::default(),
            worldline_cache_bytes: 256 * 1024 * 1024,
            worldline_projections: true,
            worldline_projector_nice: crate::PROJECTOR_NICE_DEFAULT,
            worldline_projection_retire_after: crate::RETIRE_AFTER_DEFAULT,
            worldline_projector_cache_bytes: crate::PROJECTOR_CACHE_BYTES_DEFAULT,
        }
    }
}
