use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use converge_ledger_core::{HeadSigner, PublicKey};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig, load_or_create_key, random_seed};
use converge_ledger_store::SystemClock;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Storage {
    /// On local disk (fjall), in --data-dir.
    Embedded,
    /// In RAM only; everything is lost when the process exits.
    Memory,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Fsync {
    /// Acknowledged means on disk (one fsync per group commit).
    Always,
    /// fsync every --fsync-interval-ms; a power loss may lose that window.
    Interval,
    /// Leave write-back to the OS; a process crash loses nothing, a power loss may.
    Never,
}

/// Flags of `converge-ledger serve`; each also reads CONVERGE_LEDGER_*.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(
        long,
        env = "CONVERGE_LEDGER_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// Where embedded storage keeps its files.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_DATA_DIR",
        default_value = "./converge-ledger-data"
    )]
    data_dir: PathBuf,
    /// Storage backend.
    #[arg(long, env = "CONVERGE_LEDGER_STORAGE", value_enum, default_value_t = Storage::Embedded)]
    storage: Storage,
    /// When an acknowledged append is on disk.
    #[arg(long, env = "CONVERGE_LEDGER_FSYNC", value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// Interval of --fsync interval, in milliseconds.
    #[arg(long, env = "CONVERGE_LEDGER_FSYNC_INTERVAL_MS", default_value_t = 10)]
    fsync_interval_ms: u64,
    /// Largest payload accepted, in bytes.
    #[arg(long, env = "CONVERGE_LEDGER_MAX_PAYLOAD_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_payload_bytes: usize,
    /// Largest Get/Snapshot response, in bytes (never below one maximal entry).
    #[arg(long, env = "CONVERGE_LEDGER_MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024 + 128 * 1024)]
    max_response_bytes: usize,
    /// Largest request message (Append, Load), in bytes.
    #[arg(long, env = "CONVERGE_LEDGER_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Most open client connections.
    #[arg(long, env = "CONVERGE_LEDGER_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Most concurrent watches.
    #[arg(long, env = "CONVERGE_LEDGER_MAX_WATCHERS", default_value_t = 4096)]
    max_watchers: usize,
    /// Block cache of embedded storage, in MiB.
    #[arg(long, env = "CONVERGE_LEDGER_CACHE_MIB", default_value_t = 64)]
    cache_mib: u64,
    /// Ed25519 key that signs heads and snapshots (64 hex characters of the
    /// seed). Default: DATA_DIR/signing.key, created on first start; with
    /// --storage memory and no key, a fresh key per process.
    #[arg(long, env = "CONVERGE_LEDGER_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// Public key (hex) whose signed snapshots Load accepts besides this
    /// server's own; repeatable, or comma-separated in the environment.
    #[arg(
        long = "trusted-key",
        env = "CONVERGE_LEDGER_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "HEX"
    )]
    trusted_keys: Vec<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.max_payload_bytes == 0 {
        bail!("--max-payload-bytes must be at least 1");
    }
    let fsync = match args.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval => {
            if args.fsync_interval_ms == 0 {
                bail!("--fsync-interval-ms must be at least 1 (or use --fsync always)");
            }
            FsyncPolicy::Interval(Duration::from_millis(args.fsync_interval_ms))
        }
        Fsync::Never => FsyncPolicy::Never,
    };
    let (store, described): (Arc<dyn Store>, String) = match args.storage {
        Storage::Memory => (
            Arc::new(MemoryStore::new()),
            "memory (nothing survives the process)".into(),
        ),
        Storage::Embedded => {
            let mut options = EmbeddedOptions::new(&args.data_dir);
            options.fsync = fsync;
            options.cache_bytes = args.cache_mib * 1024 * 1024;
            let path = args.data_dir.display().to_string();
            let opened = tokio::task::spawn_blocking(move || EmbeddedStore::open(options))
                .await?
                .with_context(|| format!("opening embedded storage in {path}"))?;
            (
                Arc::new(opened),
                format!("embedded in {path}, fsync {:?}", args.fsync).to_lowercase(),
            )
        }
    };
    let signer = match (&args.signing_key, args.storage) {
        (Some(path), _) => load_or_create_key(path, true)?,
        (None, Storage::Embedded) => load_or_create_key(&args.data_dir.join("signing.key"), true)?,
        (None, Storage::Memory) => HeadSigner::from_seed(random_seed()),
    };
    let mut config = LedgerConfig::default();
    for k in &args.trusted_keys {
        config.trusted_keys.push(
            PublicKey::from_hex(k.trim()).map_err(|e| anyhow::anyhow!("--trusted-key {k}: {e}"))?,
        );
    }
    config.limits.payload_bytes_max = args.max_payload_bytes;
    config.response_bytes_max = args.max_response_bytes;
    config.watchers_max = args.max_watchers;
    let server = ServerConfig {
        connections_max: args.max_connections,
        request_bytes_max: args.max_request_bytes,
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_key = signer.public_key();
    let ledger = Ledger::with_signer(store, config, Arc::new(signer), Arc::new(SystemClock));
    eprintln!(
        "converge-ledger listening on {local}; storage: {described}; signing key {public_key}"
    );
    converge_ledger_server::run(listener, ledger, server, shutdown_signal()).await?;
    eprintln!("converge-ledger stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    eprintln!("converge-ledger shutting down: finishing in-flight work");
}
