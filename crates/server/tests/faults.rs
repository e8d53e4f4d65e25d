//! Storage failures (a full disk, a failed fsync) under concurrent appends:
//! failed requests are told so, nothing of a failed batch becomes visible, no
//! head moves past what is stored, and the ledger keeps serving.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::TestServer;
use converge_ledger_client::{AppendOptions, Client, ClientError, ClientOptions, GetOptions};
use converge_ledger_core::{Digest, Entry, Head};
use converge_ledger_server::LedgerConfig;
use converge_ledger_store::{Committed, MemoryStore, Scan, Store, StoreError, WriteCommand};

/// Fails every `every`-th write like a full disk would, before anything of
/// it is applied.
struct Faulty {
    inner: MemoryStore,
    writes: AtomicU64,
    every: u64,
}

impl Store for Faulty {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        if self.writes.fetch_add(1, Ordering::SeqCst) % self.every == self.every - 1 {
            return Err(StoreError::Io(
                "No space left on device (os error 28)".into(),
            ));
        }
        self.inner.write(now_ns, commands)
    }
    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        self.inner.head(context)
    }
    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.scan(context, scan, visit)
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_reported_and_leave_no_trace() {
    let store = Arc::new(Faulty {
        inner: MemoryStore::new(),
        writes: AtomicU64::new(0),
        every: 3,
    });
    let s = TestServer::start(store, LedgerConfig::default()).await;
    let options = ClientOptions {
        attempts: 1,
        ..ClientOptions::default()
    };
    let c = Client::connect_with(s.url(), options).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            for i in 0..50 {
                match c
                    .append(
                        "f",
                        "k",
                        format!("{w}-{i}").into_bytes(),
                        AppendOptions::default(),
                    )
                    .await
                {
                    Ok(e) => acked.push(e),
                    Err(ClientError::Unavailable(m)) => {
                        assert!(m.contains("No space left") && m.contains("nothing"), "{m}");
                        failed += 1;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            (acked, failed)
        }));
    }
    let mut acked = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(failed > 0, "the fault injector never fired");
    let stored = c.get("f", GetOptions::default()).await.unwrap();
    // Exactly the acknowledged entries are stored, gapless and chained.
    assert_eq!(stored.entries.len(), acked.len());
    assert_eq!(stored.latest_sequence, acked.len() as u64);
    let mut head = Head::empty("f");
    for e in &stored.entries {
        head.check_next("f", e).unwrap();
        head.advance(e);
    }
    acked.sort_by_key(|e| e.sequence);
    assert_eq!(acked, stored.entries);
    s.stop().await;
}
