//! converge-core's `ContextStore` over the ledger.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use converge_core::integrity::MerkleRoot;
use converge_core::traits::{ContextStore, StoreError};
use converge_core::{ContextKey, ContextState};
use converge_ledger_client::{AppendOptions, Client, ClientError, Entry, GetOptions};
use converge_pack::{PayloadRegistry, WireContextFact, WireProposedFact};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::codec::{
    context_from_parts, context_key_name, decode_wire_fact, encode_fact, parse_context_key,
};
use crate::{Error, naming};

/// Entry key of save markers.
pub const SAVE_KEY: &str = "save";

/// Format of [`SaveMarker`].
const MARKER_FORMAT: u32 = 1;

/// Per context key: how many facts a save holds and a digest of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyState {
    count: u64,
    /// SHA-256 over the length-prefixed payloads of the `count` facts.
    digest: String,
}

/// The last entry of every save: what the saved context is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SaveMarker {
    format: u32,
    /// First sequence of the generation the facts belong to.
    generation: u64,
    version: u64,
    merkle_root: MerkleRoot,
    keys: BTreeMap<ContextKey, KeyState>,
    proposals: BTreeMap<ContextKey, Vec<WireProposedFact>>,
}

/// What a save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The ledger context of the scope.
    pub context: String,
    /// Fact entries appended (facts already saved by an earlier save that
    /// this context extends are not written again).
    pub facts_written: u64,
    /// Whether the save extended the previous one (`false`: every fact was
    /// written anew, in a new generation).
    pub extended: bool,
    /// Sequence of the save's marker entry.
    pub marker_sequence: u64,
}

/// converge-core's [`ContextStore`] backed by the ledger: each scope is the
/// ledger context `<prefix><scope>` (the scope percent-encoded).
///
/// A save appends the facts not saved before, one entry each (key: the
/// context key; payload: the fact's `WireContextFact` JSON; metadata:
/// `generation`, `index`, `fact_id`), then one `save` marker entry with the
/// context's version, Merkle root, per-key fact counts and digests, and its
/// pending proposals. When the context extends the last save (every key's
/// saved facts are a prefix of its facts, checked by digest) only the new
/// facts are written; otherwise all facts are written in a new generation.
/// Fact entries carry idempotency keys `g<generation>/<key>/<index>`, so a
/// save repeated after a failure never duplicates one.
///
/// A load finds the last marker and reads that generation's facts: the
/// loaded context has the same facts (every field), in the same order per
/// key, the same pending proposals and version, and converge-core checks
/// its Merkle root against the saved one. Dirty keys are transient and not
/// saved (a loaded context has none, as with `ContextState::from_snapshot`).
///
/// One writer per scope: two processes saving one scope at the same moment
/// may each write a generation; the last marker wins.
#[derive(Clone)]
pub struct LedgerContextStore {
    client: Client,
    prefix: String,
    registry: Arc<PayloadRegistry>,
    concurrency: usize,
}

