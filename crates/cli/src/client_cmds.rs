use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use converge_ledger_client::{
    AppendOptions, BatchEntry, BatchOptions, Client, ClientOptions, GetOptions, Metadata,
};
use serde_json::json;

use crate::output::Output;
use crate::target::Target;

#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Context id.
    context: String,
    /// Entry key (e.g. facts, traces).
    key: String,
    /// Payload text.
    #[arg(long, conflicts_with = "file")]
    payload: Option<String>,
    /// Read the payload from this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Metadata pair, repeatable.
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_pair)]
    meta: Vec<(String, String)>,
    /// Idempotency key: retrying with the same key appends at most once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// A received Lamport time to merge into the context's clock.
    #[arg(long, default_value_t = 0)]
    lamport: u64,
    /// Append each line of the payload (from --payload, --file or stdin)
    /// as its own entry, in order, in atomic batches of up to the server's
    /// batch limit, one round trip each. With --idempotency-key K, batch i
    /// carries the key K/i.
    #[arg(long)]
    lines: bool,
    /// With --lines: append only if the context's head is at this sequence
    /// (0: empty); each further batch is conditional on the one before, so
    /// nothing else interleaves.
    #[arg(long, requires = "lines")]
    expected_sequence: Option<u64>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V with a non-empty K")),
    }
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Context id.
    context: String,
    /// Only entries with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only entries after this sequence.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many entries (0: all; large contexts are streamed).
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Context id.
    context: String,
    /// Only entries with this key.
    #[arg(long)]
    key: Option<String>,
    /// Start after this sequence (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    from: u64,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Context id.
    context: String,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Context id to restore into.
    context: String,
    /// Snapshot file.
    file: PathBuf,
    /// Refuse if the context already has entries.
    #[arg(long)]
    fail_if_exists: bool,
    /// Accept a snapshot signed by a key the server does not trust (the
    /// signature must still verify).
    #[arg(long)]
    allow_unknown_signer: bool,
}

#[derive(Args, Debug)]
pub struct HeadArgs {
    /// Context id.
    context: String,
}

#[derive(Args, Debug)]
pub struct ContextsArgs {
    /// Start after this context id.
    #[arg(long, default_value = "")]
    after: String,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

pub async fn append(target: &Target, out: Output, a: AppendArgs) -> anyhow::Result<()> {
    let payload = match (a.payload, a.file) {
        (Some(p), _) => p.into_bytes(),
        (None, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the payload from stdin")?;
            buf
        }
    };
    let client = target.connect().await?;
    let metadata: Metadata = a.meta.into_iter().collect();
    if a.lines {
        return append_lines(
            &client,
            out,
            &a.context,
            &a.key,
            payload,
            metadata,
            a.idempotency_key,
            a.lamport,
            a.expected_sequence,
        )
        .await;
    }
    let e = client
        .append(
            &a.context,
            &a.key,
            payload,
            AppendOptions {
                metadata,
                idempotency_key: a.idempotency_key,
                lamport: a.lamport,
            },
        )
        .await?;
    out.entry(&a.context, &e);
    Ok(())
}

/// `append --lines`: one entry per line, in AppendBatch requests.
#[allow(clippy::too_many_arguments)]
async fn append_lines(
    client: &Client,
    out: Output,
    context: &str,
    key: &str,
    input: Vec<u8>,
    metadata: Metadata,
    idempotency_key: Option<String>,
    lamport: u64,
    expected_sequence: Option<u64>,
) -> anyhow::Result<()> {
    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        bail!("--lines: the input has no lines; nothing was appended");
    }
    let batch_max = match client.server_info().await?.batch_entries_max {
        0 => 1,
        n => n as usize,
    };
    let mut expected = expected_sequence;
    let mut first = None;
    let mut last = 0;
    for (i, chunk) in lines.chunks(batch_max).enumerate() {
        let entries = chunk
            .iter()
            .map(|l| BatchEntry {
                key: key.to_owned(),
                payload: l.strip_suffix(b"\r").unwrap_or(l).to_vec(),
                metadata: metadata.clone(),
            })
            .collect();
        let r = client
            .append_batch(
                context,
                entries,
                BatchOptions {
                    idempotency_key: idempotency_key.as_ref().map(|k| format!("{k}/{i}")),
                    expected_sequence: expected,
                    lamport: if i == 0 { lamport } else { 0 },
                },
            )
            .await
            .with_context(|| match last {
                0 => "nothing was appended".to_owned(),
                n => format!("entries up to sequence {n} were appended, the rest not"),
            })?;
        let (Some(f), Some(l)) = (r.entries.first(), r.entries.last()) else {
            bail!("the server acknowledged an empty batch");
        };
        first.get_or_insert(f.sequence);
        last = l.sequence;
        if expected.is_some() {
            expected = Some(last);
        }
    }
    let first = first.unwrap_or(0);
    out.value(
        format!(
            "appended {} entries to {context}: sequences {first}..={last}",
            lines.len()
        ),
        json!({"context_id": context, "entries": lines.len(), "first_sequence": first, "last_sequence": last}),
    );
    Ok(())
}

