//! The outcome receipt body: what came of a commitment, what it did to the
//! world, where the proofs are, and how it changes the worldline's state.
//!
//! Layout (`docs/design.md` §18):
//!
//! ```text
//! [4] "WLLO" | u8 version = 1 | [32] commitment receipt hash
//! | u8 status: 1 succeeded | 2 failed ‖ len32(reason) | 3 rejection
//! | u32 n, n × (len32(kind) ‖ len32(target) ‖ len32(description))   effects
//! | u32 n, n × (len32(uri) ‖ [32] digest)                            proofs
//! | u32 n, n × (u8 1 ‖ len32(key) ‖ len32(value) | u8 2 ‖ len32(key)) state updates
//! | len32(reporter)
//! ```

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader};
use crate::limits::Field;
use crate::{WorldlineError, WorldlineLimits};

const MAGIC: &[u8; 4] = b"WLLO";
const VERSION: u8 = 1;

const STATUS_SUCCEEDED: u8 = 1;
const STATUS_FAILED: u8 = 2;
const STATUS_REJECTION: u8 = 3;

const UPDATE_PUT: u8 = 1;
const UPDATE_DELETE: u8 = 2;

/// How a commitment ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutcomeStatus {
    /// An accepted commitment was carried out; its state updates apply.
    Succeeded,
    /// An accepted commitment was attempted and failed; the state is
    /// unchanged, so the outcome carries no state updates.
    Failed {
        /// Why, for people (a text, 1 byte or more).
        reason: String,
    },
    /// The close of a rejected commitment: nothing was done, so no effects
    /// and no state updates. What
    /// [`LedgerWriter::append_rejection_outcome`](crate::LedgerWriter::append_rejection_outcome)
    /// writes.
    Rejection,
}

impl OutcomeStatus {
    /// `"succeeded"`, `"failed"` or `"rejection"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "succeeded",
            OutcomeStatus::Failed { .. } => "failed",
            OutcomeStatus::Rejection => "rejection",
        }
    }
}

/// One effect a driver executed in the world.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Effect {
    /// What kind of effect (an identifier, e.g. `http.post`).
    pub kind: String,
    /// What it acted on (an identifier).
    pub target: String,
    /// What happened, for people (a text, may be empty).
    pub description: String,
}

/// A reference to a proof kept outside the ledger (seed 4.7: the ledger
/// stays lean but cryptographically anchored).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProofRef {
    /// Where the proof can be fetched.
    pub uri: String,
    /// SHA-256 of the proof bytes.
    pub digest: Digest,
}

/// One change to the worldline's state. An outcome's updates apply in
/// order, so a later update of the same key wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateUpdate {
    /// Sets `key` to `value`.
    Put {
        /// The state key (an identifier, up to `state_key_bytes_max`).
        key: String,
        /// The value, opaque bytes up to `state_value_bytes_max`.
        value: Vec<u8>,
    },
    /// Removes `key` (nothing happens if it is absent).
    Delete {
        /// The state key.
        key: String,
    },
}

impl StateUpdate {
    /// The key this update touches.
    pub fn key(&self) -> &str {
        match self {
            StateUpdate::Put { key, .. } | StateUpdate::Delete { key } => key,
        }
    }
}

/// The body of an outcome receipt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The receipt hash of the commitment this outcome answers (L4: every
    /// outcome references a commitment receipt hash).
    pub commitment: Digest,
    /// How it ended.
    pub status: OutcomeStatus,
    /// What was done, in order.
    pub effects: Vec<Effect>,
    /// Where the proofs are.
    pub proofs: Vec<ProofRef>,
    /// How the state changes; applied only for `Succeeded`.
    pub state_updates: Vec<StateUpdate>,
    /// The actor (driver) that reports the outcome.
    pub reporter: String,
}

impl Outcome {
    /// The outcome that closes a rejected commitment: status
    /// [`OutcomeStatus::Rejection`], nothing else but the reporter.
    pub fn rejection(commitment: Digest, reporter: impl Into<String>) -> Outcome {
        Outcome {
            commitment,
            status: OutcomeStatus::Rejection,
            effects: Vec::new(),
            proofs: Vec::new(),
            state_updates: Vec::new(),
            reporter: reporter.into(),
        }
    }

