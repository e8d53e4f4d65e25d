//! An in-process ledger server and converge-core suggestors for the tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_core::experience_store::ExperienceEvent;
use converge_core::{ContextFact, ExperienceEventObserver, StreamingCallback};
use converge_ledger_client::{Client, Entry, GetOptions};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
use converge_ledger_store::MemoryStore;
use tokio::sync::oneshot;

#[path = "../../examples/support/suggestors.rs"]
mod suggestors;
pub use suggestors::{Generator, Stage};

/// A ledger server (memory storage) on a loopback port, on a thread and
/// runtime of its own: nothing the test does on its own thread (a blocking
/// `ExperienceStore` call, an engine waiting for buffer space) can stall it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(LedgerConfig::default(), ServerConfig::default())
    }

    /// A server whose batch and request limits force many small batches
    /// (7 entries; requests of about 18 KiB, one maximal entry).
    pub fn small_batches() -> TestServer {
        TestServer::start_with(
            LedgerConfig {
                limits: converge_ledger_core::Limits {
                    batch_entries_max: 7,
                    payload_bytes_max: 16 * 1024,
                    metadata_bytes_max: 1024,
                    ..converge_ledger_core::Limits::default()
                },
                ..LedgerConfig::default()
            },
            ServerConfig {
                request_bytes_max: 4 * 1024,
                ..ServerConfig::default()
            },
        )
    }

    /// A server with these limits.
    pub fn start_with(config: LedgerConfig, server: ServerConfig) -> TestServer {
        Self::start_on(Arc::new(MemoryStore::new()), config, server)
    }

    /// A server over `store`, with these limits.
    pub fn start_on(
        store: Arc<dyn converge_ledger_store::Store>,
        config: LedgerConfig,
        server: ServerConfig,
    ) -> TestServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let ledger = Ledger::new(store, config);
                converge_ledger_server::run(listener, ledger, server, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        TestServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.unwrap()
    }

    /// Graceful shutdown; returns once the server has stopped (its clients'
    /// connections must be able to close: call it where no client of this
    /// runtime is left open).
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    /// Asks the server to stop without waiting: a client on the test's own
    /// runtime may still hold a connection that only that (now blocked)
    /// runtime could close.
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Every entry of a context.
pub async fn entries(client: &Client, context: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    client
        .read_all(context, GetOptions::default(), |e| out.push(e))
        .await
        .unwrap();
    out
}

/// What the engine announced, in order: `(cycle, key, fact id)` for facts
/// and `(cycle, "experience", kind)` for events. Forwards everything to an
/// inner callback and observer.
pub struct Tee<T> {
    pub inner: T,
    pub seen: Mutex<Vec<(u32, String, String)>>,
    cycle: AtomicUsize,
}

impl<T> Tee<T> {
    pub fn new(inner: T) -> Tee<T> {
        Tee {
            inner,
            seen: Mutex::default(),
            cycle: AtomicUsize::new(0),
        }
    }

    pub fn seen(&self) -> Vec<(u32, String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl<T: StreamingCallback + ExperienceEventObserver> StreamingCallback for Tee<T> {
    fn on_cycle_start(&self, cycle: u32) {
        self.cycle.store(cycle as usize, Ordering::SeqCst);
        self.inner.on_cycle_start(cycle);
    }

    fn on_fact(&self, cycle: u32, fact: &ContextFact) {
        self.seen.lock().unwrap().push((
            cycle,
            format!("{:?}", fact.key()),
            fact.id().as_str().to_owned(),
        ));
        self.inner.on_fact(cycle, fact);
    }

    fn on_cycle_end(&self, cycle: u32, facts_added: usize) {
        self.inner.on_cycle_end(cycle, facts_added);
    }
}

impl<T: StreamingCallback + ExperienceEventObserver> ExperienceEventObserver for Tee<T> {
    fn on_event(&self, event: &ExperienceEvent) {
        self.seen.lock().unwrap().push((
            self.cycle.load(Ordering::SeqCst) as u32,
            "experience".to_owned(),
            format!("{:?}", event.kind()),
        ));
        self.inner.on_event(event);
    }
}

/// A context's facts and proposals in converge-core's stable wire form,
/// for exact comparisons (`ContextState` has no `PartialEq`).
pub fn wire(ctx: &converge_core::ContextState) -> serde_json::Value {
    serde_json::to_value(ctx.snapshot().to_wire().unwrap()).unwrap()
}
