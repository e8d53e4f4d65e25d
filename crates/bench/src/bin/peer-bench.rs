//! `peer-bench`: the ledger beside the peers a user would pick instead,
//! side by side in one run, each its own process on this machine, driven by
//! one plain client generated from the contract (`context_v1.proto`):
//!
//! - `trivial`: a tonic server for the same contract whose Append only bumps
//!   a counter and echoes the entry (no hashing, storage or watch): the
//!   floor gRPC itself sets on this machine;
//! - `memory` and `always`: `converge-ledger serve` on the memory store, and
//!   on embedded storage with `--fsync always`;
//! - `redis`: a Redis started for the run on its own port with
//!   `--appendonly yes --appendfsync everysec` (it acknowledges before it
//!   syncs), spoken to in RESP, one command per round trip (`XADD`,
//!   `XRANGE`).
//!
//! ```sh
//! cargo build --release -p converge-ledger -p converge-ledger-bench
//! ./target/release/peer-bench [--rounds 3] [--seconds 3] [--clients 1,8,64] [--read-entries 20000]
//! ```
//!
//! Workloads, interleaved over the targets within each round, medians over
//! the rounds: unary appends of `--payload-bytes` from 1, 8 and 64 clients
//! (each its own connection and context): ops/s, p50 and p99; reading one
//! context of `--read-entries` entries in pages of 500 (`Get`, `XRANGE`):
//! entries/s decoded by the client; and, against each ledger target, one
//! SDK client appending from `--pipelined-tasks` tasks over its one
//! connection, which it pipelines through AppendStream (reported beside
//! Redis's unary appends from 64 clients); and watch lag: one connection
//! appending at `--watch-rate` a second while another watches the context
//! (contract `Watch`, Redis `XREAD BLOCK`), from each append's send to the
//! watcher's receipt, checked against the trivial server's sequential
//! Append p50 of the same run (memory) and 2 ms at p99 (`always`). Ratios
//! are printed against the trivial server and against Redis.

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use converge_ledger_proto::context::v1 as full;
use converge_ledger_proto::contract as pb;
use pb::context_service_client::ContextServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "The ledger beside a trivial gRPC server and Redis Streams, one client, one run")]
struct Args {
    /// Rounds; every table cell is the median over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each append measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrent clients of the append workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Payload bytes per append.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Entries in the context read in pages of 500 with Get, and then (from
    /// the ledger targets) streamed whole through the SDK's Read (0: no
    /// read workload).
    #[arg(long, default_value_t = 20_000)]
    read_entries: u64,
    /// The ledger binary (default: `converge-ledger` beside this one).
    #[arg(long)]
    ledger_bin: Option<PathBuf>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Targets to run, of trivial, memory, always, redis.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trivial,memory,always,redis"
    )]
    targets: Vec<String>,
    /// Concurrent tasks of the pipelined workload: one SDK client (one
    /// connection) appending from this many tasks, which it pipelines
    /// through AppendStream, against each ledger target (0: none).
    #[arg(long, default_value_t = 64)]
    pipelined_tasks: usize,
    /// Appends per second of the watch-lag workload: one connection appends
    /// at this pace to a fresh context while another watches it (contract
    /// `Watch`, Redis `XREAD BLOCK`); the lag is from the append's send to
    /// the watcher's receipt (0: no watch workload).
    #[arg(long, default_value_t = 1000)]
    watch_rate: u64,
    /// Runs the trivial server on this address and nothing else (what the
    /// benchmark starts as its own process).
    #[arg(long, hide = true)]
    serve_trivial: Option<String>,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// --- the trivial server ---------------------------------------------------

struct Trivial {
    sequence: AtomicU64,
}

fn appends_only() -> tonic::Status {
    tonic::Status::unimplemented("the trivial server only appends")
}

#[tonic::async_trait]
impl full::context_service_server::ContextService for Trivial {
    async fn append(
        &self,
        request: tonic::Request<full::AppendRequest>,
    ) -> Result<tonic::Response<full::AppendResponse>, tonic::Status> {
        let r = request.into_inner();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        // The same shape as the ledger's answer: the entry echoed, with a
        // sequence, a time and two 32-byte hashes.
        Ok(tonic::Response::new(full::AppendResponse {
            entry: Some(full::Entry {
                id: format!("{}:{sequence}", r.context_id),
                key: r.key,
                payload: r.payload,
                sequence,
                appended_at_ns: sequence,
                metadata: r.metadata,
                lamport: sequence,
                hash: vec![0; 32],
                prev_hash: vec![0; 32],
            }),
        }))
    }

