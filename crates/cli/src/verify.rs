//! `converge-ledger verify` (online and offline) and `converge-ledger proof`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use converge_ledger_client::{Client, ClientOptions, GetOptions, PublicKey};
use converge_ledger_core::Head;
use converge_ledger_store::verify::verify_context;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, Store};
use serde_json::json;

use crate::output::Output;
use crate::target::Target;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Context to verify (offline: every context when omitted).
    context: Option<String>,
    /// Verify the files of a stopped server instead of asking one over the network.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    trust: Trust,
}

/// The key a server's heads must be signed with.
#[derive(Args, Debug, Clone)]
pub struct Trust {
    /// The server's public key (hex), obtained out of band (`converge-ledger
    /// key`, the server's startup line): heads must be signed by it.
    /// Without it, the server's own word for its key is all there is, and
    /// the verdict is "unverified".
    #[arg(long, env = "CONVERGE_LEDGER_PUBLIC_KEY", value_name = "HEX")]
    public_key: Option<String>,
}

impl Trust {
    /// Connects with the key pinned, if one was given.
    async fn connect(&self, target: &Target) -> anyhow::Result<(Client, Option<PublicKey>)> {
        let pinned = match &self.public_key {
            Some(k) => Some(PublicKey::from_hex(k).map_err(|e| anyhow!("--public-key: {e}"))?),
            None => None,
        };
        let options = ClientOptions {
            trusted_key: pinned,
            ..ClientOptions::default()
        };
        Ok((target.connect_with(options).await?, pinned))
    }
}

/// What a check tied to a signed head amounts to: verified only if the
/// signing key was pinned by the caller.
fn trust_note(pinned: Option<PublicKey>, signer: &PublicKey) -> (&'static str, String) {
    match pinned {
        Some(_) => ("verified", format!("signed by the pinned key {signer}")),
        None => (
            "unverified",
            format!(
                "signed by {signer}, the key the server itself reports; pass --public-key (or \
                 CONVERGE_LEDGER_PUBLIC_KEY) with the key obtained out of band to verify"
            ),
        ),
    }
}

/// Prints progress on stderr at most every two seconds.
struct Progress {
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Progress {
            last: now,
            started: now,
        }
    }

    fn report(&mut self, context: &str, done: u64, total: u64) {
        if self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        eprintln!(
            "verifying {context}: {done} of {total} entries ({pct:.0}%, {rate:.0} entries/s)"
        );
    }
}

pub async fn run(target: &Target, out: Output, a: VerifyArgs) -> anyhow::Result<()> {
    match a.data_dir {
        Some(dir) => offline(out, dir, a.context).await,
        None => {
            let context = a.context.ok_or_else(|| {
                anyhow!(
                    "online verify needs a CONTEXT (or --data-dir DIR for offline verification)"
                )
            })?;
            online(target, out, &context, &a.trust).await
        }
    }
}

