//! The ledger's semantics over gRPC, through the Rust SDK.

mod common;

use std::sync::Arc;

use common::TestServer;
use converge_ledger_client::{AppendOptions, Client, ClientError, GetOptions, Metadata};
use converge_ledger_core::{Head, Limits};
use converge_ledger_server::LedgerConfig;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore};

fn opts() -> AppendOptions {
    AppendOptions::default()
}

async fn client(s: &TestServer) -> Client {
    Client::connect(s.url()).await.unwrap()
}

fn verify_chain(context: &str, entries: &[converge_ledger_client::Entry]) -> Head {
    let mut head = Head::empty(context);
    for e in entries {
        head.check_next(context, e).unwrap();
        head.advance(e);
    }
    head
}

#[tokio::test]
async fn appends_are_sequenced_chained_and_returned_exactly() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    let mut metadata = Metadata::new();
    metadata.insert("cycle".into(), "7".into());
    metadata.insert("fact_id".into(), "f-1".into());
    let payload: Vec<u8> = (0..=255).collect();
    let e1 = c
        .append(
            "ctx",
            "facts",
            payload.clone(),
            AppendOptions {
                metadata: metadata.clone(),
                ..opts()
            },
        )
        .await
        .unwrap();
    assert_eq!((e1.sequence, e1.lamport), (1, 1));
    assert_eq!(
        (e1.key.as_str(), &e1.payload, &e1.metadata),
        ("facts", &payload, &metadata)
    );
    let e2 = c
        .append(
            "ctx",
            "traces",
            vec![],
            AppendOptions {
                lamport: 41,
                ..opts()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (e2.sequence, e2.lamport),
        (2, 42),
        "Lamport = max(local, received) + 1"
    );
    assert!(e2.payload.is_empty());
    let e3 = c
        .append("ctx", "traces", b"x".to_vec(), opts())
        .await
        .unwrap();
    assert_eq!(e3.lamport, 43);
    let all = c.get("ctx", GetOptions::default()).await.unwrap();
    assert_eq!(all.entries, vec![e1, e2, e3]);
    let head = verify_chain("ctx", &all.entries);
    let h = c.head("ctx").await.unwrap();
    assert_eq!(
        (h.sequence, h.hash, h.merkle_root),
        (3, head.hash, head.merkle_root())
    );
    s.stop().await;
}

#[tokio::test]
async fn idempotent_retries_append_once_and_conflicts_are_refused() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    let with_key = |k: &str| AppendOptions {
        idempotency_key: Some(k.into()),
        ..opts()
    };
    let a = c
        .append("ctx", "k", b"v".to_vec(), with_key("req-1"))
        .await
        .unwrap();
    let b = c
        .append("ctx", "k", b"v".to_vec(), with_key("req-1"))
        .await
        .unwrap();
    assert_eq!(a, b);
    let err = c
        .append("ctx", "k", b"other".to_vec(), with_key("req-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::AlreadyExists(m) if m.contains("req-1") && m.contains("sequence 1")),
        "{err}"
    );
    assert_eq!(c.head("ctx").await.unwrap().sequence, 1);
    s.stop().await;
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut o = EmbeddedOptions::new(dir.path());
        o.fsync = FsyncPolicy::Always;
        Arc::new(EmbeddedStore::open(o).unwrap())
    };
    let s = TestServer::start(open(), LedgerConfig::default()).await;
    let key = AppendOptions {
        idempotency_key: Some("once".into()),
        ..opts()
    };
    let first = client(&s)
        .await
        .append("ctx", "k", b"v".to_vec(), key.clone())
        .await
        .unwrap();
    s.stop().await;
    let s = TestServer::start(open(), LedgerConfig::default()).await;
    let c = client(&s).await;
    let again = c.append("ctx", "k", b"v".to_vec(), key).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(c.head("ctx").await.unwrap().sequence, 1);
    s.stop().await;
}

