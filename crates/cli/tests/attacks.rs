//! The real binary under the attacks a hostile client can mount with
//! nothing but a connection: watchers that stop reading, sockets that never
//! speak, uploads that stall halfway. Memory is measured as the server
//! process's resident set (`/proc/PID/status`).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use converge_ledger_client::{AppendOptions, Client, ClientOptions};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::context::v1::context_service_client::ContextServiceClient;
use support::Server;

const MIB: u64 = 1024 * 1024;

/// The server's resident set, in bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Regression: a watch whose reader stopped reading held about 64 entries
/// with no byte cap: 40 stalled watchers of a context of 1 MiB entries took
/// the server from 0.3 to 2.9 GiB. Now each holds one chunk at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_of_large_entries_hold_little_memory() {
    let server = Server::start(None, &["--max-payload-bytes", "2000000"]);
    let client = Client::connect(server.addr.clone()).await.unwrap();
    for i in 0..64u8 {
        client
            .append("big", "k", vec![i; MIB as usize], AppendOptions::default())
            .await
            .unwrap();
    }
    let before = rss(&server);
    // 40 watchers on their own connections, from the start, never reading.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut c = ContextServiceClient::connect(server.addr.clone())
            .await
            .unwrap()
            .max_decoding_message_size(4 * MIB as usize);
        let stream = c
            .watch(pb::WatchRequest {
                context_id: "big".into(),
                key: String::new(),
                from_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        stalled.push((c, stream));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = rss(&server);
    let grown = during.saturating_sub(before);
    eprintln!(
        "40 stalled watchers: the server grew by {} MiB",
        grown / MIB
    );
    assert!(
        grown < 400 * MIB,
        "40 stalled watchers grew the server by {} MiB",
        grown / MIB
    );
    drop(stalled);
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// Regression: idle TCP connections that never completed the HTTP/2
/// handshake counted against `--max-connections` forever: 20 of them
/// locked every real client out of a `--max-connections 20` server. Now
/// handshakes take at most half the slots and time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_lock_real_clients_out() {
    let server = Server::start(
        None,
        &["--max-connections", "20", "--handshake-timeout-ms", "1000"],
    );
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // A real client gets in: at once if a slot is left, or once the silent
    // ones time out.
    let started = Instant::now();
    let options = ClientOptions {
        attempts: 1,
        connect_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let mut done = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(c) = Client::connect_with(server.addr.clone(), options.clone()).await
            && c.append("real", "k", b"x".to_vec(), AppendOptions::default())
                .await
                .is_ok()
        {
            done = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = done.expect("a real client never got a connection");
    assert!(took < Duration::from_secs(5), "it took {took:?}");
    drop(silent);
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// Sends the start of a unary Load whose message claims `declared` bytes:
/// `sent` bytes of it, then nothing, holding the stream open. Returns the
/// connection's pieces (dropping them closes it) and a task that resolves
/// with the gRPC status the server answered with.
async fn stalled_upload(
    addr: &str,
    declared: u32,
    sent: usize,
) -> (
    h2::SendStream<Bytes>,
    tokio::task::JoinHandle<Option<String>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/converge.context.v1.ContextService/Load"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    client.clone().ready().await.unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let mut header = vec![0u8];
    header.extend_from_slice(&declared.to_be_bytes());
    body.send_data(Bytes::from(header), false).unwrap();
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        body.reserve_capacity(n);
        let got = tokio::time::timeout(
            Duration::from_millis(200),
            std::future::poll_fn(|cx| body.poll_capacity(cx)),
        )
        .await;
        match got {
            Ok(Some(Ok(cap))) if cap > 0 => {
                let n = n.min(cap);
                if body.send_data(chunk.slice(..n), false).is_err() {
                    break;
                }
                left -= n;
            }
            // The server stopped taking data (its budget or flow control),
            // or the stream ended: stall here.
            _ => break,
        }
    }
    let answered = tokio::spawn(async move {
        let response = response.await.ok()?;
        let grpc_status = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(s) = grpc_status(response.headers()) {
            return Some(s);
        }
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        body.trailers()
            .await
            .ok()
            .flatten()
            .as_ref()
            .and_then(grpc_status)
    });
    (body, answered)
}

/// Regression: request bodies had no global budget and no timeout: 30
/// connections that sent 60 MiB of a 63 MiB Load and stalled held 1.85 GiB
/// indefinitely. Now they hold at most the budget, and each stalled body
/// is dropped after the request idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_at_most_the_budget_and_are_dropped() {
    let server = Server::start(
        None,
        &[
            "--max-inflight-request-bytes",
            "67108864",
            "--request-idle-timeout-ms",
            "3000",
        ],
    );
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let before = rss(&server);
    let mut uploads = Vec::new();
    for _ in 0..30 {
        uploads.push(stalled_upload(&addr, 63 * MIB as u32, 60 * MIB as usize).await);
    }
    let during = rss(&server);
    eprintln!(
        "30 stalled uploads: the server grew by {} MiB",
        during.saturating_sub(before) / MIB
    );
    assert!(
        during.saturating_sub(before) < 64 * MIB + 192 * MIB,
        "30 stalled uploads grew the server by {} MiB",
        (during - before) / MIB
    );
    // Every stalled upload is answered (refused) within the idle timeout
    // and a margin, not held forever.
    for (body, answered) in uploads {
        let status = tokio::time::timeout(Duration::from_secs(15), answered)
            .await
            .expect("a stalled upload was never dropped")
            .unwrap();
        // DEADLINE_EXCEEDED (4) when it stalled, RESOURCE_EXHAUSTED (8)
        // when it found the budget spent.
        assert!(
            matches!(status.as_deref(), Some("4") | Some("8")),
            "{status:?}"
        );
        drop(body);
    }
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// An established connection with no request in flight for the idle
/// timeout is closed by the server (keepalive pings do not count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_by_the_server() {
    let server = Server::start(None, &["--idle-timeout-ms", "1000"]);
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::spawn(connection);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the idle connection was not closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(client);
    let (status, _) = server.terminate();
    assert!(status.success());
}
