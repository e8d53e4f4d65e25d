//! Transient storage failures under concurrent appends: failed requests are
//! told so, nothing of a failed batch becomes visible, no head moves past
//! what is stored, and the ledger keeps serving. (Real failed fsyncs and
//! full disks of the embedded store, under a filesystem that injects them,
//! are tested in `crates/cli/tests/faults.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{Probe, TestServer};
use converge_ledger_client::{AppendOptions, Client, ClientError, ClientOptions, GetOptions};
use converge_ledger_core::Head;
use converge_ledger_server::LedgerConfig;
use converge_ledger_store::{MemoryStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transiently_failed_batches_are_reported_and_leave_no_trace() {
    // Every third write fails the way a full disk would, before anything
    // of it is applied.
    let writes = AtomicU64::new(0);
    let store = Arc::new(Probe::failing(Arc::new(MemoryStore::new()), move || {
        (writes.fetch_add(1, Ordering::SeqCst) % 3 == 2)
            .then(|| StoreError::Io("No space left on device (os error 28)".into()))
    }));
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