    async fn get(
        &self,
        _: tonic::Request<full::GetRequest>,
    ) -> Result<tonic::Response<full::GetResponse>, tonic::Status> {
        Err(appends_only())
    }

    async fn snapshot(
        &self,
        _: tonic::Request<full::SnapshotRequest>,
    ) -> Result<tonic::Response<full::SnapshotResponse>, tonic::Status> {
        Err(appends_only())
    }

    async fn load(
        &self,
        _: tonic::Request<full::LoadRequest>,
    ) -> Result<tonic::Response<full::LoadResponse>, tonic::Status> {
        Err(appends_only())
    }

    type WatchStream = tonic::codegen::tokio_stream::Empty<Result<full::WatchEvent, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<full::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(appends_only())
    }
}

fn serve_trivial(addr: &str) -> anyhow::Result<()> {
    let addr = addr.parse()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(full::context_service_server::ContextServiceServer::new(
                Trivial {
                    sequence: AtomicU64::new(0),
                },
            ))
            .serve(addr)
            .await
    })?;
    Ok(())
}

// --- Redis, in RESP ----------------------------------------------------------

enum Resp {
    Simple,
    Int,
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

struct Redis {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Redis {
    async fn connect(addr: &str) -> anyhow::Result<Redis> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Redis {
            r: BufReader::new(r),
            w,
            out: Vec::new(),
            line: Vec::new(),
        })
    }

    async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Resp> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.out).await?;
        self.value().await
    }

    async fn header(&mut self) -> anyhow::Result<(u8, i64)> {
        self.line.clear();
        self.r.read_until(b'\n', &mut self.line).await?;
        if self.line.len() < 3 {
            bail!("redis closed the connection");
        }
        let kind = self.line[0];
        let text = std::str::from_utf8(&self.line[1..self.line.len() - 2])?;
        if kind == b'-' {
            bail!("redis: {text}");
        }
        let n = if matches!(kind, b'+') {
            0
        } else {
            text.parse()?
        };
        Ok((kind, n))
    }

    /// One reply, arrays read iteratively (XRANGE replies nest two deep).
    async fn value(&mut self) -> anyhow::Result<Resp> {
        // A stack of arrays being filled: (items wanted, items so far).
        let mut stack: Vec<(usize, Vec<Resp>)> = Vec::new();
        loop {
            let (kind, n) = self.header().await?;
            let mut v = match kind {
                b'+' => Resp::Simple,
                b':' => Resp::Int,
                b'$' if n < 0 => Resp::Bulk(None),
                b'$' => {
                    let mut b = vec![0; n as usize + 2];
                    self.r.read_exact(&mut b).await?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
                b'*' if n <= 0 => Resp::Array(Vec::new()),
                b'*' => {
                    stack.push((n as usize, Vec::with_capacity(n as usize)));
                    continue;
                }
                other => bail!("redis: unexpected reply type {:?}", other as char),
            };
            loop {
                let Some((want, items)) = stack.last_mut() else {
                    return Ok(v);
                };
                items.push(v);
                if items.len() < *want {
                    break;
                }
                let (_, items) = stack.pop().expect("just seen");
                v = Resp::Array(items);
            }
        }
    }
}

// --- the targets ---------------------------------------------------------------

#[derive(Clone)]
enum Target {
    Grpc { name: &'static str, url: String },
    Redis { addr: String },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Grpc { name, .. } => name,
            Target::Redis { .. } => "redis",
        }
    }
}

enum Conn {
    Grpc(ContextServiceClient<Channel>),
    Redis(Box<Redis>),
}

impl Conn {
    async fn open(target: &Target) -> anyhow::Result<Conn> {
        Ok(match target {
            Target::Grpc { url, .. } => {
                let channel = Channel::from_shared(url.clone())?.connect().await?;
                Conn::Grpc(
                    ContextServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
                )
            }
            Target::Redis { addr } => Conn::Redis(Box::new(Redis::connect(addr).await?)),
        })
    }

