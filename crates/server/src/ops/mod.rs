//! Operating the ledger: the gRPC health service, observed calls (metrics
//! and a log line per handled error), and the HTTP listener with
//! `/metrics`, `/healthz` and the web view.

mod http;
mod metrics;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use http::serve_http;
pub use rpc::{RpcLayer, RpcMetrics};
pub(crate) use rpc::{log_refused, note_context};

use crate::conn::ConnCounters;
use crate::{Authority, Ledger, RequestBudget};

/// Everything the HTTP listener reads.
pub struct OpsState {
    /// The ledger served.
    pub ledger: Arc<Ledger>,
    /// Who may read what (the web view's API honours it).
    pub auth: Arc<Authority>,
    /// Observed gRPC calls.
    pub rpc: Arc<RpcMetrics>,
    /// gRPC connections.
    pub conns: Arc<ConnCounters>,
    /// The request-bytes budget.
    pub budget: Arc<RequestBudget>,
    /// The storage backend's name, for `build_info` and the web view.
    pub storage: String,
    /// Serving, or why not.
    pub health: tokio::sync::watch::Receiver<Health>,
    /// The WorldLine profile, for the web view's provenance of a state key.
    pub worldlines: Option<Arc<crate::Worldlines>>,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// Whether the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Accepting requests, storage healthy.
    Serving,
    /// Shutting down, or storage failed: the reason.
    NotServing(String),
}

/// The gRPC services whose status the health service reports, besides the
/// server as a whole ("").
const SERVICES: [&str; 3] = [
    "converge.context.v1.ContextService",
    "converge.ledger.v1.LedgerService",
    "converge.ledger.v1.WorldlineService",
];

/// Keeps the health service and `health` up to date: serving until
/// `stopping` fires or storage reports a failure that needs a restart,
/// then not serving (for good).
pub(crate) async fn drive_health(
    ledger: Arc<Ledger>,
    reporter: HealthReporter,
    health: tokio::sync::watch::Sender<Health>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let set = |status: ServingStatus| {
        let reporter = reporter.clone();
        async move {
            reporter.set_service_status("", status).await;
            for s in SERVICES {
                reporter.set_service_status(s, status).await;
            }
        }
    };
    set(ServingStatus::Serving).await;
    let reason = loop {
        if let Some(e) = ledger.storage_failure() {
            break format!("storage failed: {e}");
        }
        if *stopping.borrow() {
            break "shutting down".to_owned();
        }
        tokio::select! {
            changed = stopping.changed() => if changed.is_err() {
                break "shutting down".to_owned();
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    tracing::warn!(reason = %reason, "health: not serving");
    set(ServingStatus::NotServing).await;
    let _ = health.send(Health::NotServing(reason));
}
