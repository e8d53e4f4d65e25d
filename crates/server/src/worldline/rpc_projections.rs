//! The projection queries of `WorldlineService`: requests checked, answered
//! by [`Worldlines::query_projection`], and the model's records turned into
//! messages.

use std::time::Duration;

use converge_ledger_core::Digest;
use converge_ledger_proto::ledger::v1 as pb;
use converge_ledger_worldline::audit_index::{
    self, AuditFilter, AuditIndex, AuditOutcome, AuditRecord, DecisionKind, TimeRange,
};
use converge_ledger_worldline::capability_grants::{
    CapabilityGrants, EventRef, Grant, GrantEvent, GrantEventKind,
};
use converge_ledger_worldline::latest_state::{self, LatestState};
use converge_ledger_worldline::provenance_dag::{
    self, CommitmentNode, KeyWrite, Lineage, Node, OutcomeNode, ProvenanceDag,
};
use converge_ledger_worldline::{
    Cursor, Decision, Direction, OutcomeStatus, PAGE_ITEMS_MAX, PolicyRef, WorldlineError,
    WorldlineId,
};
use tonic::Status;

use super::{Position, Worldlines};
use crate::LedgerError;

/// Items per page when a query names no limit.
pub const PAGE_ITEMS_DEFAULT: usize = 100;

/// What every projection query names, checked.
pub(crate) struct Query {
    pub worldline: WorldlineId,
    min_seq: u64,
    wait: Option<Duration>,
    cursor: Option<Cursor>,
    limit: usize,
}

fn invalid(message: String) -> Status {
    LedgerError::InvalidArgument(message).into()
}

impl Query {
    /// Checks the common part of a request.
    pub fn parse(q: Option<pb::ProjectionQuery>) -> Result<Query, Status> {
        let q = q.ok_or_else(|| invalid("query is missing; it names the worldline".into()))?;
        let worldline = super::service::worldline(&q.worldline_id)?;
        let limit = match q.limit as usize {
            0 => PAGE_ITEMS_DEFAULT,
            n if n > PAGE_ITEMS_MAX => {
                return Err(invalid(format!(
                    "limit {n} is over the page limit, {PAGE_ITEMS_MAX} items"
                )));
            }
            n => n,
        };
        let cursor = if q.cursor.is_empty() {
            None
        } else {
            Some(Cursor::from_bytes(q.cursor).map_err(|e| invalid(e.message().to_owned()))?)
        };
        Ok(Query {
            worldline,
            min_seq: q.min_seq,
            wait: (q.wait_ms > 0).then(|| Duration::from_millis(q.wait_ms.into())),
            cursor,
            limit,
        })
    }
}

fn check_key(field: &str, key: &str, empty_ok: bool) -> Result<(), Status> {
    if (!empty_ok && key.is_empty()) || key.as_bytes().contains(&0) {
        return Err(invalid(format!(
            "{field} {key:?} is not a state key: it must be non-empty text without NUL"
        )));
    }
    Ok(())
}

fn position(p: Position) -> Option<pb::ProjectionPosition> {
    Some(pb::ProjectionPosition {
        projection: p.projection.to_owned(),
        version: p.version,
        through_seq: p.through_seq,
        through_hash: p.through_hash.map(|h| h.0.to_vec()).unwrap_or_default(),
        head_seq: p.head_seq,
        behind: p.behind(),
        lag_ns: p.lag_ns,
    })
}

fn cursor_bytes(c: Option<Cursor>) -> Vec<u8> {
    c.map(Cursor::into_bytes).unwrap_or_default()
}

fn direction(latest_first: bool) -> Direction {
    if latest_first {
        Direction::Backward
    } else {
        Direction::Forward
    }
}

fn receipt_position(seq: u64, hash: &Digest, timestamp_ns: u64) -> Option<pb::ReceiptPosition> {
    Some(pb::ReceiptPosition {
        seq,
        receipt_hash: hash.0.to_vec(),
        timestamp_ns,
    })
}

