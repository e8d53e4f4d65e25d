//! Replay (seed 4.5): the fold that rebuilds a worldline's state from its
//! receipts and checks the ledger's invariants on the way.
//!
//! Only succeeded outcomes of accepted commitments change the state;
//! rejected commitments and failed outcomes stay in the history for audit.
//! A replay starts at genesis or from a [`VerifiedSnapshot`], which is a
//! checkpoint, never an override: a replay from any snapshot reaches, at
//! every later receipt, the state a replay from genesis reaches.

use std::collections::HashSet;

use converge_ledger_core::{Digest, DigestMap};

use crate::rules::check_status;
use crate::{
    CommitmentId, Receipt, ReceiptBody, ReceiptRef, State, VerifiedSnapshot, WorldlineError,
    WorldlineId, WorldlineLimits,
};

/// Finds commitments a replay has not seen itself: those at or before the
/// snapshot it started from. A server implements it with its hash index
/// (`get_by_hash`, then [`Receipt::from_entry`]).
pub trait CommitmentLookup {
    /// The receipt with hash `hash` in `worldline`, if there is one.
    fn commitment(
        &self,
        worldline: &WorldlineId,
        hash: &Digest,
    ) -> Result<Option<Receipt>, WorldlineError>;
}

/// A lookup that knows nothing: enough for a replay from genesis, which
/// sees every commitment itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLookup;

impl CommitmentLookup for NoLookup {
    fn commitment(&self, _: &WorldlineId, _: &Digest) -> Result<Option<Receipt>, WorldlineError> {
        Ok(None)
    }
}

impl<F> CommitmentLookup for F
where
    F: Fn(&WorldlineId, &Digest) -> Result<Option<Receipt>, WorldlineError>,
{
    fn commitment(
        &self,
        worldline: &WorldlineId,
        hash: &Digest,
    ) -> Result<Option<Receipt>, WorldlineError> {
        self(worldline, hash)
    }
}

/// What a replay remembers of a commitment: enough for L4.
#[derive(Debug, Clone, Copy)]
struct Known {
    accepted: bool,
    answered: bool,
}

/// The replay fold over one worldline.
///
/// Feed receipts in order with [`Replay::apply`]. Each is checked against
/// what came before: the next sequence (L3, gapless), the link to the
/// previous receipt hash (L2), time and Lamport order, commitment ids used
/// once, and for an outcome (L4) a commitment seen earlier in the worldline
/// whose decision fits, answered at most once. A broken rule is
/// [`WorldlineError::Corrupt`] naming the receipt: the stored history is
/// not one the ledger could have written.
///
/// Memory: the state (at most `state_bytes_max`) and about 100 bytes per
/// commitment since the start, so replaying from a recent snapshot also
/// bounds what is remembered. Commitments before the start are asked of the
/// [`CommitmentLookup`]; at-most-one-outcome is then checked among the
/// outcomes this replay sees (the server enforces it atomically on append).
#[derive(Debug, Clone)]
pub struct Replay {
    worldline: WorldlineId,
    limits: WorldlineLimits,
    state: State,
    /// Sequence of the last receipt applied (or the snapshot's anchor).
    seq: u64,
    /// Hash at `seq`; `None` at genesis.
    head_hash: Option<Digest>,
    /// The sequence the replay started after: 0 or the snapshot's anchor.
    start_seq: u64,
    /// Time and Lamport clock of the last receipt applied, once one was.
    last_clock: Option<(u64, u64)>,
    commitments: DigestMap<Known>,
    commitment_ids: HashSet<CommitmentId>,
}

impl Replay {
    /// A replay from the empty state before receipt 1.
    pub fn genesis(worldline: WorldlineId, limits: WorldlineLimits) -> Replay {
        Replay::start(worldline, limits, State::new(), 0, None)
    }