    async fn append(&mut self, context: &str, payload: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Grpc(c) => {
                c.append(pb::AppendRequest {
                    context_id: context.to_owned(),
                    key: "k".into(),
                    payload: payload.to_vec(),
                    metadata: Default::default(),
                })
                .await?;
            }
            Conn::Redis(r) => {
                r.call(&[b"XADD", context.as_bytes(), b"*", b"k", payload])
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the whole context in pages of 500; returns the entries read.
    async fn read_all(&mut self, context: &str) -> anyhow::Result<u64> {
        let mut n = 0u64;
        match self {
            Conn::Grpc(c) => {
                let mut after = 0;
                loop {
                    let page = c
                        .get(pb::GetRequest {
                            context_id: context.to_owned(),
                            key: String::new(),
                            after_sequence: after,
                            limit: 500,
                        })
                        .await?
                        .into_inner();
                    let Some(last) = page.entries.last() else {
                        return Ok(n);
                    };
                    after = last.sequence;
                    n += page.entries.len() as u64;
                }
            }
            Conn::Redis(r) => {
                let mut start = b"-".to_vec();
                loop {
                    let reply = r
                        .call(&[
                            b"XRANGE",
                            context.as_bytes(),
                            &start,
                            b"+",
                            b"COUNT",
                            b"500",
                        ])
                        .await?;
                    let Resp::Array(entries) = reply else {
                        bail!("XRANGE: not an array");
                    };
                    let Some(Resp::Array(last)) = entries.last() else {
                        return Ok(n);
                    };
                    let Some(Resp::Bulk(Some(id))) = last.first() else {
                        bail!("XRANGE: an entry without an id");
                    };
                    start = [b"(".as_slice(), id].concat();
                    n += entries.len() as u64;
                }
            }
        }
    }
}

/// Waits until the target answers an append.
async fn ready(target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tried = async {
            let mut c = Conn::open(target).await?;
            c.append("ready", b"x").await
        }
        .await;
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("{} did not start", target.name()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One append measurement: ops/s, p50 and p99 in µs.
type Sample = (f64, f64, f64);

/// Measures `clients` connections appending for `seconds`.
async fn appends(
    target: &Target,
    clients: usize,
    seconds: u64,
    payload: Arc<Vec<u8>>,
    tag: &str,
) -> anyhow::Result<Sample> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(target).await?);
    }
    let start = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (start, payload) = (start.clone(), payload.clone());
        let context = format!("peer-{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                c.append(&context, &payload).await?;
                lat.push(t.elapsed().as_micros() as u32);
            }
            anyhow::Ok(lat)
        }));
    }
    collect(start, tasks).await
}

/// Releases the tasks waiting at `start`, then gathers their latencies
/// (µs) into ops/s, p50 and p99.
async fn collect(
    start: Arc<tokio::sync::Barrier>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<u32>>>>,
) -> anyhow::Result<Sample> {
    start.wait().await;
    let t = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = t.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64;
    Ok((all.len() as f64 / elapsed, at(0.5), at(0.99)))
}

/// Measures one SDK client (one connection) appending from `tasks` tasks
/// for `seconds`, each task to its own context: the SDK pipelines them
/// through one AppendStream, and checks every acknowledged hash.
async fn pipelined(
    url: &str,
    tasks: usize,
    seconds: u64,
    payload: Arc<Vec<u8>>,
    tag: &str,
) -> anyhow::Result<(Sample, u64)> {
    use converge_ledger_client::{AppendOptions, Client};
    let c = Client::connect(url).await?;
    let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let (c, start, payload) = (c.clone(), start.clone(), payload.clone());
        let context = format!("pipe-{tag}-{i}");
        handles.push(tokio::spawn(async move {
            start.wait().await;
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                c.append(&context, "k", payload.to_vec(), AppendOptions::default())
                    .await?;
                lat.push(t.elapsed().as_micros() as u32);
            }
            anyhow::Ok(lat)
        }));
    }
    let sample = collect(start, handles).await?;
    Ok((sample, c.pipelined_appends()))
}