fn event_position(e: &EventRef) -> Option<pb::ReceiptPosition> {
    receipt_position(e.seq, &e.receipt_hash, e.timestamp_ns)
}

fn policy(p: &PolicyRef) -> Option<pb::PolicyReference> {
    Some(pb::PolicyReference {
        hash: p.hash.0.to_vec(),
        version: p.version.clone(),
    })
}

fn decision(d: &Decision) -> (bool, String) {
    match d {
        Decision::Accepted => (true, String::new()),
        Decision::Rejected { reason } => (false, reason.clone()),
    }
}

fn status(s: &OutcomeStatus) -> (i32, String) {
    match s {
        OutcomeStatus::Succeeded => (pb::OutcomeKind::Succeeded as i32, String::new()),
        OutcomeStatus::Failed { reason } => (pb::OutcomeKind::Failed as i32, reason.clone()),
        OutcomeStatus::Rejection => (pb::OutcomeKind::Rejection as i32, String::new()),
    }
}

fn audit_outcome(o: &AuditOutcome) -> pb::AuditOutcome {
    let (status, reason) = status(&o.status);
    pb::AuditOutcome {
        receipt: receipt_position(o.seq, &o.receipt_hash, o.timestamp_ns),
        status,
        reason,
    }
}

fn audit_record(r: AuditRecord) -> pb::AuditRecord {
    let (accepted, rejection_reason) = decision(&r.decision);
    pb::AuditRecord {
        receipt: receipt_position(r.seq, &r.receipt_hash, r.timestamp_ns),
        commitment_id: r.commitment_id.to_string(),
        class: r.class,
        intent: r.intent,
        proposer: r.proposer,
        decider: r.decider,
        accepted,
        rejection_reason,
        policy: policy(&r.policy),
        outcome: r.outcome.as_ref().map(audit_outcome),
    }
}

fn grant(g: Grant) -> pb::Grant {
    pb::Grant {
        actor: g.actor,
        capability: g.capability,
        granted: event_position(&g.granted),
        revoked: g.revoked.as_ref().and_then(event_position),
    }
}

fn grant_event(e: GrantEvent) -> pb::GrantEvent {
    pb::GrantEvent {
        receipt: event_position(&e.receipt),
        revoke: e.kind == GrantEventKind::Revoke,
        actor: e.actor,
        capability: e.capability,
        effective: e.effective,
    }
}

fn commitment_node(c: &CommitmentNode) -> pb::CommitmentNode {
    let (accepted, rejection_reason) = decision(&c.decision);
    pb::CommitmentNode {
        receipt: receipt_position(c.seq, &c.receipt_hash, c.timestamp_ns),
        commitment_id: c.commitment_id.to_string(),
        class: c.class.clone(),
        proposer: c.proposer.clone(),
        decider: c.decider.clone(),
        accepted,
        rejection_reason,
        policy: policy(&c.policy),
    }
}

fn outcome_node(o: &OutcomeNode) -> pb::OutcomeNode {
    let (status, reason) = status(&o.status);
    pb::OutcomeNode {
        receipt: receipt_position(o.seq, &o.receipt_hash, o.timestamp_ns),
        commitment_hash: o.commitment.0.to_vec(),
        status,
        reason,
        reporter: o.reporter.clone(),
    }
}

fn lineage(l: &Lineage) -> pb::Lineage {
    pb::Lineage {
        outcome: Some(outcome_node(&l.outcome)),
        commitment: Some(commitment_node(&l.commitment)),
        evidence: l
            .evidence
            .iter()
            .map(|e| pb::Reference {
                uri: e.uri.clone(),
                digest: e.digest.0.to_vec(),
            })
            .collect(),
        proofs: l
            .proofs
            .iter()
            .map(|p| pb::Reference {
                uri: p.uri.clone(),
                digest: p.digest.0.to_vec(),
            })
            .collect(),
    }
}

