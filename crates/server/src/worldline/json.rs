//! Receipts as JSON, for people and tools: the CLI's `--json` output and
//! the web view.

use converge_ledger_worldline::{Decision, OutcomeStatus, Receipt, ReceiptBody, StateUpdate};
use serde_json::{Value, json};

/// A receipt as JSON: its place in the worldline and its body, field by
/// field (digests in hex, state values as text where they are UTF-8).
pub fn receipt_json(r: &Receipt) -> Value {
    let body = match &r.body {
        ReceiptBody::Commitment(c) => json!({
            "kind": "commitment",
            "commitment_id": c.commitment_id.to_string(),
            "class": c.class,
            "intent": c.intent,
            "requested_capabilities": c.requested_capabilities,
            "targets": c.targets,
            "evidence": c.evidence.iter().map(|e| json!({"uri": e.uri, "digest": e.digest.to_hex()})).collect::<Vec<_>>(),
            "proposer": c.proposer,
            "decision": match &c.decision {
                Decision::Accepted => json!({"accepted": true}),
                Decision::Rejected { reason } => json!({"accepted": false, "reason": reason}),
            },
            "policy": {"hash": c.policy.hash.to_hex(), "version": c.policy.version},
            "granted_capabilities": c.granted_capabilities,
            "revoked_capabilities": c.revoked_capabilities,
            "decider": c.decider,
        }),
        ReceiptBody::Outcome(o) => json!({
            "kind": "outcome",
            "commitment": o.commitment.to_hex(),
            "status": match &o.status {
                OutcomeStatus::Succeeded => json!("succeeded"),
                OutcomeStatus::Failed { reason } => json!({"failed": reason}),
                OutcomeStatus::Rejection => json!("rejection"),
            },
            "effects": o.effects.iter().map(|e| json!({"kind": e.kind, "target": e.target, "description": e.description})).collect::<Vec<_>>(),
            "proofs": o.proofs.iter().map(|p| json!({"uri": p.uri, "digest": p.digest.to_hex()})).collect::<Vec<_>>(),
            "state_updates": o.state_updates.iter().map(|u| match u {
                StateUpdate::Put { key, value } => match std::str::from_utf8(value) {
                    Ok(text) => json!({"put": key, "value": text}),
                    Err(_) => json!({"put": key, "value_hex": value.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
                },
                StateUpdate::Delete { key } => json!({"delete": key}),
            }).collect::<Vec<_>>(),
            "reporter": o.reporter,
        }),
    };
    json!({
        "worldline": r.worldline.to_hex(),
        "seq": r.seq,
        "receipt_hash": r.receipt_hash.to_hex(),
        "prev_receipt_hash": r.prev_receipt_hash.map(|h| h.to_hex()),
        "timestamp_ns": r.timestamp_ns,
        "lamport": r.lamport,
        "body": body,
    })
}
