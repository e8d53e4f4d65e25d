use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use converge_ledger_core::{HeadSigner, PublicKey};
use converge_ledger_postgres::{
    BoxFuture, NotificationTarget, PostgresOptions, PostgresStore, relay_notifications,
};
use converge_ledger_server::{
    AuthConfig, Authority, Ledger, LedgerConfig, RequestBudget, ServerConfig, TlsFiles, TlsServer,
    load_or_create_key, random_seed,
};
use converge_ledger_store::SystemClock;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Storage {
    /// On local disk (fjall), in --data-dir.
    Embedded,
    /// In RAM only; everything is lost when the process exits.
    Memory,
    /// In PostgreSQL (--postgres-url), shared by any number of nodes.
    Postgres,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Wakeup {
    /// Commits are announced with NOTIFY and every node LISTENs: watchers
    /// on other nodes get new entries within milliseconds.
    Notify,
    /// No LISTEN/NOTIFY (for proxies that do not support them): watchers on
    /// other nodes get new entries every --catch-up-interval-ms.
    Poll,
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
    /// Most entries in one batch append (AppendBatch).
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_BATCH_ENTRIES",
        default_value_t = 4096
    )]
    max_batch_entries: usize,
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
    /// Most AppendStreams open at once (an SDK client appending from many
    /// tasks holds one; past the limit it appends with calls).
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_APPEND_STREAMS",
        default_value_t = 1024
    )]
    max_append_streams: usize,
    /// Most AppendStreams open at once on one connection (an SDK client
    /// holds one), so one client cannot take every slot.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_APPEND_STREAMS_PER_CONNECTION",
        default_value_t = 16
    )]
    max_append_streams_per_connection: usize,
    /// Most appends one AppendStream holds unacknowledged; past it the
    /// server reads no more of that stream until acknowledgements go out.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_STREAM_INFLIGHT_APPENDS",
        default_value_t = 4096
    )]
    max_stream_inflight_appends: usize,
    /// Most bytes of appends one AppendStream holds unacknowledged.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_STREAM_INFLIGHT_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    max_stream_inflight_bytes: usize,
    /// Most appends one AppendStream message may carry.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_STREAM_MESSAGE_APPENDS",
        default_value_t = 4096
    )]
    max_stream_message_appends: usize,
    /// PostgreSQL connection string for --storage postgres, as a URL
    /// (postgresql://user:password@host:5432/dbname) or key=value pairs.
    #[arg(long, env = "CONVERGE_LEDGER_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Schema holding the ledger's tables; the nodes of one ledger share it.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_POSTGRES_SCHEMA",
        default_value = converge_ledger_postgres::DEFAULT_SCHEMA
    )]
    postgres_schema: String,
    /// Most PostgreSQL connections of this node (its notification listener
    /// uses one more).
    #[arg(long, env = "CONVERGE_LEDGER_POSTGRES_POOL_SIZE", default_value_t = 8)]
    postgres_pool_size: usize,
    /// Deadline of one PostgreSQL operation, in milliseconds; a request
    /// that misses it fails with UNAVAILABLE.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_POSTGRES_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    postgres_timeout_ms: u64,
    /// With --storage postgres: how this node learns of other nodes'
    /// commits.
    #[arg(long, env = "CONVERGE_LEDGER_POSTGRES_WAKEUP", value_enum, default_value_t = Wakeup::Notify)]
    postgres_wakeup: Wakeup,
    /// With --storage postgres: every this many milliseconds, watched
    /// contexts are checked against the database, covering notifications
    /// lost while the listener reconnected.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_CATCH_UP_INTERVAL_MS",
        default_value_t = 1000
    )]
    catch_up_interval_ms: u64,
    /// Block cache of embedded storage, in MiB.
    #[arg(long, env = "CONVERGE_LEDGER_CACHE_MIB", default_value_t = 64)]
    cache_mib: u64,
    /// Ed25519 key that signs heads and snapshots (64 hex characters of the
    /// seed). Default: DATA_DIR/signing.key, created on first start; with
    /// --storage memory and no key, a fresh key per process. Required with
    /// --storage postgres: every node of a ledger gets a copy of the same
    /// file (created if missing).
    #[arg(long, env = "CONVERGE_LEDGER_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// With embedded storage whose data directory holds a ledger but no
    /// signing key: create a new key instead of refusing to start. Clients
    /// that pinned the old key will refuse heads signed with the new one.
    #[arg(long, env = "CONVERGE_LEDGER_NEW_SIGNING_KEY")]
    new_signing_key: bool,
    /// Public key (hex) whose signed snapshots Load accepts besides this
    /// server's own; repeatable, or comma-separated in the environment.
    #[arg(
        long = "trusted-key",
        env = "CONVERGE_LEDGER_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "HEX"
    )]
    trusted_keys: Vec<String>,
    /// Principals, their tokens (as SHA-256) or certificate names, and
    /// their grants (TOML; docs/deploy.md). Reloaded on SIGHUP. Without
    /// it the ledger is open: anyone who reaches the port may read, append
    /// and load.
    #[arg(long, env = "CONVERGE_LEDGER_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Serve an open ledger (no auth file) on an address other than
    /// loopback, knowingly.
    #[arg(long, env = "CONVERGE_LEDGER_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Let a Load that asks for it (--allow-unknown-signer) bring in a
    /// snapshot signed by any key; otherwise only a principal with the
    /// admin right on the target may. Loaded history is marked in signed
    /// heads either way.
    #[arg(long, env = "CONVERGE_LEDGER_ACCEPT_UNKNOWN_SIGNERS")]
    accept_unknown_signers: bool,
    /// TLS certificate chain (PEM); with --tls-key. Reloaded on SIGHUP.
    #[arg(long, env = "CONVERGE_LEDGER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CONVERGE_LEDGER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) for client certificates: a client may then
    /// authenticate by certificate (its subject common name names the
    /// principal; `certificate_cn` in the auth file).
    #[arg(long, env = "CONVERGE_LEDGER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Bytes of requests being received and handled at once, over all
    /// connections; past it, requests wait up to 5 s, then get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONVERGE_LEDGER_MAX_INFLIGHT_REQUEST_BYTES", default_value_t = 512 * 1024 * 1024)]
    max_inflight_request_bytes: usize,
    /// Most connections still in their TLS or HTTP/2 handshake.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_MAX_PENDING_CONNECTIONS",
        default_value_t = 128
    )]
    max_pending_connections: usize,
    /// A connection that has not finished its handshake after this is
    /// closed, in milliseconds.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    handshake_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, in
    /// milliseconds.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_IDLE_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    idle_timeout_ms: u64,
    /// A request body that sends nothing for this long is dropped, in
    /// milliseconds.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_REQUEST_IDLE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    request_idle_timeout_ms: u64,
    /// Serve /metrics (Prometheus), /healthz and the web view over HTTP on
    /// this address (given alone: 127.0.0.1:9464). Off by default.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_HTTP_LISTEN",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:9464",
        value_name = "ADDR"
    )]
    http_listen: Option<SocketAddr>,
    /// Memory for cached WorldLine replays (each worldline's state and
    /// commitments, kept to check outcomes), in MiB.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_WORLDLINE_CACHE_MIB",
        default_value_t = 256
    )]
    worldline_cache_mib: u64,
    /// Keep the WorldLine projections (state, audit, grants, provenance)
    /// up to date: on or off.
    #[arg(long, env = "CONVERGE_LEDGER_WORLDLINE_PROJECTIONS", value_enum, default_value_t = OnOff::On)]
    worldline_projections: OnOff,
    /// How many steps of niceness below the server's the projection
    /// thread runs, 0 to 19 (0: the same priority). Folding is deferred
    /// work: lower, it uses the time appends leave instead of a core they
    /// would use; queries say how far behind it is.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_WORLDLINE_PROJECTOR_NICE",
        default_value_t = converge_ledger_server::PROJECTOR_NICE_DEFAULT,
        value_parser = clap::value_parser!(i32).range(0..=i64::from(converge_ledger_server::NICE_MAX))
    )]
    worldline_projector_nice: i32,
    /// How long, in seconds, a retired projection version's records are
    /// kept once the queries moved to its successor: nodes of the earlier
    /// release still answer from them during a rolling upgrade.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_WORLDLINE_PROJECTION_RETIRE_AFTER_SECS",
        default_value_t = converge_ledger_server::RETIRE_AFTER_DEFAULT.as_secs()
    )]
    worldline_projection_retire_after_secs: u64,
    /// MiB of projection records the projection thread keeps in memory
    /// between folds (0: none): a fold then reads from storage only what
    /// it has not seen, which saves a round trip per record on PostgreSQL.
    #[arg(
        long,
        env = "CONVERGE_LEDGER_WORLDLINE_PROJECTOR_CACHE_MIB",
        default_value_t = converge_ledger_server::PROJECTOR_CACHE_BYTES_DEFAULT / (1024 * 1024)
    )]
    worldline_projector_cache_mib: usize,
    /// Log lines on stderr as text or as JSON objects (one per line); the
    /// level comes from RUST_LOG (default: info).
    #[arg(long, env = "CONVERGE_LEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// A line for the operator: as it is on stderr in text format, as a log
