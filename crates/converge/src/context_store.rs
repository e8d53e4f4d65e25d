//! converge-core's `ContextStore` over the ledger.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use converge_core::integrity::MerkleRoot;
use converge_core::traits::{ContextStore, StoreError};
use converge_core::{ContextKey, ContextState};
use converge_ledger_client::{BatchEntry, BatchOptions, Client, ClientError, Entry, GetOptions};
use converge_pack::{PayloadRegistry, WireContextFact, WireProposedFact};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::codec::{
    context_from_parts, context_key_name, decode_wire_fact, encode_fact, parse_context_key,
};
use crate::recorder::{batch_limits, entry_bytes};
use crate::{Error, naming};

/// Entry key of save markers.
pub const SAVE_KEY: &str = "save";

/// Attempts of a save that loses races against other saves of its scope.
const SAVE_ATTEMPTS: u32 = 8;

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
/// pending proposals. All of it goes in one atomic AppendBatch (several
/// for a save beyond the server's batch limits, each conditional on the
/// end of the one before), so a save is never half visible unless it spans
/// batches and its writer dies between two. When the context extends the
/// last save (that save's marker is the context's last entry, and every
/// key's saved facts are a prefix of its facts, checked by digest) only the
/// new facts are written; otherwise all facts are written in a new
/// generation, numbered by the sequence of its first entry.
///
/// A load finds the last marker and reads that generation's facts: the
/// loaded context has the same facts (every field), in the same order per
/// key, the same pending proposals and version, and converge-core checks
/// its Merkle root against the saved one. Dirty keys are transient and not
/// saved (a loaded context has none, as with `ContextState::from_snapshot`).
///
/// Saves of one scope from several processes are safe: each is appended
/// conditionally on the head it was built on, and a save that loses the
/// race is built again on top of the winner (up to 8 attempts), so saves
/// never interleave and the last marker always describes one complete
/// save (last writer wins).
#[derive(Clone)]
pub struct LedgerContextStore {
    client: Client,
    prefix: String,
    registry: Arc<PayloadRegistry>,
    /// The server's batch limits (entries, bytes), once asked.
    batch_max: Arc<OnceLock<(usize, usize)>>,
}

