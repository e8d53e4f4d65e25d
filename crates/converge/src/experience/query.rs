//! Queries: choosing the cheapest candidate stream per space, filtering
//! its references, and fetching only the events kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use converge_core::experience_store::{
    EventQuery, ExperienceEvent, ExperienceEventEnvelope, ExperienceRecord,
};
use converge_core::kernel_boundary::ReplayTrace;
use converge_ledger_client::{Entry, GetOptions, Metadata};
use tokio::task::JoinSet;

use super::write::bucket_of;
use super::*;
use crate::{Error, naming};

/// A reference that matched a query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Hit {
    occurred_at: String,
    space: String,
    sequence: u64,
}

/// Whether a reference's metadata satisfies every filter of `q`.
/// The first `limit` hits in result order among those offered (all of
/// them without a limit), with the payloads already read for those kept:
/// what a query holds is bounded by its limit, however many events match.
pub(super) struct Best {
    limit: usize,
    hits: BTreeSet<Hit>,
    payloads: HashMap<(String, u64), Entry>,
}

impl Best {
    fn new(limit: Option<usize>) -> Best {
        Best {
            limit: limit.unwrap_or(usize::MAX),
            hits: BTreeSet::new(),
            payloads: HashMap::new(),
        }
    }

    /// Keeps `hit` if it is among the first `limit` so far (a duplicate,
    /// found through two indexes, is kept once).
    fn offer(&mut self, hit: Hit, payload: Option<Entry>) {
        if self.hits.len() >= self.limit && self.hits.last().is_some_and(|worst| &hit >= worst) {
            return;
        }
        let key = (hit.space.clone(), hit.sequence);
        if self.hits.insert(hit)
            && let Some(p) = payload
        {
            self.payloads.insert(key, p);
        }
        if self.hits.len() > self.limit
            && let Some(worst) = self.hits.pop_last()
        {
            self.payloads.remove(&(worst.space, worst.sequence));
        }
    }

    /// Whether the limit is met by hits that all come before any event of
    /// time bucket `bucket` (every `occurred_at` in it starts with it, so
    /// sorts at or after it).
    fn complete_before(&self, bucket: &str) -> bool {
        self.hits.len() >= self.limit
            && self
                .hits
                .last()
                .is_some_and(|worst| worst.occurred_at.as_str() < bucket)
    }
}

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

    pub(super) async fn plan(&self, q: &EventQuery) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for space in self.spaces_for(q).await? {
            out.extend(
                self.choose(&space, q)
                    .await?
                    .into_iter()
                    .map(|(ctx, _)| ctx),
            );
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
    /// expected to be smallest (empty when the space has no events), each
    /// with its time bucket when it is a time index. Time indexes come in
    /// bucket order, so that a query with a limit can stop before a bucket
    /// whose every event comes after the last one it keeps.
    async fn choose(
        &self,
        space: &str,
        q: &EventQuery,
    ) -> Result<Vec<(String, Option<String>)>, Error> {
        let events = self.ctx(space, "events");
        let total = self.size(&events).await?;
        if total == 0 {
            return Ok(Vec::new());
        }
        let plain = |ctxs: Vec<String>| ctxs.into_iter().map(|c| (c, None)).collect();
        // Candidate streams, each a union of contexts, with their cost.
        let mut best: (u64, Vec<(String, Option<String>)>) = (total, plain(vec![events.clone()]));
        let mut consider = |cost: u64, ctxs: Vec<(String, Option<String>)>| {
            if cost < best.0 {
                best = (cost, ctxs);
            }
        };
        if let Some(c) = &q.correlation_id {
            let ctx = self.ctx(space, &format!("corr/{}", naming::component(c)));
            consider(self.size(&ctx).await?, plain(vec![ctx]));
        }
        if let Some(c) = &q.chain_id {
            let ctx = self.ctx(space, &format!("chain/{}", naming::component(c)));
            consider(self.size(&ctx).await?, plain(vec![ctx]));
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
            consider(cost, plain(ctxs));
        }
        let ranged = q
            .time_range
            .as_ref()
            .is_some_and(|r| r.start.is_some() || r.end.is_some());
        if ranged || q.limit.is_some() {
            let range = q.time_range.as_ref();
            let low = range
                .and_then(|r| r.start.as_ref())
                .map(|s| bucket_of(s.as_str()));
            let high = range.and_then(|r| r.end.as_ref());
            let mut all = 0u64;
            let mut chosen = Vec::new();
            self.read(&self.ctx(space, "buckets"), |e| {
                all += 1;
                let b = String::from_utf8_lossy(&e.payload).into_owned();
                let above = low.as_ref().is_none_or(|l| b.as_str() >= l.as_str());
                let below = high.is_none_or(|end| b.as_str() <= end.as_str());
                if above && below {
                    chosen.push(b);
                }
            })
            .await?;
            chosen.sort();
            let all = all.max(1);
            // Estimated: the chosen buckets' share of the space's events;
            // with a limit, about the limit plus one bucket, since reading in
            // bucket order stops once the limit is met.
            let mut cost = (total as u128 * chosen.len() as u128 / u128::from(all)) as u64;
            if let Some(limit) = q.limit {
                cost = cost.min((limit as u64).saturating_add(total / all));
            }
            let ctxs = chosen
                .into_iter()
                .map(|b| {
                    (
                        self.ctx(space, &format!("time/{}", naming::component(&b))),
                        Some(b),
                    )
                })
                .collect();
            consider(cost, ctxs);
        }
        Ok(best.1)
    }

    /// Offers the matching references of one space to `best`, with the
    /// payloads read along the way when the space's event stream itself was
    /// the cheapest to read.
    async fn query_space(
        &self,
        space: &str,
        q: &EventQuery,
        include_user: bool,
        best: &mut Best,
    ) -> Result<(), Error> {
        let events = self.ctx(space, "events");
        for (ctx, bucket) in self.choose(space, q).await? {
            if bucket.is_some_and(|b| best.complete_before(&b)) {
                break;
            }
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
                let hit = Hit {
                    occurred_at: e.metadata.get("occurred_at").cloned().unwrap_or_default(),
                    space: space.to_owned(),
                    sequence,
                };
                best.offer(hit, primary.then_some(e));
            })
            .await?;
        }
        Ok(())
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

    pub(super) async fn query(
        self: &Arc<Self>,
        q: &EventQuery,
        include_user: bool,
    ) -> Result<Vec<ExperienceRecord>, Error> {
        if q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut best = Best::new(q.limit);
        for space in self.spaces_for(q).await? {
            self.query_space(&space, q, include_user, &mut best).await?;
        }
        let Best {
            hits, mut payloads, ..
        } = best;
        let mut missing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for h in &hits {
            if !payloads.contains_key(&(h.space.clone(), h.sequence)) {
                missing.entry(h.space.clone()).or_default().push(h.sequence);
            }
        }
        for (space, sequences) in missing {
            for (sequence, e) in self.fetch(&space, &sequences).await? {
                payloads.insert((space.clone(), sequence), e);
            }
        }
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let ctx = self.ctx(&h.space, "events");
            let entry = payloads
                .get(&(h.space.clone(), h.sequence))
                .ok_or_else(|| {
                    Error::InvalidContext(format!("{ctx:?} lacks entry {}", h.sequence))
                })?;
            out.push(decode_record(&ctx, entry)?);
        }
        Ok(out)
    }

    pub(super) async fn trace_link(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Option<ReplayTrace>, Error> {
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

pub(super) fn decode_record(ctx: &str, entry: &Entry) -> Result<ExperienceRecord, Error> {
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
