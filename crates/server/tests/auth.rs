//! Authentication and per-context authorization over gRPC: no or bad
//! credentials are `UNAUTHENTICATED`, a missing right is
//! `PERMISSION_DENIED` naming the right and the context, every RPC checks
//! its right before doing anything, nothing changes on a refusal, listings
//! and lookups by hash reveal nothing the caller may not read, and only an
//! admin may load history signed by an unknown key.

mod common;

use std::sync::Arc;

use common::TestServer;
use converge_ledger_client::{
    AppendOptions, BatchEntry, BatchOptions, Client, ClientError, ClientOptions, GetOptions,
};
use converge_ledger_server::{AuthConfig, LedgerConfig, ServerConfig, new_token};
use converge_ledger_store::MemoryStore;

struct Tokens {
    writer: String,
    reader: String,
    loader: String,
    admin: String,
}

/// A server whose principals are: a writer of `job-*`, a reader of `job-1`
/// only, a loader into `imp-*`, and an admin.
async fn server(
    ledger: LedgerConfig,
) -> (TestServer, Tokens, Arc<converge_ledger_server::Authority>) {
    let (writer, w) = new_token();
    let (reader, r) = new_token();
    let (loader, l) = new_token();
    let (admin, a) = new_token();
    let file = format!(
        r#"
        [[principals]]
        name = "writer"
        token_sha256 = "{w}"
        grants = ["append:job-*", "read:job-*"]

        [[principals]]
        name = "reader"
        token_sha256 = "{r}"
        grants = ["read:job-1"]

        [[principals]]
        name = "loader"
        token_sha256 = "{l}"
        grants = ["load:imp-*", "read:imp-*"]

        [[principals]]
        name = "admin"
        token_sha256 = "{a}"
        grants = ["admin:*"]
        "#
    );
    let auth = Arc::new(converge_ledger_server::Authority::configured(
        AuthConfig::parse(&file).unwrap(),
    ));
    let config = ServerConfig {
        auth: auth.clone(),
        ..ServerConfig::default()
    };
    let s =
        TestServer::start_full(Arc::new(MemoryStore::new()), ledger, config, "127.0.0.1:0").await;
    (
        s,
        Tokens {
            writer,
            reader,
            loader,
            admin,
        },
        auth,
    )
}

async fn client(s: &TestServer, token: Option<&str>) -> Client {
    let options = ClientOptions {
        token: token.map(str::to_owned),
        attempts: 1,
        ..ClientOptions::default()
    };
    Client::connect_with(s.url(), options).await.unwrap()
}

