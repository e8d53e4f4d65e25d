//! `pg-bench`: append throughput on PostgreSQL through 1, 2 and 3 ledger
//! nodes next to the same workload written directly as SQL transactions,
//! and watch lag across nodes — in one run, on one database.
//!
//! ```text
//! cargo run --release -p converge-ledger-bench --bin pg-bench -- [options]
//!   --url URL            database (default $CONVERGE_LEDGER_TEST_POSTGRES_URL or
//!                        postgresql://postgres@127.0.0.1:5432/test)
//!   --runs N             repetitions; the table shows medians (default 3)
//!   --writers N          concurrent writers in every case (default 64)
//!   --secs S             measured seconds per case and run (default 3)
//!   --payload-bytes N    payload size (default 256)
//!   --watch-rate N       appends per second while measuring watch lag (default 500)
//! ```
//!
//! Every case runs on a fresh schema (created by the store's migrations,
//! dropped afterwards). Workloads: `spread` (each writer appends to its own
//! context) and `hot` (every writer appends to one context).
//!
//! - `direct SQL`: each writer has its own connection and loops over one
//!   transaction per append: `BEGIN; SELECT head … FOR UPDATE`, the next
//!   entry and its SHA-256 chain hash and Merkle frontier computed in Rust,
//!   `INSERT` the entry row into the same `entries` table (same indexes),
//!   `UPDATE` the head, `COMMIT` — pipelined into two round trips, prepared
//!   statements. It writes less than the ledger (no idempotency key row, no
//!   Merkle node rows, no NOTIFY).
//! - `ledger, N nodes`: N ledger servers in this process, each with its own
//!   `PostgresStore` (pool of 8) and notification relay, on loopback gRPC;
//!   writer `w` is an SDK client (own HTTP/2 connection) of node `w % N`
//!   appending with an idempotency key, as every SDK append does.
//! - `watch lag`: two nodes; one client appends to node A at a steady rate,
//!   watchers on node A and on node B measure the time from the append's
//!   acknowledgement to delivery.

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_ledger_client::{AppendOptions, Client};
use converge_ledger_core::{Head, HeadSigner, Metadata, NewEntry};
use converge_ledger_postgres::testkit::{admin_query, base_url, unique_suffix};
use converge_ledger_postgres::{
    BoxFuture, NotificationTarget, PostgresOptions, PostgresStore, relay_notifications,
};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
use converge_ledger_store::{Store, SystemClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    runs: usize,
    writers: usize,
    secs: f64,
    payload_bytes: usize,
    watch_rate: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        url: base_url(),
        runs: 3,
        writers: 64,
        secs: 3.0,
        payload_bytes: 256,
        watch_rate: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--runs" => a.runs = value()?.parse()?,
            "--writers" => a.writers = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--payload-bytes" => a.payload_bytes = value()?.parse()?,
            "--watch-rate" => a.watch_rate = value()?.parse()?,
            "-h" | "--help" => {
                println!("see the header of crates/bench/src/bin/pg-bench.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if a.runs == 0 || a.writers == 0 || a.secs <= 0.0 || a.watch_rate == 0 {
        return Err("--runs, --writers, --secs and --watch-rate must be positive".into());
    }
    Ok(a)
}

/// Deterministic payloads (xorshift), all different.
fn payload(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh schema with the store's tables.
async fn fresh_schema(url: &str) -> Result<PostgresOptions> {
    let mut o = PostgresOptions::new(url);
    o.schema = format!("cl_bench_{}", unique_suffix());
    let opening = o.clone();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(opening)).await??;
    drop(store);
    Ok(o)
}

async fn drop_schema(o: &PostgresOptions) {
    let url = o.url.clone();
    let sql = format!(r#"DROP SCHEMA IF EXISTS "{}" CASCADE"#, o.schema);
    let _ = tokio::task::spawn_blocking(move || admin_query(&url, &sql)).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Workload {
    /// Writer `w` appends to context `w`.
    Spread,
    /// Every writer appends to one context.
    Hot,
}

impl Workload {
    fn context(self, w: usize) -> String {
        match self {
            Workload::Spread => format!("ctx-{w}"),
            Workload::Hot => "hot".to_string(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Workload::Spread => "spread",
            Workload::Hot => "hot",
        }
    }
}

/// Counts appends of `writers` tasks after a warm-up; returns appends/s.
async fn measure(
    writers: usize,
    secs: f64,
    start: impl Fn(usize, Arc<AtomicU64>, Arc<AtomicBool>) -> JoinHandle<Result<()>>,
) -> Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| start(w, count.clone(), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let done = count.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done as f64 / elapsed)
}

/// The direct SQL baseline.
async fn direct_sql(a: &Args, workload: Workload) -> Result<f64> {
    let o = fresh_schema(&a.url).await?;
    let s = o.schema.clone();
    // Head rows exist up front (the ledger creates them on first append).
    let contexts: Vec<String> = (0..a.writers).map(|w| workload.context(w)).collect();
    {
        let (client, conn) = tokio_postgres::connect(&a.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let mut distinct = contexts.clone();
        distinct.sort();
        distinct.dedup();
        for c in &distinct {
            let h = Head::empty(c);
            client
                .execute(
                    &format!(
                        r#"INSERT INTO "{s}".heads (context, seq, hash, head) VALUES ($1, 0, $2, $3)"#
                    ),
                    &[c, &h.hash.0.as_slice(), &h.encode()],
                )
                .await?;
        }
    }
    let url = a.url.clone();
    let size = a.payload_bytes;
    let rate = measure(a.writers, a.secs, move |w, count, stop| {
        let url = url.clone();
        let s = s.clone();
        let ctx = workload.context(w);
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let begin = client.prepare("BEGIN").await?;
            let commit = client.prepare("COMMIT").await?;
            let lock = client
                .prepare(&format!(
                    r#"SELECT head FROM "{s}".heads WHERE context = $1 FOR UPDATE"#
                ))
                .await?;
            let insert = client
                .prepare(&format!(
                    r#"INSERT INTO "{s}".entries
                         (context, seq, hash, prev_hash, key, payload, metadata, appended_at_ns, lamport)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#
                ))
                .await?;
            let update = client
                .prepare(&format!(
                    r#"UPDATE "{s}".heads SET seq = $2, hash = $3, head = $4 WHERE context = $1"#
                ))
                .await?;
            let empty_metadata = 0u32.to_be_bytes().to_vec();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (b, row) = tokio::join!(client.execute(&begin, &[]), async {
                    client.query_one(&lock, &[&ctx]).await
                });
                b?;
                let bytes: Vec<u8> = row?.try_get(0)?;
                let mut head = Head::decode(&bytes)?;
                let entry = head.next_entry(
                    &ctx,
                    NewEntry {
                        key: "bench".into(),
                        payload: payload((w as u64) << 32 | i, size),
                        metadata: Metadata::new(),
                        lamport: 0,
                    },
                    now_ns(),
                );
                head.advance(&entry);
                let encoded = head.encode();
                let seq = entry.sequence as i64;
                let at = entry.appended_at_ns as i64;
                let lamport = entry.lamport as i64;
                let hash = entry.hash.0.as_slice();
                let prev = entry.prev_hash.0.as_slice();
                let head_seq = head.sequence as i64;
                let head_hash = head.hash.0.as_slice();
                let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                    &ctx,
                    &seq,
                    &hash,
                    &prev,
                    &entry.key,
                    &entry.payload,
                    &empty_metadata,
                    &at,
                    &lamport,
                ];
                let update_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&ctx, &head_seq, &head_hash, &encoded];
                let (ins, upd, com) = tokio::join!(
                    client.execute(&insert, &insert_params),
                    client.execute(&update, &update_params),
                    client.execute(&commit, &[]),
                );
                ins?;
                upd?;
                com?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        })
    })
    .await;
    drop_schema(&o).await;
    rate
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A store that counts its group commits (batch sizes and time in
/// `write`), to explain the throughput.
struct Counted {
    inner: PostgresStore,
    stats: Arc<CommitStats>,
}

#[derive(Default)]
struct CommitStats {
    writes: AtomicU64,
    commands: AtomicU64,
    nanos: AtomicU64,
}

impl CommitStats {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.writes.swap(0, Ordering::Relaxed),
            self.commands.swap(0, Ordering::Relaxed),
            self.nanos.swap(0, Ordering::Relaxed),
        )
    }
}

