//! How converge-core values become ledger entries and back.

use std::collections::{BTreeMap, HashMap};

use converge_core::integrity::{ContentHash, MerkleRoot};
use converge_core::{ContextFact, ContextKey, ContextSnapshot, ContextState, WireContextSnapshot};
use converge_pack::{PayloadRegistry, WireContextFact, WireProposedFact};
use serde::Serialize;

use crate::Error;

/// The entry key of a fact: its context key's name (`"Seeds"`,
/// `"Hypotheses"`, ...), as converge-core serializes it.
pub fn context_key_name(key: ContextKey) -> String {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::String(s)) => s,
        // A unit variant always serializes to its name; fall back to Debug,
        // which is the same text.
        _ => format!("{key:?}"),
    }
}

/// The context key named `name`, if it is one.
pub fn parse_context_key(name: &str) -> Option<ContextKey> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// A fact's payload bytes: its stable wire form (`WireContextFact`) as JSON.
pub fn encode_fact(fact: &ContextFact) -> Result<Vec<u8>, Error> {
    let wire = fact
        .to_wire()
        .map_err(|e| Error::Encode(format!("fact {:?}: {e}", fact.id().as_str())))?;
    serde_json::to_vec(&wire).map_err(|e| Error::Encode(format!("fact {:?}: {e}", wire.id)))
}

/// The wire form of a fact stored by [`encode_fact`].
pub fn decode_wire_fact(payload: &[u8]) -> Result<WireContextFact, String> {
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

/// The fields of converge-core's `WireContextSnapshot`, which is the
/// supported rehydration boundary (`ContextState::from_snapshot`) but has
/// private fields: it is built through its own serde form.
#[derive(Serialize)]
struct SnapshotParts<'a> {
    version: u64,
    merkle_root: &'a MerkleRoot,
    facts: &'a BTreeMap<ContextKey, Vec<WireContextFact>>,
    proposals: &'a BTreeMap<ContextKey, Vec<WireProposedFact>>,
}

/// The Merkle root converge-core computes for a context holding `facts`
/// (`MerkleRoot::from_context`: keys in order, facts in order within a key).
pub fn merkle_root_of(facts: &BTreeMap<ContextKey, Vec<ContextFact>>) -> MerkleRoot {
    let hashes: Vec<ContentHash> = facts
        .values()
        .flat_map(|v| v.iter().map(ContentHash::compute_fact))
        .collect();
    MerkleRoot::compute(&hashes)
}

/// Builds a `ContextState` through converge-core's verified snapshot
/// boundary: facts per key in the given order, the given pending proposals
/// and version. `merkle_root` is the root the facts must hash to (`None`:
/// computed from the facts). converge-core checks keys, duplicate ids and
/// the root before returning the context.
pub fn context_from_parts(
    facts: BTreeMap<ContextKey, Vec<WireContextFact>>,
    proposals: BTreeMap<ContextKey, Vec<WireProposedFact>>,
    version: u64,
    merkle_root: Option<MerkleRoot>,
    registry: &PayloadRegistry,
) -> Result<ContextState, Error> {
    let root = match merkle_root {
        Some(r) => r,
        None => {
            let mut typed = BTreeMap::new();
            for (key, list) in &facts {
                let decoded = list
                    .iter()
                    .map(|w| ContextFact::from_wire(w.clone(), registry))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::InvalidContext(format!("a {key:?} fact: {e}")))?;
                typed.insert(*key, decoded);
            }
            merkle_root_of(&typed)
        }
    };
    let value = serde_json::to_value(SnapshotParts {
        version,
        merkle_root: &root,
        facts: &facts,
        proposals: &proposals,
    })
    .map_err(|e| Error::Encode(e.to_string()))?;
    let wire: WireContextSnapshot = serde_json::from_value(value)
        .map_err(|e| Error::InvalidContext(format!("snapshot form: {e}")))?;
    let snapshot = ContextSnapshot::from_wire(wire, registry)
        .map_err(|e| Error::InvalidContext(e.to_string()))?;
    ContextState::from_snapshot(snapshot).map_err(|e| Error::InvalidContext(e.to_string()))
}

/// Collects facts per key in order, dropping exact repeats of a fact the
/// way converge-core's context does (same id, identical content: no
/// change) and refusing a different fact under an id already present (the
/// engine rejects it as a conflict).
#[derive(Default)]
pub struct FactCollector {
    facts: BTreeMap<ContextKey, Vec<WireContextFact>>,
    /// Position of each (key, id) in its list.
    index: HashMap<(ContextKey, String), usize>,
    count: usize,
}

impl FactCollector {
    /// Adds one fact; `Ok(false)` when it repeats one already collected.
    pub fn push(&mut self, fact: WireContextFact) -> Result<bool, Error> {
        let list = self.facts.entry(fact.key).or_default();
        let slot = (fact.key, fact.id.as_str().to_owned());
        if let Some(&at) = self.index.get(&slot) {
            if list[at] == fact {
                return Ok(false);
            }
            return Err(Error::InvalidContext(format!(
                "two different {:?} facts with id {:?}",
                fact.key,
                fact.id.as_str()
            )));
        }
        self.index.insert(slot, list.len());
        list.push(fact);
        self.count += 1;
        Ok(true)
    }

    /// Number of distinct facts.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The facts per key.
    pub fn into_facts(self) -> BTreeMap<ContextKey, Vec<WireContextFact>> {
        self.facts
    }
}