    /// Checks every field against `limits` and the rules that need no
    /// commitment: `Failed` and `Rejection` carry no state updates,
    /// `Rejection` no effects. Whether the status fits the commitment's
    /// decision is [`check_outcome_for`](crate::check_outcome_for).
    pub fn validate(&self, limits: &WorldlineLimits) -> Result<(), WorldlineError> {
        if self.commitment == Digest::ZERO {
            return Err(WorldlineError::invalid(
                "commitment",
                "is the zero hash; an outcome names its commitment's receipt hash",
            ));
        }
        if let OutcomeStatus::Failed { reason } = &self.status {
            limits.check_text(Field::new("status.reason"), reason, true)?;
        }
        WorldlineLimits::check_count(
            Field::new("effects"),
            self.effects.len(),
            limits.list_items_max,
        )?;
        for (i, e) in self.effects.iter().enumerate() {
            limits.check_identifier(Field::member("effects", i, "kind"), &e.kind)?;
            limits.check_identifier(Field::member("effects", i, "target"), &e.target)?;
            limits.check_text(
                Field::member("effects", i, "description"),
                &e.description,
                false,
            )?;
        }
        WorldlineLimits::check_count(
            Field::new("proofs"),
            self.proofs.len(),
            limits.list_items_max,
        )?;
        for (i, p) in self.proofs.iter().enumerate() {
            limits.check_uri(Field::member("proofs", i, "uri"), &p.uri)?;
        }
        WorldlineLimits::check_count(
            Field::new("state_updates"),
            self.state_updates.len(),
            limits.state_updates_max,
        )?;
        for (i, u) in self.state_updates.iter().enumerate() {
            limits.check_state_key(Field::member("state_updates", i, "key"), u.key())?;
            if let StateUpdate::Put { value, .. } = u {
                limits
                    .check_state_value(Field::member("state_updates", i, "value"), value.len())?;
            }
        }
        limits.check_identifier(Field::new("reporter"), &self.reporter)?;
        match self.status {
            OutcomeStatus::Succeeded => {}
            OutcomeStatus::Failed { .. } | OutcomeStatus::Rejection
                if !self.state_updates.is_empty() =>
            {
                return Err(WorldlineError::invalid(
                    "state_updates",
                    format!(
                        "has {} updates on a {} outcome; only a succeeded outcome changes state",
                        self.state_updates.len(),
                        self.status.name()
                    ),
                ));
            }
            OutcomeStatus::Rejection if !self.effects.is_empty() => {
                return Err(WorldlineError::invalid(
                    "effects",
                    format!(
                        "has {} effects on a rejection; a rejected commitment is never carried out",
                        self.effects.len()
                    ),
                ));
            }
            OutcomeStatus::Failed { .. } | OutcomeStatus::Rejection => {}
        }
        Ok(())
    }