impl Store for Counted {
    fn write(
        &self,
        now_ns: u64,
        commands: Vec<converge_ledger_store::WriteCommand>,
    ) -> std::result::Result<converge_ledger_store::Committed, converge_ledger_store::StoreError>
    {
        let n = commands.len() as u64;
        let t = Instant::now();
        let r = self.inner.write(now_ns, commands);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(n, Ordering::Relaxed);
        self.stats
            .nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
    fn head(
        &self,
        context: &str,
    ) -> std::result::Result<Option<Head>, converge_ledger_store::StoreError> {
        self.inner.head(context)
    }
    fn scan(
        &self,
        context: &str,
        scan: converge_ledger_store::Scan<'_>,
        visit: &mut dyn FnMut(converge_ledger_core::Entry) -> bool,
    ) -> std::result::Result<(), converge_ledger_store::StoreError> {
        self.inner.scan(context, scan, visit)
    }
    fn entry(
        &self,
        context: &str,
        sequence: u64,
    ) -> std::result::Result<Option<converge_ledger_core::Entry>, converge_ledger_store::StoreError>
    {
        self.inner.entry(context, sequence)
    }
    fn find_by_hash(
        &self,
        hash: &converge_ledger_core::Digest,
    ) -> std::result::Result<Option<(String, u64)>, converge_ledger_store::StoreError> {
        self.inner.find_by_hash(hash)
    }
    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> std::result::Result<Vec<converge_ledger_core::Digest>, converge_ledger_store::StoreError>
    {
        self.inner.merkle_nodes(context, level, start, count)
    }
    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> std::result::Result<(), converge_ledger_store::StoreError> {
        self.inner.contexts(after, visit)
    }
    fn sync(&self) -> std::result::Result<(), converge_ledger_store::StoreError> {
        self.inner.sync()
    }
}

/// One in-process ledger node over PostgreSQL.
struct Node {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    relay: JoinHandle<()>,
}

struct Target(Arc<Ledger>);

impl NotificationTarget for Target {
    fn appended<'a>(&'a self, context: &'a str) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            self.0
                .notify_appended(context)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn catch_up(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move { self.0.notify_all_watched().await.map_err(|e| e.to_string()) })
    }
    fn log(&self, message: &str) {
        eprintln!("pg-bench node: {message}");
    }
}