fn denied(e: &ClientError, right: &str, context: &str) -> bool {
    matches!(e, ClientError::PermissionDenied(m)
        if m.contains(&format!("no {right} right")) && m.contains(&format!("{context:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_bad_credentials_are_unauthenticated_for_every_call() {
    let (s, _, _) = server(LedgerConfig::default()).await;
    for token in [None, Some("clt_not-a-token-of-this-server")] {
        let c = client(&s, token).await;
        let unauth = |r: Result<(), ClientError>| {
            assert!(
                matches!(r, Err(ClientError::Unauthenticated(_))),
                "{token:?}: {r:?}"
            )
        };
        unauth(
            c.append("job-1", "k", vec![1], AppendOptions::default())
                .await
                .map(|_| ()),
        );
        unauth(c.get("job-1", GetOptions::default()).await.map(|_| ()));
        unauth(c.head("job-1").await.map(|_| ()));
        unauth(c.server_info().await.map(|_| ()));
        unauth(c.list_contexts("", 10).await.map(|_| ()));
        unauth(c.snapshot("job-1").await.map(|_| ()));
        let mut w = c.watch("job-1", None, 0);
        // The watch retries transient errors only: this one ends it.
        unauth(w.next().await.unwrap().map(|_| ()));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_right_is_refused_naming_it_and_nothing_changes() {
    let (s, t, _) = server(LedgerConfig::default()).await;
    let writer = client(&s, Some(&t.writer)).await;
    let reader = client(&s, Some(&t.reader)).await;
    let admin = client(&s, Some(&t.admin)).await;
    writer
        .append("job-1", "k", b"a".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let e = writer
        .append("other-1", "k", b"x".to_vec(), AppendOptions::default())
        .await
        .unwrap_err();
    assert!(denied(&e, "append", "other-1"), "{e}");
    let e = writer
        .append_batch(
            "other-1",
            vec![BatchEntry {
                key: "k".into(),
                payload: vec![1],
                metadata: Default::default(),
            }],
            BatchOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(denied(&e, "append", "other-1"), "{e}");
    assert_eq!(admin.head("other-1").await.unwrap().sequence, 0);
    // The reader reads job-1, and nothing else, and writes nothing.
    assert_eq!(
        reader
            .get("job-1", GetOptions::default())
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    let e = reader
        .append("job-1", "k", b"y".to_vec(), AppendOptions::default())
        .await
        .unwrap_err();
    assert!(denied(&e, "append", "job-1"), "{e}");
    assert_eq!(admin.head("job-1").await.unwrap().sequence, 1);
    writer
        .append("job-2", "k", b"b".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    for e in [
        reader
            .get("job-2", GetOptions::default())
            .await
            .map(|_| ())
            .unwrap_err(),
        reader.head("job-2").await.map(|_| ()).unwrap_err(),
        reader.snapshot("job-2").await.map(|_| ()).unwrap_err(),
        reader
            .inclusion_proof("job-2", 1, 0)
            .await
            .map(|_| ())
            .unwrap_err(),
        reader
            .consistency_proof("job-2", 1, 1)
            .await
            .map(|_| ())
            .unwrap_err(),
        reader
            .read_all("job-2", GetOptions::default(), |_| {})
            .await
            .map(|_| ())
            .unwrap_err(),
        reader
            .snapshot_to("job-2", &mut Vec::new())
            .await
            .map(|_| ())
            .unwrap_err(),
        reader
            .watch("job-2", None, 0)
            .next()
            .await
            .unwrap()
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(denied(&e, "read", "job-2"), "{e}");
    }
    let snapshot = admin.snapshot("job-1").await.unwrap();
    let e = reader
        .load("job-9", snapshot.bytes.clone(), false, false)
        .await
        .unwrap_err();
    assert!(denied(&e, "load", "job-9"), "{e}");
    let e = reader
        .load_streamed("job-9", snapshot.bytes.clone(), false, false)
        .await
        .unwrap_err();
    assert!(denied(&e, "load", "job-9"), "{e}");
    assert_eq!(admin.head("job-9").await.unwrap().sequence, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_lookups_by_hash_show_only_what_the_caller_may_read() {
    let (s, t, _) = server(LedgerConfig::default()).await;
    let writer = client(&s, Some(&t.writer)).await;
    let reader = client(&s, Some(&t.reader)).await;
    let mine = writer
        .append("job-1", "k", b"a".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let theirs = writer
        .append("job-2", "k", b"b".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let listed: Vec<String> = reader
        .list_contexts("", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(listed, ["job-1"]);
    assert_eq!(reader.get_by_hash(&mine.hash).await.unwrap().0, "job-1");
    // An entry of another context reads exactly like one that does not exist.
    let hidden = reader.get_by_hash(&theirs.hash).await.unwrap_err();
    let absent = reader
        .get_by_hash(&converge_ledger_client::Digest([7; 32]))
        .await
        .unwrap_err();
    let strip = |e: &ClientError| {
        e.to_string()
            .replace(&theirs.hash.to_hex(), "H")
            .replace(&"07".repeat(32), "H")
    };
    assert!(matches!(hidden, ClientError::NotFound(_)), "{hidden}");
    assert_eq!(strip(&hidden), strip(&absent));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_loads_history_signed_by_an_unknown_key() {
    // Another server's snapshot: a key this one does not know.
    let other = TestServer::memory().await;
    let oc = Client::connect(other.url()).await.unwrap();
    for i in 0..3u8 {
        oc.append("src", "k", vec![i], AppendOptions::default())
            .await
            .unwrap();
    }
    let foreign = oc.snapshot("src").await.unwrap().bytes;
    let (s, t, _) = server(LedgerConfig::default()).await;
    let loader = client(&s, Some(&t.loader)).await;
    let admin = client(&s, Some(&t.admin)).await;
    // The loader may load, but asking to accept the unknown signer is not
    // enough.
    let e = loader
        .load("imp-1", foreign.clone(), false, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::FailedPrecondition(m) if m.contains("does not trust")),
        "{e}"
    );
    assert_eq!(admin.head("imp-1").await.unwrap().sequence, 0);
    let r = admin.load("imp-1", foreign, false, true).await.unwrap();
    assert_eq!(r.entries_restored, 3);
    let head = loader.verify_head("imp-1").await.unwrap();
    assert_eq!(
        head.loaded.map(|l| (l.through, l.signer)),
        Some((3, other.ledger.public_key()))
    );
    // Its own snapshots the loader loads as usual.
    let own = admin.snapshot("imp-1").await.unwrap().bytes;
    assert_eq!(
        loader
            .load("imp-2", own, true, false)
            .await
            .unwrap()
            .entries_restored,
        3
    );
    s.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_principals_take_effect_for_the_next_call() {
    let (s, t, auth) = server(LedgerConfig::default()).await;
    let writer = client(&s, Some(&t.writer)).await;
    writer
        .append("job-1", "k", b"a".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let (fresh, hash) = new_token();
    auth.replace(
        AuthConfig::parse(&format!(
            "[[principals]]\nname = \"fresh\"\ntoken_sha256 = \"{hash}\"\ngrants = [\"read:*\"]\n"
        ))
        .unwrap(),
    );
    let e = writer
        .append("job-1", "k", b"b".to_vec(), AppendOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e}");
    let reader = client(&s, Some(&fresh)).await;
    assert_eq!(reader.head("job-1").await.unwrap().sequence, 1);
    s.stop().await;
}