#[tokio::test]
async fn get_filters_pages_and_reports_the_head() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    for i in 0..10 {
        c.append(
            "ctx",
            if i % 2 == 0 { "even" } else { "odd" },
            vec![i],
            opts(),
        )
        .await
        .unwrap();
    }
    let seqs = |r: &converge_ledger_client::GetResult| {
        r.entries.iter().map(|e| e.sequence).collect::<Vec<_>>()
    };
    let r = c
        .get(
            "ctx",
            GetOptions {
                key: Some("odd".into()),
                after: 3,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!((seqs(&r), r.latest_sequence), (vec![4, 6], 10));
    let r = c
        .get(
            "ctx",
            GetOptions {
                after: 8,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&r), vec![9, 10]);
    let r = c.get("unknown", GetOptions::default()).await.unwrap();
    assert_eq!((r.entries.len(), r.latest_sequence), (0, 0));
    let mut n = 0;
    let latest = c
        .read_all(
            "ctx",
            GetOptions {
                key: Some("even".into()),
                ..Default::default()
            },
            |_| n += 1,
        )
        .await
        .unwrap();
    assert_eq!((n, latest), (5, 10));
    s.stop().await;
}

#[tokio::test]
async fn a_get_beyond_the_message_limit_is_refused_with_advice_never_truncated() {
    let config = LedgerConfig {
        limits: Limits {
            payload_bytes_max: 1024,
            key_bytes_max: 64,
            metadata_bytes_max: 256,
            ..Limits::default()
        },
        response_bytes_max: 8 * 1024,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let c = client(&s).await;
    for _ in 0..40 {
        c.append("big", "k", vec![7; 1000], opts()).await.unwrap();
    }
    let err = c.get("big", GetOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m) if m.contains("limit") && m.contains("Read")),
        "{err}"
    );
    let page = c
        .get(
            "big",
            GetOptions {
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 5);
    let err = c.snapshot("big").await.unwrap_err();
    assert!(matches!(err, ClientError::ResourceExhausted(_)), "{err}");
    // The streaming read has no such ceiling.
    let mut n = 0;
    c.read_all("big", GetOptions::default(), |_| n += 1)
        .await
        .unwrap();
    assert_eq!(n, 40);
    s.stop().await;
}

#[tokio::test]
async fn snapshot_and_load_round_trip_exactly_and_refuse_anything_altered() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    // An empty context snapshots at sequence 0.
    let empty = c.snapshot("nothing").await.unwrap();
    assert_eq!(
        (empty.sequence, empty.entry_count, empty.version),
        (0, 0, 2)
    );
    let r = c
        .load("still-nothing", empty.bytes.clone(), true, false)
        .await
        .unwrap();
    assert_eq!((r.entries_restored, r.latest_sequence), (0, 0));

    for i in 0..5u8 {
        let mut metadata = Metadata::new();
        metadata.insert("i".into(), i.to_string());
        c.append(
            "src",
            &format!("k{i}"),
            vec![i; i as usize],
            AppendOptions { metadata, ..opts() },
        )
        .await
        .unwrap();
    }
    let original = c.get("src", GetOptions::default()).await.unwrap().entries;
    let snap = c.snapshot("src").await.unwrap();
    assert_eq!((snap.sequence, snap.entry_count), (5, 5));

    // Altered anywhere: refused, nothing written.
    for i in (0..snap.bytes.len()).step_by(7) {
        let mut bad = snap.bytes.clone();
        bad[i] ^= 0x20;
        let err = c.load("dst", bad, false, false).await.unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidArgument(_)),
            "byte {i}: {err}"
        );
    }
    let err = c
        .load("dst", b"not a snapshot".to_vec(), false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("magic")),
        "{err}"
    );
    assert_eq!(c.head("dst").await.unwrap().sequence, 0);

    // Into another context: exact content, sequences and timestamps.
    let r = c
        .load("dst", snap.bytes.clone(), true, false)
        .await
        .unwrap();
    assert_eq!((r.entries_restored, r.latest_sequence), (5, 5));
    let copy = c.get("dst", GetOptions::default()).await.unwrap().entries;
    for (a, b) in original.iter().zip(&copy) {
        assert_eq!(
            (
                a.sequence,
                &a.key,
                &a.payload,
                &a.metadata,
                a.appended_at_ns,
                a.lamport
            ),
            (
                b.sequence,
                &b.key,
                &b.payload,
                &b.metadata,
                b.appended_at_ns,
                b.lamport
            )
        );
    }
    verify_chain("dst", &copy);
    // Into the same context id: identical entries, hashes included.
    let r = c
        .load("src-restored", snap.bytes.clone(), false, false)
        .await
        .unwrap();
    assert_eq!(r.entries_restored, 5);

    // fail_if_exists on a non-empty context.
    let err = c
        .load("dst", snap.bytes.clone(), true, false)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AlreadyExists(_)), "{err}");
    // Loading again is idempotent; sequences are never duplicated.
    let r = c
        .load("dst", snap.bytes.clone(), false, false)
        .await
        .unwrap();
    assert_eq!((r.entries_restored, r.latest_sequence), (0, 5));

    // A longer snapshot of the same history appends only the tail.
    c.append("src", "k5", b"five".to_vec(), opts())
        .await
        .unwrap();
    c.append("src", "k6", b"six".to_vec(), opts())
        .await
        .unwrap();
    let longer = c.snapshot("src").await.unwrap();
    let r = c
        .load("dst", longer.bytes.clone(), false, false)
        .await
        .unwrap();
    assert_eq!((r.entries_restored, r.latest_sequence), (2, 7));

    // A diverging history names the first differing sequence.
    c.append("dst", "local", b"only here".to_vec(), opts())
        .await
        .unwrap();
    c.append("src", "k7", b"seven".to_vec(), opts())
        .await
        .unwrap();
    let diverged = c.snapshot("src").await.unwrap();
    let err = c
        .load("dst", diverged.bytes, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::FailedPrecondition(m) if m.contains("entry 8")),
        "{err}"
    );
    assert_eq!(c.head("dst").await.unwrap().sequence, 8);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_message_and_the_server_keeps_serving() {
    let s = TestServer::memory().await;
    let c = client(&s).await;
    type Case = (
        &'static str,
        String,
        String,
        Vec<u8>,
        Metadata,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "empty context",
            String::new(),
            "k".into(),
            vec![],
            Metadata::new(),
            "context_id is empty",
        ),
        (
            "long context",
            "c".repeat(257),
            "k".into(),
            vec![],
            Metadata::new(),
            "limit is 256",
        ),
        (
            "empty key",
            "c".into(),
            String::new(),
            vec![],
            Metadata::new(),
            "key is empty",
        ),
        (
            "long key",
            "c".into(),
            "k".repeat(1025),
            vec![],
            Metadata::new(),
            "limit is 1024",
        ),
        (
            "control char",
            "c\u{0}".into(),
            "k".into(),
            vec![],
            Metadata::new(),
            "control character",
        ),
        (
            "big payload",
            "c".into(),
            "k".into(),
            vec![0; 4 * 1024 * 1024 + 1],
            Metadata::new(),
            "payload is 4194305 bytes; the limit is 4194304 bytes",
        ),
        (
            "many metadata",
            "c".into(),
            "k".into(),
            vec![],
            (0..65).map(|i| (i.to_string(), String::new())).collect(),
            "limit is 64",
        ),
        (
            "big metadata",
            "c".into(),
            "k".into(),
            vec![],
            [("m".to_string(), "v".repeat(70_000))]
                .into_iter()
                .collect(),
            "the limit is 64 KiB",
        ),
    ];
    for (what, ctx, key, payload, metadata, says) in cases {
        let err = c
            .append(&ctx, &key, payload, AppendOptions { metadata, ..opts() })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidArgument(m) if m.contains(says)),
            "{what}: {err}"
        );
    }
    let err = c
        .append(
            "c",
            "k",
            vec![],
            AppendOptions {
                lamport: u64::MAX,
                ..opts()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("2^62")),
        "{err}"
    );
    let err = c
        .get(
            "c",
            GetOptions {
                key: Some("k".repeat(2000)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    assert_eq!(
        c.head("c").await.unwrap().sequence,
        0,
        "nothing was appended"
    );
    assert_eq!(
        c.append("c", "k", b"ok".to_vec(), opts())
            .await
            .unwrap()
            .sequence,
        1
    );
    s.stop().await;
}

/// A request whose `string` field is not UTF-8 gets INVALID_ARGUMENT, not
/// INTERNAL.
#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawAppend {
        #[prost(bytes = "vec", tag = "1")]
        context_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        key: Vec<u8>,
    }
    let s = TestServer::memory().await;
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/converge.context.v1.ContextService/Append",
    );
    let codec = tonic_prost::ProstCodec::<
        RawAppend,
        converge_ledger_proto::context::v1::AppendResponse,
    >::default();
    let status = grpc
        .unary(
            tonic::Request::new(RawAppend {
                context_id: vec![0xff, 0xfe],
                key: b"k".to_vec(),
            }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    s.stop().await;
}

#[tokio::test]
async fn snapshots_beyond_the_message_limits_stream_and_load_back_exactly() {
    let config = LedgerConfig {
        limits: Limits {
            payload_bytes_max: 64 * 1024,
            ..Limits::default()
        },
        // The unary Snapshot refuses anything over 128 KiB.
        response_bytes_max: 128 * 1024,
        ..LedgerConfig::default()
    };
    let server = converge_ledger_server::ServerConfig {
        // The unary Load refuses anything over 256 KiB.
        request_bytes_max: 256 * 1024,
        ..converge_ledger_server::ServerConfig::default()
    };
    let s =
        TestServer::start_full(Arc::new(MemoryStore::new()), config, server, "127.0.0.1:0").await;
    let c = client(&s).await;
    // 3.2 MiB of payloads: several 1 MiB pieces each way.
    for i in 0..50u8 {
        c.append("big", "k", vec![i; 64 * 1024], opts())
            .await
            .unwrap();
    }
    assert!(matches!(
        c.snapshot("big").await.unwrap_err(),
        ClientError::ResourceExhausted(_)
    ));
    let snap = c.snapshot_streamed("big").await.unwrap();
    assert!(snap.bytes.len() > 3 * 1024 * 1024);
    assert_eq!((snap.sequence, snap.entry_count), (50, 50));
    let err = c
        .load("copy", snap.bytes.clone(), true, false)
        .await
        .unwrap_err();
    // RESOURCE_EXHAUSTED naming the flag, as gRPC specifies (tonic's own
    // check said OUT_OF_RANGE), before the message's bytes are received.
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m)
            if m.contains("the limit is 262144 bytes (--max-request-bytes)")),
        "{err}"
    );
    let loaded = c
        .load_streamed("copy", snap.bytes.clone(), true, false)
        .await
        .unwrap();
    assert_eq!((loaded.entries_restored, loaded.latest_sequence), (50, 50));
    let a = c
        .get(
            "big",
            GetOptions {
                limit: 50,
                ..Default::default()
            },
        )
        .await;
    // Too big for one Get too: compare through the streaming read.
    assert!(a.is_err());
    let (mut original, mut copy) = (Vec::new(), Vec::new());
    c.read_all("big", GetOptions::default(), |e| {
        original.push((e.key, e.payload, e.metadata))
    })
    .await
    .unwrap();
    c.read_all("copy", GetOptions::default(), |e| {
        copy.push((e.key, e.payload, e.metadata))
    })
    .await
    .unwrap();
    assert_eq!(original, copy);
    // The same snapshot again: already contained, nothing restored.
    let again = c
        .load_streamed("copy", snap.bytes.clone(), false, false)
        .await
        .unwrap();
    assert_eq!((again.entries_restored, again.latest_sequence), (0, 50));
    // A streamed snapshot with one byte altered is refused, nothing written.
    let mut bad = snap.bytes.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    let err = c
        .load_streamed("third", bad, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("nothing was loaded")),
        "{err}"
    );
    assert_eq!(c.head("third").await.unwrap().sequence, 0);
    s.stop().await;
}

