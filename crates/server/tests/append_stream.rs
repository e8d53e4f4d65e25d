//! AppendStream, the pipelined append: acknowledgements in arrival order
//! with gapless sequences on both committers, refusals acknowledged with
//! the unary status while the stream goes on, the per-message and
//! in-flight limits, the request budget given back per message, shutdown;
//! and the SDK pipelining concurrent appends through it, exactly once
//! across a server restart.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Probe, TestServer, eventually};
use converge_ledger_client::{AppendOptions, Client, ClientOptions, GetOptions};
use converge_ledger_core::Entry;
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::ledger::v1 as ext;
use converge_ledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use converge_ledger_server::{LedgerConfig, RequestBudget, ServerConfig};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn append(tag: u64, context: &str, payload: &[u8]) -> ext::StreamedAppend {
    ext::StreamedAppend {
        tag,
        append: Some(pb::AppendRequest {
            context_id: context.to_owned(),
            key: "facts".to_owned(),
            payload: payload.to_vec(),
            ..Default::default()
        }),
    }
}

/// An open AppendStream: messages in, acknowledgements out.
struct Stream {
    tx: Option<mpsc::Sender<ext::AppendStreamRequest>>,
    rx: tonic::Streaming<ext::AppendStreamResponse>,
}

impl Stream {
    async fn open(s: &TestServer) -> Stream {
        let mut c = LedgerServiceClient::connect(s.url()).await.unwrap();
        let (tx, out) = mpsc::channel(1024);
        let rx = c
            .append_stream(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        Stream { tx: Some(tx), rx }
    }

    async fn send(&self, appends: Vec<ext::StreamedAppend>) {
        self.tx
            .as_ref()
            .unwrap()
            .send(ext::AppendStreamRequest { appends })
            .await
            .unwrap();
    }

    /// The next `n` acknowledgements, however they are split into messages.
    async fn acks(&mut self, n: usize) -> Vec<ext::AppendAck> {
        let mut acks = Vec::new();
        while acks.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("acknowledgements within 10 s")
                .unwrap()
                .expect("the stream ended early");
            assert!(
                !m.acks.is_empty(),
                "a response message without acknowledgements"
            );
            acks.extend(m.acks);
        }
        assert_eq!(acks.len(), n, "more acknowledgements than appends");
        acks
    }

    fn close(&mut self) {
        self.tx = None;
    }
}

fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let mut o = EmbeddedOptions::new(dir.path());
    o.fsync = FsyncPolicy::Never;
    Arc::new(EmbeddedStore::open(o).unwrap())
}

