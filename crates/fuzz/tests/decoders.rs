//! Every decoder of the ledger, fed arbitrary bytes and mutations of valid
//! encodings (flips, truncations, insertions, length fields rewritten to
//! huge values): it returns an error or a value, never panics, and never
//! allocates more than a small multiple of its input, whatever a length
//! field claims. Cases per decoder: `CONVERGE_LEDGER_FUZZ_CASES`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use converge_ledger_core::{
    Digest, Entry, Head, HeadSigner, Limits, Metadata, NewEntry, record, snapshot,
};
use converge_ledger_fuzz::{Counting, Rng, allocated_by, arbitrary, cases, mutations};
use converge_ledger_proto::context::v1 as context_pb;
use converge_ledger_proto::ledger::v1 as ledger_pb;
use converge_ledger_worldline::{
    Commitment, CommitmentId, Decision, Effect, EvidenceRef, Outcome, OutcomeStatus, PolicyRef,
    ProjectionCheckpoint, ProofRef, Receipt, SnapshotHeader, StateUpdate, WorldlineId,
    WorldlineLimits,
};
use prost::Message;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a decode of `len` input bytes may allocate: a small multiple of
/// the input (a decoded value is at most a few copies of it), and a little
/// slack for messages and fixed structures.
fn allocation_bound(len: usize) -> u64 {
    8 * len as u64 + 16 * 1024
}

/// Decodes `input` with `decode`, failing the test (with the input in hex)
/// on a panic or an allocation beyond [`allocation_bound`].
fn check(what: &str, input: &[u8], decode: &dyn Fn(&[u8]) -> bool) -> bool {
    let (outcome, allocated) = allocated_by(|| catch_unwind(AssertUnwindSafe(|| decode(input))));
    let hex: String = input.iter().take(256).map(|b| format!("{b:02x}")).collect();
    let ok = outcome.unwrap_or_else(|_| panic!("{what} panicked on {} bytes: {hex}", input.len()));
    assert!(
        allocated <= allocation_bound(input.len()),
        "{what} allocated {allocated} bytes for an input of {} bytes: {hex}",
        input.len()
    );
    ok
}

/// Runs `decode` on mutations of every sample and on arbitrary inputs, and
/// checks that the samples themselves decode.
fn fuzz(what: &str, samples: &[Vec<u8>], prefix: &[u8], decode: impl Fn(&[u8]) -> bool) {
    let n = cases(3000);
    for s in samples {
        assert!(check(what, s, &decode), "{what}: a valid sample is refused");
        mutations(s, n, |b| {
            check(what, b, &decode);
        });
    }
    arbitrary(what.len() as u64, prefix, n, 2048, |b| {
        check(what, b, &decode);
    });
}

fn entries(context: &str, n: usize) -> Vec<Entry> {
    let mut head = Head::empty(context);
    (0..n)
        .map(|i| {
            let mut metadata = Metadata::new();
            metadata.insert("agent".into(), format!("a{i}"));
            let e = head.next_entry(
                context,
                NewEntry {
                    key: format!("k{}", i % 3),
                    payload: vec![i as u8; i * 7],
                    metadata,
                    lamport: 0,
                },
                1_700_000_000_000_000_000 + i as u64,
            );
            head.advance(&e);
            e
        })
        .collect()
}

#[test]
fn entry_records_decode_to_an_error_never_a_panic_and_within_bounded_memory() {
    let samples: Vec<Vec<u8>> = entries("c", 5).iter().map(record::encode).collect();
    fuzz("record::decode", &samples, &[1], |b| {
        record::decode(b).is_ok()
    });
}

#[test]
fn heads_decode_to_an_error_never_a_panic_and_within_bounded_memory() {
    let mut samples = Vec::new();
    for n in [0, 1, 7, 64, 1000] {
        let mut head = Head::empty("h");
        for e in entries("h", n) {
            head.advance(&e);
        }
        samples.push(head.encode());
    }
    fuzz("Head::decode", &samples, &[1], |b| Head::decode(b).is_ok());
}

/// A snapshot's bytes with the trailing checksum recomputed, so that a
/// mutation reaches the decoder past its first check.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 32 {
        let body = bytes.len() - 32;
        let sum = Digest::of(&[&bytes[..body]]);
        bytes[body..].copy_from_slice(&sum.0);
    }
    bytes
}

#[test]
fn snapshots_decode_to_an_error_never_a_panic_and_within_bounded_memory() {
    let signer = HeadSigner::from_seed([3; 32]);
    let mut samples = Vec::new();
    for n in [0, 1, 6] {
        let es = entries("s", n);
        let mut head = Head::empty("s");
        for e in &es {
            head.advance(e);
        }
        let mut w = snapshot::Writer::new("s", &head, 5, &signer.sign("s", &head));
        for e in &es {
            w.push(e).unwrap();
        }
        samples.push(w.finish().unwrap());
    }
    let limits = Limits::default();
    let decode = |b: &[u8]| snapshot::decode_and_verify(b, &limits).is_ok();
    fuzz("snapshot::decode_and_verify", &samples, b"CVLGSNAP", decode);
    // Past the checksum: mutations that keep it valid.
    let n = cases(3000);
    for s in &samples {
        mutations(s, n, |b| {
            check("snapshot (resealed)", &resealed(b.to_vec()), &decode);
        });
    }
}