#[tokio::test]
async fn a_streamed_load_beyond_the_budget_is_refused_and_changes_nothing() {
    let config = LedgerConfig {
        load_stream_bytes_max: 1024 * 1024,
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let c = client(&s).await;
    assert_eq!(
        c.server_info().await.unwrap().load_stream_bytes_max,
        1024 * 1024
    );
    for i in 0..40u8 {
        c.append("src", "k", vec![i; 64 * 1024], opts())
            .await
            .unwrap();
    }
    let snap = c.snapshot_streamed("src").await.unwrap();
    let err = c
        .load_streamed("dst", snap.bytes, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m) if m.contains("1048576 bytes") && m.contains("nothing was loaded")),
        "{err}"
    );
    assert_eq!(c.head("dst").await.unwrap().sequence, 0);
    // The budget is released: a small load goes through.
    c.append("small", "k", b"x".to_vec(), opts()).await.unwrap();
    let small = c.snapshot_streamed("small").await.unwrap();
    c.load_streamed("dst", small.bytes, false, false)
        .await
        .unwrap();
    assert_eq!(c.head("dst").await.unwrap().sequence, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_streamed_snapshot_cuts_pieces_before_a_large_entry() {
    // Default limits: pieces of 1 MiB, a response limit of 4 MiB + 128 KiB.
    let s = TestServer::memory().await;
    let c = client(&s).await;
    for i in 0..1100u32 {
        c.append("mixed", "small", vec![(i % 251) as u8; 1000], opts())
            .await
            .unwrap();
    }
    c.append("mixed", "large", vec![9; 3_500_000], opts())
        .await
        .unwrap();
    c.append("mixed", "small", b"after".to_vec(), opts())
        .await
        .unwrap();
    let snap = c.snapshot_streamed("mixed").await.unwrap();
    assert_eq!(snap.entry_count, 1102);
    let loaded = c
        .load_streamed("mixed-copy", snap.bytes, true, false)
        .await
        .unwrap();
    assert_eq!(loaded.entries_restored, 1102);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    c.read_all("mixed", GetOptions::default(), |e| a.push(e.payload))
        .await
        .unwrap();
    c.read_all("mixed-copy", GetOptions::default(), |e| b.push(e.payload))
        .await
        .unwrap();
    assert!(a == b && a.len() == 1102);
    s.stop().await;
}

/// An entry as a `READ_ENCODING_ENTRIES` message carries it, with its id
/// checked against its hash.
fn from_message(e: converge_ledger_proto::context::v1::Entry) -> converge_ledger_client::Entry {
    let digest = |b: Vec<u8>| converge_ledger_client::Digest(b.try_into().expect("32 bytes"));
    let entry = converge_ledger_client::Entry {
        sequence: e.sequence,
        key: e.key,
        payload: e.payload,
        metadata: e.metadata.into_iter().collect(),
        appended_at_ns: e.appended_at_ns,
        lamport: e.lamport,
        prev_hash: digest(e.prev_hash),
        hash: digest(e.hash),
    };
    assert_eq!(e.id, entry.hash.to_hex());
    entry
}

/// The entry records of a `READ_ENCODING_RECORDS` message, split at their
/// length prefixes.
fn split_records(mut bytes: &[u8]) -> Vec<converge_ledger_client::Entry> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().expect("a length");
        let (record, rest) = rest.split_at(u32::from_be_bytes(*len) as usize);
        out.push(converge_ledger_core::record::decode(record).expect("a record"));
        bytes = rest;
    }
    out
}

