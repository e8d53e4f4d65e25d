//! `provenance_dag`, version 1: evidence and decision lineage.
//!
//! Nodes are receipts (commitments and outcomes); edges run commitment →
//! evidence digest, outcome → commitment, outcome → proof, and state key →
//! the outcome that wrote it at each sequence. Each edge is stored in the
//! direction queries walk it, and the reverse where a query walks back:
//! from an outcome or a state key back to the commitment, its decision and
//! its evidence, and the outcome's proofs; forward from an evidence digest
//! to the commitments that cited it, from a commitment to its outcome and
//! the state keys that outcome wrote.
//!
//! | table | key after `provenance_dag/1/<worldline>/` | value |
//! |---|---|---|
//! | nodes | `node/` \[32\] receipt hash | [`Node`] |
//! | commitment → evidence | `evidence/` \[32\] commitment, u32 index | `len32(uri) ‖ [32] digest` |
//! | evidence → commitments | `cited/` \[32\] evidence digest, u64 seq | \[32\] commitment |
//! | commitment → outcome | `answer/` \[32\] commitment | \[32\] outcome |
//! | outcome → proofs | `proof/` \[32\] outcome, u32 index | `len32(uri) ‖ [32] digest` |
//! | state key → writes | `write/` key `\0`, u64 seq | \[32\] outcome ‖ u8 (1 put, 2 delete) |
//! | outcome → state keys | `wrote/` \[32\] outcome, key `\0` | u8 (1 put, 2 delete) |
//!
//! Costs: a commitment with `e` evidence references writes `1 + 2e` keys;
//! an outcome with `p` proofs and `u` state updates writes `2 + p + 2u`
//! keys; neither reads anything. Queries: [`node`] one read; [`lineage`]
//! two reads and two ranges; [`writer_of_key`] one range;
//! [`lineage_of_key`] both; [`key_history`], [`keys_written_by`] and
//! [`commitments_citing`] one range; [`outcome_of`] two reads;
//! [`dependents`] two reads and one range.

use converge_ledger_core::Digest;

use crate::audit_index::{put_status, read_status};
use crate::codec::{Put, Reader};
use crate::keys::{Key, KeyReader};
use crate::page::{PAGE_ITEMS_MAX, scan};
use crate::{
    CommitmentId, Cursor, Decision, Direction, EvidenceRef, KvRead, KvTxn, OutcomeStatus, Page,
    PolicyRef, Projection, ProofRef, Receipt, ReceiptBody, StateUpdate, WorldlineError,
    WorldlineId,
};

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProvenanceDag;

const NAME: &str = "provenance_dag";
const VERSION: u32 = 1;

const NODE_COMMITMENT: u8 = 1;
const NODE_OUTCOME: u8 = 2;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// A commitment, as the DAG records it: what was decided, by whom, under
/// which policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentNode {
    /// Its sequence.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
    /// Its time.
    pub timestamp_ns: u64,
    /// The kernel's id for it.
    pub commitment_id: CommitmentId,
    /// Its class.
    pub class: String,
    /// Who proposed it.
    pub proposer: String,
    /// Who decided it.
    pub decider: String,
    /// The decision.
    pub decision: Decision,
    /// The policy that decided.
    pub policy: PolicyRef,
}

/// An outcome, as the DAG records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeNode {
    /// Its sequence.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
    /// Its time.
    pub timestamp_ns: u64,
    /// The commitment it answers.
    pub commitment: Digest,
    /// How it ended.
    pub status: OutcomeStatus,
    /// Who reported it.
    pub reporter: String,
}

/// A receipt in the DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A commitment receipt.
    Commitment(CommitmentNode),
    /// An outcome receipt.
    Outcome(OutcomeNode),
}

/// Everything that led to an outcome: the outcome, the commitment it
/// answers (with its decision and policy), the evidence the commitment
/// cited and the proofs the outcome gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The outcome.
    pub outcome: OutcomeNode,
    /// Its commitment.
    pub commitment: CommitmentNode,
    /// The commitment's evidence, in its order.
    pub evidence: Vec<EvidenceRef>,
    /// The outcome's proofs, in its order.
    pub proofs: Vec<ProofRef>,
}

