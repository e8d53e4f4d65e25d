//! Several `converge-ledger serve --storage postgres` processes over one
//! database, on loopback: one gapless chain per context whatever node is
//! written through, watches that follow other nodes' appends, a node killed
//! with SIGKILL under load, and a database outage under load.
//!
//! Every test uses its own schema (dropped at the end) and is skipped, saying
//! so, when PostgreSQL is unreachable (a failure with
//! `CONVERGE_LEDGER_REQUIRE_SERVICES=1`).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_ledger_client::{
    AppendOptions, Client, ClientError, ClientOptions, Digest, Entry, GetOptions,
};
use converge_ledger_core::Head;
use converge_ledger_postgres::testkit::{Proxy, TestSchema};
use support::Server;
use tokio::task::JoinHandle;

/// Nodes over one schema, sharing one signing key file.
struct Cluster {
    // Dropped in this order: processes, files, then the schema.
    nodes: Vec<Option<Server>>,
    dir: tempfile::TempDir,
    key: PathBuf,
    url: String,
    schema: TestSchema,
}

impl Cluster {
    fn start(test: &str, n: usize, extra: &[&str]) -> Option<Cluster> {
        let schema = TestSchema::create(test)?;
        let url = schema.url();
        Some(Self::start_with(schema, url, n, extra))
    }

    fn start_with(schema: TestSchema, url: String, n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.key");
        let mut c = Cluster {
            nodes: Vec::new(),
            dir,
            key,
            url,
            schema,
        };
        for _ in 0..n {
            let node = c.start_node(extra);
            c.nodes.push(Some(node));
        }
        c
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "--storage",
            "postgres",
            "--postgres-url",
            &self.url,
            "--postgres-schema",
            &self.schema.schema,
            "--postgres-pool-size",
            "4",
            "--signing-key",
            self.key.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a
    }

    fn start_node(&self, extra: &[&str]) -> Server {
        let data = self.dir.path().join(format!("node-{}", self.nodes.len()));
        Server::start(Some(&data), &self.args(extra))
    }

    fn addr(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .expect("node is running")
            .addr
            .clone()
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.addr.clone())
            .collect()
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("node is running").kill9();
    }

    /// Every stderr line node `i` printed so far (after the first).
    fn lines(&self, i: usize, into: &mut Vec<String>) {
        into.extend(self.nodes[i].as_ref().unwrap().lines.try_iter());
    }
}

fn options(attempts: u32) -> ClientOptions {
    ClientOptions {
        attempts,
        backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// Payload → (context, sequence, hash) of every acknowledged append.
type Acked = Arc<Mutex<HashMap<String, (String, u64, Digest)>>>;

/// `writers` tasks appending unique payloads round-robin over `contexts`
/// until `stop`; each returns its first unrecoverable error.
fn spawn_writers(
    client: &Client,
    writers: usize,
    contexts: &[&str],
    stop: &Arc<AtomicBool>,
    acked: &Acked,
) -> Vec<JoinHandle<Result<(), ClientError>>> {
    (0..writers)
        .map(|w| {
            let client = client.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            let contexts: Vec<String> = contexts.iter().map(|c| c.to_string()).collect();
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let ctx = &contexts[(w + i) % contexts.len()];
                    let payload = format!("writer {w} item {i}");
                    let e = client
                        .append(
                            ctx,
                            "k",
                            payload.clone().into_bytes(),
                            AppendOptions::default(),
                        )
                        .await?;
                    let before = acked
                        .lock()
                        .unwrap()
                        .insert(payload.clone(), (ctx.clone(), e.sequence, e.hash));
                    assert!(before.is_none(), "{payload} acknowledged twice");
                    i += 1;
                }
                Ok(())
            })
        })
        .collect()
}

/// Entries a watch delivered: (sequence, hash, when).
type Seen = Arc<Mutex<Vec<(u64, Digest, Instant)>>>;