/// Reads `context` (of `n` entries) whole through the SDK's streamed Read,
/// again and again for `seconds`: entries/s, each decoded and checked.
async fn streamed_read(url: &str, context: &str, n: u64, seconds: u64) -> anyhow::Result<f64> {
    use converge_ledger_client::{Client, GetOptions};
    let c = Client::connect(url).await?;
    let started = Instant::now();
    let mut total = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut got = 0u64;
        c.read_all(context, GetOptions::default(), |_| got += 1)
            .await?;
        if got != n {
            bail!("a streamed read of {context} gave {got} entries of {n}");
        }
        total += got;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Watch lag at a paced append rate: one connection appends to a fresh
/// `context` `rate` times a second for `seconds` (each append awaited before
/// the next, as a client that reads its acknowledgement would), another
/// watches it. The k-th entry the watcher receives is the k-th append (a
/// fresh context has no other writer; the ledger's sequences are checked);
/// its lag is from that append's send to the receipt. Returns the lags'
/// p50 and p99 in µs and how many were measured.
async fn watch_lag(
    target: &Target,
    context: &str,
    rate: u64,
    seconds: u64,
    payload: Arc<Vec<u8>>,
) -> anyhow::Result<(f64, f64, usize)> {
    let sends: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let total = (rate * seconds).max(1) as usize;
    // The watcher counts every entry from the start of the context; the
    // first append waits until the watch is established (its own entry
    // arrives), so no lag includes setting the watch up.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let (target, context, sends) = (target.clone(), context.to_owned(), sends.clone());
        tokio::spawn(async move {
            let mut lags = Vec::with_capacity(total);
            let mut ready = Some(ready_tx);
            let mut on_entry = |k: usize, lags: &mut Vec<u32>| {
                let now = Instant::now();
                if k == 0 {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    return;
                }
                let sent = sends.lock().expect("not poisoned")[k - 1];
                lags.push(now.duration_since(sent).as_micros() as u32);
            };
            match &target {
                Target::Grpc { url, .. } => {
                    let channel = Channel::from_shared(url.clone())?.connect().await?;
                    let mut stream = ContextServiceClient::new(channel)
                        .watch(pb::WatchRequest {
                            context_id: context.clone(),
                            key: String::new(),
                            from_sequence: 0,
                        })
                        .await?
                        .into_inner();
                    for k in 0..=total {
                        let event = stream
                            .message()
                            .await?
                            .context("the watch ended before the last append")?;
                        let seq = event.entry.map_or(0, |e| e.sequence);
                        if seq != k as u64 + 1 {
                            bail!("watch of {context}: entry {seq} arrived as the {}th", k + 1);
                        }
                        on_entry(k, &mut lags);
                    }
                }
                Target::Redis { addr } => {
                    let mut r = Redis::connect(addr).await?;
                    let mut last = b"0".to_vec();
                    let mut k = 0;
                    while k <= total {
                        let reply = r
                            .call(&[
                                b"XREAD",
                                b"BLOCK",
                                b"0",
                                b"STREAMS",
                                context.as_bytes(),
                                &last,
                            ])
                            .await?;
                        // [[stream, [[id, [field, value]], ...]]]
                        let Resp::Array(streams) = reply else {
                            bail!("XREAD: not an array");
                        };
                        let Some(Resp::Array(stream)) = streams.into_iter().next() else {
                            bail!("XREAD: no stream in the reply");
                        };
                        let Some(Resp::Array(entries)) = stream.into_iter().nth(1) else {
                            bail!("XREAD: no entries in the reply");
                        };
                        for e in entries {
                            let Resp::Array(e) = e else {
                                bail!("XREAD: an entry that is not an array");
                            };
                            let Some(Resp::Bulk(Some(id))) = e.into_iter().next() else {
                                bail!("XREAD: an entry without an id");
                            };
                            last = id;
                            on_entry(k, &mut lags);
                            k += 1;
                        }
                    }
                }
            }
            anyhow::Ok(lags)
        })
    };
    let mut c = Conn::open(target).await?;
    c.append(context, &payload).await?;
    ready_rx
        .await
        .context("the watcher stopped before its first entry")?;
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate as f64)).await;
        sends.lock().expect("not poisoned").push(Instant::now());
        c.append(context, &payload).await?;
    }
    let mut lags = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .context("the watcher did not see every append within 30 s")???;
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize] as f64;
    Ok((at(0.5), at(0.99), lags.len()))
}