#[tokio::test]
async fn a_read_carries_exactly_what_get_returns_in_records_and_in_messages_within_the_response_limit_and_refuses_an_unknown_encoding()
 {
    use converge_ledger_proto::ledger::v1 as ext;
    use ext::ledger_service_client::LedgerServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap()),
        LedgerConfig {
            limits: Limits {
                payload_bytes_max: 1024,
                key_bytes_max: 64,
                metadata_bytes_max: 256,
                ..Limits::default()
            },
            response_bytes_max: 16 * 1024,
            ..LedgerConfig::default()
        },
    )
    .await;
    let c = client(&s).await;
    for i in 0..300u32 {
        let mut o = opts();
        if i % 3 == 0 {
            o.metadata = Metadata::from([("n".to_owned(), i.to_string())]);
        }
        let key = if i % 2 == 0 { "even" } else { "odd" };
        c.append("ctx", key, vec![i as u8; 100 + i as usize], o)
            .await
            .unwrap();
    }
    let mut raw = LedgerServiceClient::connect(s.url()).await.unwrap();
    let cases = [
        GetOptions::default(),
        GetOptions {
            key: Some("odd".into()),
            after: 10,
            limit: 50,
        },
        GetOptions {
            after: 200,
            ..Default::default()
        },
    ];
    for options in cases {
        // Get, in pages that fit its message limit.
        let mut expected: Vec<converge_ledger_client::Entry> = Vec::new();
        loop {
            let want = match options.limit {
                0 => 20,
                n => (n - expected.len() as u32).min(20),
            };
            if want == 0 {
                break;
            }
            let page = GetOptions {
                key: options.key.clone(),
                after: expected.last().map_or(options.after, |e| e.sequence),
                limit: want,
            };
            let entries = c.get("ctx", page).await.unwrap().entries;
            if entries.is_empty() {
                break;
            }
            expected.extend(entries);
        }
        assert!(!expected.is_empty());
        for encoding in [ext::ReadEncoding::Records, ext::ReadEncoding::Entries] {
            let mut stream = raw
                .read(ext::ReadRequest {
                    context_id: "ctx".into(),
                    key: options.key.clone().unwrap_or_default(),
                    after_sequence: options.after,
                    limit: options.limit as u64,
                    encoding: encoding as i32,
                })
                .await
                .unwrap()
                .into_inner();
            let (mut got, mut messages) = (Vec::new(), 0);
            while let Some(msg) = stream.message().await.unwrap() {
                assert_eq!(msg.latest_sequence, 300);
                // Both encodings keep a message within the response limit
                // (and its small framing).
                let size = prost::Message::encoded_len(&msg);
                assert!(size <= 16 * 1024 + 64, "{encoding:?}: {size} bytes");
                match encoding {
                    ext::ReadEncoding::Records => {
                        assert!(msg.entries.is_empty(), "records only");
                        got.extend(split_records(&msg.records));
                    }
                    ext::ReadEncoding::Entries => {
                        assert!(msg.records.is_empty(), "entry messages only");
                        got.extend(msg.entries.into_iter().map(from_message));
                    }
                }
                messages += 1;
            }
            assert_eq!(got, expected, "{encoding:?} {options:?}");
            if options.limit == 0 && options.key.is_none() && options.after == 0 {
                assert!(messages > 1, "the response limit splits the stream");
            }
        }
        // The SDK reads in records and checks every one.
        let mut sdk = Vec::new();
        c.read_all("ctx", options.clone(), |e| sdk.push(e))
            .await
            .unwrap();
        assert_eq!(sdk, expected, "{options:?}");
    }
    let err = raw
        .read(ext::ReadRequest {
            context_id: "ctx".into(),
            encoding: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("encoding 7") && err.message().contains("READ_ENCODING_RECORDS"),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_read_in_entry_records_refuses_a_damaged_or_misplaced_stored_record_with_data_loss() {
    use converge_ledger_proto::ledger::v1 as ext;
    use ext::ledger_service_client::LedgerServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap());
    let s = TestServer::start(store.clone(), LedgerConfig::default()).await;
    let c = client(&s).await;
    for i in 0..5u8 {
        c.append("ctx", "k", vec![i; 10], opts()).await.unwrap();
    }
    let read = |after: u64| ext::ReadRequest {
        context_id: "ctx".into(),
        after_sequence: after,
        encoding: ext::ReadEncoding::Records as i32,
        ..Default::default()
    };
    let mut raw = LedgerServiceClient::connect(s.url()).await.unwrap();
    let read_all = async |raw: &mut LedgerServiceClient<_>, after| {
        let mut stream = raw.read(read(after)).await?.into_inner();
        let mut n = 0;
        while let Some(msg) = stream.message().await? {
            n += split_records(&msg.records).len();
        }
        Ok::<usize, tonic::Status>(n)
    };
    assert_eq!(read_all(&mut raw, 0).await.unwrap(), 5);

    let mut damaged = store.raw_entry("ctx", 3).unwrap();
    let intact = damaged.clone();
    damaged[20] ^= 0x01;
    store.raw_put_entry("ctx", 3, &damaged);
    let err = read_all(&mut raw, 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{}", err.message());
    assert!(err.message().contains("checksum"), "{}", err.message());
    // What lies after the damage still reads.
    assert_eq!(read_all(&mut raw, 3).await.unwrap(), 2);

    store.raw_put_entry("ctx", 3, &intact);
    store.raw_put_entry("ctx", 4, &intact);
    let err = read_all(&mut raw, 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{}", err.message());
    assert!(
        err.message().contains("stored under sequence 4 says 3"),
        "{}",
        err.message()
    );
    s.stop().await;
}
