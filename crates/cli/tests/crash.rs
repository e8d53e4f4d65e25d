//! Kill -9 under load with `--fsync always`: every acknowledged entry
//! survives and every chain verifies after restart.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_client::{AppendOptions, Client, ClientOptions, Digest};
use support::Server;

const CONTEXTS: usize = 4;
const WRITERS: usize = 16;

type Acked = Arc<Mutex<BTreeMap<(String, u64), Digest>>>;

/// Appends from WRITERS tasks until the server dies; records every
/// acknowledged entry.
async fn load_until_killed(addr: String, acked: Acked, round: usize) {
    let options = ClientOptions {
        attempts: 1,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(addr, options).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let ctx = format!("ctx-{}", (w + i as usize) % CONTEXTS);
                let payload = format!("round {round} writer {w} item {i}").into_bytes();
                match client
                    .append(&ctx, "k", payload, AppendOptions::default())
                    .await
                {
                    Ok(e) => {
                        acked.lock().unwrap().insert((ctx, e.sequence), e.hash);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn verify(addr: &str, acked: &Acked) -> usize {
    let client = Client::connect(addr).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let mut by_ctx: BTreeMap<String, Vec<converge_ledger_client::Entry>> = BTreeMap::new();
    for c in 0..CONTEXTS {
        let ctx = format!("ctx-{c}");
        // The chain verifies from genesis and ends at the stored head.
        let (all, head) = support::read_chain(&client, &ctx, "after the crash").await;
        let h = client.head(&ctx).await.unwrap();
        assert_eq!(
            (h.sequence, h.hash, h.merkle_root),
            (head.sequence, head.hash, head.merkle_root()),
            "{ctx}"
        );
        by_ctx.insert(ctx, all);
    }
    for ((ctx, seq), hash) in &acked {
        let entries = &by_ctx[ctx];
        let e = entries
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("acknowledged entry {ctx}#{seq} is missing after the crash"));
        assert_eq!(e.hash, *hash, "acknowledged entry {ctx}#{seq} changed");
    }
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_appends_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = Arc::default();
    for round in 0..5 {
        let server = Server::start(Some(dir.path()), &["--fsync", "always"]);
        let load = tokio::spawn(load_until_killed(server.addr.clone(), acked.clone(), round));
        // Kill once this round has acknowledged a thousand entries.
        let before = acked.lock().unwrap().len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 1000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: appends did not progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        tokio::time::timeout(Duration::from_secs(30), load)
            .await
            .expect("writers did not stop")
            .unwrap();
    }
    let server = Server::start(Some(dir.path()), &[]);
    let checked = verify(&server.addr, &acked).await;
    assert!(
        checked >= 5000,
        "only {checked} acknowledged entries were checked"
    );
    let (status, _) = server.terminate();
    assert!(status.success());
}
