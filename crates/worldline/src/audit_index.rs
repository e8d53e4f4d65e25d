//! `audit_index`, version 1: who proposed and decided what, when and why.
//!
//! Every commitment receipt gets one record and one index key per filter it
//! can be found by. An index key fixes the filter in its prefix and ends in
//! the receipt's time and sequence, so "these commitments in this time
//! range" is one key range: a query reads the page it returns and nothing
//! else, however long the worldline.
//!
//! | table | key after `audit_index/1/<worldline>/` | value |
//! |---|---|---|
//! | records | `record/` u64 seq | [`AuditRecord`] |
//! | by hash | `hash/` \[32\] receipt hash | u64 seq |
//! | all, by time | `time/` u64 time, u64 seq | — |
//! | by proposer | `proposer/` actor `\0` u64 time, u64 seq | — |
//! | by decider | `decider/` actor `\0` u64 time, u64 seq | — |
//! | by requested capability | `requested/` capability `\0` u64 time, u64 seq | — |
//! | by granted capability | `granted/` capability `\0` u64 time, u64 seq | — |
//! | by class | `class/` class `\0` u64 time, u64 seq | — |
//! | by decision | `decision/` u8 (1 accepted, 2 rejected) u64 time, u64 seq | — |
//!
//! Costs: a commitment with `r` requested and `g` granted capabilities
//! writes `7 + r + g` keys and reads nothing; an outcome reads two keys and
//! rewrites its commitment's record (so the record says what came of it).
//! A query page of `n` records costs one range read and `n` reads.

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader};
use crate::keys::{Key, KeyReader};
use crate::page::scan;
use crate::{
    Commitment, CommitmentId, Cursor, Decision, Direction, KvRead, KvTxn, OutcomeStatus, Page,
    PolicyRef, Projection, Receipt, ReceiptBody, WorldlineError, WorldlineId,
};

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditIndex;

const NAME: &str = "audit_index";
const VERSION: u32 = 1;

/// A half-open range of receipt times, `[from_ns, until_ns)`, in
/// nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeRange {
    /// First time included.
    pub from_ns: u64,
    /// First time excluded.
    pub until_ns: u64,
}

impl TimeRange {
    /// Every time.
    pub const ALL: TimeRange = TimeRange {
        from_ns: 0,
        until_ns: u64::MAX,
    };
}

/// Accepted or rejected, as a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Accepted commitments.
    Accepted,
    /// Rejected commitments.
    Rejected,
}

/// Which commitments a query returns. One filter per query: each is one
/// index, so each query is one key range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditFilter {
    /// Every commitment.
    All,
    /// Commitments proposed by this actor.
    Proposer(String),
    /// Commitments decided by this actor.
    Decider(String),
    /// Commitments that requested this capability.
    RequestedCapability(String),
    /// Commitments that granted this capability.
    GrantedCapability(String),
    /// Commitments of this class.
    Class(String),
    /// Commitments with this decision.
    Decision(DecisionKind),
}

/// What came of a commitment, as far as the audit index knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOutcome {
    /// Sequence of the outcome receipt.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
    /// Its time.
    pub timestamp_ns: u64,
    /// How the commitment ended.
    pub status: OutcomeStatus,
}

/// One commitment as the audit index records it: who (proposer, decider),
/// what (class), when (time, sequence), why (intent, policy, decision and
/// reason), and what came of it. The full receipt (targets, evidence,
/// capabilities) is one `get_by_hash` of `receipt_hash` away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence of the commitment receipt.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
    /// Its time.
    pub timestamp_ns: u64,
    /// The kernel's id for it.
    pub commitment_id: CommitmentId,
    /// Its class.
    pub class: String,
    /// Its intent.
    pub intent: String,
    /// Who proposed it.
    pub proposer: String,
    /// Who decided it.
    pub decider: String,
    /// The decision, with the reason of a rejection.
    pub decision: Decision,
    /// The policy that decided.
    pub policy: PolicyRef,
    /// Its outcome, once one was folded.
    pub outcome: Option<AuditOutcome>,
}

const DECISION_ACCEPTED: u8 = 1;
const DECISION_REJECTED: u8 = 2;