/// event in JSON format (so that a collector sees one format).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::serve::say_line(&format!($($arg)*))
    };
}

pub(crate) fn say_line(line: &str) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!(target: "converge_ledger", "{line}"),
        _ => eprintln!("{line}"),
    }
}

/// How `serve` logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs through `tracing` to stderr, in `format`, filtered by RUST_LOG
/// (default `info`).
pub fn init_logging(format: LogFormat) {
    let _ = LOG_FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Refuses flag values that make no sense, saying what is allowed.
fn check_flags(args: &ServeArgs) -> anyhow::Result<()> {
    for (flag, value) in [
        ("--max-payload-bytes", args.max_payload_bytes),
        ("--max-batch-entries", args.max_batch_entries),
        ("--max-connections", args.max_connections),
        ("--max-watchers", args.max_watchers),
        ("--max-append-streams", args.max_append_streams),
        (
            "--max-append-streams-per-connection",
            args.max_append_streams_per_connection,
        ),
        (
            "--max-stream-inflight-appends",
            args.max_stream_inflight_appends,
        ),
        (
            "--max-stream-inflight-bytes",
            args.max_stream_inflight_bytes,
        ),
        (
            "--max-stream-message-appends",
            args.max_stream_message_appends,
        ),
        ("--max-pending-connections", args.max_pending_connections),
        (
            "--max-inflight-request-bytes",
            args.max_inflight_request_bytes,
        ),
        ("--handshake-timeout-ms", args.handshake_timeout_ms as usize),
        ("--idle-timeout-ms", args.idle_timeout_ms as usize),
        (
            "--request-idle-timeout-ms",
            args.request_idle_timeout_ms as usize,
        ),
        ("--postgres-pool-size", args.postgres_pool_size),
        ("--worldline-cache-mib", args.worldline_cache_mib as usize),
    ] {
        if value == 0 {
            bail!("{flag} is 0; it must be at least 1");
        }
    }
    let limits = converge_ledger_core::Limits {
        payload_bytes_max: args.max_payload_bytes,
        ..Default::default()
    };
    let one_entry = limits.entry_bytes_max();
    if args.max_request_bytes < one_entry {
        bail!(
            "--max-request-bytes is {} bytes, less than one entry at the largest payload \
             (--max-payload-bytes {} plus key, metadata and framing: {one_entry} bytes); raise it \
             to at least {one_entry}, or lower --max-payload-bytes",
            args.max_request_bytes,
            args.max_payload_bytes
        );
    }
    if let Some(memory) = memory_bytes() {
        let cache = args.cache_mib.saturating_mul(1024 * 1024);
        if cache >= memory {
            bail!(
                "--cache-mib {} is {} bytes, at least this machine's memory ({memory} bytes); use \
                 a fraction of it (the default is 64)",
                args.cache_mib,
                cache
            );
        }
    }
    Ok(())
}

/// Total memory of this machine, from `/proc/meminfo`.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What an opened store holds: contexts and entries (the sum of their head
/// sequences), so that a restart says what it recovered.
fn recovered(store: &dyn Store) -> anyhow::Result<(u64, u64)> {
    let (mut contexts, mut entries) = (0u64, 0u64);
    store.contexts("", &mut |_, head| {
        contexts += 1;
        entries += head.sequence;
        true
    })?;
    Ok((contexts, entries))
}

/// The signing key of embedded storage in `data_dir`: refuses to replace a
/// missing key beside existing data unless told to, since every client that
/// pinned the old key would then refuse this server's heads.
fn embedded_key(
    data_dir: &std::path::Path,
    store: &dyn Store,
    new_key: bool,
) -> anyhow::Result<HeadSigner> {
    let path = data_dir.join("signing.key");
    let mut has_data = false;
    store.contexts("", &mut |_, _| {
        has_data = true;
        false
    })?;
    if has_data && !path.exists() && !new_key {
        bail!(
            "{} holds a ledger but no signing key at {}: its heads were signed with a key that is \
             gone, and clients that pinned it would refuse a new one. Restore the key file from \
             your backup (or point --signing-key at it); or start once with --new-signing-key to \
             sign with a new key knowingly",
            data_dir.display(),
            path.display()
        );
    }
    Ok(load_or_create_key(&path, true)?)
}

/// An open ledger (no auth file) may only listen on loopback, unless the
/// operator says otherwise: anyone who reaches the port could read, append
/// and load every context.
fn check_exposure(args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(http) = args.http_listen
        && args.auth_file.is_none()
        && !args.allow_unauthenticated
        && !http.ip().is_loopback()
    {
        bail!(
            "--http-listen {http} is not a loopback address, and without --auth-file anyone who \
             reaches it could read every context in the web view. Give --auth-file FILE \
             (docs/deploy.md, \"Exposing the ledger\"), listen on loopback, or pass \
             --allow-unauthenticated to serve an open ledger knowingly"
        );
    }
    if args.auth_file.is_none() && !args.allow_unauthenticated && !args.listen.ip().is_loopback() {
        bail!(
            "--listen {} is not a loopback address, and without --auth-file anyone who reaches it \
             could read, append and load every context. Give --auth-file FILE with principals and \
             grants (`converge-ledger token create NAME --grant read:*` makes a token and its \
             entry; docs/deploy.md, \"Exposing the ledger\"), ideally with --tls-cert and \
             --tls-key; or pass --allow-unauthenticated to serve an open ledger knowingly",
            args.listen
        );
    }
    Ok(())
}

/// Reloads the auth file and the TLS certificates on SIGHUP; a file that
/// does not load is reported and the previous configuration stays.
async fn reload_on_sighup(
    #[cfg(unix)] hup: Option<tokio::signal::unix::Signal>,
    auth_file: Option<PathBuf>,
    auth: Arc<Authority>,
    tls: Option<Arc<TlsServer>>,
) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Some(path) = &auth_file {
                match AuthConfig::load(path) {
                    Ok(c) => {
                        let n = c.principals.len();
                        auth.replace(c);
                        say!(
                            "converge-ledger: reloaded {} ({n} principals)",
                            path.display()
                        );
                    }
                    Err(e) => {
                        say!("converge-ledger: {e}; the previous principals stay");
                    }
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => say!("converge-ledger: reloaded the TLS certificate"),
                    Err(e) => say!("converge-ledger: {e}; the previous certificate stays"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (auth_file, auth, tls);
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    check_flags(&args)?;
    check_exposure(&args)?;
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
    let mut postgres: Option<(Arc<PostgresStore>, PostgresOptions)> = None;
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
            let (contexts, entries) = recovered(&opened)?;
            let mut described = format!(
                "embedded in {path}, fsync {}; recovered {contexts} contexts, {entries} entries",
                format!("{:?}", args.fsync).to_lowercase()
            );
            if let Some(r) = opened.repaired() {
                described.push_str(&format!(
                    " (after a power loss: cut {} bytes of torn journal tail at offset {} of {}, \
                     and {} later journals; they held writes that were never synced)",
                    r.bytes_dropped,
                    r.offset,
                    r.file.display(),
                    r.files_removed
                ));
            }
            (Arc::new(opened), described)
        }
        Storage::Postgres => {
            let Some(url) = args.postgres_url.clone() else {
                bail!(
                    "--storage postgres needs --postgres-url URL (env CONVERGE_LEDGER_POSTGRES_URL), \
                     e.g. postgresql://user:password@127.0.0.1:5432/ledger"
                );
            };
            if args.catch_up_interval_ms == 0 {
                bail!("--catch-up-interval-ms must be at least 1");
            }
            if args.postgres_timeout_ms == 0 {
                bail!("--postgres-timeout-ms must be at least 1");
            }
            let mut options = PostgresOptions::new(url);
            options.schema = args.postgres_schema.clone();
            options.pool_size = args.postgres_pool_size;
            options.operation_timeout = Duration::from_millis(args.postgres_timeout_ms);
            options.notifications = args.postgres_wakeup == Wakeup::Notify;
            let opening = options.clone();
            let opened = tokio::task::spawn_blocking(move || PostgresStore::open(opening))
                .await?
                .with_context(|| {
                    format!(
                        "opening PostgreSQL storage at {} (schema {})",
                        options.describe(),
                        options.schema
                    )
                })?;
            let opened = Arc::new(opened);
            let described = format!(
                "postgres at {}, schema {} (version {}), other nodes' commits by {}",
                opened.describe(),
                options.schema,
                opened.schema_version(),
                match args.postgres_wakeup {
                    Wakeup::Notify => "notification".to_string(),
                    Wakeup::Poll => format!("polling every {} ms", args.catch_up_interval_ms),
                }
            );
            postgres = Some((opened.clone(), options));
            (opened, described)
        }
    };
    let signer = match (&args.signing_key, args.storage) {
        (Some(path), _) => load_or_create_key(path, true)?,
        (None, Storage::Embedded) => {
            embedded_key(&args.data_dir, store.as_ref(), args.new_signing_key)?
        }
        (None, Storage::Memory) => HeadSigner::from_seed(random_seed()),
        (None, Storage::Postgres) => bail!(
            "--storage postgres needs --signing-key FILE (env CONVERGE_LEDGER_SIGNING_KEY): every node of \
             a ledger must sign with the same key, or clients that verify heads through several nodes \
             see different signers. Give every node a copy of the same key file (it is created if missing)"
        ),
    };
    if let Some((pg, options)) = &postgres {
        let ours = signer.public_key();
        let pg = pg.clone();
        let registered = tokio::task::spawn_blocking(move || pg.register_signing_key(&ours))
            .await?
            .context("recording the signing key in PostgreSQL")?;
        if registered != ours {
            bail!(
                "this node's signing key {ours} ({}) differs from the key {registered} that the nodes of \
                 this ledger sign with (recorded in schema {}); give this node a copy of their key file",
                args.signing_key
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                options.schema
            );
        }
    }
    let mut config = LedgerConfig::default();
    for k in &args.trusted_keys {
        config.trusted_keys.push(
            PublicKey::from_hex(k.trim()).map_err(|e| anyhow::anyhow!("--trusted-key {k}: {e}"))?,
        );
    }
    config.limits.payload_bytes_max = args.max_payload_bytes;
    config.limits.batch_entries_max = args.max_batch_entries;
    config.response_bytes_max = args.max_response_bytes;
    config.watchers_max = args.max_watchers;
    config.append_streams_max = args.max_append_streams;
    config.append_streams_per_connection_max = args.max_append_streams_per_connection;
    config.append_stream_inflight_max = args.max_stream_inflight_appends;
    config.append_stream_inflight_bytes_max = args.max_stream_inflight_bytes;
    config.append_stream_message_appends_max = args.max_stream_message_appends;
    config.accept_unknown_signers = args.accept_unknown_signers;
    let auth = Arc::new(match &args.auth_file {
        Some(path) => Authority::configured(AuthConfig::load(path)?),
        None => Authority::open(),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(TlsServer::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?)),
        _ => None,
    };
    let http_listener = match args.http_listen {
        None => None,
        Some(addr) => Some(Arc::new(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on --http-listen {addr}"))?,
        )),
    };
    let http_local = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let server = ServerConfig {
        storage_name: match args.storage {
            Storage::Memory => "memory",
            Storage::Embedded => "embedded",
            Storage::Postgres => "postgres",
        }
        .into(),
        http_listener,
        worldline_cache_bytes: args.worldline_cache_mib.saturating_mul(1024 * 1024),
        worldline_projections: args.worldline_projections == OnOff::On,
        worldline_projector_nice: args.worldline_projector_nice,
        worldline_projection_retire_after: Duration::from_secs(
            args.worldline_projection_retire_after_secs,
        ),
        worldline_projector_cache_bytes: args
            .worldline_projector_cache_mib
            .saturating_mul(1024 * 1024),
        connections_max: args.max_connections,
        request_bytes_max: args.max_request_bytes,
        auth: auth.clone(),
        tls: tls.clone(),
        pending_connections_max: args.max_pending_connections,
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        request_budget: RequestBudget::new(
            args.max_inflight_request_bytes,
            Duration::from_secs(5),
            Duration::from_millis(args.request_idle_timeout_ms),
        ),
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_key = signer.public_key();
    let ledger = Ledger::with_signer(store, config, Arc::new(signer), Arc::new(SystemClock));
    let signals = Signals::install();
    say!("converge-ledger listening on {local}; storage: {described}; signing key {public_key}");
    if let Some(http) = http_local {
        say!("converge-ledger: HTTP on http://{http}/ (web view), /metrics (Prometheus), /healthz");
    }
    if let Some((_, options)) = postgres {
        // Wakes this node's watchers when any node commits; see
        // docs/design.md, "PostgreSQL storage".
        let target = Arc::new(LedgerTarget(ledger.clone()));
        let every = Duration::from_millis(args.catch_up_interval_ms);
        tokio::spawn(async move {
            if let Err(e) = relay_notifications(options, every, target).await {
                say!("converge-ledger: cannot listen for other nodes' commits: {e}");
            }
        });
    }
    #[cfg(unix)]
    let (term, int, hup) = (signals.term, signals.int, signals.hup);
    tokio::spawn(reload_on_sighup(
        #[cfg(unix)]
        hup,
        args.auth_file.clone(),
        auth,
        tls,
    ));
    converge_ledger_server::run(
        listener,
        ledger,
        server,
        shutdown_signal(
            #[cfg(unix)]
            term,
            #[cfg(unix)]
            int,
        ),
    )
    .await?;
    say!("converge-ledger stopped cleanly");
    Ok(())
}

/// The ledger's hooks for entries that other nodes committed.
struct LedgerTarget(Arc<Ledger>);

impl NotificationTarget for LedgerTarget {
    fn appended<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .notify_appended(context)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn catch_up(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.notify_all_watched().await.map_err(|e| e.to_string()) })
    }

    fn log(&self, message: &str) {
        say!("converge-ledger: {message}");
    }
}

/// Signal handlers, installed before the server says it listens: a
/// SIGTERM or SIGHUP that arrives right after the listening line must
/// find them (the default action of both would kill the process).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

async fn shutdown_signal(
    #[cfg(unix)] term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)] int: Option<tokio::signal::unix::Signal>,
) {
    #[cfg(unix)]
    {
        async fn next(s: Option<tokio::signal::unix::Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(term) => {},
            _ = next(int) => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    say!("converge-ledger shutting down: finishing in-flight work");
}