async fn offline(out: Output, dir: PathBuf, only: Option<String>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a data directory", dir.display());
    }
    tokio::task::spawn_blocking(move || {
        let mut options = EmbeddedOptions::new(&dir);
        options.fsync = FsyncPolicy::Never;
        let store = EmbeddedStore::open(options)
            .with_context(|| format!("opening {} (is a server still running on it?)", dir.display()))?;
        let mut contexts = Vec::new();
        match only {
            Some(c) => contexts.push(c),
            None => store.contexts("", &mut |c, _| {
                contexts.push(c.to_owned());
                true
            })?,
        }
        let started = Instant::now();
        let mut progress = Progress::new();
        let (mut entries, mut failures) = (0u64, Vec::new());
        for c in &contexts {
            match verify_context(&store, c, &mut |done, total| progress.report(c, done, total)) {
                Ok(v) => entries += v.head.sequence,
                Err(f) => {
                    out.value(
                        format!("FAILED: {f}"),
                        json!({"verdict": "failed", "context_id": f.context, "sequence": f.sequence, "reason": f.reason}),
                    );
                    failures.push(f);
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if failures.is_empty() {
            out.value(
                format!(
                    "OK: {} contexts, {entries} entries verified in {secs:.2} s ({:.0} entries/s)",
                    contexts.len(),
                    entries as f64 / secs.max(1e-9)
                ),
                json!({"verdict": "ok", "contexts": contexts.len(), "entries": entries, "seconds": secs}),
            );
            Ok(())
        } else {
            bail!("{} of {} contexts failed verification", failures.len(), contexts.len())
        }
    })
    .await?
}

async fn online(target: &Target, out: Output, context: &str, trust: &Trust) -> anyhow::Result<()> {
    let (client, pinned) = trust.connect(target).await?;
    let head = client
        .verify_head(context)
        .await
        .map_err(|e| anyhow!("FAILED: context {context}: {e}"))?;
    let mut folded = Head::empty(context);
    let mut failure: Option<String> = None;
    let mut progress = Progress::new();
    let total = head.sequence;
    let read = client
        .read_all(
            context,
            GetOptions {
                limit: total as u32,
                ..GetOptions::default()
            },
            |e| {
                if failure.is_some() || e.sequence > total {
                    return;
                }
                match folded.check_next(context, &e) {
                    Ok(()) => folded.advance(&e),
                    Err(err) => {
                        failure = Some(format!(
                            "FAILED: context {context} at sequence {}: {}",
                            err.sequence, err.reason
                        ))
                    }
                }
                progress.report(context, folded.sequence, total);
            },
        )
        .await;
    if let Err(e) = read {
        bail!(
            "FAILED: context {context} at sequence {}: {e}",
            folded.sequence + 1
        );
    }
    if let Some(f) = failure {
        bail!(f);
    }
    if folded.sequence != head.sequence
        || folded.hash != head.hash
        || folded.merkle_root() != head.merkle_root
    {
        bail!(
            "FAILED: context {context}: the entries fold to sequence {} (hash {}, root {}) but the signed head says {} (hash {}, root {})",
            folded.sequence,
            folded.hash,
            folded.merkle_root(),
            head.sequence,
            head.hash,
            head.merkle_root
        );
    }
    let (verdict, signer) = trust_note(pinned, &head.public_key);
    out.value(
        format!(
            "{}: {context}: {} entries, chain and Merkle root {} match the head {signer}",
            if pinned.is_some() { "OK" } else { "UNVERIFIED" },
            head.sequence,
            head.merkle_root
        ),
        json!({"verdict": if pinned.is_some() { "ok" } else { verdict }, "verified": pinned.is_some(),
               "context_id": context, "entries": head.sequence,
               "merkle_root": head.merkle_root.to_hex(), "public_key": head.public_key.to_hex()}),
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ProofArgs {
    /// Prove that entry SEQUENCE is in the tree of TREE_SIZE entries.
    Inclusion {
        /// Context id.
        context: String,
        /// Entry sequence.
        sequence: u64,
        /// Tree size (default: the current head).
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
        #[command(flatten)]
        trust: Trust,
    },
    /// Prove that the tree of OLD entries is a prefix of the tree of NEW entries.
    Consistency {
        /// Context id.
        context: String,
        /// Older tree size.
        old: u64,
        /// Newer tree size (default: the current head).
        new: Option<u64>,
        #[command(flatten)]
        trust: Trust,
    },
}

pub async fn proof(target: &Target, out: Output, a: ProofArgs) -> anyhow::Result<()> {
    match a {
        ProofArgs::Inclusion {
            context,
            sequence,
            tree_size,
            trust,
        } => {
            let (client, pinned) = trust.connect(target).await?;
            let p = client
                .inclusion_proof(&context, sequence, tree_size)
                .await?;
            let (verdict, signer) = trust_note(pinned, &p.anchor.public_key);
            let path: Vec<String> = p.path.iter().map(|d| d.to_hex()).collect();
            out.value(
                format!(
                    "inclusion of {context}#{} (hash {}) in the tree of {} entries, root {}\n{}\n{verdict}: \
                     the root is tied to the head of {} entries {signer}",
                    p.sequence,
                    p.entry_hash,
                    p.tree_size,
                    p.root,
                    path.iter().map(|h| format!("  {h}")).collect::<Vec<_>>().join("\n"),
                    p.anchor.sequence
                ),
                json!({"context_id": context, "sequence": p.sequence, "tree_size": p.tree_size,
                       "entry_hash": p.entry_hash.to_hex(), "path": path, "root": p.root.to_hex(),
                       "verified": pinned.is_some(), "anchor_sequence": p.anchor.sequence,
                       "anchor_root": p.anchor.merkle_root.to_hex(), "signed_by": p.anchor.public_key.to_hex()}),
            );
        }
        ProofArgs::Consistency {
            context,
            old,
            new,
            trust,
        } => {
            let (client, pinned) = trust.connect(target).await?;
            let p = client
                .consistency_proof(&context, old, new.unwrap_or(0))
                .await?;
            let anchor = p
                .anchor
                .clone()
                .ok_or_else(|| anyhow!("the client returned a proof without its anchor"))?;
            let (verdict, signer) = trust_note(pinned, &anchor.public_key);
            let proof: Vec<String> = p.proof.iter().map(|d| d.to_hex()).collect();
            out.value(
                format!(
                    "consistency of {context} from {} entries (root {}) to {} entries (root {})\n{}\n{verdict}: \
                     tied to the head of {} entries {signer}",
                    p.old_size,
                    p.old_root,
                    p.new_size,
                    p.new_root,
                    proof.iter().map(|h| format!("  {h}")).collect::<Vec<_>>().join("\n"),
                    anchor.sequence
                ),
                json!({"context_id": context, "old_size": p.old_size, "new_size": p.new_size, "proof": proof,
                       "old_root": p.old_root.to_hex(), "new_root": p.new_root.to_hex(),
                       "verified": pinned.is_some(), "anchor_sequence": anchor.sequence,
                       "anchor_root": anchor.merkle_root.to_hex(), "signed_by": anchor.public_key.to_hex()}),
            );
        }
    }
    Ok(())
}
