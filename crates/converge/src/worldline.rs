//! A converge-core run as a WorldLine (docs/design.md §18): each fact the
//! engine promoted becomes a commitment receipt (the proposal, the agent
//! that proposed it, the engine's validation that accepted it, under the
//! engine's promotion policy) and the outcome receipt that answers it (the
//! fact written to state key `<context key>/<fact id>`). The ledger then
//! enforces one outcome per commitment, replays the run's state, and
//! answers who proposed what, under which policy, and what every state key
//! came from, through its projections.
//!
//! converge-core 3.9.2 announces promotions (`FactPromoted`, then the fact
//! through the streaming callback); it emits no event for a proposal its
//! validation refuses (it only logs it), so only accepted proposals reach
//! the worldline. A kernel that decides proposals itself records its
//! rejections with `Client::append_commitment` and a `Rejected` decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use converge_core::experience_store::ExperienceEvent;
use converge_core::{ContextFact, Engine, ExperienceEventObserver, StreamingCallback};
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, EvidenceRef, Outcome, OutcomeStatus,
    PolicyRef, ProofRef, Receipt, StateUpdate, WorldlineId,
};
use converge_ledger_client::{Client, Digest};

use crate::Error;
use crate::codec::{context_key_name, encode_fact};

/// The policy version commitments name: the engine that decided.
pub const ENGINE_POLICY_VERSION: &str = "converge-core-3.9.2";
/// Who decides: the engine's validation and promotion gate.
pub const ENGINE_DECIDER: &str = "converge-engine";

/// One promotion the engine announced.
#[derive(Debug, Clone)]
struct Promotion {
    proposal_id: String,
    fact_id: String,
    promoted_by: String,
    reason: String,
}

#[derive(Default)]
struct Seen {
    promotions: Vec<Promotion>,
    facts: HashMap<String, (u32, ContextFact)>,
}

/// Collects what an engine promotes, to write it as a worldline once the
/// run is over ([`WorldlineTap::write`]). Attach it with
/// [`WorldlineTap::attach`]; it takes the engine's streaming callback and
/// event observer, so it runs instead of a [`crate::Recorder`] (run the two
/// on separate engines, or record the run first and the worldline from the
/// same events).
#[derive(Clone, Default)]
pub struct WorldlineTap {
    seen: Arc<Mutex<Seen>>,
}

/// A promoted fact as written: its commitment and its outcome.
#[derive(Debug, Clone)]
pub struct RecordedPromotion {
    /// The fact's id.
    pub fact_id: String,
    /// Its state key in the worldline, `<context key>/<fact id>`.
    pub state_key: String,
    /// The commitment receipt.
    pub commitment: Receipt,
    /// The outcome receipt.
    pub outcome: Receipt,
}

impl WorldlineTap {
    /// A tap that has seen nothing.
    pub fn new() -> WorldlineTap {
        WorldlineTap::default()
    }

