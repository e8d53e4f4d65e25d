//! Watch: catch-up into live with no gap and no duplicate, under racing
//! appends, slow consumers, cancellation, limits, restarts and shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, eventually};
use converge_ledger_client::{AppendOptions, Client, ClientError};
use converge_ledger_server::{HubLimits, LedgerConfig, ServerConfig};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore};
use tokio_stream::StreamExt;

async fn client(s: &TestServer) -> Client {
    Client::connect(s.url()).await.unwrap()
}

async fn append_n(c: &Client, ctx: &str, n: usize, key: &str) {
    for i in 0..n {
        c.append(
            ctx,
            key,
            i.to_string().into_bytes(),
            AppendOptions::default(),
        )
        .await
        .unwrap();
    }
}

/// Watchers subscribe at staggered moments while a writer appends as fast as
/// it can: each sees exactly from_sequence+1 ..= N, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_joining_during_appends_see_every_entry_once_in_order() {
    const N: u64 = 2000;
    let s = TestServer::memory().await;
    let c = client(&s).await;
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            for i in 0..N {
                let c = c.clone();
                batch.push(tokio::spawn(async move {
                    c.append(
                        "race",
                        "k",
                        i.to_string().into_bytes(),
                        AppendOptions::default(),
                    )
                    .await
                    .unwrap()
                }));
                if batch.len() == 16 {
                    for t in batch.drain(..) {
                        t.await.unwrap();
                    }
                }
            }
            for t in batch {
                t.await.unwrap();
            }
        })
    };
    let mut watchers = Vec::new();
    for w in 0..8u64 {
        let c = c.clone();
        let from = w * 100;
        watchers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(w * 15)).await;
            let mut watch = c.watch("race", None, from);
            let mut expected = from + 1;
            while expected <= N {
                let e = tokio::time::timeout(Duration::from_secs(20), watch.next())
                    .await
                    .expect("watch stalled")
                    .unwrap()
                    .unwrap();
                assert_eq!(e.sequence, expected, "watcher from {from}");
                expected += 1;
            }
        }));
    }
    writer.await.unwrap();
    for w in watchers {
        w.await.unwrap();
    }
    s.stop().await;
}

