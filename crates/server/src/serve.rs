use std::fmt;
use std::future::Future;
use std::sync::Arc;

use converge_ledger_proto::context::v1::context_service_server::ContextServiceServer;
use converge_ledger_proto::ledger::v1::ledger_service_server::LedgerServiceServer;
use converge_ledger_proto::ledger::v1::worldline_service_server::WorldlineServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::{self, ConnCounters, ConnLimits, RequestLayer};
use crate::ops::{Health, OpsState, RpcLayer, RpcMetrics};
use crate::service_context::ContextApi;
use crate::service_ledger::LedgerApi;
use crate::{Ledger, ServerConfig};

/// The server could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The gRPC transport failed.
    Transport(tonic::transport::Error),
    /// Storage failed (the final sync, a failed fsync, a full disk): writes
    /// acknowledged under a relaxed fsync policy may not be on disk.
    Storage(crate::LedgerError),
    /// The HTTP listener could not be used.
    Http(std::io::Error),
    /// The reflection service could not be built from the descriptors (a
    /// bug).
    Reflection(String),
}

fn reflection_failed(e: tonic_reflection::server::Error) -> ServeError {
    ServeError::Reflection(e.to_string())
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Transport(e) => write!(f, "gRPC transport failed: {e}"),
            ServeError::Storage(e) => write!(f, "storage failed: {e}"),
            ServeError::Http(e) => write!(f, "the HTTP listener failed: {e}"),
            ServeError::Reflection(e) => write!(f, "gRPC reflection failed: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Serves `ledger` on `listener` until `shutdown` completes; then stops
/// accepting, ends watch streams, lets in-flight requests finish, commits
/// and syncs everything queued, and returns.
pub async fn run(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let response_max = ledger.config().effective_response_bytes_max() + 64 * 1024;
    let request_max = config
        .request_bytes_max
        .max(ledger.limits().entry_bytes_max());
    let context = ContextServiceServer::new(ContextApi {
        ledger: ledger.clone(),
        auth: config.auth.clone(),
    })
    .max_decoding_message_size(request_max)
    .max_encoding_message_size(response_max);
    let worldlines = crate::Worldlines::new(ledger.clone(), config.worldline_limits.clone())
        .map_err(ServeError::Storage)?
        .with_cache_bytes(config.worldline_cache_bytes);
    let worldlines = Arc::new(if config.worldline_projections {
        worldlines.with_projector(crate::ProjectorOptions {
            nice: config.worldline_projector_nice,
            retire_after: config.worldline_projection_retire_after,
            cache_bytes: config.worldline_projector_cache_bytes,
            cache_on_any_store: false,
        })
    } else {
        worldlines
    });
    let extension = LedgerServiceServer::new(LedgerApi {
        ledger: ledger.clone(),
        auth: config.auth.clone(),
        request_bytes_max: request_max,
        worldline: crate::convert::worldline_info(
            &config.worldline_limits,
            worldlines.projector().is_some(),
        ),
    })
    .max_decoding_message_size(request_max)
    .max_encoding_message_size(response_max);
    let worldline = WorldlineServiceServer::new(crate::WorldlineApi {
        worldlines: worldlines.clone(),
        auth: config.auth.clone(),
    })
    .max_decoding_message_size(request_max)
    .max_encoding_message_size(response_max);
    let limits = ConnLimits {
        connections_max: config.connections_max,
        pending_max: config.pending_connections_max,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        tcp_keepalive: config.keepalive,
    };
    let counters = Arc::new(ConnCounters::default());
    let incoming = ReceiverStream::new(conn::accept(
        listener,
        limits,
        config.tls.clone(),
        counters.clone(),
    ));

    // Health (open to every caller, as probes expect), reflection (the
    // schema only) and observation of every call.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(converge_ledger_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(reflection_failed)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_failed)?;
    let rpc = Arc::new(RpcMetrics::default());
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let (health_tx, health_rx) = tokio::sync::watch::channel(Health::Serving);
    tokio::spawn(crate::ops::drive_health(
        ledger.clone(),
        reporter,
        health_tx,
        stopping_rx.clone(),
    ));
    if let Some(http) = &config.http_listener {
        let http = http
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .map_err(ServeError::Http)?;
        let state = Arc::new(OpsState {
            ledger: ledger.clone(),
            auth: config.auth.clone(),
            rpc: rpc.clone(),
            conns: counters,
            budget: config.request_budget.clone(),
            storage: config.storage_name.clone(),
            health: health_rx,
            worldlines: Some(worldlines.clone()),
        });
        tokio::spawn(crate::ops::serve_http(http, state, stopping_rx));
    }

    let stopping = ledger.clone();
    let (begin_shutdown, shutdown_begun) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.requests_per_connection_max)
        .max_concurrent_streams(config.streams_per_connection_max.max(1))
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(RpcLayer::new(rpc))
        .layer(RequestLayer::new(
            config.request_budget.clone(),
            request_max,
        ))
        .add_service(context)
        .add_service(extension)
        .add_service(worldline)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown_begun.await;
            // Watches never end on their own; end them so the graceful
            // shutdown does not wait forever.
            stopping.stop_watches();
        });
    tokio::pin!(serve);
    let grace = config.shutdown_grace;
    let served = tokio::select! {
        served = &mut serve => served,
        // Graceful shutdown got `grace` to finish; past that, dropping the
        // server closes the remaining connections.
        _ = async {
            shutdown.await;
            let _ = stopping_tx.send(true);
            let _ = begin_shutdown.send(());
            tokio::time::sleep(grace).await;
        } => Ok(()),
    };
    worldlines.stop_projections().await;
    let stopped = ledger.shutdown().await;
    served.map_err(ServeError::Transport)?;
    stopped.map_err(ServeError::Storage)
}
