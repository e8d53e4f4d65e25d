//! An in-process server on a loopback port, for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use converge_ledger_core::{Digest, Entry, Head};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
use converge_ledger_store::{Committed, MemoryStore, Scan, Store, StoreError, WriteCommand};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub ledger: Arc<Ledger>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(store: Arc<dyn Store>, config: LedgerConfig) -> TestServer {
        Self::start_full(store, config, ServerConfig::default(), "127.0.0.1:0").await
    }

    pub async fn memory() -> TestServer {
        Self::start(Arc::new(MemoryStore::new()), LedgerConfig::default()).await
    }

    pub async fn start_full(
        store: Arc<dyn Store>,
        config: LedgerConfig,
        server: ServerConfig,
        at: &str,
    ) -> TestServer {
        let listener = bind(at).await;
        let addr = listener.local_addr().unwrap();
        let ledger = Ledger::new(store, config);
        let (stop, stopped) = oneshot::channel::<()>();
        let l = ledger.clone();
        let task = tokio::spawn(async move {
            converge_ledger_server::run(listener, l, server, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            ledger,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; waits until the server has drained and synced.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server did not stop within 20 s")
                .unwrap();
        }
    }
}

/// Binds, retrying briefly: a port just released by a stopped server may
/// take a moment to become free again.
async fn bind(at: &str) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(at).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {at}");
}

/// Waits for `f` to return `Some`, checking every few milliseconds, failing
/// after `secs` seconds.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store that forwards to another one, counts the entries read through
/// it, and can fail writes: what tests use to see what the ledger asks of
/// storage.
pub struct Probe {
    pub inner: Arc<dyn Store>,
    /// Entries visited by scans.
    pub scanned: std::sync::atomic::AtomicU64,
    /// Heads read.
    pub heads: std::sync::atomic::AtomicU64,
    /// Called before every write; an error fails the write before anything
    /// of it is applied.
    pub fault: Box<dyn Fn() -> Option<StoreError> + Send + Sync>,
}

impl Probe {
    pub fn new(inner: Arc<dyn Store>) -> Probe {
        Probe {
            inner,
            scanned: Default::default(),
            heads: Default::default(),
            fault: Box::new(|| None),
        }
    }

    pub fn scanned(&self) -> u64 {
        self.scanned.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn heads_read(&self) -> u64 {
        self.heads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Store for Probe {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        if let Some(e) = (self.fault)() {
            return Err(e);
        }
        self.inner.write(now_ns, commands)
    }
    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        self.heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.head(context)
    }
    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.scan(context, scan, &mut |e| {
            self.scanned
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            visit(e)
        })
    }
    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        self.inner.entry(context, sequence)
    }
    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        self.inner.find_by_hash(hash)
    }
    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        self.inner.merkle_nodes(context, level, start, count)
    }
    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.contexts(after, visit)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn failure(&self) -> Option<StoreError> {
        self.inner.failure()
    }
}
