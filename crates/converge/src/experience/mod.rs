//! converge-core's `ExperienceStore` over the ledger, with index contexts.

mod query;
mod write;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use converge_core::experience_store::{
    ArtifactKind, EventQuery, ExperienceEvent, ExperienceEventEnvelope, ExperienceRecord,
    ExperienceStore, ExperienceStoreError, ExperienceStoreResult, UserExperienceEventEnvelope,
};
use converge_core::governed_artifact::LifecycleEvent;
use converge_core::kernel_boundary::ReplayTrace;
use converge_core::types::{ArtifactId, TraceLinkId};
use converge_ledger_client::{Client, ClientOptions};

use crate::{Error, naming};

use self::write::Record;

/// Characters of `occurred_at` that name its time bucket (`2026-01-21T12`:
/// one bucket per hour for RFC 3339 timestamps).
const BUCKET_CHARS: usize = 13;

/// Concurrent ledger calls per operation.
const CONCURRENCY: usize = 16;

/// How a [`LedgerExperienceStore`] names its contexts and connects.
#[derive(Debug, Clone)]
pub struct ExperienceStoreOptions {
    /// Prefix of every context id the store uses.
    pub prefix: String,
    /// Options of the store's ledger connection.
    pub client: ClientOptions,
}

impl Default for ExperienceStoreOptions {
    fn default() -> Self {
        Self {
            prefix: "converge/experience/".to_owned(),
            client: ClientOptions::default(),
        }
    }
}

/// converge-core's [`ExperienceStore`] (append-only experience events,
/// user events and their queries) backed by ledger contexts.
///
/// Layout (`P` is the prefix, `S` the tenant's space: `t.<tenant>`, or
/// `none` for events without a tenant; names percent-encoded):
///
/// | context | holds |
/// |---|---|
/// | `P S/events` | every event of the space, in append order: key `engine` or `user`, payload the envelope as JSON |
/// | `P S/kind/<Kind>` | one reference per engine event of that kind |
/// | `P S/corr/<id>` | one reference per event with that correlation id |
/// | `P S/chain/<id>` | one reference per engine event with that chain id |
/// | `P S/time/<bucket>` | one reference per event whose `occurred_at` starts with the bucket (its first 13 characters: the hour of an RFC 3339 time) |
/// | `P S/buckets` | each time bucket of the space, once |
/// | `P spaces` | each space, once |
/// | `P trace/<id>` | a reference to each `ReplayTraceRecorded` event of that trace link |
///
/// A reference is a small entry whose metadata carries the event's
/// sequence in `S/events` and everything queries filter on (`event_id`,
/// `occurred_at`, `record`, `kind`, `correlation_id`, `chain_id`). A query
/// reads the one candidate stream expected to be smallest (a correlation,
/// chain, kinds or time index, or the space's events when nothing narrows
/// it), filters its references exactly, and fetches only the matching
/// events by sequence. Nothing scans all events ever written; a query
/// without a tenant visits each space's indexes.
///
/// Time ranges compare `occurred_at` strings, inclusive at both ends
/// (chronological for RFC 3339 times in one format). `occurred_at` is the
/// caller's value and need not grow with appends, which is why time uses a
/// bucket index rather than a search over the ledger's append times.
/// Results are ordered by `occurred_at`, then append order (then space),
/// and `limit` keeps the first ones. User events have no kind or chain id:
/// a query naming kinds or a chain id matches engine events only.
///
/// Appends are idempotent: every entry of an event carries the idempotency
/// key `event/<event_id>`, so appending an event again (after an error, or
/// twice) adds nothing; appending a *different* event under an id already
/// used in that space is refused. `append_event` returns after the event
/// and all its references are written; if it fails, append it again.
///
/// The trait is synchronous: each call runs on the store's own runtime and
/// blocks the calling thread until done (never deadlocking the caller's
/// runtime, whatever kind it is).
pub struct LedgerExperienceStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    client: Client,
    prefix: String,
    /// Registry entries known to be written (context, idempotency key).
    registered: Mutex<HashSet<(String, String)>>,
}

impl Inner {
    fn space_of(tenant: Option<&str>) -> String {
        match tenant {
            Some(t) => format!("t.{}", naming::component(t)),
            None => "none".to_owned(),
        }
    }

    fn ctx(&self, space: &str, rest: &str) -> String {
        format!("{}{space}/{rest}", self.prefix)
    }

    fn spaces_ctx(&self) -> String {
        format!("{}spaces", self.prefix)
    }

    fn trace_ctx(&self, id: &str) -> String {
        format!("{}trace/{}", self.prefix, naming::component(id))
    }
}

