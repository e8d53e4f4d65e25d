//! An in-process server on a loopback port, for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
use converge_ledger_store::{MemoryStore, Store};

#[allow(unused_imports)]
pub use converge_ledger_store::testkit::Probe;
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