fn key_write(w: &KeyWrite) -> pb::KeyWrite {
    pb::KeyWrite {
        seq: w.seq,
        outcome_hash: w.outcome.0.to_vec(),
        deleted: w.deleted,
    }
}

fn digest(field: &str, bytes: &[u8]) -> Result<Digest, Status> {
    super::service::digest(field, bytes)
}

impl Worldlines {
    /// `ProjectedState`.
    pub(crate) async fn projected_state(
        &self,
        q: Query,
        r: pb::ProjectedStateRequest,
    ) -> Result<pb::ProjectedStateResponse, Status> {
        enum Select {
            Key(String),
            Prefix(String),
        }
        let select = match r.select {
            Some(pb::projected_state_request::Select::Key(k)) => {
                check_key("key", &k, false)?;
                Select::Key(k)
            }
            Some(pb::projected_state_request::Select::KeyPrefix(p)) => {
                check_key("key_prefix", &p, true)?;
                Select::Prefix(p)
            }
            None => Select::Prefix(String::new()),
        };
        let with_hash = r.with_state_hash && q.cursor.is_none();
        let w = q.worldline;
        let (cursor, limit) = (q.cursor, q.limit);
        let (pos, (head, pairs, next, hash)) = self
            .query_projection(&w, &LatestState, q.min_seq, q.wait, move |kv| {
                let head = latest_state::head(kv, &w)?;
                let (pairs, next) = match &select {
                    Select::Key(k) => (
                        latest_state::value(kv, &w, k)?
                            .map(|v| (k.clone(), v))
                            .into_iter()
                            .collect(),
                        None,
                    ),
                    Select::Prefix(p) => {
                        let page = latest_state::pairs(kv, &w, p, cursor.as_ref(), limit)?;
                        (page.items, page.next)
                    }
                };
                let hash = if with_hash {
                    latest_state::state_hash(kv, &w)?.map(|(_, h)| h)
                } else {
                    None
                };
                Ok((head, pairs, next, hash))
            })
            .await?;
        Ok(pb::ProjectedStateResponse {
            position: position(pos),
            pair_count: head.as_ref().map_or(0, |h| h.pair_count),
            state_bytes: head.as_ref().map_or(0, |h| h.state_bytes),
            pairs: pairs
                .into_iter()
                .map(|(key, value)| pb::StatePair { key, value })
                .collect(),
            state_hash: match (with_hash, hash) {
                (_, Some(h)) => h.0.to_vec(),
                // No receipt folded yet: the empty state's hash.
                (true, None) => converge_ledger_worldline::empty_state_hash().0.to_vec(),
                (false, None) => Vec::new(),
            },
            next_cursor: cursor_bytes(next),
        })
    }