async fn start_node(
    o: &PostgresOptions,
    signer: &Arc<HeadSigner>,
    stats: &Arc<CommitStats>,
) -> Result<Node> {
    let opening = o.clone();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(opening)).await??;
    let store: Arc<dyn Store> = Arc::new(Counted {
        inner: store,
        stats: stats.clone(),
    });
    let ledger = Ledger::with_signer(
        store,
        LedgerConfig::default(),
        signer.clone(),
        Arc::new(SystemClock),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let target = Arc::new(Target(ledger.clone()));
    let options = o.clone();
    let relay = tokio::spawn(async move {
        let _ = relay_notifications(options, Duration::from_secs(1), target).await;
    });
    let server = tokio::spawn(async move {
        let _ = converge_ledger_server::run(listener, ledger, ServerConfig::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(Node {
        url,
        stop: Some(stop),
        server,
        relay,
    })
}

impl Node {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.server.await;
        self.relay.abort();
    }
}

/// Appends through `nodes` ledger nodes; returns appends/s, the average
/// group commit size and the average time of one group commit in ms.
async fn through_ledger(a: &Args, workload: Workload, nodes: usize) -> Result<(f64, f64, f64)> {
    let o = fresh_schema(&a.url).await?;
    let signer = Arc::new(HeadSigner::from_seed([7; 32]));
    let stats = Arc::new(CommitStats::default());
    let mut running = Vec::new();
    for _ in 0..nodes {
        running.push(start_node(&o, &signer, &stats).await?);
    }
    let mut clients = Vec::new();
    for w in 0..a.writers {
        clients.push(Client::connect(running[w % nodes].url.clone()).await?);
    }
    let clients = Arc::new(clients);
    let size = a.payload_bytes;
    stats.take();
    let rate = measure(a.writers, a.secs, move |w, count, stop| {
        let client = clients[w].clone();
        let ctx = workload.context(w);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .append(
                        &ctx,
                        "bench",
                        payload((w as u64) << 32 | i, size),
                        AppendOptions::default(),
                    )
                    .await?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        })
    })
    .await?;
    let (writes, commands, nanos) = stats.take();
    for n in running {
        n.stop().await;
    }
    drop_schema(&o).await;
    let writes = writes.max(1) as f64;
    Ok((rate, commands as f64 / writes, nanos as f64 / writes / 1e6))
}