/// One write of a state key by a succeeded outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyWrite {
    /// Sequence of the outcome.
    pub seq: u64,
    /// Its receipt hash.
    pub outcome: Digest,
    /// Whether the write deleted the key (else it set it).
    pub deleted: bool,
}

/// A commitment, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommitmentRef {
    /// Its sequence.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
}

fn table(w: &WorldlineId, t: &str) -> Key {
    Key::table(NAME, VERSION, w, t)
}

fn stored(w: &WorldlineId) -> impl Fn(WorldlineError) -> WorldlineError + '_ {
    move |e| e.in_stored(format_args!("provenance_dag of worldline {w}"))
}

fn check_key(key: &str) -> Result<(), WorldlineError> {
    if key.is_empty() || key.as_bytes().contains(&0) {
        return Err(WorldlineError::invalid(
            "key",
            format!("{key:?} is not a state key (empty, or holding NUL)"),
        ));
    }
    Ok(())
}

impl Node {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        match self {
            Node::Commitment(c) => {
                out.put_u8(NODE_COMMITMENT);
                out.put_u64(c.seq);
                out.put_digest(&c.receipt_hash);
                out.put_u64(c.timestamp_ns);
                out.extend_from_slice(&c.commitment_id.0);
                for s in [&c.class, &c.proposer, &c.decider] {
                    out.put_len32(s.as_bytes());
                }
                match &c.decision {
                    Decision::Accepted => out.put_u8(1),
                    Decision::Rejected { reason } => {
                        out.put_u8(2);
                        out.put_len32(reason.as_bytes());
                    }
                }
                out.put_digest(&c.policy.hash);
                out.put_len32(c.policy.version.as_bytes());
            }
            Node::Outcome(o) => {
                out.put_u8(NODE_OUTCOME);
                out.put_u64(o.seq);
                out.put_digest(&o.receipt_hash);
                out.put_u64(o.timestamp_ns);
                out.put_digest(&o.commitment);
                put_status(&mut out, &o.status);
                out.put_len32(o.reporter.as_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Node, WorldlineError> {
        let mut r = Reader::new(bytes, "provenance node");
        let any = usize::MAX;
        let node = match r.u8("kind")? {
            NODE_COMMITMENT => Node::Commitment(CommitmentNode {
                seq: r.u64("seq")?,
                receipt_hash: r.digest("receipt_hash")?,
                timestamp_ns: r.u64("timestamp_ns")?,
                commitment_id: CommitmentId(r.array::<16>("commitment_id")?),
                class: r.str32("class", any)?.to_owned(),
                proposer: r.str32("proposer", any)?.to_owned(),
                decider: r.str32("decider", any)?.to_owned(),
                decision: match r.u8("decision")? {
                    1 => Decision::Accepted,
                    2 => Decision::Rejected {
                        reason: r.str32("reason", any)?.to_owned(),
                    },
                    t => {
                        return Err(WorldlineError::invalid(
                            "decision",
                            format!("has unknown tag {t}"),
                        ));
                    }
                },
                policy: PolicyRef {
                    hash: r.digest("policy.hash")?,
                    version: r.str32("policy.version", any)?.to_owned(),
                },
            }),
            NODE_OUTCOME => Node::Outcome(OutcomeNode {
                seq: r.u64("seq")?,
                receipt_hash: r.digest("receipt_hash")?,
                timestamp_ns: r.u64("timestamp_ns")?,
                commitment: r.digest("commitment")?,
                status: read_status(&mut r)?,
                reporter: r.str32("reporter", any)?.to_owned(),
            }),
            t => {
                return Err(WorldlineError::invalid(
                    "kind",
                    format!("has unknown tag {t}"),
                ));
            }
        };
        r.finish()?;
        Ok(node)
    }
}

fn encode_ref(uri: &str, digest: &Digest) -> Vec<u8> {
    let mut out = Vec::with_capacity(36 + uri.len());
    out.put_len32(uri.as_bytes());
    out.put_digest(digest);
    out
}

fn decode_ref(bytes: &[u8]) -> Result<(String, Digest), WorldlineError> {
    let mut r = Reader::new(bytes, "provenance reference");
    let uri = r.str32("uri", usize::MAX)?.to_owned();
    let digest = r.digest("digest")?;
    r.finish()?;
    Ok((uri, digest))
}

fn digest_value(bytes: &[u8]) -> Result<Digest, WorldlineError> {
    Digest::from_slice(bytes)
        .ok_or_else(|| WorldlineError::invalid("hash", format!("is {} bytes, not 32", bytes.len())))
}

impl Projection for ProvenanceDag {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn apply(&self, receipt: &Receipt, txn: &mut KvTxn<'_>) -> Result<(), WorldlineError> {
        let w = &receipt.worldline;
        let h = &receipt.receipt_hash;
        match &receipt.body {
            ReceiptBody::Commitment(c) => {
                let node = Node::Commitment(CommitmentNode {
                    seq: receipt.seq,
                    receipt_hash: *h,
                    timestamp_ns: receipt.timestamp_ns,
                    commitment_id: c.commitment_id,
                    class: c.class.clone(),
                    proposer: c.proposer.clone(),
                    decider: c.decider.clone(),
                    decision: c.decision.clone(),
                    policy: c.policy.clone(),
                });
                txn.put(table(w, "node").digest(h).into_bytes(), node.encode());
                for (i, e) in c.evidence.iter().enumerate() {
                    let key = table(w, "evidence").digest(h).u32(i as u32).into_bytes();
                    txn.put(key, encode_ref(&e.uri, &e.digest));
                    let cited = table(w, "cited")
                        .digest(&e.digest)
                        .u64(receipt.seq)
                        .into_bytes();
                    txn.put(cited, h.0.to_vec());
                }
            }
            ReceiptBody::Outcome(o) => {
                let node = Node::Outcome(OutcomeNode {
                    seq: receipt.seq,
                    receipt_hash: *h,
                    timestamp_ns: receipt.timestamp_ns,
                    commitment: o.commitment,
                    status: o.status.clone(),
                    reporter: o.reporter.clone(),
                });
                txn.put(table(w, "node").digest(h).into_bytes(), node.encode());
                txn.put(
                    table(w, "answer").digest(&o.commitment).into_bytes(),
                    h.0.to_vec(),
                );
                for (i, p) in o.proofs.iter().enumerate() {
                    let key = table(w, "proof").digest(h).u32(i as u32).into_bytes();
                    txn.put(key, encode_ref(&p.uri, &p.digest));
                }
                if o.status == OutcomeStatus::Succeeded {
                    for u in &o.state_updates {
                        let op = match u {
                            StateUpdate::Put { .. } => OP_PUT,
                            StateUpdate::Delete { .. } => OP_DELETE,
                        };
                        let mut write = h.0.to_vec();
                        write.push(op);
                        txn.put(
                            table(w, "write").str(u.key()).u64(receipt.seq).into_bytes(),
                            write,
                        );
                        txn.put(
                            table(w, "wrote").digest(h).str(u.key()).into_bytes(),
                            vec![op],
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// The receipt with hash `hash`, as a DAG node.
pub fn node(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    hash: &Digest,
) -> Result<Option<Node>, WorldlineError> {
    match kv.get(table(worldline, "node").digest(hash).bytes())? {
        None => Ok(None),
        Some(b) => Node::decode(&b).map(Some).map_err(stored(worldline)),
    }
}

/// Every `(uri, digest)` under `prefix`, in index order (lists are bounded
/// by `list_items_max`, so this is a few ranges at most).
fn refs(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    prefix: &Key,
) -> Result<Vec<(String, Digest)>, WorldlineError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = scan(
            kv,
            prefix.bytes(),
            &[],
            None,
            Direction::Forward,
            cursor.as_ref(),
            PAGE_ITEMS_MAX,
        )?;
        for (_, v) in &page.items {
            out.push(decode_ref(v).map_err(stored(worldline))?);
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// What led to the outcome `outcome`: its commitment, decision, policy,
/// evidence and proofs. `None` if the DAG has no such outcome.
pub fn lineage(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    outcome: &Digest,
) -> Result<Option<Lineage>, WorldlineError> {
    let Some(Node::Outcome(o)) = node(kv, worldline, outcome)? else {
        return Ok(None);
    };
    let Some(Node::Commitment(c)) = node(kv, worldline, &o.commitment)? else {
        return Err(WorldlineError::corrupt(format!(
            "provenance_dag of worldline {worldline}: outcome {outcome} names commitment {}, which has no node",
            o.commitment
        )));
    };
    let evidence = refs(
        kv,
        worldline,
        &table(worldline, "evidence").digest(&c.receipt_hash),
    )?
    .into_iter()
    .map(|(uri, digest)| EvidenceRef { uri, digest })
    .collect();
    let proofs = refs(kv, worldline, &table(worldline, "proof").digest(outcome))?
        .into_iter()
        .map(|(uri, digest)| ProofRef { uri, digest })
        .collect();
    Ok(Some(Lineage {
        outcome: o,
        commitment: c,
        evidence,
        proofs,
    }))
}

fn key_write(worldline: &WorldlineId, suffix: &[u8], v: &[u8]) -> Result<KeyWrite, WorldlineError> {
    let mut k = KeyReader::new(suffix, &[])?;
    let seq = k.u64()?;
    k.finish()?;
    let (outcome, op) = match v.split_last() {
        Some((&op, h)) if h.len() == 32 && (op == OP_PUT || op == OP_DELETE) => {
            (digest_value(h)?, op)
        }
        _ => {
            return Err(WorldlineError::corrupt(format!(
                "provenance_dag of worldline {worldline}: a key write is malformed"
            )));
        }
    };
    Ok(KeyWrite {
        seq,
        outcome,
        deleted: op == OP_DELETE,
    })
}

/// The last write of state key `key` at or before receipt `seq`: which
/// outcome set or deleted it. `None` if no outcome ever wrote it by then.
pub fn writer_of_key(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    key: &str,
    seq: u64,
) -> Result<Option<KeyWrite>, WorldlineError> {
    check_key(key)?;
    let prefix = table(worldline, "write").str(key);
    let hi = seq.saturating_add(1).to_be_bytes();
    let page = scan(
        kv,
        prefix.bytes(),
        &[],
        Some(&hi),
        Direction::Backward,
        None,
        1,
    )?;
    page.items
        .first()
        .map(|(s, v)| key_write(worldline, s, v))
        .transpose()
}

/// What led to the value state key `key` holds after receipt `seq`: the
/// last write of it by then, and that outcome's [`lineage`]. `None` if no
/// outcome wrote the key by then.
pub fn lineage_of_key(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    key: &str,
    seq: u64,
) -> Result<Option<(KeyWrite, Lineage)>, WorldlineError> {
    let Some(write) = writer_of_key(kv, worldline, key, seq)? else {
        return Ok(None);
    };
    match lineage(kv, worldline, &write.outcome)? {
        Some(l) => Ok(Some((write, l))),
        None => Err(WorldlineError::corrupt(format!(
            "provenance_dag of worldline {worldline}: key {key:?} was written by {}, which has no outcome node",
            write.outcome
        ))),
    }
}

/// What depended on a commitment: its outcome, if one was folded, and a
/// page of the state keys that outcome wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependents {
    /// The outcome that answered the commitment.
    pub outcome: Option<OutcomeNode>,
    /// The state keys it wrote, each with whether it deleted the key.
    pub keys: Page<(String, bool)>,
}

/// What depended on commitment `commitment` ([`outcome_of`], then
/// [`keys_written_by`]; continue the keys with the returned cursor).
pub fn dependents(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    commitment: &Digest,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Dependents, WorldlineError> {
    let outcome = outcome_of(kv, worldline, commitment)?;
    let keys = match &outcome {
        Some(o) => keys_written_by(kv, worldline, &o.receipt_hash, cursor, limit)?,
        None => Page {
            items: Vec::new(),
            next: None,
        },
    };
    Ok(Dependents { outcome, keys })
}

/// Every write of state key `key`, in receipt order
/// (`Direction::Backward`: latest first).
pub fn key_history(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    key: &str,
    direction: Direction,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<KeyWrite>, WorldlineError> {
    check_key(key)?;
    let prefix = table(worldline, "write").str(key);
    let page = scan(kv, prefix.bytes(), &[], None, direction, cursor, limit)?;
    let items = page
        .items
        .iter()
        .map(|(s, v)| key_write(worldline, s, v))
        .collect::<Result<_, _>>()?;
    Ok(Page {
        items,
        next: page.next,
    })
}

/// The outcome that answered commitment `commitment`, if one was folded.
pub fn outcome_of(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    commitment: &Digest,
) -> Result<Option<OutcomeNode>, WorldlineError> {
    let Some(h) = kv.get(table(worldline, "answer").digest(commitment).bytes())? else {
        return Ok(None);
    };
    let h = digest_value(&h).map_err(stored(worldline))?;
    match node(kv, worldline, &h)? {
        Some(Node::Outcome(o)) => Ok(Some(o)),
        _ => Err(WorldlineError::corrupt(format!(
            "provenance_dag of worldline {worldline}: commitment {commitment} is answered by {h}, which is no outcome node"
        ))),
    }
}

/// The state keys outcome `outcome` wrote, in key order, each with whether
/// it deleted the key (the outcome's last update of that key).
pub fn keys_written_by(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    outcome: &Digest,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<(String, bool)>, WorldlineError> {
    let prefix = table(worldline, "wrote").digest(outcome);
    let page = scan(
        kv,
        prefix.bytes(),
        &[],
        None,
        Direction::Forward,
        cursor,
        limit,
    )?;
    let mut items = Vec::with_capacity(page.items.len());
    for (suffix, v) in &page.items {
        let mut k = KeyReader::new(suffix, &[])?;
        let key = k.str()?.to_owned();
        k.finish()?;
        let deleted = match v.as_slice() {
            [OP_PUT] => false,
            [OP_DELETE] => true,
            _ => {
                return Err(WorldlineError::corrupt(format!(
                    "provenance_dag of worldline {worldline}: the write of {key:?} by {outcome} is malformed"
                )));
            }
        };
        items.push((key, deleted));
    }
    Ok(Page {
        items,
        next: page.next,
    })
}

/// The commitments that cited evidence with digest `evidence`, in receipt
/// order (`Direction::Backward`: latest first).
pub fn commitments_citing(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    evidence: &Digest,
    direction: Direction,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<CommitmentRef>, WorldlineError> {
    let prefix = table(worldline, "cited").digest(evidence);
    let page = scan(kv, prefix.bytes(), &[], None, direction, cursor, limit)?;
    let mut items = Vec::with_capacity(page.items.len());
    for (suffix, v) in &page.items {
        let mut k = KeyReader::new(suffix, &[])?;
        let seq = k.u64()?;
        k.finish()?;
        items.push(CommitmentRef {
            seq,
            receipt_hash: digest_value(v).map_err(stored(worldline))?,
        });
    }
    Ok(Page {
        items,
        next: page.next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_and_damaged_ones_never_panic() {
        let nodes = [
            Node::Commitment(CommitmentNode {
                seq: 1,
                receipt_hash: Digest::of(&[b"c"]),
                timestamp_ns: 5,
                commitment_id: CommitmentId([1; 16]),
                class: "deploy".into(),
                proposer: "agent".into(),
                decider: "kernel".into(),
                decision: Decision::Rejected {
                    reason: "no".into(),
                },
                policy: PolicyRef {
                    hash: Digest::ZERO,
                    version: "v1".into(),
                },
            }),
            Node::Outcome(OutcomeNode {
                seq: 2,
                receipt_hash: Digest::of(&[b"o"]),
                timestamp_ns: 6,
                commitment: Digest::of(&[b"c"]),
                status: OutcomeStatus::Rejection,
                reporter: "kernel".into(),
            }),
        ];
        for n in nodes {
            let b = n.encode();
            assert_eq!(Node::decode(&b), Ok(n));
            crate::testkit::never_panics_on_mutations(&b, |m| {
                if let Ok(d) = Node::decode(m) {
                    assert_eq!(d.encode(), m);
                }
            });
        }
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;
    use crate::testkit::{Chain, delete, fold, put};

    #[test]
    fn an_outcome_and_a_state_key_trace_back_to_their_decision_evidence_and_proofs() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("alice", true, &[], &[]);
        let oa = ch.outcome(
            &a,
            OutcomeStatus::Succeeded,
            vec![put("k", "1"), put("j", "1")],
        );
        let b = ch.commit("bob", true, &[], &[]);
        let ob = ch.outcome(&b, OutcomeStatus::Succeeded, vec![delete("k")]);
        let kv = fold(&ch);
        let w = &ch.worldline;

        let l = lineage(&kv, w, &oa.receipt_hash).unwrap().unwrap();
        assert_eq!(l.commitment.receipt_hash, a.receipt_hash);
        assert_eq!(l.commitment.proposer, "alice");
        assert_eq!(l.commitment.decision, Decision::Accepted);
        assert_eq!(l.evidence, a.commitment().unwrap().evidence);
        assert_eq!(l.proofs, oa.outcome().unwrap().proofs);
        assert_eq!(lineage(&kv, w, &a.receipt_hash).unwrap(), None);

        let at = |seq| writer_of_key(&kv, w, "k", seq).unwrap();
        assert_eq!(at(1), None);
        assert_eq!(
            at(3),
            Some(KeyWrite {
                seq: 2,
                outcome: oa.receipt_hash,
                deleted: false
            })
        );
        assert_eq!(
            at(4),
            Some(KeyWrite {
                seq: 4,
                outcome: ob.receipt_hash,
                deleted: true
            })
        );
        let (write, l) = lineage_of_key(&kv, w, "j", 9).unwrap().unwrap();
        assert_eq!((write.seq, l.commitment.proposer.as_str()), (2, "alice"));
        assert_eq!(lineage_of_key(&kv, w, "j", 1).unwrap(), None);
        let h = key_history(&kv, w, "k", Direction::Forward, None, 10).unwrap();
        assert_eq!(
            h.items.iter().map(|k| k.seq).collect::<Vec<_>>(),
            vec![2, 4]
        );
    }

    #[test]
    fn evidence_and_commitments_lead_forward_to_outcomes_and_state_keys() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("alice", true, &[], &[]);
        let oa = ch.outcome(
            &a,
            OutcomeStatus::Succeeded,
            vec![put("k", "1"), put("j", "1"), delete("j")],
        );
        let b = ch.commit("bob", false, &[], &[]);
        let kv = fold(&ch);
        let w = &ch.worldline;
        let digest = a.commitment().unwrap().evidence[0].digest;
        let citing = commitments_citing(&kv, w, &digest, Direction::Forward, None, 10).unwrap();
        let refs: Vec<_> = citing
            .items
            .iter()
            .map(|c| (c.seq, c.receipt_hash))
            .collect();
        assert_eq!(refs, vec![(1, a.receipt_hash), (3, b.receipt_hash)]);
        let o = outcome_of(&kv, w, &a.receipt_hash).unwrap().unwrap();
        assert_eq!(o.receipt_hash, oa.receipt_hash);
        assert_eq!(outcome_of(&kv, w, &b.receipt_hash).unwrap(), None);
        let keys = keys_written_by(&kv, w, &oa.receipt_hash, None, 10).unwrap();
        assert_eq!(
            keys.items,
            vec![("j".to_owned(), true), ("k".to_owned(), false)]
        );
        assert!(matches!(
            node(&kv, w, &b.receipt_hash).unwrap(),
            Some(Node::Commitment(_))
        ));
    }
}