    /// `QueryAudit`.
    pub(crate) async fn query_audit(
        &self,
        q: Query,
        r: pb::QueryAuditRequest,
    ) -> Result<pb::QueryAuditResponse, Status> {
        use pb::query_audit_request::Filter as F;
        let text = |field: &str, v: String| -> Result<String, Status> {
            if v.is_empty() || v.as_bytes().contains(&0) {
                return Err(invalid(format!(
                    "{field} {v:?} is not an identifier: it must be non-empty text without NUL"
                )));
            }
            Ok(v)
        };
        let filter = match r.filter {
            None => AuditFilter::All,
            Some(F::Proposer(a)) => AuditFilter::Proposer(text("proposer", a)?),
            Some(F::Decider(a)) => AuditFilter::Decider(text("decider", a)?),
            Some(F::RequestedCapability(c)) => {
                AuditFilter::RequestedCapability(text("requested_capability", c)?)
            }
            Some(F::GrantedCapability(c)) => {
                AuditFilter::GrantedCapability(text("granted_capability", c)?)
            }
            Some(F::CommitmentClass(c)) => AuditFilter::Class(text("commitment_class", c)?),
            Some(F::Decision(d)) => match pb::DecisionFilter::try_from(d) {
                Ok(pb::DecisionFilter::Accepted) => AuditFilter::Decision(DecisionKind::Accepted),
                Ok(pb::DecisionFilter::Rejected) => AuditFilter::Decision(DecisionKind::Rejected),
                _ => {
                    return Err(invalid(format!(
                        "decision {d} is not a decision filter; use ACCEPTED (1) or REJECTED (2)"
                    )));
                }
            },
        };
        let time = TimeRange {
            from_ns: r.from_ns,
            until_ns: if r.until_ns == 0 {
                u64::MAX
            } else {
                r.until_ns
            },
        };
        if time.from_ns > time.until_ns {
            return Err(invalid(format!(
                "from_ns {} is after until_ns {}",
                time.from_ns, time.until_ns
            )));
        }
        let w = q.worldline;
        let (cursor, limit, dir) = (q.cursor, q.limit, direction(r.latest_first));
        let (pos, page) = self
            .query_projection(&w, &AuditIndex, q.min_seq, q.wait, move |kv| {
                audit_index::query(kv, &w, &filter, time, dir, cursor.as_ref(), limit)
            })
            .await?;
        Ok(pb::QueryAuditResponse {
            position: position(pos),
            records: page.items.into_iter().map(audit_record).collect(),
            next_cursor: cursor_bytes(page.next),
        })
    }

    /// `QueryGrants`.
    pub(crate) async fn query_grants(
        &self,
        q: Query,
        r: pb::QueryGrantsRequest,
    ) -> Result<pb::QueryGrantsResponse, Status> {
        use pb::query_grants_request::At;
        if r.actor.as_bytes().contains(&0) {
            return Err(invalid(format!("actor {:?} holds NUL", r.actor)));
        }
        let actor = (!r.actor.is_empty()).then_some(r.actor);
        let w = q.worldline;
        let (cursor, limit, dir) = (q.cursor, q.limit, direction(r.latest_first));
        let at = r.at.unwrap_or(At::AtSeq(0));
        let (pos, (at_seq, grants, events, next)) = self
            .query_projection_versioned(
                &w,
                &CapabilityGrants::CURRENT,
                q.min_seq,
                q.wait,
                move |kv, answering| {
                    let actor = actor.as_deref();
                    let grants =
                        CapabilityGrants::of_version(answering.version()).ok_or_else(|| {
                            WorldlineError::Unavailable {
                                message: format!(
                                    "capability_grants version {} has no queries here",
                                    answering.version()
                                ),
                            }
                        })?;
                    match at {
                        At::History(_) => {
                            let page =
                                grants.history(kv, &w, actor, dir, cursor.as_ref(), limit)?;
                            Ok((0, Vec::new(), page.items, page.next))
                        }
                        At::AtTimeNs(t) => {
                            let seq = grants.seq_at_time(kv, &w, t)?;
                            let page = grants.in_force_at_time(
                                kv,
                                &w,
                                actor,
                                t,
                                cursor.as_ref(),
                                limit,
                            )?;
                            Ok((seq, page.items, Vec::new(), page.next))
                        }
                        At::AtSeq(seq) => {
                            let seq = if seq == 0 {
                                converge_ledger_worldline::read_checkpoint(kv, &grants, &w)?
                                    .map_or(0, |c| c.through_seq)
                            } else {
                                seq
                            };
                            let page = grants.in_force_at_seq(
                                kv,
                                &w,
                                actor,
                                seq,
                                cursor.as_ref(),
                                limit,
                            )?;
                            Ok((seq, page.items, Vec::new(), page.next))
                        }
                    }
                },
            )
            .await?;
        Ok(pb::QueryGrantsResponse {
            position: position(pos),
            at_seq,
            grants: grants.into_iter().map(grant).collect(),
            events: events.into_iter().map(grant_event).collect(),
            next_cursor: cursor_bytes(next),
        })
    }

