//! `converge-ledger worldline project ...`: the server's projections (seed
//! 4.6). Every answer first says which receipt the projection reflects and
//! how far it is behind the head; `--min-seq` waits until it reflects that
//! receipt.

use anyhow::bail;
use clap::{Args, Subcommand};
use converge_ledger_client::proto::ledger::v1 as pb;
use converge_ledger_client::{Client, Digest, projection_query};
use serde_json::{Value, json};

use crate::output::Output;

#[derive(Args, Debug)]
pub struct ProjectArgs {
    #[command(subcommand)]
    what: Projection,
}

/// Paging and waiting, common to every projection query.
#[derive(Args, Debug)]
struct Common {
    /// The worldline.
    worldline: String,
    /// Wait until the projection reflects this receipt.
    #[arg(long, default_value_t = 0)]
    min_seq: u64,
    /// Items on the page (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after a previous page (its `next_cursor`, hex).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Projection {
    /// latest_state: one key, or the pairs under a prefix, at the
    /// projection's position, with the whole state's hash.
    State {
        #[command(flatten)]
        common: Common,
        /// Only this key.
        #[arg(long, conflicts_with = "prefix")]
        key: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// audit_index: who / what / when / why, by one filter and a time range.
    Audit {
        #[command(flatten)]
        common: Common,
        /// Proposed by this actor.
        #[arg(long, group = "filter")]
        proposer: Option<String>,
        /// Decided by this actor.
        #[arg(long, group = "filter")]
        decider: Option<String>,
        /// Requested this capability.
        #[arg(long, group = "filter")]
        requested: Option<String>,
        /// Granted this capability.
        #[arg(long, group = "filter")]
        granted: Option<String>,
        /// Of this commitment class.
        #[arg(long, group = "filter")]
        class: Option<String>,
        /// With this decision: accepted or rejected.
        #[arg(long, group = "filter")]
        decision: Option<String>,
        /// Receipt times from (ns since the Unix epoch, inclusive).
        #[arg(long, default_value_t = 0)]
        from_ns: u64,
        /// Receipt times until (exclusive; 0: no bound).
        #[arg(long, default_value_t = 0)]
        until_ns: u64,
        /// Latest first.
        #[arg(long)]
        latest_first: bool,
    },
    /// capability_grants: what is in force at a seq or an instant, or the
    /// history of grants and revocations.
    Grants {
        #[command(flatten)]
        common: Common,
        /// Only this actor.
        #[arg(long, default_value = "")]
        actor: String,
        /// In force after this receipt (default: the projection's position).
        #[arg(long, group = "at")]
        at_seq: Option<u64>,
        /// In force at this instant (ns since the Unix epoch).
        #[arg(long, group = "at")]
        at_time_ns: Option<u64>,
        /// The history instead.
        #[arg(long, group = "at")]
        history: bool,
        /// History latest first.
        #[arg(long)]
        latest_first: bool,
    },
    /// provenance_dag: lineage back from an outcome or a state key, forward
    /// from a commitment, the writes of a key, commitments citing evidence.
    Provenance {
        #[command(flatten)]
        common: Common,
        /// Back from this outcome (receipt hash).
        #[arg(long, group = "target")]
        outcome: Option<String>,
        /// Back from the last write of this state key (at --at-seq).
        #[arg(long, group = "target")]
        key: Option<String>,
        /// Every write of this state key.
        #[arg(long, group = "target")]
        key_history: Option<String>,
        /// Forward from this commitment (receipt hash).
        #[arg(long, group = "target")]
        dependents_of: Option<String>,
        /// Commitments citing evidence with this SHA-256.
        #[arg(long, group = "target")]
        citing: Option<String>,
        /// With --key: the write at or before this receipt (0: latest).
        #[arg(long, default_value_t = 0)]
        at_seq: u64,
        /// Latest first.
        #[arg(long)]
        latest_first: bool,
    },
}

fn query(c: &Common) -> anyhow::Result<pb::ProjectionQuery> {
    let mut q = projection_query(&crate::worldline::worldline_id(&c.worldline), c.min_seq);
    q.limit = c.limit;
    if let Some(cursor) = &c.cursor {
        q.cursor = hex(cursor).map_err(|e| anyhow::anyhow!("--cursor: {e}"))?;
    }
    Ok(q)
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not hex (odd length)"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("{s:?} is not hex")))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn digest(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    match Digest::from_hex(s) {
        Ok(d) => Ok(d.0.to_vec()),
        Err(_) => bail!("{what} {s:?} is not 64 hex digits (a SHA-256 hash)"),
    }
}

