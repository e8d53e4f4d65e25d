//! `converge-ledger worldline ...`: the WorldLine profile from the command
//! line. A WORLDLINE argument is a worldline id (64 hex digits) or any
//! other text, from which the id is derived (`WorldlineId::derive`).

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use converge_ledger_client::Digest;
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, Effect, EvidenceRef, Outcome, OutcomeStatus,
    PolicyRef, ProofRef, Receipt, ReceiptBody, ReceiptRef, StateUpdate, WorldlineId,
};
use serde_json::json;

use crate::output::Output;
use crate::target::Target;

#[derive(Subcommand, Debug)]
pub enum WorldlineArgs {
    /// Append a decided commitment (accepted with --accept, or rejected
    /// with --reject REASON).
    Commit(CommitArgs),
    /// Append the outcome of an accepted commitment: --succeeded (with
    /// state updates) or --failed REASON.
    Outcome(OutcomeArgs),
    /// Close a rejected commitment with its rejection outcome.
    Reject {
        /// The worldline.
        worldline: String,
        /// Receipt hash of the rejected commitment.
        #[arg(long)]
        commitment: String,
        /// Who reports it.
        #[arg(long)]
        reporter: String,
    },
    /// Snapshot the state after receipt SEQ (the ledger computes it).
    Snapshot {
        /// The worldline.
        worldline: String,
        /// The anchor receipt's sequence.
        seq: u64,
        /// Refuse unless the state hash there is this (hex).
        #[arg(long)]
        expect_state: Option<String>,
    },
    /// The last receipt of a worldline.
    Head {
        /// The worldline.
        worldline: String,
    },
    /// Worldlines with at least one receipt.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The receipts of a worldline, one per line.
    Log {
        /// The worldline.
        worldline: String,
        /// From this sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Up to this sequence.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
    },
    /// One receipt, in full, by its hash.
    Show {
        /// The receipt hash (hex).
        hash: String,
    },
    /// The state after receipt --seq (default: the head), by replay, and
    /// its state hash (recomputed here from the pairs received).
    Replay {
        /// The worldline.
        worldline: String,
        /// After this receipt (0: the head).
        #[arg(long, default_value_t = 0)]
        seq: u64,
    },
    /// Query the server's projections: state, audit, grants, provenance.
    Project(crate::project::ProjectArgs),
    /// Replay a whole worldline on the server, checking every rule and
    /// snapshot, and read every receipt back here, checking hashes and
    /// links; with --data-dir, every worldline (or WORLDLINE) of a stopped
    /// server's embedded storage, here. Exits non-zero naming the first
    /// receipt that fails.
    Verify {
        /// The worldline (with --data-dir: all when omitted).
        worldline: Option<String>,
        /// A stopped server's data directory.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The worldline.
    worldline: String,
    /// The commitment id (a UUID); a retry with the same id and content
    /// returns the first receipt.
    #[arg(long)]
    id: String,
    /// Commitment class.
    #[arg(long)]
    class: String,
    /// What is intended, for people.
    #[arg(long)]
    intent: String,
    /// A requested capability (repeatable).
    #[arg(long = "request")]
    requested: Vec<String>,
    /// A target (repeatable, order kept).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Evidence, URI=SHA256HEX (repeatable).
    #[arg(long = "evidence", value_name = "URI=DIGEST")]
    evidence: Vec<String>,
    /// Who proposed it.
    #[arg(long)]
    proposer: String,
    /// The proposal was accepted.
    #[arg(long, conflicts_with = "reject")]
    accept: bool,
    /// The proposal was rejected, for this reason.
    #[arg(long)]
    reject: Option<String>,
    /// SHA-256 (hex) of the policy that decided.
    #[arg(long)]
    policy_hash: String,
    /// Version of the policy or operator that decided.
    #[arg(long)]
    policy_version: String,
    /// A granted capability (repeatable; a subset of the requested).
    #[arg(long = "grant")]
    granted: Vec<String>,
    /// A revoked capability (repeatable).
    #[arg(long = "revoke")]
    revoked: Vec<String>,
    /// Who decided.
    #[arg(long)]
    decider: String,
}

#[derive(Args, Debug)]
pub struct OutcomeArgs {
    /// The worldline.
    worldline: String,
    /// Receipt hash of the commitment it answers.
    #[arg(long)]
    commitment: String,
    /// The commitment was carried out.
    #[arg(long, conflicts_with = "failed")]
    succeeded: bool,
    /// It failed, for this reason.
    #[arg(long)]
    failed: Option<String>,
    /// An effect, KIND:TARGET[:DESCRIPTION] (repeatable).
    #[arg(long = "effect")]
    effects: Vec<String>,
    /// A proof, URI=SHA256HEX (repeatable).
    #[arg(long = "proof", value_name = "URI=DIGEST")]
    proofs: Vec<String>,
    /// Set a state key, KEY=VALUE (repeatable, applied in order).
    #[arg(long = "put", value_name = "KEY=VALUE")]
    puts: Vec<String>,
    /// Remove a state key (repeatable, applied after the puts).
    #[arg(long = "delete", value_name = "KEY")]
    deletes: Vec<String>,
    /// Who reports it.
    #[arg(long)]
    reporter: String,
}

/// A worldline id: 64 hex digits, or derived from the text.
pub fn worldline_id(s: &str) -> WorldlineId {
    WorldlineId::from_hex(s).unwrap_or_else(|_| WorldlineId::derive(s.as_bytes()))
}

fn digest(what: &str, s: &str) -> anyhow::Result<Digest> {
    Digest::from_hex(s)
        .with_context(|| format!("{what} {s:?} is not 64 hex digits (a SHA-256 hash)"))
}

fn uri_digest(what: &str, s: &str) -> anyhow::Result<(String, Digest)> {
    let (uri, d) = s
        .rsplit_once('=')
        .with_context(|| format!("--{what} {s:?}: expected URI=SHA256HEX"))?;
    Ok((uri.to_owned(), digest(what, d)?))
}

fn caps(v: &[String]) -> CapabilitySet {
    v.iter().cloned().collect()
}

fn summary(r: &Receipt) -> String {
    let what = match &r.body {
        ReceiptBody::Commitment(c) => format!(
            "commitment {} {} by {}: {} ({}, policy {})",
            c.commitment_id,
            c.class,
            c.proposer,
            match &c.decision {
                Decision::Accepted => "accepted".to_owned(),
                Decision::Rejected { reason } => format!("rejected: {reason}"),
            },
            c.intent,
            c.policy.version
        ),
        ReceiptBody::Outcome(o) => format!(
            "outcome of {} by {}: {}, {} state updates",
            short(&o.commitment),
            o.reporter,
            match &o.status {
                OutcomeStatus::Succeeded => "succeeded".to_owned(),
                OutcomeStatus::Failed { reason } => format!("failed: {reason}"),
                OutcomeStatus::Rejection => "rejection".to_owned(),
            },
            o.state_updates.len()
        ),
    };
    format!("#{:<6} {}  {what}", r.seq, r.receipt_hash)
}

fn short(d: &Digest) -> String {
    d.to_hex()[..12].to_owned()
}

fn print_receipt(out: Output, r: &Receipt, duplicate: Option<bool>) {
    let mut v = converge_ledger_server::receipt_json(r);
    if let Some(d) = duplicate {
        v["duplicate"] = json!(d);
    }
    out.value(summary(r), v);
}

/// Verifies worldlines of a stopped server's embedded storage, here.
async fn verify_offline(
    out: Output,
    dir: std::path::PathBuf,
    only: Option<String>,
) -> anyhow::Result<()> {
    use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, Store};
    if !dir.is_dir() {
        bail!("{} is not a data directory", dir.display());
    }
    let mut options = EmbeddedOptions::new(&dir);
    options.fsync = FsyncPolicy::Never;
    let store = std::sync::Arc::new(
        tokio::task::block_in_place(|| EmbeddedStore::open(options)).with_context(|| {
            format!(
                "opening {} (is a server still running on it?)",
                dir.display()
            )
        })?,
    );
    let mut ids = Vec::new();
    match only {
        Some(w) => ids.push(worldline_id(&w)),
        None => store.contexts(converge_ledger_client::worldline::NAMESPACE, &mut |c, _| {
            if let Ok(w) = WorldlineId::from_context_id(c) {
                ids.push(w);
            }
            c.starts_with(converge_ledger_client::worldline::NAMESPACE)
        })?,
    }
    let ledger = converge_ledger_server::Ledger::new(store, Default::default());
    let worldlines = converge_ledger_server::Worldlines::new(ledger.clone(), Default::default())?;
    let mut failed = Vec::new();
    for w in &ids {
        let v = worldlines.verify(w).await?;
        match &v.failure {
            None => out.value(
                format!("OK: worldline {w}, {} receipts, {} snapshots, state hash {}", v.receipts, v.snapshots, v.state_hash),
                json!({"worldline": w.to_hex(), "ok": true, "receipts": v.receipts, "snapshots": v.snapshots, "state_hash": v.state_hash.to_hex()}),
            ),
            Some((seq, e)) => {
                out.value(
                    format!("FAILED: worldline {w} at {seq}: {e}"),
                    json!({"worldline": w.to_hex(), "ok": false, "failed_seq": seq, "error": e.to_string()}),
                );
                failed.push(format!("{w} at {seq}"));
            }
        }
    }
    ledger.shutdown().await?;
    if !failed.is_empty() {
        bail!(
            "{} of {} worldlines fail: {}",
            failed.len(),
            ids.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

pub async fn run(target: &Target, out: Output, a: WorldlineArgs) -> anyhow::Result<()> {
    if let WorldlineArgs::Verify {
        worldline,
        data_dir: Some(dir),
    } = a
    {
        return verify_offline(out, dir, worldline).await;
    }
    let client = target.connect().await?;
    match a {
        WorldlineArgs::Commit(c) => {
            let decision = match (c.accept, c.reject) {
                (true, None) => Decision::Accepted,
                (false, Some(reason)) => Decision::Rejected { reason },
                _ => bail!("say how the proposal was decided: --accept or --reject REASON"),
            };
            let evidence = c
                .evidence
                .iter()
                .map(|e| uri_digest("evidence", e).map(|(uri, digest)| EvidenceRef { uri, digest }))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let commitment = Commitment {
                commitment_id: CommitmentId::parse(&c.id)
                    .map_err(|e| anyhow::anyhow!("--id: {e}"))?,
                class: c.class,
                intent: c.intent,
                requested_capabilities: caps(&c.requested),
                targets: c.targets,
                evidence,
                proposer: c.proposer,
                decision,
                policy: PolicyRef {
                    hash: digest("--policy-hash", &c.policy_hash)?,
                    version: c.policy_version,
                },
                granted_capabilities: caps(&c.granted),
                revoked_capabilities: caps(&c.revoked),
                decider: c.decider,
            };
            let w = worldline_id(&c.worldline);
            let r = client.append_commitment(&w, &commitment).await?;
            print_receipt(out, &r, None);
        }
        WorldlineArgs::Outcome(o) => {
            let status = match (o.succeeded, o.failed) {
                (true, None) => OutcomeStatus::Succeeded,
                (false, Some(reason)) => OutcomeStatus::Failed { reason },
                _ => bail!(
                    "say how it went: --succeeded or --failed REASON (a rejected commitment is closed with `worldline reject`)"
                ),
            };
            let effects = o
                .effects
                .iter()
                .map(|e| {
                    let mut parts = e.splitn(3, ':');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(kind), Some(target), description) => Ok(Effect {
                            kind: kind.to_owned(),
                            target: target.to_owned(),
                            description: description.unwrap_or("").to_owned(),
                        }),
                        _ => bail!("--effect {e:?}: expected KIND:TARGET[:DESCRIPTION]"),
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let proofs = o
                .proofs
                .iter()
                .map(|p| uri_digest("proof", p).map(|(uri, digest)| ProofRef { uri, digest }))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut state_updates = Vec::new();
            for p in &o.puts {
                let (key, value) = p
                    .split_once('=')
                    .with_context(|| format!("--put {p:?}: expected KEY=VALUE"))?;
                state_updates.push(StateUpdate::Put {
                    key: key.to_owned(),
                    value: value.as_bytes().to_vec(),
                });
            }
            for key in o.deletes {
                state_updates.push(StateUpdate::Delete { key });
            }
            let outcome = Outcome {
                commitment: digest("--commitment", &o.commitment)?,
                status,
                effects,
                proofs,
                state_updates,
                reporter: o.reporter,
            };
            let r = client
                .append_outcome(&worldline_id(&o.worldline), &outcome)
                .await?;
            print_receipt(out, &r, None);
        }
        WorldlineArgs::Reject {
            worldline,
            commitment,
            reporter,
        } => {
            let r = client
                .append_rejection_outcome(
                    &worldline_id(&worldline),
                    &digest("--commitment", &commitment)?,
                    &reporter,
                )
                .await?;
            print_receipt(out, &r, None);
        }
        WorldlineArgs::Snapshot {
            worldline,
            seq,
            expect_state,
        } => {
            let w = worldline_id(&worldline);
            let at = client
                .read_receipts(&w, seq.max(1), seq.max(1))
                .await?
                .pop()
                .with_context(|| format!("worldline {w} has no receipt {seq}"))?;
            let expected = expect_state
                .map(|s| digest("--expect-state", &s))
                .transpose()?;
            let s = client
                .append_worldline_snapshot(&at.reference(), expected.as_ref())
                .await?;
            out.value(
                format!(
                    "snapshot of worldline {w} after receipt {}: state hash {} (header entry {})",
                    s.anchor.seq, s.state_hash, s.header_seq
                ),
                json!({"worldline": w.to_hex(), "anchor_seq": s.anchor.seq, "anchor_hash": s.anchor.receipt_hash.to_hex(), "state_hash": s.state_hash.to_hex(), "header_seq": s.header_seq}),
            );
        }
        WorldlineArgs::Head { worldline } => {
            let w = worldline_id(&worldline);
            match client.worldline_head(&w).await? {
                Some(h) => out.value(
                    format!("worldline {w}: {} receipts, head {}", h.seq, h.receipt_hash),
                    json!({"worldline": w.to_hex(), "seq": h.seq, "receipt_hash": h.receipt_hash.to_hex()}),
                ),
                None => out.value(
                    format!("worldline {w}: no receipts"),
                    json!({"worldline": w.to_hex(), "seq": 0}),
                ),
            }
        }
        WorldlineArgs::List { limit } => {
            for h in client.worldlines(None, limit).await? {
                out.value(
                    format!("{}  {} receipts", h.worldline, h.seq),
                    json!({"worldline": h.worldline.to_hex(), "seq": h.seq, "receipt_hash": h.receipt_hash.to_hex()}),
                );
            }
        }
        WorldlineArgs::Log {
            worldline,
            from,
            to,
        } => {
            let w = worldline_id(&worldline);
            for r in client.read_receipts(&w, from.max(1), to).await? {
                print_receipt(out, &r, None);
            }
        }
        WorldlineArgs::Show { hash } => {
            let h = digest("the receipt hash", &hash)?;
            let r = client
                .get_receipt(&h)
                .await?
                .with_context(|| format!("no receipt has hash {h}"))?;
            let v = converge_ledger_server::receipt_json(&r);
            out.value(serde_json::to_string_pretty(&v)?, v);
        }
        WorldlineArgs::Replay { worldline, seq } => {
            let w = worldline_id(&worldline);
            let s = client.worldline_state(&w, seq).await?;
            let at = s.at.map_or(0, |a| a.seq);
            if out.json {
                for (k, v) in &s.pairs {
                    println!("{}", json!({"key": k, "value": String::from_utf8_lossy(v)}));
                }
            } else {
                for (k, v) in &s.pairs {
                    println!("{k} = {}", String::from_utf8_lossy(v));
                }
            }
            out.value(
                format!(
                    "state after receipt {at}: {} keys, state hash {}",
                    s.pairs.len(),
                    s.state_hash
                ),
                json!({"worldline": w.to_hex(), "seq": at, "pairs": s.pairs.len(), "state_hash": s.state_hash.to_hex()}),
            );
        }
        WorldlineArgs::Project(p) => crate::project::run(&client, out, p).await?,
        WorldlineArgs::Verify { worldline, .. } => {
            let w = worldline_id(&worldline.context(
                "give the WORLDLINE to verify (or --data-dir DIR for every worldline of a stopped server)",
            )?);
            let verdict = client.verify_worldline(&w).await?;
            // Read every receipt back here too: the SDK checks each hash,
            // body and link itself.
            let head = verdict.head.map_or(0, |h: ReceiptRef| h.seq);
            let local = if head > 0 {
                client
                    .read_receipts(&w, 1, head)
                    .await
                    .map(|r| r.len() as u64)
            } else {
                Ok(0)
            };
            match (&verdict.failure, &local) {
                (None, Ok(n)) if *n == verdict.receipts => out.value(
                    format!(
                        "OK: worldline {w}, {} receipts (L1-L5 hold), {} snapshots match the replay, state hash {}",
                        verdict.receipts, verdict.snapshots, verdict.state_hash
                    ),
                    json!({"worldline": w.to_hex(), "ok": true, "receipts": verdict.receipts, "snapshots": verdict.snapshots, "state_hash": verdict.state_hash.to_hex()}),
                ),
                (Some((seq, why)), _) => bail!("worldline {w} fails at {seq}: {why}"),
                (None, Err(e)) => bail!("worldline {w}: reading the receipts back failed: {e}"),
                (None, Ok(n)) => bail!(
                    "worldline {w}: the server replayed {} receipts, {n} were read back",
                    verdict.receipts
                ),
            }
        }
    }
    Ok(())
}