    /// A replay from a verified snapshot: the state after its anchor. The
    /// first receipt applied must be `anchor_seq + 1` and link to the
    /// anchor hash, which checks the anchor against the stored history.
    pub fn from_snapshot(snapshot: VerifiedSnapshot, limits: WorldlineLimits) -> Replay {
        let worldline = *snapshot.worldline();
        let header = *snapshot.header();
        Replay::start(
            worldline,
            limits,
            snapshot.into_state(),
            header.anchor_seq,
            Some(header.anchor_hash),
        )
    }

    fn start(
        worldline: WorldlineId,
        limits: WorldlineLimits,
        state: State,
        seq: u64,
        head_hash: Option<Digest>,
    ) -> Replay {
        Replay {
            worldline,
            limits,
            state,
            seq,
            head_hash,
            start_seq: seq,
            last_clock: None,
            commitments: DigestMap::default(),
            commitment_ids: HashSet::new(),
        }
    }

    /// Applies the next receipt (see the type's documentation for the
    /// checks). On error nothing changes.
    pub fn apply(
        &mut self,
        receipt: &Receipt,
        lookup: &dyn CommitmentLookup,
    ) -> Result<(), WorldlineError> {
        let at = |problem: String| {
            WorldlineError::corrupt(format!(
                "receipt {} of worldline {}: {problem}",
                receipt.seq, receipt.worldline
            ))
        };
        self.check_position(receipt).map_err(at)?;
        match &receipt.body {
            ReceiptBody::Commitment(c) => {
                if self.commitment_ids.contains(&c.commitment_id) {
                    return Err(at(format!(
                        "commitment id {} is used a second time; a commitment id names one receipt",
                        c.commitment_id
                    )));
                }
                self.commitment_ids.insert(c.commitment_id);
                self.commitments.insert(
                    receipt.receipt_hash,
                    Known {
                        accepted: c.decision.is_accepted(),
                        answered: false,
                    },
                );
            }
            ReceiptBody::Outcome(o) => {
                let known = match self.commitments.get(&o.commitment) {
                    Some(k) => *k,
                    None => self.look_up(receipt, &o.commitment, lookup)?,
                };
                if known.answered {
                    return Err(at(format!(
                        "is a second outcome for commitment {}; L4 allows one",
                        o.commitment
                    )));
                }
                check_status(known.accepted, &o.status).map_err(|e| at(e.message().to_owned()))?;
                if matches!(o.status, crate::OutcomeStatus::Succeeded) {
                    self.state
                        .apply(&o.state_updates, &self.limits)
                        .map_err(|e| at(e.message().to_owned()))?;
                }
                self.commitments.insert(
                    o.commitment,
                    Known {
                        answered: true,
                        ..known
                    },
                );
            }
        }
        self.seq = receipt.seq;
        self.head_hash = Some(receipt.receipt_hash);
        self.last_clock = Some((receipt.timestamp_ns, receipt.lamport));
        Ok(())
    }

    fn check_position(&self, receipt: &Receipt) -> Result<(), String> {
        if receipt.worldline != self.worldline {
            return Err(format!(
                "belongs to another worldline than {}",
                self.worldline
            ));
        }
        if receipt.seq != self.seq + 1 {
            return Err(format!(
                "expected seq {} (L3: sequences are gapless and increasing)",
                self.seq + 1
            ));
        }
        if receipt.prev_receipt_hash != self.head_hash {
            return Err(format!(
                "links to {} instead of {} (L2)",
                show(receipt.prev_receipt_hash),
                show(self.head_hash)
            ));
        }
        if let Some((time, lamport)) = self.last_clock {
            if receipt.timestamp_ns < time {
                return Err(format!(
                    "time {} is before the previous receipt's {time}",
                    receipt.timestamp_ns
                ));
            }
            if receipt.lamport <= lamport {
                return Err(format!(
                    "Lamport clock {} does not advance past {lamport}",
                    receipt.lamport
                ));
            }
        }
        Ok(())
    }