impl LedgerExperienceStore {
    /// Connects to the ledger at `addr` (blocking the calling thread until
    /// connected).
    pub fn connect(
        addr: impl Into<String>,
        options: ExperienceStoreOptions,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ledger-experience")
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let addr = addr.into();
        let client_options = options.client;
        let client = wait(&runtime, async move {
            Client::connect_with(addr, client_options)
                .await
                .map_err(|e| Error::ledger("connecting the experience store", e))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: options.prefix,
                registered: Mutex::default(),
            }),
            runtime: Some(runtime),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Inner>) -> std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>,
    ) -> Result<T, Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Runtime("the experience store is shut down".into()))?;
        wait(runtime, f(self.inner.clone()))
    }

    /// Appends one engine event (typed error; the trait method maps it).
    pub fn append(&self, event: &ExperienceEventEnvelope) -> Result<(), Error> {
        let record = Record::engine(event)?;
        self.run(move |inner| Box::pin(async move { inner.append_record(record).await }))
    }

    /// Appends one user event.
    pub fn append_user(&self, event: &UserExperienceEventEnvelope) -> Result<(), Error> {
        let record = Record::user(event)?;
        self.run(move |inner| Box::pin(async move { inner.append_record(record).await }))
    }

    /// Engine events (and user events when `include_user`) matching `query`.
    pub fn query(
        &self,
        query: &EventQuery,
        include_user: bool,
    ) -> Result<Vec<ExperienceRecord>, Error> {
        let q = query.clone();
        self.run(move |inner| Box::pin(async move { inner.query(&q, include_user).await }))
    }

    /// The contexts `query` would read events or references from (one
    /// stream per tenant space, possibly a union of index contexts), chosen
    /// as the query would choose them now.
    pub fn plan(&self, query: &EventQuery) -> Result<Vec<String>, Error> {
        let q = query.clone();
        self.run(move |inner| Box::pin(async move { inner.plan(&q).await }))
    }

    /// The trace link recorded last under `id` by a `ReplayTraceRecorded`
    /// event.
    pub fn trace_link(&self, id: &str) -> Result<Option<ReplayTrace>, Error> {
        let id = id.to_owned();
        self.run(move |inner| Box::pin(async move { inner.trace_link(&id).await }))
    }
}

/// Runs `fut` on `runtime` and blocks this thread until it is done. The
/// waiting thread needs nothing from any runtime, so this works from sync
/// code and from inside another runtime alike.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::Runtime("the experience store's runtime stopped".into()))?
}

impl Drop for LedgerExperienceStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ExperienceStore for LedgerExperienceStore {
    fn append_event(&self, event: ExperienceEventEnvelope) -> ExperienceStoreResult<()> {
        self.append(&event).map_err(ExperienceStoreError::from)
    }

    fn append_events(&self, events: &[ExperienceEventEnvelope]) -> ExperienceStoreResult<()> {
        let records = events
            .iter()
            .map(Record::engine)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ExperienceStoreError::from)?;
        self.run(move |inner| {
            Box::pin(async move {
                for r in records {
                    inner.append_record(r).await?;
                }
                Ok(())
            })
        })
        .map_err(ExperienceStoreError::from)
    }

    fn query_events(
        &self,
        query: &EventQuery,
    ) -> ExperienceStoreResult<Vec<ExperienceEventEnvelope>> {
        Ok(self
            .query(query, false)
            .map_err(ExperienceStoreError::from)?
            .into_iter()
            .filter_map(|r| match r {
                ExperienceRecord::Engine(e) => Some(e),
                ExperienceRecord::User(_) => None,
            })
            .collect())
    }

    fn write_artifact_state_transition(
        &self,
        artifact_id: &ArtifactId,
        artifact_kind: ArtifactKind,
        event: LifecycleEvent,
    ) -> ExperienceStoreResult<()> {
        let content = serde_json::to_vec(&(artifact_id, &artifact_kind, &event))
            .map_err(|e| ExperienceStoreError::from(Error::Encode(e.to_string())))?;
        let digest = naming::digest_hex([content.as_slice()]);
        let mut envelope = ExperienceEventEnvelope::new(
            format!("artifact-transition:{}", &digest[..32]),
            ExperienceEvent::ArtifactStateTransitioned {
                artifact_id: artifact_id.clone(),
                artifact_kind,
                event: event.clone(),
            },
        )
        .with_timestamp(event.timestamp.as_str());
        envelope.tenant_id = event.tenant_id.as_deref().map(Into::into);
        self.append_event(envelope)
    }

    fn get_trace_link(
        &self,
        trace_link_id: &TraceLinkId,
    ) -> ExperienceStoreResult<Option<ReplayTrace>> {
        self.trace_link(trace_link_id.as_str())
            .map_err(ExperienceStoreError::from)
    }

    fn append_user_event(&self, event: UserExperienceEventEnvelope) -> ExperienceStoreResult<()> {
        self.append_user(&event).map_err(ExperienceStoreError::from)
    }

    fn query_records(&self, query: &EventQuery) -> ExperienceStoreResult<Vec<ExperienceRecord>> {
        self.query(query, true).map_err(ExperienceStoreError::from)
    }
}