impl LedgerContextStore {
    /// A store using `client`, contexts `converge/context/<scope>`, and the
    /// payload types of converge-pack.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prefix: "converge/context/".to_owned(),
            registry: Arc::new(PayloadRegistry::with_pack_payloads()),
            batch_max: Arc::default(),
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
        // Payloads of every key's facts.
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
        let save = Save {
            snapshot: &snapshot,
            proposals: &proposals,
            payloads: &payloads,
        };
        let mut attempt = 1;
        loop {
            match self.try_save(&ctx, &save).await {
                // Another save of the scope committed first: build this one
                // again on top of it.
                // Only a head that moved is a lost race; any other
                // precondition (a load that does not extend the context, say)
                // fails the same way again.
                Err(Error::Ledger {
                    source: ClientError::HeadMismatch { .. },
                    ..
                }) if attempt < SAVE_ATTEMPTS => attempt += 1,
                Err(Error::Ledger {
                    action,
                    source: source @ ClientError::HeadMismatch { .. },
                }) => {
                    return Err(Error::Ledger {
                        action: format!(
                            "{action} ({SAVE_ATTEMPTS} attempts lost the race against other saves of {scope:?})"
                        ),
                        source,
                    });
                }
                other => return other,
            }
        }
    }

    /// One attempt of a save, conditional on the head it starts from.
    async fn try_save(&self, ctx: &str, save: &Save<'_>) -> Result<SaveReport, Error> {
        let (head, last) = self
            .client
            .last_entry(ctx)
            .await
            .map_err(|e| Error::ledger(format!("reading the head of {ctx:?}"), e))?;
        // Only a save whose marker is the context's last entry can be
        // extended: anything after it (an unfinished save) starts a new
        // generation, so facts of two saves never share one.
        let previous = match last {
            Some(e) if e.key == SAVE_KEY => Some(decode_marker(ctx, &e)?),
            _ => None,
        };

        let mut keys = BTreeMap::new();
        let mut extends = previous.is_some();
        for (key, list) in save.payloads {
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
        let previous = previous.filter(|_| extends);
        let generation = previous
            .as_ref()
            .map_or(head.sequence + 1, |m| m.generation);
        let generation_text = generation.to_string();

        let mut entries = Vec::new();
        let mut written = 0u64;
        for (key, list) in save.payloads {
            let from = previous
                .as_ref()
                .and_then(|m| m.keys.get(key))
                .map_or(0, |k| k.count);
            let name = context_key_name(*key);
            let facts = &save.snapshot.facts()[key];
            for (i, payload) in list.iter().enumerate().skip(from as usize) {
                entries.push(BatchEntry {
                    key: name.clone(),
                    payload: payload.clone(),
                    metadata: BTreeMap::from([
                        ("generation".to_owned(), generation_text.clone()),
                        ("index".to_owned(), i.to_string()),
                        ("fact_id".to_owned(), facts[i].id().as_str().to_owned()),
                    ]),
                });
                written += 1;
            }
        }
        let marker = SaveMarker {
            format: MARKER_FORMAT,
            generation,
            version: save.snapshot.version(),
            merkle_root: save.snapshot.merkle_root().clone(),
            keys,
            proposals: save.proposals.clone(),
        };
        entries.push(BatchEntry {
            key: SAVE_KEY.to_owned(),
            payload: serde_json::to_vec(&marker).map_err(|e| Error::Encode(e.to_string()))?,
            metadata: BTreeMap::from([
                ("generation".to_owned(), generation_text),
                ("version".to_owned(), marker.version.to_string()),
            ]),
        });

        // Usually one batch; a save beyond the batch limits takes several,
        // each conditional on the end of the one before, the marker last.
        let (batch_max, batch_bytes) = self.batch_limits().await?;
        let mut expected = head.sequence;
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(e) = entries.next_if(|e| {
                batch.is_empty()
                    || (batch.len() < batch_max && bytes + entry_bytes(e) <= batch_bytes)
            }) {
                bytes += entry_bytes(&e);
                batch.push(e);
            }
            let appended = self
                .client
                .append_batch(
                    ctx,
                    batch,
                    BatchOptions {
                        expected_sequence: Some(expected),
                        ..BatchOptions::default()
                    },
                )
                .await
                .map_err(|e| Error::ledger(format!("saving into {ctx:?}"), e))?;
            expected = appended.entries.last().map_or(expected, |e| e.sequence);
        }
        Ok(SaveReport {
            context: ctx.to_owned(),
            facts_written: written,
            extended: extends,
            marker_sequence: expected,
        })
    }

    /// Entries and bytes per batch for this server, asked once.
    async fn batch_limits(&self) -> Result<(usize, usize), Error> {
        if let Some(&limits) = self.batch_max.get() {
            return Ok(limits);
        }
        let info = self
            .client
            .server_info()
            .await
            .map_err(|e| Error::ledger("asking the ledger for its limits", e))?;
        let limits = batch_limits(info.batch_entries_max, info.request_bytes_max);
        Ok(*self.batch_max.get_or_init(|| limits))
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

    /// The last save marker of `ctx` and its sequence. A completed save
    /// ends with its marker, so the last entry is usually it; after an
    /// unfinished save the markers are read through the key filter.
    async fn last_marker(&self, ctx: &str) -> Result<Option<(u64, SaveMarker)>, Error> {
        let (_, last) = self
            .client
            .last_entry(ctx)
            .await
            .map_err(|e| Error::ledger(format!("reading the last entry of {ctx:?}"), e))?;
        let entry = match last {
            None => return Ok(None),
            Some(e) if e.key == SAVE_KEY => e,
            Some(_) => {
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
        Ok(Some((entry.sequence, decode_marker(ctx, &entry)?)))
    }
}

fn decode_marker(ctx: &str, entry: &Entry) -> Result<SaveMarker, Error> {
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
    Ok(marker)
}

/// What one save writes, prepared once for all its attempts.
struct Save<'a> {
    snapshot: &'a converge_core::ContextSnapshot,
    proposals: &'a BTreeMap<ContextKey, Vec<WireProposedFact>>,
    payloads: &'a BTreeMap<ContextKey, Vec<Vec<u8>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
