//! Operating the server: the gRPC health service follows storage and
//! shutdown, `/metrics` counts calls by operation and status and passes
//! `promtool check metrics`, and the web view's API honours tokens and
//! grants and tails a context live.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Probe, TestServer};
use converge_ledger_client::{AppendOptions, Client, ClientOptions};
use converge_ledger_server::{AuthConfig, Authority, LedgerConfig, ServerConfig, new_token};
use converge_ledger_store::{MemoryStore, StoreError};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A server with an HTTP listener; returns it and the HTTP address.
async fn server(
    store: Arc<dyn converge_ledger_store::Store>,
    auth: Authority,
) -> (TestServer, SocketAddr) {
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    let config = ServerConfig {
        http_listener: Some(Arc::new(http)),
        storage_name: "memory".into(),
        auth: Arc::new(auth),
        ..ServerConfig::default()
    };
    let s = TestServer::start_full(store, LedgerConfig::default(), config, "127.0.0.1:0").await;
    (s, http_addr)
}

/// One HTTP/1.1 GET: status, and the body (de-chunked).
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let (path, token) = (path.to_owned(), token.map(str::to_owned));
    tokio::task::spawn_blocking(move || get_blocking(addr, &path, token.as_deref()))
        .await
        .unwrap()
}

fn get_blocking(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

async fn health(s: &TestServer, service: &str) -> ServingStatus {
    let mut c = HealthClient::new(
        tonic::transport::Channel::from_shared(s.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    r.into_inner().status()
}

#[tokio::test]
async fn health_turns_not_serving_when_storage_fails_for_good() {
    let probe = Arc::new(Probe::new(Arc::new(MemoryStore::new())));
    let (s, http) = server(probe.clone(), Authority::open()).await;
    assert_eq!(health(&s, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&s, "converge.context.v1.ContextService").await,
        ServingStatus::Serving
    );
    assert_eq!(get(http, "/healthz", None).await, (200, "SERVING\n".into()));

    probe.latch(StoreError::Io("fsync failed: EIO".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while health(&s, "").await != ServingStatus::NotServing {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health still SERVING 3 s after storage failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        health(&s, "converge.ledger.v1.LedgerService").await,
        ServingStatus::NotServing
    );
    let (status, body) = get(http, "/healthz", None).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("storage failed") && body.contains("EIO"),
        "{body}"
    );
    let (_, metrics) = get(http, "/metrics", None).await;
    assert!(
        metrics.contains("\nconverge_ledger_storage_healthy 0\n"),
        "{metrics}"
    );
    // Not stopped: a server whose storage failed reports it as its result.
    drop(s);
}

#[tokio::test]
async fn health_watchers_see_not_serving_when_shutdown_begins() {
    let (s, _) = server(Arc::new(MemoryStore::new()), Authority::open()).await;
    let mut c = HealthClient::new(
        tonic::transport::Channel::from_shared(s.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = c
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(s.stop());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("no health update within 5 s of the shutdown")
        .unwrap()
        .expect("the health watch ended without saying NOT_SERVING");
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    stopping.await.unwrap();
}

/// The value of the sample `name{labels}` (labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_calls_by_operation_and_status_and_pass_promtool() {
    let (s, http) = server(Arc::new(MemoryStore::new()), Authority::open()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    for i in 0..3 {
        client
            .append(
                "m-1",
                "k",
                format!("payload {i}").into_bytes(),
                AppendOptions::default(),
            )
            .await
            .unwrap();
    }
    let refused = client
        .append("m-1", "", b"x".to_vec(), AppendOptions::default())
        .await;
    assert!(refused.is_err());

    let (status, metrics) = get(http, "/metrics", None).await;
    assert_eq!(status, 200);
    let append = "service=\"converge.context.v1.ContextService\",method=\"Append\"";
    assert_eq!(
        sample(
            &metrics,
            &format!("converge_ledger_rpc_duration_seconds_count{{{append},code=\"OK\"}}")
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "converge_ledger_rpc_duration_seconds_count{{{append},code=\"INVALID_ARGUMENT\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "converge_ledger_appended_entries_total"),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "converge_ledger_appended_payload_bytes_total"),
        Some(27.0)
    );
    assert_eq!(
        sample(&metrics, "converge_ledger_group_commit_commands_count"),
        Some(3.0)
    );
    assert!(sample(&metrics, "converge_ledger_connections").unwrap() >= 1.0);
    for family in [
        "converge_ledger_commit_duration_seconds_bucket{le=\"+Inf\"}",
        "converge_ledger_writer_queue_commands",
        "converge_ledger_writer_queue_bytes",
        "converge_ledger_watchers",
        "converge_ledger_inflight_request_bytes",
        "converge_ledger_inflight_request_bytes_max",
        "converge_ledger_storage_healthy",
    ] {
        assert!(
            sample(&metrics, family).is_some(),
            "{family} missing:\n{metrics}"
        );
    }
    promtool_check(&metrics);
    s.stop().await;
}

#[tokio::test]
async fn metrics_show_the_projector_folding_worldline_receipts_with_its_lag() {
    use converge_ledger_client::Digest;
    use converge_ledger_client::worldline::{
        CapabilitySet, Commitment, CommitmentId, Decision, Outcome, OutcomeStatus, PolicyRef,
        StateUpdate, WorldlineId,
    };
    let (s, http) = server(Arc::new(MemoryStore::new()), Authority::open()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let w = WorldlineId::derive(b"metrics");
    let caps: CapabilitySet = ["repo.write".to_owned()].into_iter().collect();
    let committed = client
        .append_commitment(
            &w,
            &Commitment {
                commitment_id: CommitmentId([0x42; 16]),
                class: "deploy".into(),
                intent: "roll out".into(),
                requested_capabilities: caps.clone(),
                targets: vec!["svc/api".into()],
                evidence: vec![],
                proposer: "agent".into(),
                decision: Decision::Accepted,
                policy: PolicyRef {
                    hash: Digest::of(&[b"policy"]),
                    version: "v1".into(),
                },
                granted_capabilities: caps,
                revoked_capabilities: CapabilitySet::new(),
                decider: "kernel".into(),
            },
        )
        .await
        .unwrap();
    client
        .append_outcome(
            &w,
            &Outcome {
                commitment: committed.receipt_hash,
                status: OutcomeStatus::Succeeded,
                effects: vec![],
                proofs: vec![],
                state_updates: vec![StateUpdate::Put {
                    key: "k".into(),
                    value: b"v".to_vec(),
                }],
                reporter: "driver".into(),
            },
        )
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, metrics) = get(http, "/metrics", None).await;
        assert_eq!(status, 200);
        if sample(&metrics, "converge_ledger_projection_receipts_folded_total") == Some(2.0) {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two receipts not folded after 10 s:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let batches = sample(&metrics, "converge_ledger_projection_batches_total").unwrap();
    assert!((1.0..=2.0).contains(&batches), "{batches} batches");
    let folds = sample(&metrics, "converge_ledger_projection_lag_seconds_count").unwrap();
    assert!((1.0..=2.0).contains(&folds), "{folds} folds with a lag");
    for counter in [
        "converge_ledger_projection_conflicts_total",
        "converge_ledger_projection_rebuilding",
        "converge_ledger_projection_version_switches_total",
        "converge_ledger_projection_retired_keys_total",
    ] {
        assert_eq!(sample(&metrics, counter), Some(0.0), "{counter}");
    }
    for state in [
        "queued",
        "retrying",
        "failed",
        "rebuilding",
        "rebuild_failed",
    ] {
        let series = format!("converge_ledger_projection_worldlines{{state=\"{state}\"}}");
        assert!(sample(&metrics, &series).is_some(), "{series} missing");
    }
    assert_eq!(
        sample(
            &metrics,
            "converge_ledger_projection_worldlines{state=\"failed\"}"
        ),
        Some(0.0)
    );
    promtool_check(&metrics);
    s.stop().await;
}

/// `promtool check metrics` on the exposition: required with
/// CONVERGE_LEDGER_REQUIRE_SERVICES=1, otherwise skipped when promtool is
/// not installed (Debian: prometheus).
fn promtool_check(metrics: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CONVERGE_LEDGER_REQUIRE_SERVICES").is_none(),
                "promtool is required (CONVERGE_LEDGER_REQUIRE_SERVICES=1) but cannot run: {e}"
            );
            eprintln!("skipped: promtool check metrics (promtool: {e}; Debian package prometheus)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool also prints lint findings (and exits 0 for some): none.
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(findings.trim().is_empty(), "promtool findings:\n{findings}");
}

#[tokio::test]
async fn the_web_api_honours_tokens_and_grants() {
    let (reader, r) = new_token();
    let (writer, w) = new_token();
    let auth = AuthConfig::parse(&format!(
        r#"
        [[principals]]
        name = "reader"
        token_sha256 = "{r}"
        grants = ["read:job-1"]

        [[principals]]
        name = "writer"
        token_sha256 = "{w}"
        grants = ["append:*", "read:*"]
        "#
    ))
    .unwrap();
    let (s, http) = server(Arc::new(MemoryStore::new()), Authority::configured(auth)).await;
    let client = Client::connect_with(
        &s.url(),
        ClientOptions {
            token: Some(writer.clone()),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    for ctx in ["job-1", "job-2"] {
        client
            .append(ctx, "k", b"secret".to_vec(), AppendOptions::default())
            .await
            .unwrap();
    }

    let (status, body) = get(http, "/api/contexts", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no credentials"), "{body}");
    assert_eq!(get(http, "/api/contexts", Some("clt_wrong")).await.0, 401);

    let (status, body) = get(http, "/api/contexts", Some(&reader)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"job-1\"") && !body.contains("job-2"),
        "{body}"
    );
    let (status, body) = get(http, "/api/entries?context=job-2", Some(&reader)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("no read right on context \\\"job-2\\\""),
        "{body}"
    );
    assert!(!body.contains("c2VjcmV0"), "{body}");
    assert_eq!(
        get(http, "/api/tail?context=job-2", Some(&reader)).await.0,
        403
    );
    assert_eq!(
        get(http, "/api/head?context=job-2", Some(&reader)).await.0,
        403
    );

    let (status, body) = get(http, "/api/entries?context=job-1", Some(&reader)).await;
    assert_eq!(status, 200);
    // "secret", base64
    assert!(body.contains("\"payload\":\"c2VjcmV0\""), "{body}");
    let (status, body) = get(http, "/api/entries?context=job-1&after=x", Some(&reader)).await;
    assert_eq!(status, 400);
    assert!(body.contains("not a number"), "{body}");
    // The page and metrics need no token; they show no entry.
    assert_eq!(get(http, "/", None).await.0, 200);
    assert_eq!(get(http, "/metrics", None).await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn the_live_tail_streams_entries_appended_after_it_opened() {
    let (s, http) = server(Arc::new(MemoryStore::new()), Authority::open()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    client
        .append("t-1", "k", b"first".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let mut tail = std::net::TcpStream::connect(http).unwrap();
    tail.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tail,
        "GET /api/tail?context=t-1&after=1 HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    .unwrap();
    // The watch is open once the server counts it.
    common::eventually(5, "the tail's watch", || {
        (s.ledger.open_watches() == 1).then_some(())
    })
    .await;
    client
        .append("t-1", "k", b"second".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\"sequence\":\"2\"") {
            let n = tail
                .read(&mut buf)
                .expect("the tail sent nothing within 5 s");
            assert!(n > 0, "the tail ended");
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .unwrap();
    assert!(got.contains("application/x-ndjson"), "{got}");
    // "second", base64; the first entry (at the tail's start) is not sent.
    assert!(
        got.contains("c2Vjb25k") && !got.contains("Zmlyc3Q"),
        "{got}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_web_api_shows_worldline_receipts_decoded() {
    use converge_ledger_client::worldline::{
        CapabilitySet, Commitment, CommitmentId, Decision, PolicyRef, WorldlineId,
    };
    let (s, http) = server(Arc::new(MemoryStore::new()), Authority::open()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let w = WorldlineId::derive(b"web");
    let c = Commitment {
        commitment_id: CommitmentId([7; 16]),
        class: "deploy".into(),
        intent: "roll out v2".into(),
        requested_capabilities: CapabilitySet::new(),
        targets: vec![],
        evidence: vec![],
        proposer: "agent-7".into(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: converge_ledger_client::Digest::of(&[b"p"]),
            version: "v12".into(),
        },
        granted_capabilities: CapabilitySet::new(),
        revoked_capabilities: CapabilitySet::new(),
        decider: "kernel".into(),
    };
    client.append_commitment(&w, &c).await.unwrap();
    let (status, body) = get(
        http,
        &format!("/api/entries?context=wll/{}", w.to_hex()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let receipt = &v["entries"][0]["receipt"];
    assert_eq!(receipt["body"]["kind"], "commitment", "{body}");
    assert_eq!(receipt["body"]["intent"], "roll out v2");
    assert_eq!(receipt["body"]["policy"]["version"], "v12");
    s.stop().await;
}
