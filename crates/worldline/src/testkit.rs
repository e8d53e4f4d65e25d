//! Helpers for this crate's unit tests: a worldline written entry by entry
//! with the ledger's own append rule.

use converge_ledger_core::{Digest, Head, NewEntry};

use crate::{
    CapabilitySet, Commitment, CommitmentId, Decision, Outcome, OutcomeStatus, PolicyRef, Receipt,
    StateUpdate, WorldlineId, WorldlineLimits, commitment_entry, outcome_entry,
};

/// A worldline being written in memory.
pub(crate) struct Chain {
    pub(crate) worldline: WorldlineId,
    pub(crate) head: Head,
    pub(crate) receipts: Vec<Receipt>,
    next_id: u64,
    now_ns: u64,
}

impl Chain {
    pub(crate) fn new(material: &[u8]) -> Chain {
        let worldline = WorldlineId::derive(material);
        Chain {
            head: Head::empty(&worldline.context_id()),
            worldline,
            receipts: Vec::new(),
            next_id: 1,
            now_ns: 1_700_000_000_000_000_000,
        }
    }

    fn append(&mut self, new: NewEntry) -> Receipt {
        let ctx = self.worldline.context_id();
        self.now_ns += 1_000_000;
        let e = self.head.next_entry(&ctx, new, self.now_ns);
        self.head.advance(&e);
        let r = Receipt::from_entry(&self.worldline, &e, &WorldlineLimits::default()).unwrap();
        self.receipts.push(r.clone());
        r
    }

    /// A commitment by `proposer` requesting and granting `grant`,
    /// revoking `revoke`; rejected when `accepted` is false (and then
    /// granting and revoking nothing).
    pub(crate) fn commit(
        &mut self,
        proposer: &str,
        accepted: bool,
        grant: &[&str],
        revoke: &[&str],
    ) -> Receipt {
        self.commit_with(proposer, accepted, grant, revoke, |_| {})
    }

    /// [`Chain::commit`], with `edit` applied to the commitment first.
    pub(crate) fn commit_with(
        &mut self,
        proposer: &str,
        accepted: bool,
        grant: &[&str],
        revoke: &[&str],
        edit: impl FnOnce(&mut Commitment),
    ) -> Receipt {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next_id.to_be_bytes());
        self.next_id += 1;
        let grant: CapabilitySet = grant.iter().map(|s| s.to_string()).collect();
        let mut c = Commitment {
            commitment_id: CommitmentId(id),
            class: "deploy".into(),
            intent: "ship it".into(),
            requested_capabilities: grant.clone(),
            targets: vec!["svc/api".into()],
            evidence: vec![crate::EvidenceRef {
                uri: "cas://e".into(),
                digest: Digest::of(&[b"e"]),
            }],
            proposer: proposer.into(),
            decision: if accepted {
                Decision::Accepted
            } else {
                Decision::Rejected {
                    reason: "no".into(),
                }
            },
            policy: PolicyRef {
                hash: Digest::of(&[b"policy"]),
                version: "v1".into(),
            },
            granted_capabilities: if accepted {
                grant
            } else {
                CapabilitySet::new()
            },
            revoked_capabilities: if accepted {
                revoke.iter().map(|s| s.to_string()).collect()
            } else {
                CapabilitySet::new()
            },
            decider: "kernel".into(),
        };
        edit(&mut c);
        self.append(commitment_entry(&c, &WorldlineLimits::default()).unwrap())
    }

    /// An outcome of `commitment` with `status` and `updates`.
    pub(crate) fn outcome(
        &mut self,
        commitment: &Receipt,
        status: OutcomeStatus,
        updates: Vec<StateUpdate>,
    ) -> Receipt {
        let o = Outcome {
            commitment: commitment.receipt_hash,
            effects: if status == OutcomeStatus::Rejection {
                Vec::new()
            } else {
                vec![crate::Effect {
                    kind: "deploy".into(),
                    target: "svc/api".into(),
                    description: String::new(),
                }]
            },
            status,
            proofs: vec![crate::ProofRef {
                uri: "cas://p".into(),
                digest: Digest::of(&[b"p"]),
            }],
            state_updates: updates,
            reporter: "driver".into(),
        };
        self.append(outcome_entry(&o, &WorldlineLimits::default()).unwrap())
    }

    /// An outcome of `commitment` written without the server's checks, for
    /// tests of what replay catches.
    pub(crate) fn raw_outcome(&mut self, o: &Outcome) -> Receipt {
        self.append(crate::receipt::new_entry(crate::OUTCOME_KEY, o.encode()))
    }
}

pub(crate) fn put(key: &str, value: &str) -> StateUpdate {
    StateUpdate::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

pub(crate) fn delete(key: &str) -> StateUpdate {
    StateUpdate::Delete { key: key.into() }
}

/// splitmix64: the tests' seeded generator.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs `check` on every truncation of `bytes`, every byte flipped, and a
/// few hundred random mutations (bytes changed, inserted, removed): a
/// decoder under test must return, never panic.
pub(crate) fn never_panics_on_mutations(bytes: &[u8], mut check: impl FnMut(&[u8])) {
    for n in 0..bytes.len() {
        check(&bytes[..n]);
    }
    for i in 0..bytes.len() {
        for x in [0x01, 0x80, 0xFF] {
            let mut b = bytes.to_vec();
            b[i] ^= x;
            check(&b);
        }
    }
    let mut rng = Rng(bytes.len() as u64);
    for _ in 0..300 {
        let mut b = bytes.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(b.len() as u64 + 1) as usize;
            match rng.below(3) {
                0 if at < b.len() => b[at] = rng.next() as u8,
                1 => b.insert(at, rng.next() as u8),
                _ if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        check(&b);
    }
}

/// Folds every receipt of `chain` into all four projections, one atomic
/// batch per receipt, and returns the store.
pub(crate) fn fold(chain: &Chain) -> crate::MemoryKv {
    fold_into(chain, &crate::projections())
}

/// Folds every receipt of `chain` into `projections`, one atomic batch per
/// receipt, and returns the store.
pub(crate) fn fold_into(chain: &Chain, projections: &[&dyn crate::Projection]) -> crate::MemoryKv {
    let mut kv = crate::MemoryKv::new();
    for r in &chain.receipts {
        let mut batch = crate::KvBatch::new();
        for p in projections {
            assert_eq!(
                crate::apply_receipt(*p, r, &kv, &mut batch).unwrap(),
                crate::Applied::Applied
            );
        }
        kv.apply(batch);
    }
    kv
}
