//! AppendBatch, conditional appends and the head's last entry, over gRPC
//! through the Rust SDK.

mod common;

use std::sync::Arc;

use common::TestServer;
use converge_ledger_client::{
    AppendOptions, BatchEntry, BatchOptions, Client, ClientError, GetOptions, Metadata,
};
use converge_ledger_core::{Head, Limits};
use converge_ledger_server::LedgerConfig;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore};

fn entry(key: &str, payload: &str) -> BatchEntry {
    BatchEntry {
        key: key.into(),
        payload: payload.as_bytes().to_vec(),
        metadata: Metadata::from([("n".to_owned(), payload.to_owned())]),
    }
}

fn entries(payloads: &[&str]) -> Vec<BatchEntry> {
    payloads.iter().map(|p| entry("facts", p)).collect()
}

fn conditional(expected: u64) -> BatchOptions {
    BatchOptions {
        expected_sequence: Some(expected),
        ..BatchOptions::default()
    }
}

#[tokio::test]
async fn a_batch_is_appended_in_order_chained_and_equal_to_what_get_returns() {
    let s = TestServer::memory().await;
    let c = Client::connect(s.url()).await.unwrap();
    c.append("ctx", "facts", b"zero".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let b = c
        .append_batch(
            "ctx",
            entries(&["a", "b", "c"]),
            BatchOptions {
                lamport: 40,
                ..BatchOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!b.duplicate);
    assert_eq!(
        b.entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(
        b.entries.iter().map(|e| e.lamport).collect::<Vec<_>>(),
        vec![41, 42, 43],
        "the received Lamport time is merged before the first entry"
    );
    let all = c.get("ctx", GetOptions::default()).await.unwrap();
    assert_eq!(all.entries[1..], b.entries[..]);
    let mut head = Head::empty("ctx");
    for e in &all.entries {
        head.check_next("ctx", e).unwrap();
        head.advance(e);
    }
    let h = c.head("ctx").await.unwrap();
    assert_eq!((h.sequence, h.merkle_root), (4, head.merkle_root()));
    s.stop().await;
}

#[tokio::test]
async fn conditional_batches_append_only_at_the_expected_head() {
    let s = TestServer::memory().await;
    let c = Client::connect(s.url()).await.unwrap();
    c.append_batch("ctx", entries(&["a"]), conditional(0))
        .await
        .unwrap();
    let err = c
        .append_batch("ctx", entries(&["b", "c"]), conditional(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::HeadMismatch { message: m, actual: 1 }
            if m.contains("at sequence 1") && m.contains("expected 0") && m.contains("nothing was appended")),
        "{err}"
    );
    assert_eq!(c.head("ctx").await.unwrap().sequence, 1);
    let b = c
        .append_batch("ctx", entries(&["b", "c"]), conditional(1))
        .await
        .unwrap();
    assert_eq!(b.entries[0].sequence, 2);

    // Two writers racing on the same head: exactly one wins.
    let (x, y) = tokio::join!(
        c.append_batch("ctx", entries(&["x"]), conditional(3)),
        c.append_batch("ctx", entries(&["y"]), conditional(3)),
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
    assert_eq!(c.head("ctx").await.unwrap().sequence, 4);
    s.stop().await;
}

#[tokio::test]
async fn a_retried_batch_appends_once_and_a_reused_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut o = EmbeddedOptions::new(dir.path());
        o.fsync = FsyncPolicy::Always;
        Arc::new(EmbeddedStore::open(o).unwrap())
    };
    let keyed = |expected: Option<u64>| BatchOptions {
        idempotency_key: Some("batch-7".into()),
        expected_sequence: expected,
        ..BatchOptions::default()
    };
    let s = TestServer::start(open(), LedgerConfig::default()).await;
    let c = Client::connect(s.url()).await.unwrap();
    let first = c
        .append_batch("ctx", entries(&["a", "b"]), keyed(Some(0)))
        .await
        .unwrap();
    s.stop().await;

    // After a restart, the retry (still conditional on the old head) is
    // recognised and returns the first result.
    let s = TestServer::start(open(), LedgerConfig::default()).await;
    let c = Client::connect(s.url()).await.unwrap();
    let again = c
        .append_batch("ctx", entries(&["a", "b"]), keyed(Some(0)))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.entries, first.entries);
    for other in [&["a"][..], &["a", "c"][..], &["a", "b", "c"][..]] {
        let err = c
            .append_batch("ctx", entries(other), keyed(None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::AlreadyExists(m) if m.contains("batch-7") && m.contains("sequence 1")),
            "{other:?}: {err}"
        );
    }
    assert_eq!(c.head("ctx").await.unwrap().sequence, 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_batches_are_refused_whole_naming_the_entry_and_the_limit() {
    let config = LedgerConfig {
        limits: Limits {
            batch_entries_max: 3,
            payload_bytes_max: 8,
            ..Limits::default()
        },
        ..LedgerConfig::default()
    };
    let s = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let c = Client::connect(s.url()).await.unwrap();
    assert_eq!(c.server_info().await.unwrap().batch_entries_max, 3);
    let cases: Vec<(Vec<BatchEntry>, &str)> = vec![
        (Vec::new(), "no entries"),
        (entries(&["a", "b", "c", "d"]), "4 entries; the limit is 3"),
        (
            vec![entry("facts", "a"), entry("facts", "too long for eight")],
            "entries[1]: payload is 18 bytes; the limit is 8 bytes",
        ),
        (
            vec![entry("facts", "a"), entry("", "b")],
            "entries[1]: key is empty",
        ),
    ];
    for (batch, want) in cases {
        let err = c
            .append_batch("ctx", batch, BatchOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidArgument(m) if m.contains(want)),
            "want {want:?}, got {err}"
        );
    }
    assert_eq!(
        c.head("ctx").await.unwrap().sequence,
        0,
        "nothing of a refused batch is appended"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_last_entry_comes_with_the_head_that_names_it() {
    let s = TestServer::memory().await;
    let c = Client::connect(s.url()).await.unwrap();
    let (head, entry) = c.last_entry("ctx").await.unwrap();
    assert_eq!((head.sequence, entry), (0, None));
    let b = c
        .append_batch("ctx", entries(&["a", "b"]), BatchOptions::default())
        .await
        .unwrap();
    let (head, entry) = c.last_entry("ctx").await.unwrap();
    assert_eq!(head.sequence, 2);
    assert_eq!(entry.as_ref(), b.entries.last());
    s.stop().await;
}