fn spawn_watcher(client: Client, context: &str) -> (Seen, JoinHandle<Option<ClientError>>) {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let context = context.to_owned();
    let task = tokio::spawn(async move {
        let mut watch = client.watch(&context, None, 0);
        loop {
            match watch.next().await {
                Some(Ok(e)) => out
                    .lock()
                    .unwrap()
                    .push((e.sequence, e.hash, Instant::now())),
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    });
    (seen, task)
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn acked_count(acked: &Acked) -> usize {
    acked.lock().unwrap().len()
}

/// Reads `context` through `client`, checks the chain from genesis against
/// the signed head, and returns the entries.
async fn verified(client: &Client, context: &str) -> Vec<Entry> {
    let mut all = Vec::new();
    client
        .read_all(context, GetOptions::default(), |e| all.push(e))
        .await
        .unwrap();
    let mut head = Head::empty(context);
    for e in &all {
        head.check_next(context, e)
            .unwrap_or_else(|err| panic!("{context}: {err}"));
        head.advance(e);
    }
    let h = client.head(context).await.unwrap();
    assert_eq!(
        (h.sequence, h.hash, h.merkle_root),
        (head.sequence, head.hash, head.merkle_root()),
        "{context}: the signed head is not the fold of the entries"
    );
    all
}

/// Every acknowledged append is stored exactly once, and nothing else is.
fn check_exactly_once(acked: &Acked, stored: &BTreeMap<String, Vec<Entry>>) {
    let acked = acked.lock().unwrap();
    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    for (ctx, entries) in stored {
        for e in entries {
            let p = String::from_utf8(e.payload.clone()).unwrap();
            if let Some(first) = seen.insert(p.clone(), (ctx.clone(), e.sequence)) {
                panic!("{p} is stored twice: {first:?} and ({ctx}, {})", e.sequence);
            }
            let (actx, aseq, ahash) = acked
                .get(&p)
                .unwrap_or_else(|| panic!("{ctx}#{} ({p}) was never acknowledged", e.sequence));
            assert_eq!((actx, *aseq, *ahash), (ctx, e.sequence, e.hash), "{p}");
        }
    }
    assert_eq!(seen.len(), acked.len(), "acknowledged appends are missing");
}

/// A watch saw exactly 1..=head, in order, with the stored hashes.
fn check_watch(name: &str, seen: &Seen, stored: &[Entry]) {
    let seen = seen.lock().unwrap();
    let got: Vec<(u64, Digest)> = seen.iter().map(|(s, h, _)| (*s, *h)).collect();
    let want: Vec<(u64, Digest)> = stored.iter().map(|e| (e.sequence, e.hash)).collect();
    assert_eq!(got.len(), want.len(), "{name}: delivered count");
    assert_eq!(got, want, "{name}: not every entry once, in order");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Nine writers through three nodes into one context: one gapless chain and
/// one Merkle tree, the same signed head from every node, and watchers on
/// other nodes that receive every entry — by notification, since the
/// periodic catch-up is set to a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_one_chain_and_watchers_follow_across_nodes() {
    let Some(cluster) = Cluster::start(
        "three_nodes_write_one_chain_and_watchers_follow_across_nodes",
        3,
        &["--catch-up-interval-ms", "60000"],
    ) else {
        return;
    };
    let clients: Vec<Client> = futures_join(cluster.addrs()).await;
    let (seen1, w1) = spawn_watcher(clients[1].clone(), "shared");
    let (seen2, w2) = spawn_watcher(clients[2].clone(), "shared");
    // Let the watches subscribe before the first append.
    tokio::time::sleep(Duration::from_millis(200)).await;
    const WRITERS: usize = 9;
    const EACH: usize = 30;
    let acks: Arc<Mutex<Vec<(u64, usize, Instant)>>> = Arc::default();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let node = w % 3;
            let client = clients[node].clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let e = client
                        .append(
                            "shared",
                            "k",
                            format!("{w}-{i}").into_bytes(),
                            AppendOptions::default(),
                        )
                        .await
                        .unwrap();
                    acks.lock()
                        .unwrap()
                        .push((e.sequence, node, Instant::now()));
                    if i % 5 == 0 {
                        client
                            .append(
                                &format!("side-{node}"),
                                "k",
                                vec![1],
                                AppendOptions::default(),
                            )
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = (WRITERS * EACH) as u64;
    wait_for("watchers caught up", Duration::from_secs(20), || {
        seen1.lock().unwrap().len() as u64 >= total && seen2.lock().unwrap().len() as u64 >= total
    })
    .await;
    // The same chain through every node.
    let mut chains = Vec::new();
    for c in &clients {
        chains.push(verified(c, "shared").await);
    }
    assert_eq!(chains[0].len() as u64, total);
    assert!(chains.windows(2).all(|w| w[0] == w[1]));
    let mut payloads: Vec<_> = chains[0].iter().map(|e| e.payload.clone()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len() as u64, total, "a payload was stored twice");
    // One signer: the same signed head from every node.
    let mut heads = Vec::new();
    for c in &clients {
        heads.push(c.head("shared").await.unwrap());
    }
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "{heads:?}");
    let balanced = Client::connect_many(&cluster.addrs(), options(3)).unwrap();
    for _ in 0..6 {
        balanced.verify_head("shared").await.unwrap();
    }
    let (ok, out, err) = support::cli(&cluster.addr(2), &["verify", "shared"], None);
    assert!(ok, "verify through node 2 failed: {out}{err}");
    // Watchers: every entry once, in order; lag of entries written through
    // the other nodes.
    check_watch("watcher on node 1", &seen1, &chains[0]);
    check_watch("watcher on node 2", &seen2, &chains[0]);
    let acks = acks.lock().unwrap();
    let mut lags = Vec::new();
    for (watcher, seen) in [(1usize, &seen1), (2, &seen2)] {
        let seen = seen.lock().unwrap();
        for (seq, node, acked_at) in acks.iter() {
            if *node != watcher {
                let got_at = seen[*seq as usize - 1].2;
                lags.push(got_at.saturating_duration_since(*acked_at));
            }
        }
    }
    lags.sort();
    eprintln!(
        "cross-node watch delivery after the writer's acknowledgement: p50 {:?}, p99 {:?}, max {:?} ({} samples)",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1],
        lags.len()
    );
    assert!(
        lags[lags.len() - 1] < Duration::from_secs(5),
        "an entry reached a watcher on another node only after {:?}",
        lags[lags.len() - 1]
    );
    w1.abort();
    w2.abort();
}

async fn futures_join(addrs: Vec<String>) -> Vec<Client> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(Client::connect_with(a, options(3)).await.unwrap());
    }
    out
}