impl LedgerContextStore {
    /// A store using `client`, contexts `converge/context/<scope>`, and the
    /// payload types of converge-pack.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prefix: "converge/context/".to_owned(),
            registry: Arc::new(PayloadRegistry::with_pack_payloads()),
            concurrency: 16,
        }
    }

    /// Uses `prefix` instead of `converge/context/` for context ids.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Decodes fact payloads with `registry` (register your own payload
    /// types in it).
    pub fn with_registry(mut self, registry: PayloadRegistry) -> Self {
        self.registry = Arc::new(registry);
        self
    }

    /// The ledger context of `scope`.
    pub fn context_id(&self, scope: &str) -> String {
        format!("{}{}", self.prefix, naming::component(scope))
    }

    /// Saves `context` under `scope`.
    pub async fn save(&self, scope: &str, context: &ContextState) -> Result<SaveReport, Error> {
        let ctx = self.context_id(scope);
        let snapshot = context.snapshot();
        let mut proposals: BTreeMap<ContextKey, Vec<WireProposedFact>> = BTreeMap::new();
        for (key, list) in snapshot.proposals() {
            let wire = list
                .iter()
                .map(|p| p.to_wire())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Encode(format!("a {key:?} proposal of {scope:?}: {e}")))?;
            proposals.insert(*key, wire);
        }

        // Payloads and digests of every key's facts.
        let mut payloads: BTreeMap<ContextKey, Vec<Vec<u8>>> = BTreeMap::new();
        for (key, facts) in snapshot.facts() {
            if facts.is_empty() {
                continue;
            }
            let encoded = facts
                .iter()
                .map(encode_fact)
                .collect::<Result<Vec<_>, _>>()?;
            payloads.insert(*key, encoded);
        }
        let previous = self.last_marker(&ctx).await?;
        let (latest, previous) = match previous {
            Some((latest, marker)) => (latest, Some(marker)),
            None => (self.latest(&ctx).await?, None),
        };

        let mut keys = BTreeMap::new();
        let mut extends = previous.is_some();
        for (key, list) in &payloads {
            let saved = previous
                .as_ref()
                .and_then(|m| m.keys.get(key))
                .map_or(0, |k| k.count);
            let mut h = Sha256::new();
            let mut prefix = (saved == 0).then(|| hex(&h.clone().finalize()));
            for (i, p) in list.iter().enumerate() {
                h.update((p.len() as u64).to_be_bytes());
                h.update(p);
                if i as u64 + 1 == saved {
                    prefix = Some(hex(&h.clone().finalize()));
                }
            }
            let digest = hex(&h.finalize());
            if let Some(expected) = previous.as_ref().and_then(|m| m.keys.get(key)) {
                // `None` when fewer facts than saved: not an extension.
                if prefix.as_deref() != Some(expected.digest.as_str()) {
                    extends = false;
                }
            }
            keys.insert(
                *key,
                KeyState {
                    count: list.len() as u64,
                    digest,
                },
            );
        }
        if let Some(m) = &previous {
            // A key saved before that the context no longer has.
            if m.keys
                .iter()
                .any(|(k, s)| s.count > 0 && !keys.contains_key(k))
            {
                extends = false;
            }
        }

        let mut written = 0;
        let mut generation = match (&previous, extends) {
            (Some(m), true) => m.generation,
            _ => latest + 1,
        };
        if extends {
            let from = |key: &ContextKey| {
                previous
                    .as_ref()
                    .and_then(|m| m.keys.get(key))
                    .map_or(0, |k| k.count)
            };
            match self
                .write_facts(&ctx, generation, &payloads, &snapshot, from)
                .await
            {
                Ok(n) => written = n,
                // A different fact was saved at one of these positions by an
                // unfinished save: write a new generation instead.
                Err(Error::Ledger {
                    source: ClientError::AlreadyExists(_),
                    ..
                }) => {
                    extends = false;
                    generation = self.latest(&ctx).await? + 1;
                }
                Err(e) => return Err(e),
            }
        }
        if !extends {
            written = self
                .write_facts(&ctx, generation, &payloads, &snapshot, |_| 0)
                .await?;
        }

        let marker = SaveMarker {
            format: MARKER_FORMAT,
            generation,
            version: snapshot.version(),
            merkle_root: snapshot.merkle_root().clone(),
            keys,
            proposals,
        };
        let payload = serde_json::to_vec(&marker).map_err(|e| Error::Encode(e.to_string()))?;
        let metadata = [
            ("generation".to_owned(), generation.to_string()),
            ("version".to_owned(), marker.version.to_string()),
        ];
        let entry = self
            .client
            .append(
                &ctx,
                SAVE_KEY,
                payload,
                AppendOptions {
                    metadata: metadata.into_iter().collect(),
                    ..AppendOptions::default()
                },
            )
            .await
            .map_err(|e| Error::ledger(format!("saving the marker of {ctx:?}"), e))?;
        Ok(SaveReport {
            context: ctx,
            facts_written: written,
            extended: extends,
            marker_sequence: entry.sequence,
        })
    }

    /// Appends the facts of every key from index `from(key)` on, with
    /// bounded concurrency (their order is in their `index` metadata).
    async fn write_facts(
        &self,
        ctx: &str,
        generation: u64,
        payloads: &BTreeMap<ContextKey, Vec<Vec<u8>>>,
        snapshot: &converge_core::ContextSnapshot,
        from: impl Fn(&ContextKey) -> u64,
    ) -> Result<u64, Error> {
        let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
        let mut written = 0u64;
        for (key, list) in payloads {
            let name = context_key_name(*key);
            let facts = &snapshot.facts()[key];
            for (i, payload) in list.iter().enumerate().skip(from(key) as usize) {
                while tasks.len() >= self.concurrency {
                    join_one(&mut tasks).await?;
                }
                let client = self.client.clone();
                let ctx = ctx.to_owned();
                let name = name.clone();
                let payload = payload.clone();
                let metadata = [
                    ("generation".to_owned(), generation.to_string()),
                    ("index".to_owned(), i.to_string()),
                    ("fact_id".to_owned(), facts[i].id().as_str().to_owned()),
                ];
                let idempotency_key = format!("g{generation}/{name}/{i}");
                tasks.spawn(async move {
                    client
                        .append(
                            &ctx,
                            &name,
                            payload,
                            AppendOptions {
                                metadata: metadata.into_iter().collect(),
                                idempotency_key: Some(idempotency_key),
                                lamport: 0,
                            },
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::ledger(format!("saving a fact into {ctx:?}"), e))
                });
                written += 1;
            }
        }
        while !tasks.is_empty() {
            join_one(&mut tasks).await?;
        }
        Ok(written)
    }

    /// Loads the context last saved under `scope` (`None`: never saved).
    pub async fn load(&self, scope: &str) -> Result<Option<ContextState>, Error> {
        let ctx = self.context_id(scope);
        let Some((marker_sequence, marker)) = self.last_marker(&ctx).await? else {
            return Ok(None);
        };
        let mut slots: BTreeMap<ContextKey, Vec<Option<WireContextFact>>> = marker
            .keys
            .iter()
            .map(|(k, s)| (*k, vec![None; s.count as usize]))
            .collect();
        let generation = marker.generation.to_string();
        let mut failure: Option<Error> = None;
        let after = marker.generation.saturating_sub(1);
        let range = marker_sequence.saturating_sub(after);
        self.client
            .read_all(
                &ctx,
                GetOptions {
                    key: None,
                    after,
                    limit: u32::try_from(range).unwrap_or(0),
                },
                |entry| {
                    if failure.is_some() || entry.sequence > marker_sequence {
                        return;
                    }
                    if let Err(e) = place(&ctx, &entry, &generation, &mut slots) {
                        failure = Some(e);
                    }
                },
            )
            .await
            .map_err(|e| Error::ledger(format!("loading {ctx:?}"), e))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut facts = BTreeMap::new();
        for (key, list) in slots {
            let mut out = Vec::with_capacity(list.len());
            for (i, f) in list.into_iter().enumerate() {
                out.push(f.ok_or_else(|| {
                    Error::InvalidContext(format!(
                        "{ctx:?}: the save at {marker_sequence} lacks {key:?} fact {i}"
                    ))
                })?);
            }
            facts.insert(key, out);
        }
        context_from_parts(
            facts,
            marker.proposals,
            marker.version,
            Some(marker.merkle_root),
            &self.registry,
        )
        .map(Some)
    }

    /// The context's head sequence.
    async fn latest(&self, ctx: &str) -> Result<u64, Error> {
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

    /// The last save marker of `ctx` and its sequence. A completed save
    /// ends with its marker, so the last entry is usually it; after an
    /// unfinished save the markers are read through the key filter.
    async fn last_marker(&self, ctx: &str) -> Result<Option<(u64, SaveMarker)>, Error> {
        let latest = self.latest(ctx).await?;
        if latest == 0 {
            return Ok(None);
        }
        let last = self
            .client
            .get(
                ctx,
                GetOptions {
                    key: None,
                    after: latest - 1,
                    limit: 1,
                },
            )
            .await
            .map_err(|e| Error::ledger(format!("reading the last entry of {ctx:?}"), e))?;
        let entry = match last.entries.into_iter().next() {
            Some(e) if e.key == SAVE_KEY => e,
            _ => {
                let mut marker = None;
                self.client
                    .read_all(
                        ctx,
                        GetOptions {
                            key: Some(SAVE_KEY.to_owned()),
                            ..GetOptions::default()
                        },
                        |e| marker = Some(e),
                    )
                    .await
                    .map_err(|e| Error::ledger(format!("reading the saves of {ctx:?}"), e))?;
                match marker {
                    Some(m) => m,
                    None => return Ok(None),
                }
            }
        };
        let marker: SaveMarker = serde_json::from_slice(&entry.payload)
            .map_err(|e| Error::decode(ctx, entry.sequence, format!("save marker: {e}")))?;
        if marker.format != MARKER_FORMAT {
            return Err(Error::decode(
                ctx,
                entry.sequence,
                format!(
                    "save marker format {} is not {MARKER_FORMAT}",
                    marker.format
                ),
            ));
        }
        Ok(Some((entry.sequence, marker)))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn join_one(tasks: &mut JoinSet<Result<(), Error>>) -> Result<(), Error> {
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Error::Runtime(format!("a save task failed: {e}"))),
        None => Ok(()),
    }
}