    /// Observes `engine`'s promotions and facts.
    pub fn attach(&self, engine: &mut Engine) {
        engine.set_streaming(Arc::new(self.clone()));
        engine.set_event_observer(Arc::new(self.clone()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Promotions seen so far.
    pub fn promotions(&self) -> usize {
        self.lock().promotions.len()
    }

    /// Writes every promotion seen, in the engine's order, to `worldline`:
    /// a commitment (id derived from the worldline and the proposal, so
    /// writing again appends nothing and returns the first receipts) and
    /// its succeeded outcome.
    pub async fn write(
        &self,
        client: &Client,
        worldline: &WorldlineId,
    ) -> Result<Vec<RecordedPromotion>, Error> {
        let (promotions, facts) = {
            let seen = self.lock();
            (seen.promotions.clone(), seen.facts.clone())
        };
        let ledger = |action: String| {
            move |source| Error::Ledger {
                action: action.clone(),
                source,
            }
        };
        let mut out = Vec::with_capacity(promotions.len());
        for p in promotions {
            let Some((cycle, fact)) = facts.get(&p.fact_id) else {
                return Err(Error::InvalidContext(format!(
                    "the engine announced the promotion of fact {:?} but never the fact",
                    p.fact_id
                )));
            };
            let (commitment, outcome_of, state_key) =
                promotion_receipts(worldline, &p, *cycle, fact)?;
            let c = client
                .append_commitment(worldline, &commitment)
                .await
                .map_err(ledger(format!(
                    "recording the proposal of fact {:?}",
                    p.fact_id
                )))?;
            let o = client
                .append_outcome(worldline, &outcome_of(c.receipt_hash))
                .await
                .map_err(ledger(format!(
                    "recording the promotion of fact {:?}",
                    p.fact_id
                )))?;
            out.push(RecordedPromotion {
                fact_id: p.fact_id,
                state_key,
                commitment: c,
                outcome: o,
            });
        }
        Ok(out)
    }
}

type OutcomeOf = Box<dyn Fn(Digest) -> Outcome + Send>;

/// The commitment of a promotion, the outcome for its receipt hash, and
/// the fact's state key.
fn promotion_receipts(
    worldline: &WorldlineId,
    p: &Promotion,
    cycle: u32,
    fact: &ContextFact,
) -> Result<(Commitment, OutcomeOf, String), Error> {
    let key = context_key_name(fact.key());
    let bytes = encode_fact(fact)?;
    let digest = Digest::of(&[&bytes]);
    let id = Digest::of(&[
        b"converge-promotion",
        &worldline.0,
        p.proposal_id.as_bytes(),
    ]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&id.0[..16]);
    // A version-8 (custom) UUID.
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let capability: CapabilitySet = [format!("context.{key}.write")].into_iter().collect();
    let mut intent = format!("cycle {cycle}: add {key} fact {:?}: ", p.fact_id);
    for ch in fact.text().unwrap_or("(a typed payload)").chars() {
        if intent.len() + ch.len_utf8() > 1024 {
            break;
        }
        intent.push(if ch.is_control() { ' ' } else { ch });
    }
    let commitment = Commitment {
        commitment_id: CommitmentId(uuid),
        class: key.clone(),
        intent,
        requested_capabilities: capability.clone(),
        targets: vec![format!("context/{key}")],
        evidence: vec![EvidenceRef {
            uri: format!("converge:proposal/{}", p.proposal_id),
            digest,
        }],
        proposer: p.promoted_by.clone(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"converge-core 3.9.2 engine merge: validate, then promote"]),
            version: ENGINE_POLICY_VERSION.into(),
        },
        granted_capabilities: capability,
        revoked_capabilities: CapabilitySet::new(),
        decider: ENGINE_DECIDER.into(),
    };
    let state_key = format!("{key}/{}", p.fact_id);
    let (k, reason) = (state_key.clone(), p.reason.clone());
    let outcome_of: OutcomeOf = Box::new(move |commitment| Outcome {
        commitment,
        status: OutcomeStatus::Succeeded,
        effects: vec![converge_ledger_client::worldline::Effect {
            kind: "fact-promoted".into(),
            target: k.clone(),
            description: reason.clone(),
        }],
        proofs: vec![ProofRef {
            uri: format!("converge:fact/{}", k),
            digest,
        }],
        state_updates: vec![StateUpdate::Put {
            key: k.clone(),
            value: bytes.clone(),
        }],
        reporter: ENGINE_DECIDER.into(),
    });
    Ok((commitment, outcome_of, state_key))
}

impl StreamingCallback for WorldlineTap {
    fn on_cycle_start(&self, _cycle: u32) {}

    fn on_fact(&self, cycle: u32, fact: &ContextFact) {
        self.lock()
            .facts
            .insert(fact.id().as_str().to_owned(), (cycle, fact.clone()));
    }

    fn on_cycle_end(&self, _cycle: u32, _facts_added: usize) {}
}

impl ExperienceEventObserver for WorldlineTap {
    fn on_event(&self, event: &ExperienceEvent) {
        if let ExperienceEvent::FactPromoted {
            proposal_id,
            fact_id,
            promoted_by,
            reason,
            ..
        } = event
        {
            self.lock().promotions.push(Promotion {
                proposal_id: proposal_id.as_str().to_owned(),
                fact_id: fact_id.as_str().to_owned(),
                promoted_by: promoted_by.as_str().to_owned(),
                reason: reason.clone(),
            });
        }
    }
}
