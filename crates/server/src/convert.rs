use converge_ledger_core::Entry;
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
