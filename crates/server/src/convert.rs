use converge_ledger_core::{Entry, Head, NewEntry, SignedHead};
use converge_ledger_proto::context::v1 as pb;

/// The wire form of an entry: the contract's fields plus Lamport clock, hash
/// and previous hash.
pub fn entry_to_proto(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id(),
        key: e.key.clone(),
        payload: e.payload.clone(),
        sequence: e.sequence,
        appended_at_ns: e.appended_at_ns,
        metadata: e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        lamport: e.lamport,
        hash: e.hash.0.to_vec(),
        prev_hash: e.prev_hash.0.to_vec(),
    }
}

/// [`entry_to_proto`] for an entry the caller is done with: its key,
/// payload and metadata move into the message instead of being copied.
pub fn entry_into_proto(e: Entry) -> pb::Entry {
    pb::Entry {
        id: e.id(),
        sequence: e.sequence,
        appended_at_ns: e.appended_at_ns,
        lamport: e.lamport,
        hash: e.hash.0.to_vec(),
        prev_hash: e.prev_hash.0.to_vec(),
        key: e.key,
        payload: e.payload,
        metadata: e.metadata.into_iter().collect(),
    }
}

/// What the server says about a snapshot it sends.
pub(crate) fn snapshot_metadata(
    head: &Head,
    created_at_ns: u64,
    signed: &SignedHead,
) -> pb::SnapshotMetadata {
    pb::SnapshotMetadata {
        created_at_ns,
        entry_count: head.sequence,
        version: converge_ledger_core::snapshot::VERSION,
        head_hash: head.hash.0.to_vec(),
        merkle_root: head.merkle_root().0.to_vec(),
        signature: signed.signature.to_vec(),
        public_key: signed.public_key.0.to_vec(),
        loaded_through: head.loaded.map_or(0, |l| l.through),
        loaded_signer: head.loaded.map_or_else(Vec::new, |l| l.signer.0.to_vec()),
    }
}

impl From<crate::Loaded> for pb::LoadResponse {
    fn from(l: crate::Loaded) -> Self {
        pb::LoadResponse {
            entries_restored: l.restored,
            latest_sequence: l.latest_sequence,
        }
    }
}

/// What ServerInfo says of the WorldLine profile: its limits, and whether
/// the projections are kept.
pub(crate) fn worldline_info(
    limits: &converge_ledger_worldline::WorldlineLimits,
    projections: bool,
) -> converge_ledger_proto::ledger::v1::WorldlineInfo {
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    converge_ledger_proto::ledger::v1::WorldlineInfo {
        projections,
        identifier_bytes_max: u32_of(limits.identifier_bytes_max),
        text_bytes_max: u32_of(limits.text_bytes_max),
        uri_bytes_max: u32_of(limits.uri_bytes_max),
        list_items_max: u32_of(limits.list_items_max),
        state_updates_max: u32_of(limits.state_updates_max),
        state_key_bytes_max: u32_of(limits.state_key_bytes_max),
        state_value_bytes_max: limits.state_value_bytes_max as u64,
        state_bytes_max: limits.state_bytes_max,
        snapshot_chunk_bytes_max: limits.snapshot_chunk_bytes_max as u64,
    }
}

/// An Append request's parts as the ledger takes them: the context, the
/// entry, and the idempotency key.
pub(crate) fn append_parts(r: pb::AppendRequest) -> (String, NewEntry, Option<String>) {
    (
        r.context_id,
        NewEntry {
            key: r.key,
            payload: r.payload,
            metadata: r.metadata.into_iter().collect(),
            lamport: r.lamport,
        },
        Some(r.idempotency_key),
    )
}
