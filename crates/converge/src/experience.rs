//! converge-core's `ExperienceStore` over the ledger, with index contexts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use converge_core::experience_store::{
    ArtifactKind, EventQuery, ExperienceEvent, ExperienceEventEnvelope, ExperienceRecord,
    ExperienceStore, ExperienceStoreError, ExperienceStoreResult, UserExperienceEventEnvelope,
};
use converge_core::governed_artifact::LifecycleEvent;
use converge_core::kernel_boundary::ReplayTrace;
use converge_core::types::{ArtifactId, TraceLinkId};
use converge_ledger_client::{AppendOptions, Client, ClientOptions, Entry, GetOptions, Metadata};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::{Error, naming};

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

/// What every entry of an event carries in its metadata.
#[derive(Debug, Clone)]
struct Meta {
    event_id: String,
    occurred_at: String,
    /// `engine` or `user`.
    record: &'static str,
    kind: String,
    correlation_id: Option<String>,
    chain_id: Option<String>,
}

impl Meta {
    fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        m.insert("event_id".into(), self.event_id.clone());
        m.insert("occurred_at".into(), self.occurred_at.clone());
        m.insert("record".into(), self.record.into());
        m.insert("kind".into(), self.kind.clone());
        if let Some(c) = &self.correlation_id {
            m.insert("correlation_id".into(), c.clone());
        }
        if let Some(c) = &self.chain_id {
            m.insert("chain_id".into(), c.clone());
        }
        m
    }
}

#[derive(Serialize, Deserialize)]
struct SpaceRecord {
    tenant: Option<String>,
}

/// A reference that matched a query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    occurred_at: String,
    space: String,
    sequence: u64,
}

fn chain_of(event: &ExperienceEvent) -> Option<&str> {
    match event {
        ExperienceEvent::ProposalCreated { chain_id, .. }
        | ExperienceEvent::ProposalValidated { chain_id, .. }
        | ExperienceEvent::OutcomeRecorded { chain_id, .. }
        | ExperienceEvent::BudgetExceeded { chain_id, .. }
        | ExperienceEvent::HypothesisResolved { chain_id, .. } => Some(chain_id.as_str()),
        _ => None,
    }
}

fn bucket_of(occurred_at: &str) -> String {
    occurred_at.chars().take(BUCKET_CHARS).collect()
}

/// The idempotency key of an event's entries (hashed when the id is long).
fn idempotency_key(event_id: &str) -> String {
    if event_id.len() <= 200 {
        format!("event/{event_id}")
    } else {
        format!("event#{}", naming::digest_hex([event_id.as_bytes()]))
    }
}

/// One event, engine or user side, ready to append.
struct Record {
    tenant: Option<String>,
    meta: Meta,
    payload: Vec<u8>,
    trace_link_id: Option<String>,
}

impl Record {
    fn engine(env: &ExperienceEventEnvelope) -> Result<Record, Error> {
        let payload = serde_json::to_vec(env).map_err(|e| Error::Encode(e.to_string()))?;
        let trace_link_id = match &env.event {
            ExperienceEvent::ReplayTraceRecorded { trace_link_id, .. } => {
                Some(trace_link_id.as_str().to_owned())
            }
            _ => None,
        };
        Ok(Record {
            tenant: env.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
            meta: Meta {
                event_id: env.event_id.as_str().to_owned(),
                occurred_at: env.occurred_at.as_str().to_owned(),
                record: "engine",
                kind: format!("{:?}", env.event.kind()),
                correlation_id: env.correlation_id.as_ref().map(|c| c.as_str().to_owned()),
                chain_id: chain_of(&env.event).map(str::to_owned),
            },
            payload,
            trace_link_id,
        })
    }

    fn user(env: &UserExperienceEventEnvelope) -> Result<Record, Error> {
        let value = serde_json::to_value(env).map_err(|e| Error::Encode(e.to_string()))?;
        let kind = value
            .pointer("/event/type")
            .and_then(|t| t.as_str())
            .unwrap_or("User")
            .to_owned();
        let payload = serde_json::to_vec(&value).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Record {
            tenant: env.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
            meta: Meta {
                event_id: env.event_id.as_str().to_owned(),
                occurred_at: env.occurred_at.as_str().to_owned(),
                record: "user",
                kind,
                correlation_id: env.correlation_id.as_ref().map(|c| c.as_str().to_owned()),
                chain_id: None,
            },
            payload,
            trace_link_id: None,
        })
    }
}