fn decision_tag(d: &Decision) -> u8 {
    match d {
        Decision::Accepted => DECISION_ACCEPTED,
        Decision::Rejected { .. } => DECISION_REJECTED,
    }
}

impl AuditRecord {
    fn new(r: &Receipt, c: &Commitment) -> AuditRecord {
        AuditRecord {
            seq: r.seq,
            receipt_hash: r.receipt_hash,
            timestamp_ns: r.timestamp_ns,
            commitment_id: c.commitment_id,
            class: c.class.clone(),
            intent: c.intent.clone(),
            proposer: c.proposer.clone(),
            decider: c.decider.clone(),
            decision: c.decision.clone(),
            policy: c.policy.clone(),
            outcome: None,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.intent.len());
        out.put_u64(self.seq);
        out.put_digest(&self.receipt_hash);
        out.put_u64(self.timestamp_ns);
        out.extend_from_slice(&self.commitment_id.0);
        for s in [&self.class, &self.intent, &self.proposer, &self.decider] {
            out.put_len32(s.as_bytes());
        }
        out.put_u8(decision_tag(&self.decision));
        if let Decision::Rejected { reason } = &self.decision {
            out.put_len32(reason.as_bytes());
        }
        out.put_digest(&self.policy.hash);
        out.put_len32(self.policy.version.as_bytes());
        match &self.outcome {
            None => out.put_u8(0),
            Some(o) => {
                out.put_u8(1);
                out.put_u64(o.seq);
                out.put_digest(&o.receipt_hash);
                out.put_u64(o.timestamp_ns);
                put_status(&mut out, &o.status);
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<AuditRecord, WorldlineError> {
        let mut r = Reader::new(bytes, "audit record");
        let any = usize::MAX;
        let seq = r.u64("seq")?;
        let receipt_hash = r.digest("receipt_hash")?;
        let timestamp_ns = r.u64("timestamp_ns")?;
        let commitment_id = CommitmentId(r.array::<16>("commitment_id")?);
        let class = r.str32("class", any)?.to_owned();
        let intent = r.str32("intent", any)?.to_owned();
        let proposer = r.str32("proposer", any)?.to_owned();
        let decider = r.str32("decider", any)?.to_owned();
        let decision = match r.u8("decision")? {
            DECISION_ACCEPTED => Decision::Accepted,
            DECISION_REJECTED => Decision::Rejected {
                reason: r.str32("reason", any)?.to_owned(),
            },
            t => {
                return Err(WorldlineError::invalid(
                    "decision",
                    format!("has unknown tag {t}"),
                ));
            }
        };
        let policy = PolicyRef {
            hash: r.digest("policy.hash")?,
            version: r.str32("policy.version", any)?.to_owned(),
        };
        let outcome = match r.u8("outcome")? {
            0 => None,
            1 => Some(AuditOutcome {
                seq: r.u64("outcome.seq")?,
                receipt_hash: r.digest("outcome.receipt_hash")?,
                timestamp_ns: r.u64("outcome.timestamp_ns")?,
                status: read_status(&mut r)?,
            }),
            t => {
                return Err(WorldlineError::invalid(
                    "outcome",
                    format!("has unknown tag {t}"),
                ));
            }
        };
        r.finish()?;
        Ok(AuditRecord {
            seq,
            receipt_hash,
            timestamp_ns,
            commitment_id,
            class,
            intent,
            proposer,
            decider,
            decision,
            policy,
            outcome,
        })
    }
}

pub(crate) fn put_status(out: &mut Vec<u8>, s: &OutcomeStatus) {
    match s {
        OutcomeStatus::Succeeded => out.put_u8(1),
        OutcomeStatus::Failed { reason } => {
            out.put_u8(2);
            out.put_len32(reason.as_bytes());
        }
        OutcomeStatus::Rejection => out.put_u8(3),
    }
}

pub(crate) fn read_status(r: &mut Reader<'_>) -> Result<OutcomeStatus, WorldlineError> {
    Ok(match r.u8("status")? {
        1 => OutcomeStatus::Succeeded,
        2 => OutcomeStatus::Failed {
            reason: r.str32("status.reason", usize::MAX)?.to_owned(),
        },
        3 => OutcomeStatus::Rejection,
        t => {
            return Err(WorldlineError::invalid(
                "status",
                format!("has unknown tag {t}"),
            ));
        }
    })
}

fn table(w: &WorldlineId, t: &str) -> Key {
    Key::table(NAME, VERSION, w, t)
}

fn record_key(w: &WorldlineId, seq: u64) -> Vec<u8> {
    table(w, "record").u64(seq).into_bytes()
}

fn hash_key(w: &WorldlineId, h: &Digest) -> Vec<u8> {
    table(w, "hash").digest(h).into_bytes()
}

fn read_record(kv: &dyn KvRead, w: &WorldlineId, seq: u64) -> Result<AuditRecord, WorldlineError> {
    decode_record(w, seq, kv.get(&record_key(w, seq))?)
}

/// The record at `seq` from its stored bytes, which an index named.
fn decode_record(
    w: &WorldlineId,
    seq: u64,
    stored: Option<Vec<u8>>,
) -> Result<AuditRecord, WorldlineError> {
    let in_stored =
        |e: WorldlineError| e.in_stored(format_args!("audit record {seq} of worldline {w}"));
    let bytes = stored.ok_or_else(|| {
        in_stored(WorldlineError::invalid(
            "record",
            "is missing from its index",
        ))
    })?;
    AuditRecord::decode(&bytes).map_err(in_stored)
}

/// The index prefix a filter selects, or an error for a filter string no
/// identifier can equal.
fn index_prefix(w: &WorldlineId, filter: &AuditFilter) -> Result<Key, WorldlineError> {
    let named = |t: &str, s: &str| {
        if s.is_empty() || s.as_bytes().contains(&0) {
            return Err(WorldlineError::invalid(
                "filter",
                format!("{s:?} is not an identifier (empty, or holding NUL)"),
            ));
        }
        Ok(table(w, t).str(s))
    };
    match filter {
        AuditFilter::All => Ok(table(w, "time")),
        AuditFilter::Proposer(a) => named("proposer", a),
        AuditFilter::Decider(a) => named("decider", a),
        AuditFilter::RequestedCapability(c) => named("requested", c),
        AuditFilter::GrantedCapability(c) => named("granted", c),
        AuditFilter::Class(c) => named("class", c),
        AuditFilter::Decision(DecisionKind::Accepted) => {
            Ok(table(w, "decision").u8(DECISION_ACCEPTED))
        }
        AuditFilter::Decision(DecisionKind::Rejected) => {
            Ok(table(w, "decision").u8(DECISION_REJECTED))
        }
    }
}

impl Projection for AuditIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn apply(&self, receipt: &Receipt, txn: &mut KvTxn<'_>) -> Result<(), WorldlineError> {
        let w = &receipt.worldline;
        match &receipt.body {
            ReceiptBody::Commitment(c) => {
                txn.put(
                    record_key(w, receipt.seq),
                    AuditRecord::new(receipt, c).encode(),
                );
                txn.put(
                    hash_key(w, &receipt.receipt_hash),
                    receipt.seq.to_be_bytes().to_vec(),
                );
                let when = |k: Key| k.u64(receipt.timestamp_ns).u64(receipt.seq).into_bytes();
                txn.put(when(table(w, "time")), Vec::new());
                txn.put(when(table(w, "proposer").str(&c.proposer)), Vec::new());
                txn.put(when(table(w, "decider").str(&c.decider)), Vec::new());
                txn.put(when(table(w, "class").str(&c.class)), Vec::new());
                txn.put(
                    when(table(w, "decision").u8(decision_tag(&c.decision))),
                    Vec::new(),
                );
                for cap in &c.requested_capabilities {
                    txn.put(when(table(w, "requested").str(cap)), Vec::new());
                }
                for cap in &c.granted_capabilities {
                    txn.put(when(table(w, "granted").str(cap)), Vec::new());
                }
            }
            ReceiptBody::Outcome(o) => {
                let Some(seq) = commitment_seq(txn, w, &o.commitment)? else {
                    return Err(WorldlineError::corrupt(format!(
                        "audit_index of worldline {w}: outcome {} names commitment {}, which it never indexed",
                        receipt.seq, o.commitment
                    )));
                };
                let mut record = read_record(txn, w, seq)?;
                record.outcome = Some(AuditOutcome {
                    seq: receipt.seq,
                    receipt_hash: receipt.receipt_hash,
                    timestamp_ns: receipt.timestamp_ns,
                    status: o.status.clone(),
                });
                txn.put(record_key(w, seq), record.encode());
            }
        }
        Ok(())
    }
}

/// The sequence of the commitment with receipt hash `hash`, if indexed.
pub fn commitment_seq(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    hash: &Digest,
) -> Result<Option<u64>, WorldlineError> {
    let Some(v) = kv.get(&hash_key(worldline, hash))? else {
        return Ok(None);
    };
    let a: [u8; 8] = v.as_slice().try_into().map_err(|_| {
        WorldlineError::corrupt(format!(
            "audit_index of worldline {worldline}: the sequence of commitment {hash} is {} bytes, not 8",
            v.len()
        ))
    })?;
    Ok(Some(u64::from_be_bytes(a)))
}

/// The record of the commitment at `seq`, if indexed.
pub fn record(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    seq: u64,
) -> Result<Option<AuditRecord>, WorldlineError> {
    match kv.get(&record_key(worldline, seq))? {
        None => Ok(None),
        Some(b) => AuditRecord::decode(&b)
            .map(Some)
            .map_err(|e| e.in_stored(format_args!("audit record {seq} of worldline {worldline}"))),
    }
}

/// The commitments `filter` selects whose receipt time lies in `time`, in
/// time order (`Direction::Backward`: latest first), one page at a time.
/// Continue with the returned cursor and the same filter, range and
/// direction.
pub fn query(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    filter: &AuditFilter,
    time: TimeRange,
    direction: Direction,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<AuditRecord>, WorldlineError> {
    let prefix = index_prefix(worldline, filter)?;
    let page = scan(
        kv,
        prefix.bytes(),
        &time.from_ns.to_be_bytes(),
        Some(&time.until_ns.to_be_bytes()),
        direction,
        cursor,
        limit,
    )?;
    let mut seqs = Vec::with_capacity(page.items.len());
    for (suffix, _) in &page.items {
        let mut k = KeyReader::new(suffix, &[])?;
        let _time = k.u64()?;
        seqs.push(k.u64()?);
        k.finish()?;
    }
    // The page's records in one read.
    let keys: Vec<Vec<u8>> = seqs.iter().map(|&seq| record_key(worldline, seq)).collect();
    let values = kv.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    if values.len() != keys.len() {
        return Err(WorldlineError::corrupt(format!(
            "audit_index of worldline {worldline}: the store answered {} values for {} records",
            values.len(),
            keys.len()
        )));
    }
    let mut items = Vec::with_capacity(seqs.len());
    for (seq, value) in seqs.into_iter().zip(values) {
        items.push(decode_record(worldline, seq, value)?);
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
    fn records_round_trip_and_damaged_ones_are_refused() {
        let r = AuditRecord {
            seq: 3,
            receipt_hash: Digest::of(&[b"r"]),
            timestamp_ns: 9,
            commitment_id: CommitmentId([7; 16]),
            class: "deploy".into(),
            intent: "why".into(),
            proposer: "agent".into(),
            decider: "kernel".into(),
            decision: Decision::Rejected {
                reason: "no".into(),
            },
            policy: PolicyRef {
                hash: Digest::ZERO,
                version: "v1".into(),
            },
            outcome: Some(AuditOutcome {
                seq: 4,
                receipt_hash: Digest::ZERO,
                timestamp_ns: 10,
                status: OutcomeStatus::Failed { reason: "x".into() },
            }),
        };
        let b = r.encode();
        assert_eq!(AuditRecord::decode(&b), Ok(r));
        crate::testkit::never_panics_on_mutations(&b, |m| {
            if let Ok(d) = AuditRecord::decode(m) {
                assert_eq!(d.encode(), m);
            }
        });
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;
    use crate::testkit::{Chain, fold};

    fn chain() -> Chain {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("alice", true, &["net"], &[]); // seq 1
        ch.outcome(&a, OutcomeStatus::Succeeded, vec![]); // seq 2
        ch.commit("bob", false, &["net"], &[]); // seq 3
        ch.commit_with("alice", true, &[], &[], |c| c.class = "rollback".into()); // seq 4
        ch.commit_with("alice", true, &["disk"], &[], |c| {
            c.decider = "operator".into()
        }); // seq 5
        ch
    }

    fn seqs(page: &Page<AuditRecord>) -> Vec<u64> {
        page.items.iter().map(|r| r.seq).collect()
    }

    fn time_of(ch: &Chain, seq: u64) -> u64 {
        ch.receipts[seq as usize - 1].timestamp_ns
    }

    #[test]
    fn each_filter_returns_only_its_commitments_in_time_order() {
        let ch = chain();
        let kv = fold(&ch);
        let w = &ch.worldline;
        let q = |f: AuditFilter| {
            seqs(&query(&kv, w, &f, TimeRange::ALL, Direction::Forward, None, 100).unwrap())
        };
        assert_eq!(q(AuditFilter::All), vec![1, 3, 4, 5]);
        assert_eq!(q(AuditFilter::Proposer("alice".into())), vec![1, 4, 5]);
        assert_eq!(q(AuditFilter::Proposer("al".into())), Vec::<u64>::new());
        assert_eq!(q(AuditFilter::Decider("operator".into())), vec![5]);
        assert_eq!(
            q(AuditFilter::RequestedCapability("net".into())),
            vec![1, 3]
        );
        assert_eq!(q(AuditFilter::GrantedCapability("net".into())), vec![1]);
        assert_eq!(q(AuditFilter::Class("rollback".into())), vec![4]);
        assert_eq!(q(AuditFilter::Decision(DecisionKind::Rejected)), vec![3]);
        assert!(
            query(
                &kv,
                w,
                &AuditFilter::Class(String::new()),
                TimeRange::ALL,
                Direction::Forward,
                None,
                1
            )
            .is_err()
        );
    }

    #[test]
    fn a_time_range_is_one_key_range_and_pages_continue_from_their_cursor() {
        let ch = chain();
        let kv = fold(&ch);
        let w = &ch.worldline;
        let range = TimeRange {
            from_ns: time_of(&ch, 3),
            until_ns: time_of(&ch, 5),
        };
        let page = query(
            &kv,
            w,
            &AuditFilter::All,
            range,
            Direction::Forward,
            None,
            100,
        )
        .unwrap();
        assert_eq!(seqs(&page), vec![3, 4]);
        let first = query(
            &kv,
            w,
            &AuditFilter::All,
            TimeRange::ALL,
            Direction::Backward,
            None,
            2,
        )
        .unwrap();
        assert_eq!(seqs(&first), vec![5, 4]);
        let next = query(
            &kv,
            w,
            &AuditFilter::All,
            TimeRange::ALL,
            Direction::Backward,
            first.next.as_ref(),
            2,
        )
        .unwrap();
        assert_eq!(seqs(&next), vec![3, 1]);
        assert_eq!(next.next, None);
    }

    #[test]
    fn a_record_says_why_and_what_came_of_it() {
        let ch = chain();
        let kv = fold(&ch);
        let r = record(&kv, &ch.worldline, 1).unwrap().unwrap();
        assert_eq!(r.intent, "ship it");
        assert_eq!(r.policy.version, "v1");
        let o = r.outcome.unwrap();
        assert_eq!((o.seq, o.status), (2, OutcomeStatus::Succeeded));
        let rejected = record(&kv, &ch.worldline, 3).unwrap().unwrap();
        assert_eq!(
            rejected.decision,
            Decision::Rejected {
                reason: "no".into()
            }
        );
        assert_eq!(rejected.outcome, None);
        assert_eq!(
            commitment_seq(&kv, &ch.worldline, &ch.receipts[3].receipt_hash).unwrap(),
            Some(4)
        );
    }
}
