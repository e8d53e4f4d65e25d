//! The test vectors of `docs/design.md` §18, computed independently by
//! `tests/vectors.py` (Python, hashlib only) from the written layouts; any
//! implementation of the profile must reproduce them.

use converge_ledger_core::{Digest, Head, genesis_hash};
use converge_ledger_worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, Effect, EvidenceRef, Outcome, OutcomeStatus,
    PolicyRef, ProofRef, Receipt, ReceiptRef, State, StateUpdate, WorldlineId, WorldlineLimits,
    commitment_entry, empty_state_hash, outcome_entry, snapshot_entries,
};

const WORLDLINE: &str = "a5da2513c82bc0bad3c593126362478eea858e01b0552849fa66f9432ef71657";
const GENESIS: &str = "0b336df3e8c37f4afb870cd1b24ac54eedc306c8d954c8c249588c7907925722";
const COMMITMENT_PAYLOAD: &str = "574c4c43010190a5b27c3e7def8a123456789abcde000000066465706c6f790000000b726f6c6c206f7574207632000000020000000a6e65742e6567726573730000000a7265706f2e777269746500000001000000077376632f61706900000001000000086361733a2f2f6531ee8250fb76e094b34b471f13a73dbbe51d1ae142e9df59d7c0d31ec20f0a0a8e000000076167656e742d3701823412d1eacb67956220e532959f0104603057c88704863ca38e7cd188fda81200000003763132000000010000000a7265706f2e777269746500000000000000066b65726e656c";
const RECEIPT_1: &str = "572610791c7531b0d155a0b5596be8cd5d8d07fcafa04734101d5581e526af63";
const OUTCOME_PAYLOAD: &str = "574c4c4f01572610791c7531b0d155a0b5596be8cd5d8d07fcafa04734101d5581e526af630100000001000000066465706c6f79000000077376632f617069000000077632206c69766500000001000000086361733a2f2f7031c1cda26362828b69266512052b97cb3729e3b052e4ade47c0a1e3383defe73c700000002010000000f7376632f6170692f76657273696f6e0000000132020000000e7376632f6170692f63616e617279000000086472697665722d31";
const RECEIPT_2: &str = "3fa05347af15a15401cdd31be70b7b408a13f944e4a51186be15085c3437ecfe";
const EMPTY_STATE: &str = "142480a93c76756ab8ba3b35a42b48ece4cb75b04b56672ab285c04b29b5c5ec";
const STATE_AB: &str = "53fc916835a4b893e640d2d4f3ce55f05515f0731af114560bfaca8b956eed80";
const STATE_AFTER_2: &str = "717f2ed250af77e455dca11f6289fdd0ca9b47b2da775ac8c54626d065b1df0c";
const SNAPSHOT_HEADER: &str = "574c4c530100000000000000023fa05347af15a15401cdd31be70b7b408a13f944e4a51186be15085c3437ecfe717f2ed250af77e455dca11f6289fdd0ca9b47b2da775ac8c54626d065b1df0c000000000000000100000000000000100020000000000001";
const SNAPSHOT_CHUNK: &str =
    "574c4c4b01000000000000000200000000000000010000000f7376632f6170692f76657273696f6e0000000132";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn commitment() -> Commitment {
    Commitment {
        commitment_id: CommitmentId::parse("0190a5b2-7c3e-7def-8a12-3456789abcde").unwrap(),
        class: "deploy".into(),
        intent: "roll out v2".into(),
        requested_capabilities: ["repo.write", "net.egress"].map(String::from).into(),
        targets: vec!["svc/api".into()],
        evidence: vec![EvidenceRef {
            uri: "cas://e1".into(),
            digest: Digest::of(&[b"evidence"]),
        }],
        proposer: "agent-7".into(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v12".into(),
        },
        granted_capabilities: ["repo.write"].map(String::from).into(),
        revoked_capabilities: CapabilitySet::new(),
        decider: "kernel".into(),
    }
}

fn outcome(commitment: Digest) -> Outcome {
    Outcome {
        commitment,
        status: OutcomeStatus::Succeeded,
        effects: vec![Effect {
            kind: "deploy".into(),
            target: "svc/api".into(),
            description: "v2 live".into(),
        }],
        proofs: vec![ProofRef {
            uri: "cas://p1".into(),
            digest: Digest::of(&[b"proof"]),
        }],
        state_updates: vec![
            StateUpdate::Put {
                key: "svc/api/version".into(),
                value: b"2".to_vec(),
            },
            StateUpdate::Delete {
                key: "svc/api/canary".into(),
            },
        ],
        reporter: "driver-1".into(),
    }
}

#[test]
fn published_worldline_vectors() {
    let l = WorldlineLimits::default();
    let w = WorldlineId::derive(b"agent-7");
    assert_eq!(w.to_hex(), WORLDLINE, "worldline id");
    let ctx = w.context_id();
    assert_eq!(ctx, format!("wll/{WORLDLINE}"));
    assert_eq!(genesis_hash(&ctx).to_hex(), GENESIS, "genesis");

    let mut head = Head::empty(&ctx);
    let new = commitment_entry(&commitment(), &l).unwrap();
    assert_eq!(hex(&new.payload), COMMITMENT_PAYLOAD, "commitment payload");
    let e1 = head.next_entry(&ctx, new, 1_700_000_000_000_000_000);
    assert_eq!(e1.lamport, 1);
    assert_eq!(e1.hash.to_hex(), RECEIPT_1, "receipt 1");
    head.advance(&e1);

    let new = outcome_entry(&outcome(e1.hash), &l).unwrap();
    assert_eq!(hex(&new.payload), OUTCOME_PAYLOAD, "outcome payload");
    let e2 = head.next_entry(&ctx, new, 1_700_000_000_001_000_000);
    assert_eq!(e2.lamport, 2);
    assert_eq!(e2.hash.to_hex(), RECEIPT_2, "receipt 2");
    let r2 = Receipt::from_entry(&w, &e2, &l).unwrap();
    assert_eq!(r2.prev_receipt_hash, Some(e1.hash));

    assert_eq!(empty_state_hash().to_hex(), EMPTY_STATE, "empty state");
    assert_eq!(State::new().hash().to_hex(), EMPTY_STATE);
    let mut ab = State::new();
    let put = |k: &str, v: &[u8]| StateUpdate::Put {
        key: k.into(),
        value: v.to_vec(),
    };
    ab.apply(&[put("b", b""), put("a", b"1")], &l).unwrap();
    assert_eq!(ab.hash().to_hex(), STATE_AB, "state {{a: 1, b: ''}}");

    let mut after = State::new();
    after.apply(&outcome(e1.hash).state_updates, &l).unwrap();
    assert_eq!(
        after.hash().to_hex(),
        STATE_AFTER_2,
        "state after receipt 2"
    );
    let anchor = ReceiptRef {
        worldline: w,
        seq: 2,
        receipt_hash: e2.hash,
    };
    let snap = snapshot_entries(&anchor, &after, &l).unwrap();
    assert_eq!(snap.entries.len(), 2);
    assert_eq!(
        hex(&snap.entries[0].payload),
        SNAPSHOT_HEADER,
        "snapshot header"
    );
    assert_eq!(
        hex(&snap.entries[1].payload),
        SNAPSHOT_CHUNK,
        "snapshot chunk"
    );
}