    /// `QueryProvenance`.
    pub(crate) async fn query_provenance(
        &self,
        q: Query,
        r: pb::QueryProvenanceRequest,
    ) -> Result<pb::QueryProvenanceResponse, Status> {
        use pb::query_provenance_request::Target as T;
        enum Ask {
            Outcome(Digest),
            Key(String, u64),
            History(String),
            Dependents(Digest),
            Citing(Digest),
            Node(Digest),
        }
        let ask = match r.target {
            None => {
                return Err(invalid(
                    "target is missing: name an outcome, a key, a key_history, dependents_of, \
                     citing or a node"
                        .into(),
                ));
            }
            Some(T::Outcome(h)) => Ask::Outcome(digest("outcome", &h)?),
            Some(T::Key(k)) => {
                check_key("key", &k, false)?;
                Ask::Key(k, r.at_seq)
            }
            Some(T::KeyHistory(k)) => {
                check_key("key_history", &k, false)?;
                Ask::History(k)
            }
            Some(T::DependentsOf(h)) => Ask::Dependents(digest("dependents_of", &h)?),
            Some(T::Citing(h)) => Ask::Citing(digest("citing", &h)?),
            Some(T::Node(h)) => Ask::Node(digest("node", &h)?),
        };
        let w = q.worldline;
        let (cursor, limit, dir) = (q.cursor, q.limit, direction(r.latest_first));
        let (pos, out) = self
            .query_projection(&w, &ProvenanceDag, q.min_seq, q.wait, move |kv| {
                let mut out = pb::QueryProvenanceResponse::default();
                match &ask {
                    Ask::Outcome(h) => {
                        out.lineage = provenance_dag::lineage(kv, &w, h)?.as_ref().map(lineage);
                    }
                    Ask::Key(k, seq) => {
                        let seq = if *seq == 0 { u64::MAX } else { *seq };
                        if let Some((write, l)) = provenance_dag::lineage_of_key(kv, &w, k, seq)? {
                            out.write = Some(key_write(&write));
                            out.lineage = Some(lineage(&l));
                        }
                    }
                    Ask::History(k) => {
                        let page =
                            provenance_dag::key_history(kv, &w, k, dir, cursor.as_ref(), limit)?;
                        out.writes = page.items.iter().map(key_write).collect();
                        out.next_cursor = cursor_bytes(page.next);
                    }
                    Ask::Dependents(h) => {
                        let d = provenance_dag::dependents(kv, &w, h, cursor.as_ref(), limit)?;
                        out.outcome = d.outcome.as_ref().map(outcome_node);
                        out.keys = d
                            .keys
                            .items
                            .into_iter()
                            .map(|(key, deleted)| pb::KeyTouched { key, deleted })
                            .collect();
                        out.next_cursor = cursor_bytes(d.keys.next);
                    }
                    Ask::Citing(h) => {
                        let page = provenance_dag::commitments_citing(
                            kv,
                            &w,
                            h,
                            dir,
                            cursor.as_ref(),
                            limit,
                        )?;
                        out.commitments = page
                            .items
                            .iter()
                            .map(|c| pb::ReceiptPosition {
                                seq: c.seq,
                                receipt_hash: c.receipt_hash.0.to_vec(),
                                timestamp_ns: 0,
                            })
                            .collect();
                        out.next_cursor = cursor_bytes(page.next);
                    }
                    Ask::Node(h) => match provenance_dag::node(kv, &w, h)? {
                        Some(Node::Commitment(c)) => {
                            out.commitment_node = Some(commitment_node(&c))
                        }
                        Some(Node::Outcome(o)) => out.outcome_node = Some(outcome_node(&o)),
                        None => {}
                    },
                }
                Ok(out)
            })
            .await?;
        Ok(pb::QueryProvenanceResponse {
            position: position(pos),
            ..out
        })
    }
}