fn position(out: Output, p: Option<&pb::ProjectionPosition>, next: &[u8]) {
    let Some(p) = p else { return };
    let human = format!(
        "{} v{} through receipt {} of {} ({} behind{}){}",
        p.projection,
        p.version,
        p.through_seq,
        p.head_seq,
        p.behind,
        if p.lag_ns > 0 {
            format!(", oldest waiting {} ms", p.lag_ns / 1_000_000)
        } else {
            String::new()
        },
        if next.is_empty() {
            String::new()
        } else {
            format!("; more with --cursor {}", to_hex(next))
        }
    );
    out.value(
        human,
        json!({
            "projection": p.projection, "version": p.version,
            "through_seq": p.through_seq, "through_hash": to_hex(&p.through_hash),
            "head_seq": p.head_seq, "behind": p.behind, "lag_ns": p.lag_ns,
            "next_cursor": to_hex(next),
        }),
    );
}

fn at(r: &Option<pb::ReceiptPosition>) -> Value {
    match r {
        None => Value::Null,
        Some(r) => {
            json!({"seq": r.seq, "receipt_hash": to_hex(&r.receipt_hash), "timestamp_ns": r.timestamp_ns})
        }
    }
}

fn seq(r: &Option<pb::ReceiptPosition>) -> u64 {
    r.as_ref().map_or(0, |r| r.seq)
}

fn status(kind: i32, reason: &str) -> String {
    match pb::OutcomeKind::try_from(kind) {
        Ok(pb::OutcomeKind::Succeeded) => "succeeded".into(),
        Ok(pb::OutcomeKind::Failed) => format!("failed: {reason}"),
        Ok(pb::OutcomeKind::Rejection) => "rejection".into(),
        _ => format!("status {kind}"),
    }
}

fn commitment_json(c: &pb::CommitmentNode) -> Value {
    json!({
        "receipt": at(&c.receipt), "commitment_id": c.commitment_id, "class": c.class,
        "proposer": c.proposer, "decider": c.decider, "accepted": c.accepted,
        "rejection_reason": c.rejection_reason,
        "policy": c.policy.as_ref().map(|p| json!({"hash": to_hex(&p.hash), "version": p.version})),
    })
}

fn outcome_json(o: &pb::OutcomeNode) -> Value {
    json!({
        "receipt": at(&o.receipt), "commitment_hash": to_hex(&o.commitment_hash),
        "status": status(o.status, &o.reason), "reporter": o.reporter,
    })
}