    /// The canonical encoding (does not validate; see
    /// [`outcome_payload`](crate::outcome_payload) for the write path).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_digest(&self.commitment);
        match &self.status {
            OutcomeStatus::Succeeded => out.put_u8(STATUS_SUCCEEDED),
            OutcomeStatus::Failed { reason } => {
                out.put_u8(STATUS_FAILED);
                out.put_len32(reason.as_bytes());
            }
            OutcomeStatus::Rejection => out.put_u8(STATUS_REJECTION),
        }
        out.put_count(self.effects.len());
        for e in &self.effects {
            out.put_len32(e.kind.as_bytes());
            out.put_len32(e.target.as_bytes());
            out.put_len32(e.description.as_bytes());
        }
        out.put_count(self.proofs.len());
        for p in &self.proofs {
            out.put_len32(p.uri.as_bytes());
            out.put_digest(&p.digest);
        }
        out.put_count(self.state_updates.len());
        for u in &self.state_updates {
            match u {
                StateUpdate::Put { key, value } => {
                    out.put_u8(UPDATE_PUT);
                    out.put_len32(key.as_bytes());
                    out.put_len32(value);
                }
                StateUpdate::Delete { key } => {
                    out.put_u8(UPDATE_DELETE);
                    out.put_len32(key.as_bytes());
                }
            }
        }
        out.put_len32(self.reporter.as_bytes());
        out
    }

    /// Decodes a canonical encoding and validates it (as
    /// [`Outcome::validate`]); anything else is
    /// [`WorldlineError::Invalid`].
    pub fn decode(bytes: &[u8], limits: &WorldlineLimits) -> Result<Outcome, WorldlineError> {
        let mut r = Reader::new(bytes, "outcome payload");
        r.header(MAGIC, VERSION)?;
        let commitment = r.digest("commitment")?;
        let status = match r.u8("status")? {
            STATUS_SUCCEEDED => OutcomeStatus::Succeeded,
            STATUS_FAILED => OutcomeStatus::Failed {
                reason: r.str32("status.reason", limits.text_bytes_max)?.to_owned(),
            },
            STATUS_REJECTION => OutcomeStatus::Rejection,
            t => {
                return Err(WorldlineError::invalid(
                    "status",
                    format!("has tag {t}; 1 (succeeded), 2 (failed) and 3 (rejection) are defined"),
                ));
            }
        };
        let ident = limits.identifier_bytes_max;
        let n = r.count("effects", limits.list_items_max, 12)?;
        let mut effects = Vec::new();
        for i in 0..n {
            effects.push(Effect {
                kind: r
                    .str32(Field::member("effects", i, "kind"), ident)?
                    .to_owned(),
                target: r
                    .str32(Field::member("effects", i, "target"), ident)?
                    .to_owned(),
                description: r
                    .str32(
                        Field::member("effects", i, "description"),
                        limits.text_bytes_max,
                    )?
                    .to_owned(),
            });
        }
        let n = r.count("proofs", limits.list_items_max, 36)?;
        let mut proofs = Vec::new();
        for i in 0..n {
            proofs.push(ProofRef {
                uri: r
                    .str32(Field::member("proofs", i, "uri"), limits.uri_bytes_max)?
                    .to_owned(),
                digest: r.digest(Field::member("proofs", i, "digest"))?,
            });
        }
        let n = r.count("state_updates", limits.state_updates_max, 5)?;
        let mut state_updates = Vec::new();
        for i in 0..n {
            let op = r.u8(Field::member("state_updates", i, "op"))?;
            let key = r
                .str32(
                    Field::member("state_updates", i, "key"),
                    limits.state_key_bytes_max,
                )?
                .to_owned();
            state_updates.push(match op {
                UPDATE_PUT => StateUpdate::Put {
                    key,
                    value: r
                        .bytes32(
                            Field::member("state_updates", i, "value"),
                            limits.state_value_bytes_max,
                        )?
                        .to_vec(),
                },
                UPDATE_DELETE => StateUpdate::Delete { key },
                t => {
                    return Err(WorldlineError::invalid(
                        Field::member("state_updates", i, "op"),
                        format!("has tag {t}; 1 (put) and 2 (delete) are defined"),
                    ));
                }
            });
        }
        let reporter = r.str32("reporter", ident)?.to_owned();
        r.finish()?;
        let o = Outcome {
            commitment,
            status,
            effects,
            proofs,
            state_updates,
            reporter,
        };
        o.validate(limits)?;
        Ok(o)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(commitment: Digest) -> Outcome {
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
    fn a_valid_outcome_round_trips() {
        let l = WorldlineLimits::default();
        let o = sample(Digest::of(&[b"c"]));
        assert_eq!(Outcome::decode(&o.encode(), &l), Ok(o));
        let r = Outcome::rejection(Digest::of(&[b"c"]), "kernel");
        assert_eq!(Outcome::decode(&r.encode(), &l), Ok(r));
    }

    #[test]
    fn failed_and_rejection_outcomes_change_no_state_and_a_rejection_has_no_effects() {
        let l = WorldlineLimits::default();
        let mut o = sample(Digest::of(&[b"c"]));
        o.status = OutcomeStatus::Failed {
            reason: "timeout".into(),
        };
        assert!(
            o.validate(&l)
                .unwrap_err()
                .message()
                .contains("only a succeeded outcome")
        );
        o.state_updates.clear();
        o.validate(&l).unwrap();
        o.status = OutcomeStatus::Rejection;
        assert!(
            o.validate(&l)
                .unwrap_err()
                .message()
                .contains("never carried out")
        );
        o.effects.clear();
        o.validate(&l).unwrap();
    }

    #[test]
    fn an_unknown_update_tag_and_the_zero_commitment_are_refused() {
        let l = WorldlineLimits::default();
        let o = sample(Digest::of(&[b"c"]));
        let mut b = o.encode();
        let at = b.len() - (4 + o.reporter.len()) - (1 + 4 + "svc/api/canary".len());
        assert_eq!(b[at], UPDATE_DELETE);
        b[at] = 9;
        assert!(
            Outcome::decode(&b, &l)
                .unwrap_err()
                .message()
                .contains("tag 9")
        );
        let z = Outcome::rejection(Digest::ZERO, "kernel");
        assert!(z.validate(&l).is_err());
    }
}