pub async fn get(target: &Target, out: Output, a: GetArgs) -> anyhow::Result<()> {
    let client = target.connect().await?;
    // Streamed through the extension Read, so any size prints in bounded memory.
    let latest = client
        .read_all(
            &a.context,
            GetOptions {
                key: a.key,
                after: a.after,
                limit: a.limit,
            },
            |e| out.entry(&a.context, &e),
        )
        .await?;
    if !out.json {
        eprintln!("latest sequence: {latest}");
    }
    Ok(())
}

pub async fn watch(target: &Target, out: Output, a: WatchArgs) -> anyhow::Result<()> {
    let options = ClientOptions {
        attempts: 30,
        ..ClientOptions::default()
    };
    let client = target.connect_with(options).await?;
    let mut w = client.watch(&a.context, a.key.as_deref(), a.from);
    while let Some(e) = w.next().await {
        out.entry(&a.context, &e?);
    }
    Ok(())
}

pub async fn snapshot(target: &Target, out: Output, a: SnapshotArgs) -> anyhow::Result<()> {
    let client = target.connect().await?;
    // Streamed: no message-size ceiling, and the file is written as the
    // pieces arrive; it appears under its name only once complete.
    let tmp = a.output.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let result = client.snapshot_to(&a.context, &mut writer).await;
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            drop(writer);
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    std::fs::rename(&tmp, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    out.value(
        format!(
            "snapshot of {} at sequence {} ({} entries, {} bytes, version {}) written to {}",
            a.context,
            s.sequence,
            s.entry_count,
            bytes,
            s.version,
            a.output.display()
        ),
        json!({"context_id": a.context, "sequence": s.sequence, "entry_count": s.entry_count,
               "bytes": bytes, "version": s.version, "file": a.output}),
    );
    Ok(())
}

pub async fn load(target: &Target, out: Output, a: LoadArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    if bytes.is_empty() {
        bail!("{} is empty; it is not a snapshot", a.file.display());
    }
    let client = target.connect().await?;
    let r = client
        .load_streamed(&a.context, bytes, a.fail_if_exists, a.allow_unknown_signer)
        .await?;
    out.value(
        format!(
            "loaded {} entries into {}; latest sequence {}",
            r.entries_restored, a.context, r.latest_sequence
        ),
        json!({"context_id": a.context, "entries_restored": r.entries_restored, "latest_sequence": r.latest_sequence}),
    );
    Ok(())
}

pub async fn head(target: &Target, out: Output, a: HeadArgs) -> anyhow::Result<()> {
    let client = target.connect().await?;
    let h = client.head(&a.context).await?;
    out.value(
        format!(
            "context      {}\nsequence     {}\nhash         {}\nmerkle root  {}\nlamport      {}\nappended at  {} ns",
            h.context_id, h.sequence, h.hash, h.merkle_root, h.lamport, h.appended_at_ns
        ),
        json!({"context_id": h.context_id, "sequence": h.sequence, "hash": h.hash.to_hex(),
               "merkle_root": h.merkle_root.to_hex(), "lamport": h.lamport, "appended_at_ns": h.appended_at_ns}),
    );
    Ok(())
}

pub async fn contexts(target: &Target, out: Output, a: ContextsArgs) -> anyhow::Result<()> {
    let client = target.connect().await?;
    let mut after = a.after;
    let mut printed = 0u64;
    loop {
        let page = client.list_contexts(&after, 1000).await?;
        let Some(last) = page.last().map(|(c, _)| c.clone()) else {
            break;
        };
        for (c, seq) in page {
            if a.limit != 0 && printed >= a.limit as u64 {
                return Ok(());
            }
            out.value(
                format!("{c}\t{seq}"),
                json!({"context_id": c, "sequence": seq}),
            );
            printed += 1;
        }
        after = last;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// Read the key from this signing-key file instead of asking the server.
    #[arg(long)]
    file: Option<PathBuf>,
}

pub async fn key(target: &Target, out: Output, a: KeyArgs) -> anyhow::Result<()> {
    let key = match a.file {
        Some(f) => converge_ledger_server::load_or_create_key(&f, false)?.public_key(),
        None => target.connect().await?.server_public_key().await?,
    };
    out.value(key.to_hex(), json!({"public_key": key.to_hex()}));
    Ok(())
}