/// A watcher that does not read while hundreds of entries go by (far more
/// than the hub keeps for live delivery) still gets all of them, in order,
/// while the hub holds no more than its bound.
#[tokio::test]
async fn a_slow_watcher_loses_nothing_while_the_hub_holds_only_its_bound() {
    let config = LedgerConfig {
        hub: HubLimits {
            ring_entries_max: 8,
            ..HubLimits::default()
        },
        watch_catch_up_chunk: 16,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let c = client(&s).await;
    append_n(&c, "slow", 5, "k").await;
    let mut watch = c.watch("slow", Some("k"), 0);
    assert_eq!(watch.next().await.unwrap().unwrap().sequence, 1);
    // Stall while many entries (with interleaved other keys) are appended.
    for i in 0..300 {
        let key = if i % 3 == 0 { "other" } else { "k" };
        c.append("slow", key, vec![], AppendOptions::default())
            .await
            .unwrap();
    }
    // Each entry here is under 200 bytes: eight of them, not 300.
    let held = s.ledger.buffered_bytes();
    assert!(held > 0 && held <= 8 * 200, "the hub holds {held} bytes");
    let mut got = vec![1];
    let expected: Vec<u64> = (1..=5)
        .chain((0..300).filter(|i| i % 3 != 0).map(|i| 6 + i))
        .collect();
    while got.len() < expected.len() {
        got.push(watch.next().await.unwrap().unwrap().sequence);
    }
    assert_eq!(got, expected);
    s.stop().await;
}

#[tokio::test]
async fn cancelled_watches_free_their_slot_and_the_limit_is_enforced() {
    let config = LedgerConfig {
        watchers_max: 2,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let mut raw =
        converge_ledger_proto::context::v1::context_service_client::ContextServiceClient::connect(
            s.url(),
        )
        .await
        .unwrap();
    let req = || converge_ledger_proto::context::v1::WatchRequest {
        context_id: "w".into(),
        key: String::new(),
        from_sequence: 0,
    };
    let a = raw.watch(req()).await.unwrap().into_inner();
    let b = raw.watch(req()).await.unwrap().into_inner();
    let err = match raw.watch(req()).await {
        Ok(stream) => stream.into_inner().next().await.unwrap().unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-watchers"), "{err:?}");
    assert_eq!(s.ledger.open_watches(), 2);
    drop(a);
    drop(b);
    let ledger = s.ledger.clone();
    eventually(10, "cancelled watches to be released", || {
        (ledger.open_watches() == 0).then_some(())
    })
    .await;
    let _c = raw.watch(req()).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_cleanly() {
    let s = TestServer::memory().await;
    let mut raw =
        converge_ledger_proto::context::v1::context_service_client::ContextServiceClient::connect(
            s.url(),
        )
        .await
        .unwrap();
    let mut stream = raw
        .watch(converge_ledger_proto::context::v1::WatchRequest {
            context_id: "w".into(),
            key: String::new(),
            from_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let stopping = tokio::spawn(s.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream did not end");
    assert!(end.is_none() || end.unwrap().is_err());
    stopping.await.unwrap();
}

/// The SDK watch resumes from its last sequence across a server restart on
/// the same port and data: no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_watch_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut o = EmbeddedOptions::new(dir.path());
        o.fsync = FsyncPolicy::Always;
        Arc::new(EmbeddedStore::open(o).unwrap())
    };
    let s = TestServer::start(open(), LedgerConfig::default()).await;
    let addr = s.addr.to_string();
    let c = client(&s).await;
    append_n(&c, "r", 3, "k").await;
    let mut watch = c.watch("r", None, 0);
    for expected in 1..=3 {
        assert_eq!(watch.next().await.unwrap().unwrap().sequence, expected);
    }
    s.stop().await;
    let s = TestServer::start_full(
        open(),
        LedgerConfig::default(),
        ServerConfig::default(),
        &addr,
    )
    .await;
    let c2 = client(&s).await;
    append_n(&c2, "r", 3, "k").await;
    for expected in 4..=6 {
        let e = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("resumed watch stalled");
        assert_eq!(e.unwrap().unwrap().sequence, expected);
    }
    s.stop().await;
}

#[tokio::test]
async fn watch_rejects_bad_input() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    let mut w = c.watch("", None, 0);
    let err = w.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    s.stop().await;
}

/// A watcher that stops reading (its HTTP/2 window full) must not hold the
/// server's shutdown up, and a watch cannot start once shutdown has begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_does_not_block_shutdown() {
    let server = ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let s = TestServer::start_full(
        Arc::new(MemoryStore::new()),
        LedgerConfig::default(),
        server,
        "127.0.0.1:0",
    )
    .await;
    let c = client(&s).await;
    let mut raw =
        converge_ledger_proto::context::v1::context_service_client::ContextServiceClient::connect(
            s.url(),
        )
        .await
        .unwrap();
    let _stalled = raw
        .watch(converge_ledger_proto::context::v1::WatchRequest {
            context_id: "big".into(),
            key: String::new(),
            from_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Far more than the stream and HTTP/2 buffers hold, never read.
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..200 {
        c.append("big", "k", payload.clone(), AppendOptions::default())
            .await
            .unwrap();
    }
    let ledger = s.ledger.clone();
    tokio::time::timeout(Duration::from_secs(20), s.stop())
        .await
        .expect("shutdown waited for a stalled watcher");
    let Err(err) = ledger.watch("big".into(), None, 0) else {
        panic!("a watch after shutdown was accepted");
    };
    assert!(err.to_string().contains("shutting down"), "{err}");
}

/// Regression: a watch opened on a node that did not write its context
/// (another node appended over a shared store) started the hub at sequence
/// 0, so the first notification re-read and re-published the whole history.
/// Now a notification reads only what the watchers have not read
/// themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reads_only_entries_above_the_head_the_watchers_read() {
    let shared: Arc<dyn converge_ledger_store::Store> = Arc::new(MemoryStore::new());
    let writer = converge_ledger_server::Ledger::new(shared.clone(), LedgerConfig::default());
    let probe = Arc::new(common::Probe::new(shared));
    let reader = converge_ledger_server::Ledger::new(probe.clone(), LedgerConfig::default());
    let entry = |i: u64| converge_ledger_core::NewEntry {
        key: "k".into(),
        payload: i.to_be_bytes().to_vec(),
        metadata: Default::default(),
        lamport: 0,
    };
    let mut batch = Vec::new();
    for i in 0..2000 {
        batch.push(entry(i));
    }
    writer
        .append_batch("shared".into(), batch, None, None)
        .await
        .unwrap();
    // Watch from the head on the other node: nothing to catch up.
    let mut watch = reader.watch("shared".into(), None, 2000).unwrap();
    let next = tokio::spawn(async move { watch.next().await.unwrap().unwrap().sequence });
    // Once the watcher has read the head (it subscribed before), the next
    // entry can only come from the notification.
    eventually(5, "the watcher to read its head", || {
        (probe.heads_read() > 0).then_some(())
    })
    .await;
    writer
        .append("shared".into(), entry(2000), None)
        .await
        .unwrap();
    reader.notify_appended("shared").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("the notification delivered the new entry")
        .unwrap();
    assert_eq!(got, 2001);
    assert_eq!(
        probe.scanned(),
        1,
        "the notification read more than the one new entry"
    );
}
