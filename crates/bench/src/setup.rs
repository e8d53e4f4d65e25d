//! Shared setup: options, payloads, stores, an in-process gRPC server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use converge_ledger_core::NewEntry;
use converge_ledger_server::{Ledger, LedgerConfig, ServeError, ServerConfig};
use converge_ledger_store::{
    AppendCommand, Clock as _, EmbeddedOptions, EmbeddedStore, FsyncPolicy, Store, SystemClock,
    WriteCommand,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Repetitions; the table shows the median (and min/max) over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also print one JSON line of results on stdout (the table then goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
    /// Directory under which each store gets a fresh subdirectory (removed
    /// afterwards); default: the system temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Seed of the deterministic payload generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl Common {
    /// Checks the common options.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.runs == 0 {
            bail!("--runs must be at least 1");
        }
        Ok(())
    }

    /// A pool of deterministic payloads.
    pub fn payloads(&self) -> Arc<Vec<Vec<u8>>> {
        Arc::new(payload_pool(self.seed, self.payload_bytes, 1024))
    }

    /// A fresh, empty directory for one store.
    pub fn fresh_dir(&self, label: &str) -> anyhow::Result<TempDir> {
        let prefix = format!("converge-bench-{label}-");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix);
        match &self.data_dir {
            Some(base) => {
                std::fs::create_dir_all(base)
                    .with_context(|| format!("creating {}", base.display()))?;
                b.tempdir_in(base)
            }
            None => b.tempdir(),
        }
        .context("creating a store directory")
    }
}

/// SplitMix64: a tiny deterministic generator, good enough for payload bytes.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random-looking bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `count` payloads of `size` random-looking bytes, the same for the same
/// seed.
pub fn payload_pool(seed: u64, size: usize, count: usize) -> Vec<Vec<u8>> {
    let mut rng = SplitMix(seed);
    (0..count)
        .map(|_| {
            let mut p = vec![0u8; size];
            rng.fill(&mut p);
            p
        })
        .collect()
}

/// The entry every benchmark appends.
pub fn new_entry(payload: Vec<u8>) -> NewEntry {
    NewEntry {
        key: "bench".to_owned(),
        payload,
        metadata: Default::default(),
        lamport: 0,
    }
}

/// Opens an embedded store.
pub fn open_embedded(path: &Path, fsync: FsyncPolicy) -> anyhow::Result<Arc<EmbeddedStore>> {
    let mut o = EmbeddedOptions::new(path);
    o.fsync = fsync;
    Ok(Arc::new(EmbeddedStore::open(o).with_context(|| {
        format!("opening the store in {}", path.display())
    })?))
}

/// Appends `n` entries to `context` straight through [`Store::write`] in
/// batches of `batch` (used only to prepare data, never timed as a result).
pub fn fill_context(
    store: &dyn Store,
    context: &str,
    n: u64,
    batch: usize,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    let mut done = 0u64;
    while done < n {
        let k = (batch as u64).min(n - done);
        let commands = (0..k)
            .map(|j| {
                WriteCommand::Append(AppendCommand {
                    context: context.to_owned(),
                    entry: new_entry(payloads[((done + j) as usize) % payloads.len()].clone()),
                    idempotency_key: None,
                })
            })
            .collect();
        store.write(SystemClock.now_ns(), commands)?;
        done += k;
    }
    Ok(())
}

/// A ledger served over gRPC on 127.0.0.1 by `converge_ledger_server::run`
/// in this process.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Serves a new ledger over `store` on an ephemeral loopback port.
    pub async fn start(store: Arc<dyn Store>) -> anyhow::Result<Server> {
        Self::start_ledger(Ledger::new(store, LedgerConfig::default())).await
    }

    /// Serves `ledger` on an ephemeral loopback port.
    pub async fn start_ledger(ledger: Arc<Ledger>) -> anyhow::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(converge_ledger_server::run(
            listener,
            ledger,
            ServerConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Server { addr, stop, task })
    }

    /// `http://addr`, for `Client::connect`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the server down (drains, syncs the store) and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(e)) => bail!("the server task failed: {e}"),
            Err(_) => bail!("the server did not stop within 20 s"),
        }
    }
}