/// A rate already recorded in the JSON summary.
fn rates_of(json: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<f64> {
    json.get(key).and_then(serde_json::Value::as_f64)
}

/// Fills `context` with `n` entries from 64 connections.
async fn fill(target: &Target, context: &str, n: u64, payload: Arc<Vec<u8>>) -> anyhow::Result<()> {
    let writers = 64u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = Conn::open(target).await?;
        let (context, payload) = (context.to_owned(), payload.clone());
        let mine = n / writers + u64::from(w < n % writers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..mine {
                c.append(&context, &payload).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = &args.serve_trivial {
        return serve_trivial(addr);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

/// Median latency of a 4 KiB write followed by `fdatasync`, in `dir`
/// (beside the `always` ledger's data): the price of one durable commit on
/// this disk.
fn fsync_p50_us(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut took = Vec::with_capacity(200);
    for i in 0..200u64 {
        f.seek(SeekFrom::Start(i * 4096))?;
        let started = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        took.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(median(took))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let ledger_bin = args.ledger_bin.clone().unwrap_or_else(|| {
        me.parent()
            .expect("the binary is in a directory")
            .join("converge-ledger")
    });
    let dir = tempfile::tempdir()?;
    let mut procs = Vec::new();
    let mut targets = Vec::new();
    let quiet = || Stdio::null();
    for name in &args.targets {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let target = match name.as_str() {
            "trivial" => {
                procs.push(Proc(
                    Command::new(&me)
                        .args(["--serve-trivial", &addr])
                        .stdout(quiet())
                        .stderr(quiet())
                        .spawn()?,
                ));
                Target::Grpc {
                    name: "trivial",
                    url: format!("http://{addr}"),
                }
            }
            "memory" | "always" => {
                let mut cmd = Command::new(&ledger_bin);
                cmd.args(["serve", "--listen", &addr, "--max-connections", "1024"]);
                if name == "memory" {
                    cmd.args(["--storage", "memory"]);
                } else {
                    let data = dir.path().join("ledger");
                    cmd.args(["--data-dir", data.to_str().expect("utf-8 path")]);
                    cmd.args(["--fsync", "always"]);
                }
                procs.push(Proc(
                    cmd.stdout(quiet())
                        .stderr(quiet())
                        .spawn()
                        .with_context(|| format!("cannot start {}", ledger_bin.display()))?,
                ));
                Target::Grpc {
                    name: if name == "memory" { "memory" } else { "always" },
                    url: format!("http://{addr}"),
                }
            }
            "redis" => {
                let data = dir.path().join("redis");
                std::fs::create_dir_all(&data)?;
                procs.push(Proc(
                    Command::new(&args.redis_server)
                        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
                        .args(["--save", "", "--dir", data.to_str().expect("utf-8 path")])
                        .stdout(quiet())
                        .stderr(quiet())
                        .spawn()
                        .with_context(|| format!("cannot start {}", args.redis_server))?,
                ));
                Target::Redis { addr }
            }
            other => {
                bail!("unknown target {other:?}; the targets are trivial, memory, always, redis")
            }
        };
        ready(&target).await?;
        targets.push(target);
    }
    let payload = Arc::new(vec![0x5a; args.payload_bytes]);
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    };
    eprintln!("load average before: {}", load());

    let mut samples: BTreeMap<(usize, &'static str), Vec<Sample>> = BTreeMap::new();
    let mut reads: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut streamed_reads: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut pipes: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let mut watches: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut fsyncs = Vec::new();
    for round in 0..args.rounds {
        let f = fsync_p50_us(dir.path())?;
        eprintln!("round {round}: 4 KiB write + fdatasync beside the data, p50 {f:.0} us");
        fsyncs.push(f);
        for &clients in &args.clients {
            for t in &targets {
                let tag = format!("{round}-{clients}");
                let s = appends(t, clients, args.seconds, payload.clone(), &tag).await?;
                eprintln!(
                    "round {round}: {} clients, {}: {:.0} ops/s, p50 {:.0} us, p99 {:.0} us",
                    clients,
                    t.name(),
                    s.0,
                    s.1,
                    s.2
                );
                samples.entry((clients, t.name())).or_default().push(s);
            }
        }
        if args.pipelined_tasks > 0 {
            for t in &targets {
                let Target::Grpc { name, url } = t else {
                    continue;
                };
                if *name == "trivial" {
                    continue;
                }
                let tag = format!("{round}");
                let (s, streamed) = pipelined(
                    url,
                    args.pipelined_tasks,
                    args.seconds,
                    payload.clone(),
                    &tag,
                )
                .await?;
                eprintln!(
                    "round {round}: pipelined, {} tasks on one SDK client, {name}: {:.0} ops/s, \
                     p50 {:.0} us, p99 {:.0} us ({streamed} through the stream)",
                    args.pipelined_tasks, s.0, s.1, s.2
                );
                pipes.entry(*name).or_default().push(s);
            }
        }
        if args.watch_rate > 0 {
            for t in targets.iter().filter(|t| t.name() != "trivial") {
                let context = format!("watch-{round}");
                let (p50, p99, n) =
                    watch_lag(t, &context, args.watch_rate, args.seconds, payload.clone()).await?;
                eprintln!(
                    "round {round}: watch lag at {}/s, {}: p50 {p50:.0} us, p99 {p99:.0} us ({n} entries)",
                    args.watch_rate,
                    t.name()
                );
                watches.entry(t.name()).or_default().push((p50, p99));
            }
        }
        if args.read_entries > 0 {
            for t in targets.iter().filter(|t| t.name() != "trivial") {
                let context = format!("read-{round}");
                fill(t, &context, args.read_entries, payload.clone()).await?;
                let mut c = Conn::open(t).await?;
                let started = Instant::now();
                let mut n = 0;
                while started.elapsed() < Duration::from_secs(args.seconds) {
                    let got = c.read_all(&context).await?;
                    if got != args.read_entries {
                        bail!("{} read {got} entries of {}", t.name(), args.read_entries);
                    }
                    n += got;
                }
                let rate = n as f64 / started.elapsed().as_secs_f64();
                eprintln!("round {round}: read, {}: {rate:.0} entries/s", t.name());
                reads.entry(t.name()).or_default().push(rate);
                if let Target::Grpc { name, url } = t {
                    let rate =
                        streamed_read(url, &context, args.read_entries, args.seconds).await?;
                    eprintln!("round {round}: streamed read (SDK), {name}: {rate:.0} entries/s");
                    streamed_reads.entry(name).or_default().push(rate);
                }
            }
        }
    }
    eprintln!("load average after: {}", load());

    let names: Vec<&'static str> = targets.iter().map(Target::name).collect();
    println!(
        "\nunary Append, {} B payloads, medians of {} rounds of {} s:",
        args.payload_bytes, args.rounds, args.seconds
    );
    println!("{:<10} {:>28}", "clients", names.join(" | "));
    let mut json = serde_json::Map::new();
    for &clients in &args.clients {
        let mut cells = Vec::new();
        let mut rates = BTreeMap::new();
        for name in &names {
            let s = &samples[&(clients, *name)];
            let (rate, p50, p99) = (
                median(s.iter().map(|x| x.0).collect()),
                median(s.iter().map(|x| x.1).collect()),
                median(s.iter().map(|x| x.2).collect()),
            );
            rates.insert(*name, rate);
            cells.push(format!("{rate:.0}/s (p50 {p50:.0} us, p99 {p99:.0} us)"));
            json.insert(format!("append_{clients}_{name}_per_s"), rate.into());
            json.insert(format!("append_{clients}_{name}_p50_us"), p50.into());
            json.insert(format!("append_{clients}_{name}_p99_us"), p99.into());
        }
        println!("{clients:<10} {}", cells.join(" | "));
        let mut ratios = Vec::new();
        for base in ["trivial", "redis"] {
            let Some(b) = rates.get(base) else { continue };
            for ledger in ["memory", "always"] {
                if let Some(l) = rates.get(ledger) {
                    ratios.push(format!("{ledger}/{base} {:.2}", l / b));
                    json.insert(
                        format!("append_{clients}_{ledger}_over_{base}"),
                        (l / b).into(),
                    );
                }
            }
        }
        if !ratios.is_empty() {
            println!("{:<10} {}", "", ratios.join(", "));
        }
    }
    let fsync = median(fsyncs);
    json.insert("fsync_p50_us".into(), fsync.into());
    if let Some(t) = samples.get(&(1, "trivial")) {
        let trivial = median(t.iter().map(|x| x.1).collect());
        println!(
            "\nsequential p50 against the floor (4 KiB write + fdatasync p50 here: {fsync:.0} us):"
        );
        for (ledger, allowance, rule) in [
            ("memory", 30.0, "trivial + 30 us"),
            ("always", fsync + 50.0, "trivial + one fsync + 50 us"),
        ] {
            if let Some(l) = samples.get(&(1, ledger)) {
                let p50 = median(l.iter().map(|x| x.1).collect());
                let bound = trivial + allowance;
                println!(
                    "{ledger:<10} p50 {p50:.0} us, target <= {rule} = {bound:.0} us: {}",
                    if p50 <= bound { "met" } else { "missed" }
                );
            }
        }
    }
    if !pipes.is_empty() {
        println!(
            "\npipelined appends: one SDK client, {} tasks, each to its own context (AppendStream):",
            args.pipelined_tasks
        );
        let redis = samples
            .get(&(64, "redis"))
            .map(|s| median(s.iter().map(|x| x.0).collect()));
        for (name, s) in &pipes {
            let (rate, p50, p99) = (
                median(s.iter().map(|x| x.0).collect()),
                median(s.iter().map(|x| x.1).collect()),
                median(s.iter().map(|x| x.2).collect()),
            );
            json.insert(format!("pipelined_{name}_per_s"), rate.into());
            json.insert(format!("pipelined_{name}_p50_us"), p50.into());
            json.insert(format!("pipelined_{name}_p99_us"), p99.into());
            let against = match redis {
                Some(r) => {
                    json.insert(format!("pipelined_{name}_over_redis_64"), (rate / r).into());
                    format!(
                        ", {:.2}x Redis unary from 64 clients{}",
                        rate / r,
                        if *name == "always" {
                            if rate >= r {
                                " (target >= 1.0: met)"
                            } else {
                                " (target >= 1.0: missed)"
                            }
                        } else {
                            ""
                        }
                    )
                }
                None => String::new(),
            };
            println!("{name:<10} {rate:.0}/s (p50 {p50:.0} us, p99 {p99:.0} us){against}");
        }
    }
    if !watches.is_empty() {
        println!(
            "\nwatch lag, one appender at {}/s and one watcher (send to receipt), medians of the rounds:",
            args.watch_rate
        );
        let trivial = samples
            .get(&(1, "trivial"))
            .map(|t| median(t.iter().map(|x| x.1).collect()));
        for (name, v) in &watches {
            let p50 = median(v.iter().map(|x| x.0).collect());
            let p99 = median(v.iter().map(|x| x.1).collect());
            json.insert(format!("watch_lag_{name}_p50_us"), p50.into());
            json.insert(format!("watch_lag_{name}_p99_us"), p99.into());
            let target = match (*name, trivial) {
                ("memory", Some(t)) => format!(
                    ", target p50 <= the trivial server's sequential Append p50 ({t:.0} us): {}",
                    if p50 <= t { "met" } else { "missed" }
                ),
                ("always", _) => format!(
                    ", target p99 <= 2000 us: {}",
                    if p99 <= 2000.0 { "met" } else { "missed" }
                ),
                _ => String::new(),
            };
            println!("{name:<10} p50 {p50:.0} us, p99 {p99:.0} us{target}");
        }
    }
    if !reads.is_empty() {
        println!(
            "\nreading a context of {} entries in pages of 500, entries/s:",
            args.read_entries
        );
        let rates: BTreeMap<&str, f64> = reads.into_iter().map(|(k, v)| (k, median(v))).collect();
        for (name, rate) in &rates {
            println!("{name:<10} {rate:.0}");
            json.insert(format!("read_{name}_per_s"), (*rate).into());
        }
        if let Some(r) = rates.get("redis") {
            for ledger in ["memory", "always"] {
                if let Some(l) = rates.get(ledger) {
                    println!("{ledger}/redis {:.2}", l / r);
                }
            }
        }
    }
    if !streamed_reads.is_empty() {
        println!(
            "\nstreamed Read of the same context through the SDK (converge.ledger.v1 Read, \
             each entry decoded and its hash and chain checked), entries/s:"
        );
        let redis = rates_of(&json, "read_redis_per_s");
        for (name, v) in streamed_reads {
            let rate = median(v);
            json.insert(format!("streamed_read_{name}_per_s"), rate.into());
            let against = redis
                .map(|r| format!(", {:.2}x Redis XRANGE", rate / r))
                .unwrap_or_default();
            println!(
                "{name:<10} {rate:.0}{against} (target >= 2M: {})",
                if rate >= 2e6 { "met" } else { "missed" }
            );
        }
    }
    println!("{}", serde_json::Value::Object(json));
    drop(procs);
    Ok(())
}