/// Runs `converge-ledger serve` expecting it to refuse to start; returns its
/// stderr.
fn refused(args: &[&str]) -> String {
    let mut child = Command::new(support::BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "serve {args:?} started: {err}");
    err
}

/// A node whose key differs from the one the ledger's nodes sign with does
/// not start; nor does a postgres node without a key file or a URL.
#[test]
fn nodes_must_share_the_signing_key() {
    let Some(mut cluster) = Cluster::start("nodes_must_share_the_signing_key", 1, &[]) else {
        return;
    };
    let other = cluster.dir.path().join("other.key");
    let url = cluster.url.clone();
    let schema = cluster.schema.schema.clone();
    let err = refused(&[
        "--storage",
        "postgres",
        "--postgres-url",
        &url,
        "--postgres-schema",
        &schema,
        "--signing-key",
        other.to_str().unwrap(),
    ]);
    assert!(err.contains("differs from the key"), "{err}");
    let err = refused(&[
        "--storage",
        "postgres",
        "--postgres-url",
        &url,
        "--postgres-schema",
        &schema,
    ]);
    assert!(err.contains("needs --signing-key"), "{err}");
    let err = refused(&["--storage", "postgres"]);
    assert!(err.contains("needs --postgres-url"), "{err}");
    // The key file of the first node works for a second one.
    let second = cluster.start_node(&[]);
    cluster.nodes.push(Some(second));
    assert_eq!(cluster.addrs().len(), 2);
}

