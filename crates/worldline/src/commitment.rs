//! The commitment receipt body: what was proposed, under which policy, what
//! was decided and which capabilities it granted or revoked.
//!
//! Layout (`docs/design.md` §18):
//!
//! ```text
//! [4] "WLLC" | u8 version = 1 | [16] commitment_id
//! | len32(class) | len32(intent)
//! | u32 n, n × len32(capability)          requested, sorted, unique
//! | u32 n, n × len32(target)              in order
//! | u32 n, n × (len32(uri) ‖ [32] digest) evidence, in order
//! | len32(proposer)
//! | u8 decision: 1 accepted | 2 rejected ‖ len32(reason)
//! | [32] policy hash | len32(policy version)
//! | u32 n, n × len32(capability)          granted, sorted, unique
//! | u32 n, n × len32(capability)          revoked, sorted, unique
//! | len32(decider)
//! ```

use std::collections::BTreeSet;

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader, put_set, read_sorted_set};
use crate::limits::Field;
use crate::{CommitmentId, WorldlineError, WorldlineLimits};

const MAGIC: &[u8; 4] = b"WLLC";
const VERSION: u8 = 1;

const DECISION_ACCEPTED: u8 = 1;
const DECISION_REJECTED: u8 = 2;

/// A set of capability names. Canonically sorted by bytes without
/// duplicates, which a `BTreeSet<String>` guarantees.
pub type CapabilitySet = BTreeSet<String>;

/// A reference to evidence the proposal relied on. The evidence itself
/// lives outside the ledger; the digest anchors it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EvidenceRef {
    /// Where the evidence can be fetched (an object-store or
    /// content-addressed URI).
    pub uri: String,
    /// SHA-256 of the evidence bytes, so what is fetched later can be
    /// checked against what was decided on.
    pub digest: Digest,
}

/// The policy that evaluated a proposal. Seed 004: operator version
/// references must be preserved, so that a plan is later interpreted
/// under the rules that admitted it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// Hash of the policy's content.
    pub hash: Digest,
    /// The operator's version name for it (an identifier, e.g. `v12`).
    pub version: String,
}

/// What the kernel decided about a proposal.
///
/// There is no `Deferred`: a deferred proposal is not yet a commitment. The
/// kernel records it once it is decided. In the reference implementation a
/// deferred commitment could never be answered (an outcome needs an
/// accepted or rejected commitment, and a receipt cannot be changed), so
/// recording deferrals only left dangling receipts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The commitment may be carried out; its outcome is `Succeeded` or
    /// `Failed`.
    Accepted,
    /// The commitment must not be carried out; its outcome is `Rejection`.
    Rejected {
        /// Why, for people (a text, 1 byte or more).
        reason: String,
    },
}

impl Decision {
    /// Whether this is [`Decision::Accepted`].
    pub fn is_accepted(&self) -> bool {
        matches!(self, Decision::Accepted)
    }

    /// `"accepted"` or `"rejected"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Accepted => "accepted",
            Decision::Rejected { .. } => "rejected",
        }
    }
}

/// The body of a commitment receipt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Commitment {
    /// The kernel's id for this commitment, unique in its worldline; the
    /// idempotency key of its append.
    pub commitment_id: CommitmentId,
    /// What kind of commitment this is (an identifier, e.g. `deploy`);
    /// audit queries filter on it.
    pub class: String,
    /// What the proposer means to achieve: the WHY (a text, 1 byte or
    /// more).
    pub intent: String,
    /// Capabilities the proposer asked for.
    pub requested_capabilities: CapabilitySet,
    /// What the commitment acts on, in the proposer's order.
    pub targets: Vec<String>,
    /// What the proposal relied on, in the proposer's order.
    pub evidence: Vec<EvidenceRef>,
    /// The actor that proposed it.
    pub proposer: String,
    /// Accepted or rejected.
    pub decision: Decision,
    /// The policy that decided.
    pub policy: PolicyRef,
    /// Capabilities granted to the proposer from this receipt on; a subset
    /// of `requested_capabilities`, empty when rejected.
    pub granted_capabilities: CapabilitySet,
    /// Capabilities withdrawn from the proposer from this receipt on;
    /// disjoint from the granted ones, empty when rejected.
    pub revoked_capabilities: CapabilitySet,
    /// The actor (policy engine, operator) that decided.
    pub decider: String,
}