    /// A commitment this replay has not seen: it must be a commitment of
    /// this worldline at or before the start.
    fn look_up(
        &self,
        outcome: &Receipt,
        hash: &Digest,
        lookup: &dyn CommitmentLookup,
    ) -> Result<Known, WorldlineError> {
        let found = lookup.commitment(&self.worldline, hash)?;
        let known = match found {
            Some(r)
                if r.worldline == self.worldline
                    && r.receipt_hash == *hash
                    && r.seq <= self.start_seq =>
            {
                r.commitment().map(|c| Known {
                    accepted: c.decision.is_accepted(),
                    answered: false,
                })
            }
            _ => None,
        };
        known.ok_or_else(|| {
            WorldlineError::corrupt(format!(
                "receipt {} of worldline {}: names commitment {hash}, which is not a commitment earlier in this worldline (L4)",
                outcome.seq, self.worldline
            ))
        })
    }

    /// What this replay knows of the commitment with receipt hash `hash`:
    /// whether it was accepted and whether an outcome answered it. `None`
    /// for a commitment it never met: not in this worldline up to
    /// [`Replay::seq`] when the replay started at genesis.
    pub fn commitment_status(&self, hash: &Digest) -> Option<(bool, bool)> {
        self.commitments.get(hash).map(|k| (k.accepted, k.answered))
    }

    /// The worldline being replayed.
    pub fn worldline(&self) -> &WorldlineId {
        &self.worldline
    }

    /// The state after the last receipt applied.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes the state out.
    pub fn into_state(self) -> State {
        self.state
    }

    /// The state hash after the last receipt applied (computed on each
    /// call, `O(state)`).
    pub fn state_hash(&self) -> Digest {
        self.state.hash()
    }

    /// Sequence of the last receipt applied; the anchor for a replay from a
    /// snapshot that has applied nothing yet; 0 at genesis.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Receipt hash at [`Replay::seq`]; `None` at genesis.
    pub fn head_hash(&self) -> Option<Digest> {
        self.head_hash
    }

    /// The receipt at [`Replay::seq`], as a reference; `None` at genesis.
    pub fn head(&self) -> Option<ReceiptRef> {
        self.head_hash.map(|receipt_hash| ReceiptRef {
            worldline: self.worldline,
            seq: self.seq,
            receipt_hash,
        })
    }
}