/// Whether a reference's metadata satisfies every filter of `q`.
fn matches(m: &Metadata, q: &EventQuery, include_user: bool) -> bool {
    let get = |k: &str| m.get(k).map(String::as_str);
    let record = get("record");
    if record == Some("user") && !include_user {
        return false;
    }
    if !q.kinds.is_empty() {
        if record != Some("engine") {
            return false;
        }
        let kind = get("kind").unwrap_or("");
        if !q.kinds.iter().any(|k| format!("{k:?}") == kind) {
            return false;
        }
    }
    if let Some(c) = &q.correlation_id
        && get("correlation_id") != Some(c.as_str())
    {
        return false;
    }
    if let Some(c) = &q.chain_id
        && get("chain_id") != Some(c.as_str())
    {
        return false;
    }
    if let Some(range) = &q.time_range {
        let at = get("occurred_at").unwrap_or("");
        if range.start.as_ref().is_some_and(|s| at < s.as_str()) {
            return false;
        }
        if range.end.as_ref().is_some_and(|e| at > e.as_str()) {
            return false;
        }
    }
    true
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

    async fn append(
        &self,
        ctx: &str,
        key: &str,
        payload: Vec<u8>,
        metadata: Metadata,
        idempotency_key: String,
    ) -> Result<Entry, Error> {
        self.client
            .append(
                ctx,
                key,
                payload,
                AppendOptions {
                    metadata,
                    idempotency_key: Some(idempotency_key),
                    lamport: 0,
                },
            )
            .await
            .map_err(|e| Error::ledger(format!("appending to {ctx:?}"), e))
    }

    /// Appends a registry entry once (per process; the idempotency key
    /// makes it once forever).
    async fn register(
        &self,
        ctx: String,
        key: &str,
        payload: Vec<u8>,
        metadata: Metadata,
        idem: String,
    ) -> Result<(), Error> {
        let slot = (ctx, idem);
        if self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&slot)
        {
            return Ok(());
        }
        self.append(&slot.0, key, payload, metadata, slot.1.clone())
            .await?;
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot);
        Ok(())
    }

    async fn append_record(self: &Arc<Self>, record: Record) -> Result<(), Error> {
        let space = Self::space_of(record.tenant.as_deref());
        let space_record = serde_json::to_vec(&SpaceRecord {
            tenant: record.tenant.clone(),
        })
        .map_err(|e| Error::Encode(e.to_string()))?;
        self.register(
            self.spaces_ctx(),
            "space",
            space_record,
            Metadata::from([("space".to_owned(), space.clone())]),
            format!("space/{space}"),
        )
        .await?;
        let bucket = bucket_of(&record.meta.occurred_at);
        self.register(
            self.ctx(&space, "buckets"),
            "bucket",
            bucket.clone().into_bytes(),
            Metadata::new(),
            format!("bucket/{bucket}"),
        )
        .await?;

        let idem = idempotency_key(&record.meta.event_id);
        let metadata = record.meta.to_metadata();
        let primary = self
            .append(
                &self.ctx(&space, "events"),
                record.meta.record,
                record.payload,
                metadata.clone(),
                idem.clone(),
            )
            .await?;

        let mut refs = metadata;
        refs.insert("seq".into(), primary.sequence.to_string());
        let mut targets = vec![self.ctx(&space, &format!("time/{}", naming::component(&bucket)))];
        if record.meta.record == "engine" {
            targets.push(self.ctx(&space, &format!("kind/{}", record.meta.kind)));
        }
        if let Some(c) = &record.meta.correlation_id {
            targets.push(self.ctx(&space, &format!("corr/{}", naming::component(c))));
        }
        if let Some(c) = &record.meta.chain_id {
            targets.push(self.ctx(&space, &format!("chain/{}", naming::component(c))));
        }
        let mut tasks = JoinSet::new();
        for ctx in targets {
            let this = self.clone();
            let (refs, idem) = (refs.clone(), idem.clone());
            tasks.spawn(async move { this.append(&ctx, "ref", Vec::new(), refs, idem).await });
        }
        if let Some(trace) = &record.trace_link_id {
            let mut m = refs.clone();
            m.insert("space".into(), space.clone());
            m.insert("trace_link_id".into(), trace.clone());
            let this = self.clone();
            let ctx = self.trace_ctx(trace);
            let idem = format!("{space}/{idem}");
            tasks.spawn(async move { this.append(&ctx, "ref", Vec::new(), m, idem).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Runtime(e.to_string()))??;
        }
        Ok(())
    }

    /// Head sequence of `ctx` (0: empty).
    async fn size(&self, ctx: &str) -> Result<u64, Error> {
        self.client
            .get(
                ctx,
                GetOptions {
                    limit: 1,
                    ..GetOptions::default()
                },
            )
            .await
            .map(|r| r.latest_sequence)
            .map_err(|e| Error::ledger(format!("reading the head of {ctx:?}"), e))
    }

    async fn read(&self, ctx: &str, mut visit: impl FnMut(Entry)) -> Result<(), Error> {
        self.client
            .read_all(ctx, GetOptions::default(), &mut visit)
            .await
            .map(|_| ())
            .map_err(|e| Error::ledger(format!("reading {ctx:?}"), e))
    }

    async fn spaces_for(&self, q: &EventQuery) -> Result<Vec<String>, Error> {
        match &q.tenant_id {
            Some(t) => Ok(vec![Self::space_of(Some(t.as_str()))]),
            None => self.spaces().await,
        }
    }

    async fn plan(&self, q: &EventQuery) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for space in self.spaces_for(q).await? {
            out.extend(self.choose(&space, q).await?);
        }
        Ok(out)
    }

    async fn spaces(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        self.read(&self.spaces_ctx(), |e| {
            if let Some(space) = e.metadata.get("space") {
                out.push(space.clone());
            }
        })
        .await?;
        Ok(out)
    }

    /// The contexts a query reads in one space: the candidate stream
    /// expected to be smallest (empty when the space has no events).
    async fn choose(&self, space: &str, q: &EventQuery) -> Result<Vec<String>, Error> {
        let events = self.ctx(space, "events");
        let total = self.size(&events).await?;
        if total == 0 {
            return Ok(Vec::new());
        }
        // Candidate streams, each a union of contexts, with their cost.
        let mut best: (u64, Vec<String>) = (total, vec![events.clone()]);
        let mut consider = |cost: u64, ctxs: Vec<String>| {
            if cost < best.0 {
                best = (cost, ctxs);
            }
        };
        if let Some(c) = &q.correlation_id {
            let ctx = self.ctx(space, &format!("corr/{}", naming::component(c)));
            consider(self.size(&ctx).await?, vec![ctx]);
        }
        if let Some(c) = &q.chain_id {
            let ctx = self.ctx(space, &format!("chain/{}", naming::component(c)));
            consider(self.size(&ctx).await?, vec![ctx]);
        }
        if !q.kinds.is_empty() {
            let names: BTreeMap<String, ()> =
                q.kinds.iter().map(|k| (format!("{k:?}"), ())).collect();
            let mut cost = 0;
            let mut ctxs = Vec::new();
            for name in names.keys() {
                let ctx = self.ctx(space, &format!("kind/{name}"));
                cost += self.size(&ctx).await?;
                ctxs.push(ctx);
            }
            consider(cost, ctxs);
        }
        if let Some(range) = &q.time_range
            && (range.start.is_some() || range.end.is_some())
        {
            let mut all = 0u64;
            let mut chosen = Vec::new();
            let low = range.start.as_ref().map(|s| bucket_of(s.as_str()));
            self.read(&self.ctx(space, "buckets"), |e| {
                all += 1;
                let b = String::from_utf8_lossy(&e.payload).into_owned();
                let above = low.as_ref().is_none_or(|l| b.as_str() >= l.as_str());
                let below = range
                    .end
                    .as_ref()
                    .is_none_or(|end| b.as_str() <= end.as_str());
                if above && below {
                    chosen.push(b);
                }
            })
            .await?;
            // Estimated: the chosen buckets' share of the space's events.
            let cost = (total as u128 * chosen.len() as u128 / u128::from(all.max(1))) as u64;
            let ctxs = chosen
                .iter()
                .map(|b| self.ctx(space, &format!("time/{}", naming::component(b))))
                .collect();
            consider(cost, ctxs);
        }

        Ok(best.1)
    }

    /// The matching references of one space, and the payloads already read
    /// when the space's event stream itself was the cheapest to read.
    async fn query_space(
        &self,
        space: &str,
        q: &EventQuery,
        include_user: bool,
    ) -> Result<(Vec<Hit>, HashMap<u64, Entry>), Error> {
        let events = self.ctx(space, "events");
        let ctxs = self.choose(space, q).await?;
        let mut hits = Vec::new();
        let mut payloads = HashMap::new();
        for ctx in ctxs {
            let primary = ctx == events;
            self.read(&ctx, |e| {
                if !matches(&e.metadata, q, include_user) {
                    return;
                }
                let sequence = if primary {
                    e.sequence
                } else {
                    match e.metadata.get("seq").and_then(|s| s.parse().ok()) {
                        Some(s) => s,
                        None => return,
                    }
                };
                hits.push(Hit {
                    occurred_at: e.metadata.get("occurred_at").cloned().unwrap_or_default(),
                    space: space.to_owned(),
                    sequence,
                });
                if primary {
                    payloads.insert(sequence, e);
                }
            })
            .await?;
        }
        hits.sort();
        hits.dedup();
        Ok((hits, payloads))
    }

    /// Fetches the events at `sequences` (sorted) of one space's stream,
    /// one `get` per run of consecutive sequences.
    async fn fetch(
        self: &Arc<Self>,
        space: &str,
        sequences: &[u64],
    ) -> Result<HashMap<u64, Entry>, Error> {
        let ctx = self.ctx(space, "events");
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &s in sequences {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                Some((_, end)) if *end == s => {}
                _ => runs.push((s, s)),
            }
        }
        let mut out = HashMap::new();
        let mut tasks: JoinSet<Result<Vec<Entry>, Error>> = JoinSet::new();
        let mut pending = runs.into_iter();
        loop {
            while tasks.len() < CONCURRENCY {
                let Some((start, end)) = pending.next() else {
                    break;
                };
                let this = self.clone();
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let mut got = Vec::new();
                    let mut after = start - 1;
                    while after < end {
                        let r = this
                            .client
                            .get(
                                &ctx,
                                GetOptions {
                                    key: None,
                                    after,
                                    limit: u32::try_from(end - after).unwrap_or(u32::MAX),
                                },
                            )
                            .await
                            .map_err(|e| Error::ledger(format!("reading {ctx:?}"), e))?;
                        let Some(last) = r.entries.last().map(|e| e.sequence) else {
                            return Err(Error::InvalidContext(format!(
                                "{ctx:?} has no entry {} (an index points at it)",
                                after + 1
                            )));
                        };
                        after = last;
                        got.extend(r.entries.into_iter().filter(|e| e.sequence <= end));
                    }
                    Ok(got)
                });
            }
            match tasks.join_next().await {
                Some(r) => {
                    for e in r.map_err(|e| Error::Runtime(e.to_string()))?? {
                        out.insert(e.sequence, e);
                    }
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn query(
        self: &Arc<Self>,
        q: &EventQuery,
        include_user: bool,
    ) -> Result<Vec<ExperienceRecord>, Error> {
        if q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let spaces = self.spaces_for(q).await?;
        let mut hits = Vec::new();
        let mut known: HashMap<String, HashMap<u64, Entry>> = HashMap::new();
        for space in spaces {
            let (h, payloads) = self.query_space(&space, q, include_user).await?;
            hits.extend(h);
            known.insert(space, payloads);
        }
        hits.sort();
        if let Some(limit) = q.limit {
            hits.truncate(limit);
        }
        let mut missing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for h in &hits {
            if !known
                .get(&h.space)
                .is_some_and(|k| k.contains_key(&h.sequence))
            {
                missing.entry(h.space.clone()).or_default().push(h.sequence);
            }
        }
        for (space, sequences) in missing {
            let fetched = self.fetch(&space, &sequences).await?;
            known.entry(space).or_default().extend(fetched);
        }
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let ctx = self.ctx(&h.space, "events");
            let entry = known
                .get(&h.space)
                .and_then(|k| k.get(&h.sequence))
                .ok_or_else(|| {
                    Error::InvalidContext(format!("{ctx:?} lacks entry {}", h.sequence))
                })?;
            out.push(decode_record(&ctx, entry)?);
        }
        Ok(out)
    }

    async fn trace_link(self: &Arc<Self>, id: &str) -> Result<Option<ReplayTrace>, Error> {
        let mut last: Option<(String, u64)> = None;
        self.read(&self.trace_ctx(id), |e| {
            if e.metadata.get("trace_link_id").map(String::as_str) != Some(id) {
                return;
            }
            if let (Some(space), Some(seq)) = (
                e.metadata.get("space"),
                e.metadata.get("seq").and_then(|s| s.parse().ok()),
            ) {
                last = Some((space.clone(), seq));
            }
        })
        .await?;
        let Some((space, seq)) = last else {
            return Ok(None);
        };
        let ctx = self.ctx(&space, "events");
        let entries = self.fetch(&space, &[seq]).await?;
        let entry = entries
            .get(&seq)
            .ok_or_else(|| Error::InvalidContext(format!("{ctx:?} lacks entry {seq}")))?;
        match decode_record(&ctx, entry)? {
            ExperienceRecord::Engine(ExperienceEventEnvelope {
                event: ExperienceEvent::ReplayTraceRecorded { trace_link, .. },
                ..
            }) => Ok(Some(trace_link)),
            _ => Err(Error::decode(
                &ctx,
                seq,
                "the trace index points at another event",
            )),
        }
    }
}

fn decode_record(ctx: &str, entry: &Entry) -> Result<ExperienceRecord, Error> {
    match entry.key.as_str() {
        "engine" => serde_json::from_slice(&entry.payload)
            .map(ExperienceRecord::Engine)
            .map_err(|e| Error::decode(ctx, entry.sequence, e.to_string())),
        "user" => serde_json::from_slice(&entry.payload)
            .map(ExperienceRecord::User)
            .map_err(|e| Error::decode(ctx, entry.sequence, e.to_string())),
        other => Err(Error::decode(
            ctx,
            entry.sequence,
            format!("unexpected key {other:?}"),
        )),
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