impl Commitment {
    /// Checks every field against `limits` and the commitment rules: a
    /// non-nil id; identifiers and texts within their limits and free of
    /// forbidden characters; grants a subset of the requested
    /// capabilities; grants and revocations disjoint; neither on a
    /// rejected commitment.
    pub fn validate(&self, limits: &WorldlineLimits) -> Result<(), WorldlineError> {
        if self.commitment_id == CommitmentId::NIL {
            return Err(WorldlineError::invalid(
                "commitment_id",
                "is the nil UUID; use a random (version 4) or time-ordered (version 7) UUID",
            ));
        }
        limits.check_identifier(Field::new("class"), &self.class)?;
        limits.check_text(Field::new("intent"), &self.intent, true)?;
        check_capabilities(
            limits,
            "requested_capabilities",
            &self.requested_capabilities,
        )?;
        WorldlineLimits::check_count(
            Field::new("targets"),
            self.targets.len(),
            limits.list_items_max,
        )?;
        for (i, t) in self.targets.iter().enumerate() {
            limits.check_identifier(Field::item("targets", i), t)?;
        }
        WorldlineLimits::check_count(
            Field::new("evidence"),
            self.evidence.len(),
            limits.list_items_max,
        )?;
        for (i, e) in self.evidence.iter().enumerate() {
            limits.check_uri(Field::member("evidence", i, "uri"), &e.uri)?;
        }
        limits.check_identifier(Field::new("proposer"), &self.proposer)?;
        if let Decision::Rejected { reason } = &self.decision {
            limits.check_text(Field::new("decision.reason"), reason, true)?;
        }
        limits.check_identifier(Field::new("policy.version"), &self.policy.version)?;
        check_capabilities(limits, "granted_capabilities", &self.granted_capabilities)?;
        check_capabilities(limits, "revoked_capabilities", &self.revoked_capabilities)?;
        limits.check_identifier(Field::new("decider"), &self.decider)?;
        self.check_grants()
    }

    fn check_grants(&self) -> Result<(), WorldlineError> {
        if !self.decision.is_accepted() {
            for (name, set) in [
                ("granted_capabilities", &self.granted_capabilities),
                ("revoked_capabilities", &self.revoked_capabilities),
            ] {
                if let Some(c) = set.first() {
                    return Err(WorldlineError::invalid(
                        name,
                        format!(
                            "holds {c:?} on a rejected commitment; a rejection grants and revokes nothing"
                        ),
                    ));
                }
            }
        }
        if let Some(c) = self
            .granted_capabilities
            .iter()
            .find(|c| !self.requested_capabilities.contains(*c))
        {
            return Err(WorldlineError::invalid(
                "granted_capabilities",
                format!(
                    "holds {c:?}, which was not requested; only requested capabilities can be granted"
                ),
            ));
        }
        if let Some(c) = self
            .granted_capabilities
            .intersection(&self.revoked_capabilities)
            .next()
        {
            return Err(WorldlineError::invalid(
                "revoked_capabilities",
                format!(
                    "holds {c:?}, which this commitment also grants; a capability is granted or revoked, not both"
                ),
            ));
        }
        Ok(())
    }

    /// The canonical encoding (does not validate; see
    /// [`commitment_payload`](crate::commitment_payload) for the write
    /// path).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.put_u8(VERSION);
        out.extend_from_slice(&self.commitment_id.0);
        out.put_len32(self.class.as_bytes());
        out.put_len32(self.intent.as_bytes());
        put_set(&mut out, &self.requested_capabilities);
        out.put_count(self.targets.len());
        for t in &self.targets {
            out.put_len32(t.as_bytes());
        }
        out.put_count(self.evidence.len());
        for e in &self.evidence {
            out.put_len32(e.uri.as_bytes());
            out.put_digest(&e.digest);
        }
        out.put_len32(self.proposer.as_bytes());
        match &self.decision {
            Decision::Accepted => out.put_u8(DECISION_ACCEPTED),
            Decision::Rejected { reason } => {
                out.put_u8(DECISION_REJECTED);
                out.put_len32(reason.as_bytes());
            }
        }
        out.put_digest(&self.policy.hash);
        out.put_len32(self.policy.version.as_bytes());
        put_set(&mut out, &self.granted_capabilities);
        put_set(&mut out, &self.revoked_capabilities);
        out.put_len32(self.decider.as_bytes());
        out
    }

    /// Decodes a canonical encoding and validates it: anything that would
    /// not re-encode to the same bytes (unsorted or duplicate sets, unknown
    /// tags, trailing bytes) or that breaks a rule of
    /// [`Commitment::validate`] is refused with
    /// [`WorldlineError::Invalid`].
    pub fn decode(bytes: &[u8], limits: &WorldlineLimits) -> Result<Commitment, WorldlineError> {
        let mut r = Reader::new(bytes, "commitment payload");
        r.header(MAGIC, VERSION)?;
        let commitment_id = CommitmentId(r.array::<16>("commitment_id")?);
        let class = r.str32("class", limits.identifier_bytes_max)?.to_owned();
        let intent = r.str32("intent", limits.text_bytes_max)?.to_owned();
        let ident = limits.identifier_bytes_max;
        let requested_capabilities = read_sorted_set(
            &mut r,
            "requested_capabilities",
            limits.list_items_max,
            ident,
        )?;
        let n = r.count("targets", limits.list_items_max, 4)?;
        let mut targets = Vec::new();
        for i in 0..n {
            targets.push(r.str32(Field::item("targets", i), ident)?.to_owned());
        }
        let n = r.count("evidence", limits.list_items_max, 36)?;
        let mut evidence = Vec::new();
        for i in 0..n {
            let uri = r
                .str32(Field::member("evidence", i, "uri"), limits.uri_bytes_max)?
                .to_owned();
            let digest = r.digest(Field::member("evidence", i, "digest"))?;
            evidence.push(EvidenceRef { uri, digest });
        }
        let proposer = r.str32("proposer", ident)?.to_owned();
        let decision = match r.u8("decision")? {
            DECISION_ACCEPTED => Decision::Accepted,
            DECISION_REJECTED => Decision::Rejected {
                reason: r
                    .str32("decision.reason", limits.text_bytes_max)?
                    .to_owned(),
            },
            t => {
                return Err(WorldlineError::invalid(
                    "decision",
                    format!("has tag {t}; 1 (accepted) and 2 (rejected) are defined"),
                ));
            }
        };
        let policy = PolicyRef {
            hash: r.digest("policy.hash")?,
            version: r.str32("policy.version", ident)?.to_owned(),
        };
        let granted_capabilities =
            read_sorted_set(&mut r, "granted_capabilities", limits.list_items_max, ident)?;
        let revoked_capabilities =
            read_sorted_set(&mut r, "revoked_capabilities", limits.list_items_max, ident)?;
        let decider = r.str32("decider", ident)?.to_owned();
        r.finish()?;
        let c = Commitment {
            commitment_id,
            class,
            intent,
            requested_capabilities,
            targets,
            evidence,
            proposer,
            decision,
            policy,
            granted_capabilities,
            revoked_capabilities,
            decider,
        };
        c.validate(limits)?;
        Ok(c)
    }
}

