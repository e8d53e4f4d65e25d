//! The Converge ledger server, as a library.
//!
//! [`Ledger`] is the in-process API (append, read, snapshot, load, watch)
//! over any [`Store`](converge_ledger_store::Store), with group commit and the
//! watch hub; [`run`] serves it over gRPC (`converge.context.v1` and the
//! `converge.ledger.v1` extension) on a listener until a shutdown future
//! completes, then drains in-flight work and syncs storage. Binaries stay
//! thin: they parse flags, open a store and call [`run`].

mod auth;
mod config;
mod conn;
mod convert;
mod error;
mod hub;
mod keys;
mod ledger;
mod ops;
mod serve;
mod service_context;
mod service_ledger;
mod service_stream;
mod worldline;

pub use auth::{
    AuthConfig, Authority, Caller, ConfigError, Grant, Pattern, PeerCertificate, PrincipalConfig,
    Right, new_token,
};
pub use config::{LedgerConfig, ServerConfig};
pub use conn::{ConnInfo, RequestBudget, TlsError, TlsFiles, TlsServer};
pub use convert::entry_to_proto;
pub use error::{HEAD_SEQUENCE_METADATA, LedgerError};
pub use hub::{Hub, HubLimits, Live, Subscription};
pub use keys::{KeyError, load_or_create_key, random_seed};
pub use ledger::{
    Appended, AppendedBatch, ConsistencyProof, InclusionProof, Ledger, Loaded, PendingAppend,
    RecordsChunk, Snapshot, SnapshotInfo, WatchStream,
};
pub use ops::{Health, OpsState, RpcLayer, RpcMetrics};
pub use serve::{ServeError, run};
pub use worldline::{
    AppendedReceipt, DerivedRead, FOLD_BYTES_MAX, FOLD_RECEIPTS_MAX, NICE_MAX,
    PROJECTOR_CACHE_BYTES_DEFAULT, PROJECTOR_NICE_DEFAULT, Position, Projector, ProjectorOptions,
    ProjectorQueue, ProjectorStats, RETIRE_AFTER_DEFAULT, Verified, WAIT_DEFAULT, WAIT_MAX,
    WorldlineApi, Worldlines, WrittenSnapshot, receipt_json,
};