#[test]
fn wire_messages_decode_to_an_error_never_a_panic_and_within_bounded_memory() {
    let entry = context_pb::Entry {
        id: "ab".repeat(32),
        key: "facts".into(),
        payload: vec![1; 100],
        metadata: [("a".to_string(), "b".to_string())].into_iter().collect(),
        sequence: 7,
        appended_at_ns: 9,
        lamport: 3,
        hash: vec![2; 32],
        prev_hash: vec![3; 32],
    };
    let append = context_pb::AppendRequest {
        context_id: "job".into(),
        key: "facts".into(),
        payload: vec![9; 300],
        metadata: [("m".to_string(), "v".to_string())].into_iter().collect(),
        idempotency_key: "k".into(),
        lamport: 4,
    };
    let batch = ledger_pb::AppendBatchRequest {
        context_id: "job".into(),
        entries: (0..5)
            .map(|i| ledger_pb::BatchEntry {
                key: format!("k{i}"),
                payload: vec![i; 40],
                metadata: Default::default(),
            })
            .collect(),
        idempotency_key: "b".into(),
        expected_sequence: Some(3),
        lamport: 0,
    };
    let load = context_pb::LoadRequest {
        context_id: "job".into(),
        snapshot: vec![5; 500],
        fail_if_exists: true,
        allow_unknown_signer: false,
    };
    let chunk = ledger_pb::LoadChunk {
        context_id: "job".into(),
        data: vec![6; 200],
        ..Default::default()
    };
    fuzz("AppendRequest", &[append.encode_to_vec()], &[], |b| {
        context_pb::AppendRequest::decode(b).is_ok()
    });
    fuzz("AppendBatchRequest", &[batch.encode_to_vec()], &[], |b| {
        ledger_pb::AppendBatchRequest::decode(b).is_ok()
    });
    fuzz("LoadRequest", &[load.encode_to_vec()], &[], |b| {
        context_pb::LoadRequest::decode(b).is_ok()
    });
    fuzz("LoadChunk", &[chunk.encode_to_vec()], &[], |b| {
        ledger_pb::LoadChunk::decode(b).is_ok()
    });
    let response = context_pb::GetResponse {
        entries: vec![entry.clone(), entry],
        latest_sequence: 8,
    };
    fuzz("GetResponse", &[response.encode_to_vec()], &[], |b| {
        context_pb::GetResponse::decode(b).is_ok()
    });
}

fn commitment() -> Commitment {
    Commitment {
        commitment_id: CommitmentId::parse("0190a5b2-7c3e-7def-8a12-3456789abcde").unwrap(),
        class: "deploy".into(),
        intent: "roll out v2".into(),
        requested_capabilities: ["deploy", "read"].map(String::from).into(),
        targets: vec!["svc".into()],
        evidence: vec![EvidenceRef {
            uri: "cas://e".into(),
            digest: Digest::of(&[b"e"]),
        }],
        proposer: "agent".into(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"p"]),
            version: "v1".into(),
        },
        granted_capabilities: ["deploy"].map(String::from).into(),
        revoked_capabilities: Default::default(),
        decider: "kernel".into(),
    }
}

fn outcome() -> Outcome {
    Outcome {
        commitment: Digest::of(&[b"c"]),
        status: OutcomeStatus::Succeeded,
        effects: vec![Effect {
            kind: "k".into(),
            target: "t".into(),
            description: "d".into(),
        }],
        proofs: vec![ProofRef {
            uri: "cas://p".into(),
            digest: Digest::of(&[b"p"]),
        }],
        state_updates: vec![
            StateUpdate::Put {
                key: "a".into(),
                value: vec![1; 64],
            },
            StateUpdate::Delete { key: "b".into() },
        ],
        reporter: "driver".into(),
    }
}

#[test]
fn worldline_receipts_decode_to_an_error_never_a_panic_and_within_bounded_memory() {
    let l = WorldlineLimits::default();
    fuzz(
        "Commitment::decode",
        &[commitment().encode()],
        b"WLLC\x01",
        |b| Commitment::decode(b, &l).is_ok(),
    );
    fuzz("Outcome::decode", &[outcome().encode()], b"WLLO\x01", |b| {
        Outcome::decode(b, &l).is_ok()
    });
    let header = SnapshotHeader {
        anchor_seq: 9,
        anchor_hash: Digest::of(&[b"a"]),
        state_hash: Digest::of(&[b"s"]),
        pair_count: 3,
        state_bytes: 40,
        chunk_bytes_max: 1 << 20,
        chunk_count: 1,
    };
    fuzz("SnapshotHeader::decode", &[header.encode()], &[], |b| {
        SnapshotHeader::decode(b, &l).is_ok()
    });
    let checkpoint = ProjectionCheckpoint {
        through_seq: 4,
        through_hash: Digest::of(&[b"h"]),
    };
    fuzz(
        "ProjectionCheckpoint::decode",
        &[checkpoint.encode()],
        b"WLLP\x01",
        |b| ProjectionCheckpoint::decode(b).is_ok(),
    );
    // A receipt: an entry of the worldline's context whose payload is a
    // body; the payload is what arrives from storage or the wire.
    let worldline = WorldlineId::derive(b"fuzz");
    let context = worldline.context_id();
    let head = Head::empty(&context);
    let mut rng = Rng(7);
    let sample = commitment().encode();
    mutations(&sample, cases(3000), |payload| {
        let e = head.next_entry(
            &context,
            NewEntry {
                key: "wll.commitment".into(),
                payload: payload.to_vec(),
                metadata: Metadata::new(),
                lamport: 0,
            },
            rng.next(),
        );
        check("Receipt::from_entry", payload, &|_| {
            Receipt::from_entry(&worldline, &e, &l).is_ok()
        });
    });
}