fn check_capabilities(
    limits: &WorldlineLimits,
    name: &'static str,
    set: &CapabilitySet,
) -> Result<(), WorldlineError> {
    WorldlineLimits::check_count(Field::new(name), set.len(), limits.list_items_max)?;
    for (i, c) in set.iter().enumerate() {
        limits.check_identifier(Field::item(name, i), c)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Commitment {
        Commitment {
            commitment_id: CommitmentId::parse("0190a5b2-7c3e-7def-8a12-3456789abcde").unwrap(),
            class: "deploy".into(),
            intent: "roll out v2".into(),
            requested_capabilities: ["net.egress", "repo.write"].map(String::from).into(),
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

    #[test]
    fn a_valid_commitment_round_trips() {
        let l = WorldlineLimits::default();
        let c = sample();
        c.validate(&l).unwrap();
        assert_eq!(Commitment::decode(&c.encode(), &l), Ok(c.clone()));
        let mut r = c;
        r.decision = Decision::Rejected {
            reason: "outside change window".into(),
        };
        r.granted_capabilities.clear();
        assert_eq!(Commitment::decode(&r.encode(), &l), Ok(r));
    }

    #[test]
    fn grants_must_be_requested_and_a_rejection_grants_nothing() {
        let l = WorldlineLimits::default();
        let mut c = sample();
        c.granted_capabilities.insert("root".into());
        assert!(
            c.validate(&l)
                .unwrap_err()
                .message()
                .contains("not requested")
        );
        let mut c = sample();
        c.revoked_capabilities.insert("repo.write".into());
        assert!(c.validate(&l).unwrap_err().message().contains("not both"));
        let mut c = sample();
        c.decision = Decision::Rejected {
            reason: "no".into(),
        };
        assert!(
            c.validate(&l)
                .unwrap_err()
                .message()
                .contains("rejected commitment")
        );
        c.granted_capabilities.clear();
        c.revoked_capabilities.insert("old".into());
        assert!(c.validate(&l).is_err());
        c.revoked_capabilities.clear();
        c.validate(&l).unwrap();
    }

    #[test]
    fn the_nil_id_empty_intent_and_invisible_characters_are_refused() {
        let l = WorldlineLimits::default();
        let mut c = sample();
        c.commitment_id = CommitmentId::NIL;
        assert!(c.validate(&l).is_err());
        let mut c = sample();
        c.intent.clear();
        assert_eq!(
            c.validate(&l).unwrap_err().message(),
            "intent is empty; it must be 1 to 4096 bytes"
        );
        let mut c = sample();
        c.proposer = "agent\u{200B}7".into();
        assert!(c.validate(&l).is_err());
        let mut c = sample();
        c.class = "x".repeat(300);
        assert_eq!(
            c.validate(&l).unwrap_err().message(),
            "class is 300 bytes; at most 256 allowed"
        );
    }

    #[test]
    fn trailing_bytes_unknown_tags_and_other_versions_are_refused() {
        let l = WorldlineLimits::default();
        let mut b = sample().encode();
        b.push(0);
        assert!(
            Commitment::decode(&b, &l)
                .unwrap_err()
                .message()
                .contains("trailing")
        );
        let mut b = sample().encode();
        b[4] = 2;
        assert!(
            Commitment::decode(&b, &l)
                .unwrap_err()
                .message()
                .contains("version")
        );
        let mut b = sample().encode();
        b[0] = b'X';
        assert!(Commitment::decode(&b, &l).is_err());
    }
}