fn show(h: Option<Digest>) -> String {
    h.map_or_else(|| "genesis".to_owned(), |d| d.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Chain, delete, put};
    use crate::{ErrorCode, Outcome, OutcomeStatus, read_snapshot, snapshot_entries};

    fn replay_all(chain: &Chain) -> Result<Replay, WorldlineError> {
        let mut r = Replay::genesis(chain.worldline, WorldlineLimits::default());
        for receipt in &chain.receipts {
            r.apply(receipt, &NoLookup)?;
        }
        Ok(r)
    }

    #[test]
    fn only_succeeded_outcomes_of_accepted_commitments_change_state() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &[], &[]);
        ch.outcome(
            &a,
            OutcomeStatus::Succeeded,
            vec![put("k", "1"), put("j", "2")],
        );
        let b = ch.commit("agent", true, &[], &[]);
        ch.outcome(
            &b,
            OutcomeStatus::Failed {
                reason: "timeout".into(),
            },
            vec![],
        );
        let c = ch.commit("agent", false, &[], &[]);
        ch.outcome(&c, OutcomeStatus::Rejection, vec![]);
        let d = ch.commit("agent", true, &[], &[]);
        ch.outcome(&d, OutcomeStatus::Succeeded, vec![delete("j")]);
        let r = replay_all(&ch).unwrap();
        assert_eq!(r.seq(), 8);
        assert_eq!(r.head_hash(), Some(ch.receipts[7].receipt_hash));
        assert_eq!(r.state().len(), 1);
        assert_eq!(r.state().get("k"), Some(&b"1"[..]));
    }

    #[test]
    fn a_second_outcome_for_one_commitment_is_data_loss() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &[], &[]);
        ch.outcome(&a, OutcomeStatus::Succeeded, vec![put("k", "1")]);
        ch.outcome(&a, OutcomeStatus::Succeeded, vec![put("k", "2")]);
        let e = replay_all(&ch).unwrap_err();
        assert_eq!(e.code(), ErrorCode::DataLoss);
        assert!(e.message().contains("second outcome"), "{e}");
    }

    #[test]
    fn an_outcome_that_does_not_fit_its_decision_or_names_no_commitment_is_data_loss() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", false, &[], &[]);
        ch.raw_outcome(&Outcome {
            status: OutcomeStatus::Succeeded,
            ..Outcome::rejection(a.receipt_hash, "driver")
        });
        assert!(
            replay_all(&ch)
                .unwrap_err()
                .message()
                .contains("was rejected")
        );
        let mut ch = Chain::new(b"w");
        ch.raw_outcome(&Outcome::rejection(Digest::of(&[b"nothing"]), "driver"));
        assert!(replay_all(&ch).unwrap_err().message().contains("L4"));
        // An outcome naming an outcome.
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", false, &[], &[]);
        let o = ch.outcome(&a, OutcomeStatus::Rejection, vec![]);
        ch.raw_outcome(&Outcome::rejection(o.receipt_hash, "driver"));
        assert!(replay_all(&ch).is_err());
    }

    #[test]
    fn gaps_repeats_and_broken_links_are_refused_and_change_nothing() {
        let mut ch = Chain::new(b"w");
        ch.commit("agent", true, &[], &[]);
        ch.commit("agent", true, &[], &[]);
        ch.commit("agent", true, &[], &[]);
        let mut r = Replay::genesis(ch.worldline, WorldlineLimits::default());
        assert!(
            r.apply(&ch.receipts[1], &NoLookup)
                .unwrap_err()
                .message()
                .contains("L3")
        );
        r.apply(&ch.receipts[0], &NoLookup).unwrap();
        assert!(r.apply(&ch.receipts[0], &NoLookup).is_err());
        let mut forged = ch.receipts[1].clone();
        forged.prev_receipt_hash = Some(Digest::ZERO);
        assert!(
            r.apply(&forged, &NoLookup)
                .unwrap_err()
                .message()
                .contains("L2")
        );
        assert_eq!(r.seq(), 1);
        r.apply(&ch.receipts[1], &NoLookup).unwrap();
    }

    #[test]
    fn a_replay_from_a_snapshot_asks_the_lookup_for_older_commitments() {
        let l = WorldlineLimits::default();
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &[], &[]);
        ch.outcome(&a, OutcomeStatus::Succeeded, vec![put("k", "1")]);
        let b = ch.commit("agent", true, &[], &[]);
        let anchor_state = replay_all(&ch).unwrap().into_state();
        ch.outcome(&b, OutcomeStatus::Succeeded, vec![put("k", "2")]);
        let batch = snapshot_entries(&ch.receipts[2].reference(), &anchor_state, &l).unwrap();
        let entries = crate::snapshot::tests::append(&ch.worldline, &batch);
        let snap = read_snapshot(&ch.worldline, &entries, &l).unwrap();

        let known = ch.receipts.clone();
        let lookup = move |_: &WorldlineId, h: &Digest| {
            Ok(known.iter().find(|r| r.receipt_hash == *h).cloned())
        };
        let mut r = Replay::from_snapshot(snap.clone(), l.clone());
        assert_eq!(r.seq(), 3);
        r.apply(&ch.receipts[3], &lookup).unwrap();
        assert_eq!(r.state_hash(), replay_all(&ch).unwrap().state_hash());
        // Without the lookup, the older commitment is unknown.
        let mut r = Replay::from_snapshot(snap, l);
        assert!(r.apply(&ch.receipts[3], &NoLookup).is_err());
    }
}