/// SIGKILL one of three nodes while writers and watchers use all of them
/// through the SDK's multi-node client: the writers move on (retries with
/// idempotency keys: every acknowledged append exactly once, nothing else),
/// and every watcher ends with every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_moves_writers_and_watchers_without_loss_or_duplicates() {
    let Some(mut cluster) = Cluster::start(
        "killing_a_node_moves_writers_and_watchers_without_loss_or_duplicates",
        3,
        &[],
    ) else {
        return;
    };
    let addrs = cluster.addrs();
    let client = Client::connect_many(&addrs, options(40)).unwrap();
    let contexts = ["f-0", "f-1"];
    // Several watchers, each with its own balanced client, so they spread
    // over the nodes.
    let watchers: Vec<_> = (0..4)
        .map(|_| {
            spawn_watcher(
                Client::connect_many(&addrs, options(40)).unwrap(),
                contexts[0],
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers = spawn_writers(&client, 8, &contexts, &stop, &acked);
    wait_for("appends before the kill", Duration::from_secs(30), || {
        acked_count(&acked) >= 200
    })
    .await;
    cluster.kill9(0);
    let at_kill = acked_count(&acked);
    wait_for("appends after the kill", Duration::from_secs(60), || {
        acked_count(&acked) >= at_kill + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap().expect("a writer failed for good");
    }
    let reader = Client::connect_with(cluster.addr(1), options(3))
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    for ctx in contexts {
        stored.insert(ctx.to_string(), verified(&reader, ctx).await);
    }
    check_exactly_once(&acked, &stored);
    let head = stored[contexts[0]].len();
    for (i, (seen, task)) in watchers.iter().enumerate() {
        wait_for(
            &format!("watcher {i} reaching {head}"),
            Duration::from_secs(30),
            || seen.lock().unwrap().len() >= head || task.is_finished(),
        )
        .await;
        assert!(!task.is_finished(), "watcher {i} ended");
        check_watch(&format!("watcher {i}"), seen, &stored[contexts[0]]);
    }
    for (_, task) in watchers {
        task.abort();
    }
}

/// The database goes away under load (every connection cut, new ones
/// refused, through a proxy only this test uses), then its backends are
/// terminated: requests fail with UNAVAILABLE and a message naming
/// PostgreSQL; the nodes recover by themselves (same processes), writers
/// that retry lose and duplicate nothing, and a watcher on the other node
/// keeps following, woken by notifications again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_requests_clearly_and_nodes_recover() {
    let Some(schema) =
        TestSchema::create("a_database_outage_fails_requests_clearly_and_nodes_recover")
    else {
        return;
    };
    let proxy = Proxy::start(&schema.upstream());
    let url = schema.url_via(&proxy);
    let mut cluster = Cluster::start_with(
        schema,
        url,
        2,
        &[
            "--postgres-timeout-ms",
            "3000",
            "--catch-up-interval-ms",
            "60000",
        ],
    );
    let addrs = cluster.addrs();
    let client = Client::connect_many(&addrs, options(60)).unwrap();
    let probe = Client::connect_with(cluster.addr(0), options(1))
        .await
        .unwrap();
    let contexts = ["o-0", "o-1"];
    let (seen, watcher) = spawn_watcher(
        Client::connect_with(cluster.addr(1), options(60))
            .await
            .unwrap(),
        contexts[0],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    const WRITERS: usize = 6;
    let writers = spawn_writers(&client, WRITERS, &contexts, &stop, &acked);
    wait_for("appends before the outage", Duration::from_secs(30), || {
        acked_count(&acked) >= 100
    })
    .await;

    let at_cut = acked_count(&acked);
    proxy.set_down(true);
    let outage = Instant::now();
    let mut message = None;
    while message.is_none() {
        assert!(
            outage.elapsed() < Duration::from_secs(15),
            "no request failed during the outage"
        );
        match probe
            .append("probe", "k", b"x".to_vec(), AppendOptions::default())
            .await
        {
            Err(ClientError::Unavailable(m)) => message = Some(m),
            Err(other) => panic!("expected UNAVAILABLE, got {other:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let message = message.unwrap();
    eprintln!("an append during the outage: UNAVAILABLE: {message}");
    assert!(
        message.contains("PostgreSQL at 127.0.0.1:") && message.contains("unavailable"),
        "{message}"
    );
    let e = probe.head("o-0").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("PostgreSQL")),
        "{e:?}"
    );
    // Nothing is acknowledged without a database: at most the appends in
    // flight at the cut (one per writer) were committed before it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = acked_count(&acked);
    assert!(
        during <= at_cut + WRITERS,
        "{} appends acknowledged during the outage",
        during - at_cut
    );
    proxy.set_down(false);

    wait_for("appends after the outage", Duration::from_secs(60), || {
        acked_count(&acked) >= during + 200
    })
    .await;
    // Then every backend is terminated, as a database restart would.
    let killed = tokio::task::block_in_place(|| cluster.schema.terminate_backends());
    assert!(killed >= 2, "only {killed} backends terminated");
    let after_terminate = acked_count(&acked);
    wait_for(
        "appends after terminating backends",
        Duration::from_secs(60),
        || acked_count(&acked) >= after_terminate + 200,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap().expect("a writer failed for good");
    }
    // Same processes throughout.
    for node in cluster.nodes.iter_mut().flatten() {
        assert!(node.child.try_wait().unwrap().is_none(), "a node exited");
    }
    let mut stored = BTreeMap::new();
    for ctx in contexts {
        stored.insert(ctx.to_string(), verified(&client, ctx).await);
    }
    check_exactly_once(&acked, &stored);
    let head = stored[contexts[0]].len();
    wait_for(
        "the watcher reaching the head",
        Duration::from_secs(30),
        || seen.lock().unwrap().len() >= head || watcher.is_finished(),
    )
    .await;
    assert!(!watcher.is_finished(), "the watcher ended");
    check_watch("watcher on node 1", &seen, &stored[contexts[0]]);
    // The watcher's node said what happened to its notification connection.
    let mut lines = Vec::new();
    wait_for(
        "node 1 logging the reconnection",
        Duration::from_secs(10),
        || {
            cluster.lines(1, &mut lines);
            lines.iter().any(|l| l.contains("reconnecting"))
                && lines.iter().any(|l| l.contains("again"))
        },
    )
    .await;
    watcher.abort();
}

/// Polling mode (no LISTEN/NOTIFY): a watcher on another node still gets
/// every entry, once and in order, from the periodic catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_serves_watchers_across_nodes() {
    let Some(cluster) = Cluster::start(
        "polling_mode_serves_watchers_across_nodes",
        2,
        &["--postgres-wakeup", "poll", "--catch-up-interval-ms", "50"],
    ) else {
        return;
    };
    let writer = Client::connect_with(cluster.addr(0), options(3))
        .await
        .unwrap();
    let (seen, watcher) = spawn_watcher(
        Client::connect_with(cluster.addr(1), options(3))
            .await
            .unwrap(),
        "polled",
    );
    for i in 0..60u32 {
        writer
            .append(
                "polled",
                "k",
                i.to_be_bytes().to_vec(),
                AppendOptions::default(),
            )
            .await
            .unwrap();
    }
    wait_for(
        "the watcher on the other node",
        Duration::from_secs(20),
        || seen.lock().unwrap().len() >= 60,
    )
    .await;
    let stored = verified(&writer, "polled").await;
    check_watch("watcher on node 1", &seen, &stored);
    watcher.abort();
}