/// Appends to two contexts, interleaved, in three messages: acknowledged in
/// arrival order with each context's sequences gapless in that order, and
/// each acknowledged hash is the stored entry's.
async fn check_in_order(store: Arc<dyn Store>) {
    let s = TestServer::start(store, LedgerConfig::default()).await;
    let mut stream = Stream::open(&s).await;
    let mut tag = 0;
    let mut expected = Vec::new();
    for _ in 0..3 {
        let mut appends = Vec::new();
        for _ in 0..100 {
            tag += 1;
            let context = if tag % 3 == 0 { "ctx-b" } else { "ctx-a" };
            appends.push(append(tag, context, format!("p{tag}").as_bytes()));
            expected.push((tag, context));
        }
        stream.send(appends).await;
    }
    let acks = stream.acks(300).await;
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut by_seq: HashMap<(&str, u64), &ext::AppendAck> = HashMap::new();
    for (ack, (tag, context)) in acks.iter().zip(&expected) {
        assert_eq!(ack.tag, *tag, "acknowledgements in arrival order");
        assert_eq!(ack.code, 0, "{}", ack.message);
        let n = next.entry(context).or_insert(1);
        assert_eq!(
            ack.sequence, *n,
            "tag {tag}: gapless, in arrival order, in {context}"
        );
        *n += 1;
        by_seq.insert((context, ack.sequence), ack);
    }
    stream.close();
    assert!(
        stream.rx.message().await.unwrap().is_none(),
        "a half-closed stream ends once everything is acknowledged"
    );
    let c = Client::connect(s.url()).await.unwrap();
    for context in ["ctx-a", "ctx-b"] {
        let got = c.get(context, GetOptions::default()).await.unwrap();
        assert_eq!(got.entries.len() as u64, next[context] - 1);
        for e in &got.entries {
            let ack = by_seq[&(context, e.sequence)];
            assert_eq!(e.hash.0.to_vec(), ack.hash);
            assert_eq!(e.prev_hash.0.to_vec(), ack.prev_hash);
            assert_eq!(
                (e.lamport, e.appended_at_ns),
                (ack.lamport, ack.appended_at_ns)
            );
            assert_eq!(e.payload, format!("p{}", ack.tag).into_bytes());
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_acknowledged_in_arrival_order_with_gapless_sequences_when_requests_commit() {
    check_in_order(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_acknowledged_in_arrival_order_with_gapless_sequences_through_the_writer_thread()
 {
    let dir = tempfile::tempdir().unwrap();
    check_in_order(embedded(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_appends_are_acknowledged_with_the_unary_status_and_the_stream_goes_on() {
    let s = TestServer::memory().await;
    let mut stream = Stream::open(&s).await;
    let keyed = |tag, payload: &[u8], key: &str| {
        let mut a = append(tag, "ctx", payload);
        a.append.as_mut().unwrap().idempotency_key = key.to_owned();
        a
    };
    stream
        .send(vec![
            keyed(1, b"first", "k1"),
            append(2, "", b"no context"),
            append(3, "wll/reserved", b"reserved namespace"),
            ext::StreamedAppend {
                tag: 4,
                append: None,
            },
            keyed(5, b"first", "k1"),
            keyed(6, b"other content", "k1"),
            append(7, "ctx", b"second"),
        ])
        .await;
    let acks = stream.acks(7).await;
    let codes: Vec<(u64, u32)> = acks.iter().map(|a| (a.tag, a.code)).collect();
    assert_eq!(
        codes,
        vec![
            (1, 0),
            (2, Code::InvalidArgument as u32),
            (3, Code::InvalidArgument as u32),
            (4, Code::InvalidArgument as u32),
            (5, 0),
            (6, Code::AlreadyExists as u32),
            (7, 0),
        ]
    );
    assert!(acks[1].message.contains("context"), "{}", acks[1].message);
    assert!(acks[2].message.contains("reserved"), "{}", acks[2].message);
    assert!(acks[3].message.contains("no append"), "{}", acks[3].message);
    assert!(
        acks[4].duplicate && acks[4].sequence == 1 && acks[4].hash == acks[0].hash,
        "an identical retry is the original entry"
    );
    assert!(
        acks[5].message.contains("sequence 1"),
        "{}",
        acks[5].message
    );
    assert_eq!(acks[6].sequence, 2, "refusals appended nothing");
    for refused in [&acks[1], &acks[2], &acks[3], &acks[5]] {
        assert_eq!((refused.sequence, refused.hash.len()), (0, 0));
    }
    // The stream is still usable after the refusals.
    stream.send(vec![append(8, "ctx", b"third")]).await;
    assert_eq!(stream.acks(1).await[0].sequence, 3);
    let c = Client::connect(s.url()).await.unwrap();
    assert_eq!(c.head("ctx").await.unwrap().sequence, 3);
    assert_eq!(c.list_contexts("", 10).await.unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_append_limit_ends_the_stream_after_acknowledging_what_came_before() {
    let config = LedgerConfig {
        append_stream_message_appends_max: 4,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let mut stream = Stream::open(&s).await;
    stream
        .send(vec![append(1, "ctx", b"a"), append(2, "ctx", b"b")])
        .await;
    stream
        .send((3..8).map(|t| append(t, "ctx", b"c")).collect())
        .await;
    let acks = stream.acks(2).await;
    assert_eq!(
        acks.iter().map(|a| (a.tag, a.code)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0)]
    );
    let end = stream.rx.message().await.unwrap_err();
    assert_eq!(end.code(), Code::InvalidArgument);
    assert!(
        end.message().contains("5 appends") && end.message().contains("limit is 4"),
        "{}",
        end.message()
    );
    let c = Client::connect(s.url()).await.unwrap();
    assert_eq!(
        c.head("ctx").await.unwrap().sequence,
        2,
        "nothing of the oversized message"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reads_no_further_than_its_in_flight_limit_while_commits_are_held() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    // The writer thread waits in the store until released.
    let store = held_store(&dir, hold.clone());
    let config = LedgerConfig {
        append_stream_inflight_max: 8,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(store, config).await;
    let mut stream = Stream::open(&s).await;
    for tag in 1..=100 {
        stream.send(vec![append(tag, "ctx", b"x")]).await;
    }
    // What each append counts in the writer's queue, held there until its
    // commit is done.
    let each = queued_size();
    eventually(10, "the writer to hold appends", || {
        (s.ledger.writer_queued().1 >= 8 * each).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let taken = s.ledger.writer_queued().1 / each;
    assert!(
        taken <= 8,
        "{taken} appends were taken from a stream limited to 8 in flight"
    );
    hold.store(false, Ordering::SeqCst);
    let acks = stream.acks(100).await;
    assert!(
        acks.iter()
            .enumerate()
            .all(|(i, a)| a.code == 0 && a.tag == i as u64 + 1 && a.sequence == i as u64 + 1)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_gives_each_acknowledged_message_back_to_the_request_budget() {
    // A budget of 256 KiB over all requests, and a stream that sends 4 MiB
    // in 16 KiB messages: it flows only if each acknowledged message's
    // bytes are given back (a request body otherwise holds all it received
    // until its response ends).
    let budget = RequestBudget::new(256 * 1024, Duration::from_secs(1), Duration::from_secs(30));
    let server = ServerConfig {
        request_budget: budget.clone(),
        ..ServerConfig::default()
    };
    let config = LedgerConfig {
        append_stream_inflight_bytes_max: 64 * 1024,
        ..LedgerConfig::default()
    };
    let s =
        TestServer::start_full(Arc::new(MemoryStore::new()), config, server, "127.0.0.1:0").await;
    let mut stream = Stream::open(&s).await;
    let payload = vec![7u8; 16 * 1024];
    let n = 256u64;
    let sender = {
        let tx = stream.tx.take().unwrap();
        let payload = payload.clone();
        tokio::spawn(async move {
            for tag in 1..=n {
                let m = ext::AppendStreamRequest {
                    appends: vec![append(tag, "ctx", &payload)],
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut acked = 0;
    while acked < n {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.rx.message())
            .await
            .expect("acknowledgements keep coming")
            .unwrap_or_else(|e| panic!("the stream failed after {acked} appends: {e}"))
            .expect("the stream ended early");
        for a in m.acks {
            acked += 1;
            assert_eq!((a.code, a.sequence), (0, acked), "{}", a.message);
        }
    }
    sender.await.unwrap();
    assert!(
        stream.rx.message().await.unwrap().is_none(),
        "the stream ends once the client half-closes"
    );
    eventually(5, "the budget to be given back", || {
        (budget.in_use() == 0).then_some(())
    })
    .await;
    s.stop().await;
}

/// What one append of `append(_, "ctx", b"x")` counts in the writer's
/// queue.
fn queued_size() -> usize {
    converge_ledger_store::WriteCommand::Append(converge_ledger_store::AppendCommand {
        context: "ctx".into(),
        entry: converge_ledger_core::NewEntry {
            key: "facts".into(),
            payload: b"x".to_vec(),
            metadata: Default::default(),
            lamport: 0,
        },
        idempotency_key: None,
    })
    .approximate_size()
}

/// An embedded store whose writer waits in the store while `hold` is set.
fn held_store(dir: &tempfile::TempDir, hold: Arc<AtomicBool>) -> Arc<dyn Store> {
    Arc::new(Probe::failing(embedded(dir), move || {
        while hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_stream_after_acknowledging_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    let store = held_store(&dir, hold.clone());
    let s = TestServer::start(store.clone(), LedgerConfig::default()).await;
    let ledger = s.ledger.clone();
    let mut stream = Stream::open(&s).await;
    stream
        .send((1..=5).map(|t| append(t, "ctx", b"x")).collect())
        .await;
    eventually(10, "the writer to hold the appends", || {
        (ledger.writer_queued().1 >= 5 * queued_size()).then_some(())
    })
    .await;
    // Shutdown begins with the five appends taken but not yet committed.
    let stopped = tokio::spawn(s.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    hold.store(false, Ordering::SeqCst);
    let acks = stream.acks(5).await;
    assert!(
        acks.iter()
            .enumerate()
            .all(|(i, a)| a.code == 0 && a.sequence == i as u64 + 1),
        "everything taken is acknowledged: {acks:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.rx.message())
        .await
        .expect("the stream ends at shutdown, not after the grace period")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end}");
    assert!(end.message().contains("shutting down"), "{}", end.message());
    stopped.await.unwrap();
    assert_eq!(store.head("ctx").unwrap().unwrap().sequence, 5);
}

fn verify_chain(context: &str, entries: &[Entry]) {
    let mut prev = converge_ledger_core::genesis_hash(context);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.compute_hash(context), e.hash);
        prev = e.hash;
    }
}

/// `tasks` tasks appending `per_task` entries each to "ctx" through `c`,
/// payload "task/i"; each task panics on an append that fails.
fn appenders(c: &Client, tasks: usize, per_task: usize) -> Vec<tokio::task::JoinHandle<()>> {
    appenders_to(c, "ctx", tasks, per_task)
}

/// [`appenders`] to `context`.
fn appenders_to(
    c: &Client,
    context: &'static str,
    tasks: usize,
    per_task: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    c.append(
                        context,
                        "facts",
                        format!("{t}/{i}").into_bytes(),
                        AppendOptions::default(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, append {i}: {e}"));
                }
            })
        })
        .collect()
}

/// Waits for the appenders, then checks "ctx": chained, and each of the
/// `n` payloads stored exactly once.
async fn each_stored_once(c: &Client, handles: Vec<tokio::task::JoinHandle<()>>, n: usize) {
    for h in handles {
        h.await.unwrap();
    }
    let all = c.get("ctx", GetOptions::default()).await.unwrap();
    verify_chain("ctx", &all.entries);
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for e in &all.entries {
        *seen.entry(e.payload.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), n, "every acknowledged append is stored");
    assert!(seen.values().all(|n| *n == 1), "no append was stored twice");
    assert_eq!(all.entries.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sdk_appends_share_one_stream_in_order_per_task() {
    let s = TestServer::memory().await;
    let c = Client::connect(s.url()).await.unwrap();
    let tasks = 64;
    let per_task = 40;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let mut got: Vec<Entry> = Vec::new();
            for i in 0..per_task {
                // Half of the tasks share one context, half have their own.
                let context = if t % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("own-{t}")
                };
                let e = c
                    .append(
                        &context,
                        "facts",
                        format!("{t}/{i}").into_bytes(),
                        AppendOptions::default(),
                    )
                    .await
                    .unwrap();
                assert_eq!(e.payload, format!("{t}/{i}").into_bytes());
                got.push(e);
            }
            got
        }));
    }
    let mut shared_seqs: HashMap<usize, Vec<u64>> = HashMap::new();
    for (t, h) in handles.into_iter().enumerate() {
        let got = h.await.unwrap();
        if t % 2 == 0 {
            shared_seqs.insert(t, got.iter().map(|e| e.sequence).collect());
        } else {
            assert_eq!(
                got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                (1..=per_task as u64).collect::<Vec<_>>(),
                "task {t}'s own context in its order"
            );
        }
    }
    for (t, seqs) in &shared_seqs {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "task {t}'s appends to the shared context keep its order"
        );
    }
    assert!(
        c.pipelined_appends() > (tasks * per_task / 2) as u64,
        "only {} of {} appends went through the stream",
        c.pipelined_appends(),
        tasks * per_task
    );
    let shared = c.get("shared", GetOptions::default()).await.unwrap();
    assert_eq!(shared.entries.len(), tasks / 2 * per_task);
    verify_chain("shared", &shared.entries);
    s.stop().await;
}

/// A memory server to be restarted on the same address and store, and an
/// SDK client that retries long enough to see it back.
async fn restartable() -> (Arc<dyn Store>, TestServer, String, Client) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let s = TestServer::start(store.clone(), LedgerConfig::default()).await;
    let addr = s.addr.to_string();
    let options = ClientOptions {
        attempts: 40,
        backoff: Duration::from_millis(25),
        ..ClientOptions::default()
    };
    let c = Client::connect_with(s.url(), options).await.unwrap();
    (store, s, addr, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sdk_appends_carry_on_across_a_graceful_server_restart_each_stored_once() {
    let (store, s, addr, c) = restartable().await;
    let (tasks, per_task) = (16, 150);
    let handles = appenders(&c, tasks, per_task);
    // Restart the server under the appends, on the same address and store.
    eventually(10, "appends to flow", || {
        (c.pipelined_appends() > 100).then_some(())
    })
    .await;
    s.stop().await;
    let s = TestServer::start_full(
        store,
        LedgerConfig::default(),
        ServerConfig::default(),
        &addr,
    )
    .await;
    each_stored_once(&c, handles, tasks * per_task).await;
    s.stop().await;
}

/// A TCP proxy to `to` whose connections can all be cut at once.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(to: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Drops every connection open now, mid-stream.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sdk_appends_across_cut_connections_are_each_appended_exactly_once() {
    let s = TestServer::memory().await;
    let proxy = Proxy::start(s.addr).await;
    let options = ClientOptions {
        attempts: 40,
        backoff: Duration::from_millis(20),
        ..ClientOptions::default()
    };
    let c = Client::connect_with(format!("http://{}", proxy.addr), options)
        .await
        .unwrap();
    let (tasks, per_task) = (16, 300);
    let handles = appenders(&c, tasks, per_task);
    // Cut the connection under the appends, twice: whatever was in flight
    // is in doubt (the server may have appended it) and is sent again
    // under its idempotency key.
    for round in 1..=2u64 {
        eventually(10, "appends to flow through the stream", || {
            (c.pipelined_appends() > round * 300).then_some(())
        })
        .await;
        proxy.cut();
    }
    each_stored_once(&c, handles, tasks * per_task).await;
    s.stop().await;
}

/// A server that speaks only converge.context.v1 (an older ledger, or a
/// proxy that knows only the contract), forwarding appends to `to`.
struct ContractOnly {
    to: converge_ledger_proto::context::v1::context_service_client::ContextServiceClient<
        tonic::transport::Channel,
    >,
}

type WatchEvents = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::context_service_server::ContextService for ContractOnly {
    async fn append(
        &self,
        request: tonic::Request<pb::AppendRequest>,
    ) -> Result<tonic::Response<pb::AppendResponse>, tonic::Status> {
        self.to.clone().append(request.into_inner()).await
    }
    async fn get(
        &self,
        request: tonic::Request<pb::GetRequest>,
    ) -> Result<tonic::Response<pb::GetResponse>, tonic::Status> {
        self.to.clone().get(request.into_inner()).await
    }
    async fn snapshot(
        &self,
        _: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<pb::SnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
    async fn load(
        &self,
        _: tonic::Request<pb::LoadRequest>,
    ) -> Result<tonic::Response<pb::LoadResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
    type WatchStream = WatchEvents;
    async fn watch(
        &self,
        _: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<WatchEvents>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sdk_appends_fall_back_to_calls_on_a_server_without_the_stream() {
    let s = TestServer::memory().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to =
        converge_ledger_proto::context::v1::context_service_client::ContextServiceClient::connect(
            s.url(),
        )
        .await
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::context_service_server::ContextServiceServer::new(
                ContractOnly { to },
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let options = ClientOptions {
        attempts: 1,
        ..ClientOptions::default()
    };
    let c = Client::connect_with(format!("http://{addr}"), options)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..20 {
                c.append(
                    "ctx",
                    "facts",
                    format!("{t}/{i}").into_bytes(),
                    AppendOptions::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("task {t}, append {i}: {e}"));
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(c.pipelined_appends(), 0);
    assert_eq!(s.ledger.store().head("ctx").unwrap().unwrap().sequence, 320);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_streams_past_their_limit_are_refused_and_the_sdk_appends_with_calls() {
    let config = LedgerConfig {
        append_streams_max: 1,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let held = Stream::open(&s).await;
    let mut c = LedgerServiceClient::connect(s.url()).await.unwrap();
    let (_tx, out) = mpsc::channel::<ext::AppendStreamRequest>(1);
    let refused = c
        .append_stream(ReceiverStream::new(out))
        .await
        .expect_err("a second stream past a limit of one");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-append-streams"),
        "{}",
        refused.message()
    );
    // Reads have slots of their own.
    let sdk = Client::connect(s.url()).await.unwrap();
    sdk.read_all("ctx", GetOptions::default(), |_| {})
        .await
        .unwrap();
    let handles = appenders(&sdk, 16, 20);
    each_stored_once(&sdk, handles, 16 * 20).await;
    assert_eq!(sdk.pipelined_appends(), 0, "every append went as a call");
    drop(held);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_packs_its_stream_messages_within_the_limits_the_server_reports() {
    // Far below the SDK's own caps (1024 appends a message, 4096 in
    // flight): a message over the server's limit would end the stream and
    // send what it carried to calls.
    let config = LedgerConfig {
        append_stream_message_appends_max: 3,
        append_stream_inflight_max: 5,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let sdk = Client::connect(s.url()).await.unwrap();
    let (tasks, per_task) = (32, 30);
    let handles = appenders(&sdk, tasks, per_task);
    each_stored_once(&sdk, handles, tasks * per_task).await;
    assert!(
        sdk.pipelined_appends() > (tasks * per_task / 2) as u64,
        "only {} of {} appends went through the stream",
        sdk.pipelined_appends(),
        tasks * per_task
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_with_lower_limits_the_sdk_packs_its_streams_within_the_new_ones() {
    let (store, s, addr, c) = restartable().await;
    // A stream under the default limits; the client's stream task stays.
    let handles = appenders(&c, 16, 20);
    for h in handles {
        h.await.unwrap();
    }
    assert!(c.pipelined_appends() > 0);
    s.stop().await;
    let lower = LedgerConfig {
        append_stream_message_appends_max: 3,
        append_stream_inflight_max: 5,
        ..LedgerConfig::default()
    };
    let s = TestServer::start_full(store, lower, ServerConfig::default(), &addr).await;
    let before = c.pipelined_appends();
    let (tasks, per_task) = (32, 30);
    let handles = appenders_to(&c, "after", tasks, per_task);
    for h in handles {
        h.await.unwrap();
    }
    let streamed = c.pipelined_appends() - before;
    assert!(
        streamed > (tasks * per_task / 2) as u64,
        "only {streamed} of {} appends after the restart went through the stream",
        tasks * per_task
    );
    let after = c.get("after", GetOptions::default()).await.unwrap();
    assert_eq!(after.entries.len(), tasks * per_task);
    verify_chain("after", &after.entries);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_its_share_of_append_streams() {
    let config = LedgerConfig {
        append_streams_per_connection_max: 2,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    // One channel: one connection.
    let c = LedgerServiceClient::connect(s.url()).await.unwrap();
    let open = |mut c: LedgerServiceClient<tonic::transport::Channel>| async move {
        let (tx, out) = mpsc::channel::<ext::AppendStreamRequest>(1);
        c.append_stream(ReceiverStream::new(out))
            .await
            .map(|r| Stream {
                tx: Some(tx),
                rx: r.into_inner(),
            })
    };
    let first = open(c.clone()).await.unwrap();
    let _second = open(c.clone()).await.unwrap();
    let refused = open(c.clone())
        .await
        .err()
        .expect("a third stream on a connection allowed two");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("--max-append-streams-per-connection"),
        "{}",
        refused.message()
    );
    // Another connection has slots of its own.
    let other = LedgerServiceClient::connect(s.url()).await.unwrap();
    let mut on_other = open(other).await.unwrap();
    on_other.send(vec![append(1, "ctx", b"p")]).await;
    assert_eq!(on_other.acks(1).await[0].code, 0);
    // A stream that ends gives its connection's slot back.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open(c.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended stream's slot did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await;
}