fn lineage(out: Output, l: &pb::Lineage) {
    let refs = |v: &[pb::Reference]| -> Vec<Value> {
        v.iter()
            .map(|r| json!({"uri": r.uri, "digest": to_hex(&r.digest)}))
            .collect()
    };
    let (o, c) = (l.outcome.as_ref(), l.commitment.as_ref());
    let human = format!(
        "outcome #{} ({}) of commitment #{} {} by {}, decided by {} ({}) under policy {}; evidence: {}; proofs: {}",
        o.map_or(0, |o| seq(&o.receipt)),
        o.map_or(String::new(), |o| status(o.status, &o.reason)),
        c.map_or(0, |c| seq(&c.receipt)),
        c.map_or("", |c| c.class.as_str()),
        c.map_or("", |c| c.proposer.as_str()),
        c.map_or("", |c| c.decider.as_str()),
        if c.is_some_and(|c| c.accepted) {
            "accepted"
        } else {
            "rejected"
        },
        c.and_then(|c| c.policy.as_ref())
            .map_or("", |p| p.version.as_str()),
        l.evidence
            .iter()
            .map(|r| r.uri.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        l.proofs
            .iter()
            .map(|r| r.uri.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.value(
        human,
        json!({
            "outcome": o.map(outcome_json), "commitment": c.map(commitment_json),
            "evidence": refs(&l.evidence), "proofs": refs(&l.proofs),
        }),
    );
}

pub async fn run(client: &Client, out: Output, a: ProjectArgs) -> anyhow::Result<()> {
    match a.what {
        Projection::State {
            common,
            key,
            prefix,
        } => {
            let select = match (key, prefix) {
                (Some(k), _) => Some(pb::projected_state_request::Select::Key(k)),
                (None, Some(p)) => Some(pb::projected_state_request::Select::KeyPrefix(p)),
                (None, None) => None,
            };
            let r = client
                .projected_state(pb::ProjectedStateRequest {
                    query: Some(query(&common)?),
                    select,
                    with_state_hash: common.cursor.is_none(),
                })
                .await?;
            position(out, r.position.as_ref(), &r.next_cursor);
            if !r.state_hash.is_empty() {
                out.value(
                    format!(
                        "state: {} pairs, {} bytes, hash {}",
                        r.pair_count,
                        r.state_bytes,
                        to_hex(&r.state_hash)
                    ),
                    json!({"pair_count": r.pair_count, "state_bytes": r.state_bytes, "state_hash": to_hex(&r.state_hash)}),
                );
            }
            for p in &r.pairs {
                out.value(
                    format!("{} = {}", p.key, String::from_utf8_lossy(&p.value)),
                    json!({"key": p.key, "value_hex": to_hex(&p.value)}),
                );
            }
        }
        Projection::Audit {
            common,
            proposer,
            decider,
            requested,
            granted,
            class,
            decision,
            from_ns,
            until_ns,
            latest_first,
        } => {
            use pb::query_audit_request::Filter as F;
            let filter = if let Some(a) = proposer {
                Some(F::Proposer(a))
            } else if let Some(a) = decider {
                Some(F::Decider(a))
            } else if let Some(c) = requested {
                Some(F::RequestedCapability(c))
            } else if let Some(c) = granted {
                Some(F::GrantedCapability(c))
            } else if let Some(c) = class {
                Some(F::CommitmentClass(c))
            } else if let Some(d) = decision {
                Some(F::Decision(match d.as_str() {
                    "accepted" => pb::DecisionFilter::Accepted as i32,
                    "rejected" => pb::DecisionFilter::Rejected as i32,
                    other => bail!("--decision {other:?}: use accepted or rejected"),
                }))
            } else {
                None
            };
            let r = client
                .query_audit(pb::QueryAuditRequest {
                    query: Some(query(&common)?),
                    filter,
                    from_ns,
                    until_ns,
                    latest_first,
                })
                .await?;
            position(out, r.position.as_ref(), &r.next_cursor);
            for rec in &r.records {
                let outcome = rec.outcome.as_ref();
                out.value(
                    format!(
                        "#{:<6} {} {} by {} ({}), {} by {} under {}; outcome: {}",
                        seq(&rec.receipt),
                        rec.class,
                        rec.intent,
                        rec.proposer,
                        rec.commitment_id,
                        if rec.accepted {
                            "accepted".to_owned()
                        } else {
                            format!("rejected ({})", rec.rejection_reason)
                        },
                        rec.decider,
                        rec.policy.as_ref().map_or("", |p| p.version.as_str()),
                        outcome.map_or("none yet".to_owned(), |o| format!(
                            "#{} {}",
                            seq(&o.receipt),
                            status(o.status, &o.reason)
                        )),
                    ),
                    json!({
                        "receipt": at(&rec.receipt), "commitment_id": rec.commitment_id,
                        "class": rec.class, "intent": rec.intent, "proposer": rec.proposer,
                        "decider": rec.decider, "accepted": rec.accepted,
                        "rejection_reason": rec.rejection_reason,
                        "policy": rec.policy.as_ref().map(|p| json!({"hash": to_hex(&p.hash), "version": p.version})),
                        "outcome": outcome.map(|o| json!({"receipt": at(&o.receipt), "status": status(o.status, &o.reason)})),
                    }),
                );
            }
        }
        Projection::Grants {
            common,
            actor,
            at_seq,
            at_time_ns,
            history,
            latest_first,
        } => {
            use pb::query_grants_request::At;
            let at_ = if history {
                Some(At::History(true))
            } else if let Some(t) = at_time_ns {
                Some(At::AtTimeNs(t))
            } else {
                at_seq.map(At::AtSeq)
            };
            let r = client
                .query_grants(pb::QueryGrantsRequest {
                    query: Some(query(&common)?),
                    actor,
                    at: at_,
                    latest_first,
                })
                .await?;
            position(out, r.position.as_ref(), &r.next_cursor);
            for g in &r.grants {
                out.value(
                    format!(
                        "{} holds {} since #{}{}",
                        g.actor,
                        g.capability,
                        seq(&g.granted),
                        g.revoked
                            .as_ref()
                            .map_or(String::new(), |r| format!(", revoked at #{}", r.seq))
                    ),
                    json!({"actor": g.actor, "capability": g.capability, "granted": at(&g.granted), "revoked": at(&g.revoked)}),
                );
            }
            for e in &r.events {
                out.value(
                    format!(
                        "#{:<6} {} {} {}{}",
                        seq(&e.receipt),
                        if e.revoke { "revoke" } else { "grant " },
                        e.actor,
                        e.capability,
                        if e.effective { "" } else { " (no change)" }
                    ),
                    json!({"receipt": at(&e.receipt), "revoke": e.revoke, "actor": e.actor, "capability": e.capability, "effective": e.effective}),
                );
            }
        }
        Projection::Provenance {
            common,
            outcome,
            key,
            key_history,
            dependents_of,
            citing,
            at_seq,
            latest_first,
        } => {
            use pb::query_provenance_request::Target as T;
            let target = if let Some(h) = outcome {
                T::Outcome(digest("--outcome", &h)?)
            } else if let Some(k) = key {
                T::Key(k)
            } else if let Some(k) = key_history {
                T::KeyHistory(k)
            } else if let Some(h) = dependents_of {
                T::DependentsOf(digest("--dependents-of", &h)?)
            } else if let Some(h) = citing {
                T::Citing(digest("--citing", &h)?)
            } else {
                bail!(
                    "name what to trace: --outcome, --key, --key-history, --dependents-of or --citing"
                );
            };
            let r = client
                .query_provenance(pb::QueryProvenanceRequest {
                    query: Some(query(&common)?),
                    target: Some(target),
                    at_seq,
                    latest_first,
                })
                .await?;
            position(out, r.position.as_ref(), &r.next_cursor);
            if let Some(w) = &r.write {
                out.value(
                    format!(
                        "written by outcome #{} {}{}",
                        w.seq,
                        to_hex(&w.outcome_hash),
                        if w.deleted { " (deleted)" } else { "" }
                    ),
                    json!({"write": {"seq": w.seq, "outcome_hash": to_hex(&w.outcome_hash), "deleted": w.deleted}}),
                );
            }
            if let Some(l) = &r.lineage {
                lineage(out, l);
            }
            for w in &r.writes {
                out.value(
                    format!(
                        "#{:<6} {} {}",
                        w.seq,
                        if w.deleted { "delete" } else { "put   " },
                        to_hex(&w.outcome_hash)
                    ),
                    json!({"seq": w.seq, "outcome_hash": to_hex(&w.outcome_hash), "deleted": w.deleted}),
                );
            }
            if let Some(o) = &r.outcome {
                out.value(
                    format!(
                        "answered by outcome #{} ({})",
                        seq(&o.receipt),
                        status(o.status, &o.reason)
                    ),
                    json!({"outcome": outcome_json(o)}),
                );
            }
            for k in &r.keys {
                out.value(
                    format!(
                        "  {} {}",
                        if k.deleted { "deleted" } else { "wrote  " },
                        k.key
                    ),
                    json!({"key": k.key, "deleted": k.deleted}),
                );
            }
            for c in &r.commitments {
                out.value(
                    format!("cited by commitment #{} {}", c.seq, to_hex(&c.receipt_hash)),
                    json!({"seq": c.seq, "receipt_hash": to_hex(&c.receipt_hash)}),
                );
            }
            if r.write.is_none()
                && r.lineage.is_none()
                && r.writes.is_empty()
                && r.outcome.is_none()
                && r.keys.is_empty()
                && r.commitments.is_empty()
            {
                out.value("nothing found".into(), json!({"found": false}));
            }
        }
    }
    Ok(())
}