/// Watch lag: appends to node A at `rate`/s; watchers on A and B.
/// Returns (same-node lags, cross-node lags).
async fn watch_lag(a: &Args) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let o = fresh_schema(&a.url).await?;
    let signer = Arc::new(HeadSigner::from_seed([7; 32]));
    let stats = Arc::new(CommitStats::default());
    let node_a = start_node(&o, &signer, &stats).await?;
    let node_b = start_node(&o, &signer, &stats).await?;
    let writer = Client::connect(node_a.url.clone()).await?;
    let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for url in [&node_a.url, &node_b.url] {
        let client = Client::connect(url.clone()).await?;
        let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let out = received.clone();
        let task = tokio::spawn(async move {
            let mut watch = client.watch("lag", None, 0);
            while let Some(Ok(e)) = watch.next().await {
                out.lock().unwrap().insert(e.sequence, Instant::now());
            }
        });
        watchers.push((received, task));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let interval = Duration::from_secs_f64(1.0 / a.watch_rate as f64);
    let total = (a.secs * a.watch_rate as f64) as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let writer = writer.clone();
        let acked = acked.clone();
        let size = a.payload_bytes;
        inflight.push(tokio::spawn(async move {
            let e = writer
                .append("lag", "bench", payload(i, size), AppendOptions::default())
                .await?;
            acked.lock().unwrap().insert(e.sequence, Instant::now());
            Ok::<_, converge_ledger_client::ClientError>(())
        }));
    }
    for t in inflight {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while watchers
        .iter()
        .any(|(r, _)| (r.lock().unwrap().len() as u64) < total)
    {
        if Instant::now() > deadline {
            return Err("watchers did not receive every entry within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked = acked.lock().unwrap().clone();
    let mut out = Vec::new();
    for (received, task) in watchers {
        task.abort();
        let received = received.lock().unwrap();
        let mut lags: Vec<Duration> = acked
            .iter()
            .map(|(seq, at)| received[seq].saturating_duration_since(*at))
            .collect();
        lags.sort();
        out.push(lags);
    }
    node_a.stop().await;
    node_b.stop().await;
    drop_schema(&o).await;
    let cross = out.pop().unwrap_or_default();
    let same = out.pop().unwrap_or_default();
    Ok((same, cross))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let a = parse_args()?;
    eprintln!(
        "pg-bench: {} writers, {} B payloads, {} s per case, {} runs, database {}",
        a.writers,
        a.payload_bytes,
        a.secs,
        a.runs,
        PostgresOptions::new(a.url.clone()).describe()
    );
    let cases: Vec<(&str, usize)> = vec![
        ("direct SQL (1 txn per append)", 0),
        ("ledger, 1 node", 1),
        ("ledger, 2 nodes", 2),
        ("ledger, 3 nodes", 3),
    ];
    let workloads = [Workload::Spread, Workload::Hot];
    let mut results: HashMap<(usize, Workload), Vec<f64>> = HashMap::new();
    let mut batches: HashMap<(usize, Workload), Vec<(f64, f64)>> = HashMap::new();
    let mut same_lags: Vec<(f64, f64)> = Vec::new();
    let mut cross_lags: Vec<(f64, f64)> = Vec::new();
    for run in 1..=a.runs {
        for workload in workloads {
            for (i, (name, nodes)) in cases.iter().enumerate() {
                let rate = if *nodes == 0 {
                    let rate = direct_sql(&a, workload).await?;
                    eprintln!(
                        "run {run}/{}: {:<6} {name}: {rate:.0} appends/s",
                        a.runs,
                        workload.name()
                    );
                    rate
                } else {
                    let (rate, batch, ms) = through_ledger(&a, workload, *nodes).await?;
                    eprintln!(
                        "run {run}/{}: {:<6} {name}: {rate:.0} appends/s; group commits of {batch:.1} appends \
                         on average, {ms:.2} ms each",
                        a.runs,
                        workload.name()
                    );
                    batches
                        .entry((*nodes, workload))
                        .or_default()
                        .push((batch, ms));
                    rate
                };
                results.entry((i, workload)).or_default().push(rate);
            }
        }
        let (same, cross) = watch_lag(&a).await?;
        eprintln!(
            "run {run}/{}: watch lag same node p50 {:.2} ms p99 {:.2} ms; across nodes p50 {:.2} ms p99 {:.2} ms",
            a.runs,
            pct(&same, 0.5),
            pct(&same, 0.99),
            pct(&cross, 0.5),
            pct(&cross, 0.99)
        );
        same_lags.push((pct(&same, 0.5), pct(&same, 0.99)));
        cross_lags.push((pct(&cross, 0.5), pct(&cross, 0.99)));
    }
    println!("| case | spread: appends/s (median; min–max) | hot: appends/s (median; min–max) |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in cases.iter().enumerate() {
        let cell = |w: Workload| {
            let v = &results[&(i, w)];
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            format!("{:.0} ({lo:.0}–{hi:.0})", median(v.clone()))
        };
        println!(
            "| {name} | {} | {} |",
            cell(Workload::Spread),
            cell(Workload::Hot)
        );
    }
    println!();
    println!(
        "| ledger case | spread: appends per group commit, ms per commit (medians) | hot: same |"
    );
    println!("|---|---:|---:|");
    for (name, nodes) in cases.iter().filter(|c| c.1 > 0) {
        let cell = |w: Workload| {
            let v = &batches[&(*nodes, w)];
            format!(
                "{:.1}, {:.2} ms",
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect())
            )
        };
        println!(
            "| {name} | {} | {} |",
            cell(Workload::Spread),
            cell(Workload::Hot)
        );
    }
    println!();
    println!(
        "| watch lag after acknowledgement ({} appends/s) | p50 ms (median) | p99 ms (median) |",
        a.watch_rate
    );
    println!("|---|---:|---:|");
    for (name, v) in [
        ("watcher on the writer's node", &same_lags),
        ("watcher on another node", &cross_lags),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} |",
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect())
        );
    }
    Ok(())
}