/// Puts a fact entry of the marker's generation into its slot.
fn place(
    ctx: &str,
    entry: &Entry,
    generation: &str,
    slots: &mut BTreeMap<ContextKey, Vec<Option<WireContextFact>>>,
) -> Result<(), Error> {
    if entry.metadata.get("generation").map(String::as_str) != Some(generation) {
        return Ok(());
    }
    let Some(key) = parse_context_key(&entry.key) else {
        return Ok(());
    };
    let Some(index) = entry
        .metadata
        .get("index")
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return Err(Error::decode(
            ctx,
            entry.sequence,
            "fact entry without an index",
        ));
    };
    let Some(slot) = slots.get_mut(&key).and_then(|s| s.get_mut(index)) else {
        // Written by an unfinished later save of this generation.
        return Ok(());
    };
    let fact =
        decode_wire_fact(&entry.payload).map_err(|e| Error::decode(ctx, entry.sequence, e))?;
    if fact.key != key {
        return Err(Error::decode(
            ctx,
            entry.sequence,
            format!("a {:?} fact under key {:?}", fact.key, entry.key),
        ));
    }
    match slot {
        Some(existing) if *existing != fact => Err(Error::InvalidContext(format!(
            "{ctx:?}: two different {key:?} facts at index {index} of generation {generation}"
        ))),
        _ => {
            *slot = Some(fact);
            Ok(())
        }
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl ContextStore for LedgerContextStore {
    type LoadFut<'a> = BoxFut<'a, Result<Option<ContextState>, StoreError>>;
    type SaveFut<'a> = BoxFut<'a, Result<(), StoreError>>;

    fn load_context<'a>(&'a self, scope_id: &'a str) -> Self::LoadFut<'a> {
        Box::pin(async move { self.load(scope_id).await.map_err(StoreError::from) })
    }

    fn save_context<'a>(
        &'a self,
        scope_id: &'a str,
        context: &'a ContextState,
    ) -> Self::SaveFut<'a> {
        Box::pin(async move {
            self.save(scope_id, context)
                .await
                .map(|_| ())
                .map_err(StoreError::from)
        })
    }
}
