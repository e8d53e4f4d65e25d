//! Verifiable history over gRPC: signed heads, proofs, GetByHash, signer
//! trust on Load, and a client that detects a server which rewrote history.

mod common;

use std::sync::{Arc, RwLock};

use common::TestServer;
use converge_ledger_client::{AppendOptions, Client, ClientError, ClientOptions};
use converge_ledger_core::{Digest, Entry, Head, HeadSigner};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
use converge_ledger_store::{
    Committed, MemoryStore, Scan, Store, StoreError, SystemClock, WriteCommand,
};

async fn fill(c: &Client, ctx: &str, n: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            c.append(
                ctx,
                "k",
                format!("{ctx}-{i}").into_bytes(),
                AppendOptions::default(),
            )
            .await
            .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn heads_are_signed_and_proofs_verify_against_them() {
    let s = TestServer::memory().await;
    let c = Client::connect(s.url()).await.unwrap();
    let entries = fill(&c, "p", 37).await;
    let key = c.server_public_key().await.unwrap();
    assert_eq!(key, s.ledger.public_key());
    let head = c.verify_head("p").await.unwrap();
    assert_eq!((head.sequence, head.public_key), (37, key));
    head.signed().verify().unwrap();
    for seq in [1, 2, 17, 32, 37] {
        let p = c.inclusion_proof("p", seq, 0).await.unwrap();
        assert_eq!(
            (p.tree_size, p.root, p.entry_hash),
            (37, head.merkle_root, entries[seq as usize - 1].hash)
        );
        let p = c.inclusion_proof("p", seq, 33.max(seq)).await.unwrap();
        assert_eq!(p.tree_size, 33.max(seq));
    }
    let p = c.consistency_proof("p", 5, 0).await.unwrap();
    assert_eq!(
        (p.old_size, p.new_size, p.new_root),
        (5, 37, head.merkle_root)
    );
    // Beyond the head, or sequence 0: OUT_OF_RANGE with a message.
    let err = c.inclusion_proof("p", 38, 0).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::OutOfRange(m) if m.contains("38")),
        "{err}"
    );
    let err = c.consistency_proof("p", 3, 99).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::OutOfRange(m) if m.contains("beyond the head")),
        "{err}"
    );
    let err = c.inclusion_proof("p", 0, 0).await.unwrap_err();
    assert!(matches!(err, ClientError::OutOfRange(_)), "{err}");
    // GetByHash.
    let (ctx, e) = c.get_by_hash(&entries[10].hash).await.unwrap();
    assert_eq!((ctx.as_str(), &e), ("p", &entries[10]));
    let err = c.get_by_hash(&Digest::ZERO).await.unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");
    // A client pinned to another key refuses the head.
    let other = HeadSigner::from_seed([9; 32]).public_key();
    let pinned = Client::connect_with(
        s.url(),
        ClientOptions {
            trusted_key: Some(other),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let err = pinned.verify_head("p").await.unwrap_err();
    assert!(matches!(err, ClientError::Verification(_)), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn load_checks_the_signer() {
    let a = TestServer::memory().await;
    let b = TestServer::memory().await;
    let ca = Client::connect(a.url()).await.unwrap();
    let cb = Client::connect(b.url()).await.unwrap();
    fill(&ca, "s", 4).await;
    let snap = ca.snapshot("s").await.unwrap();
    // Its own snapshots: trusted.
    ca.load("s2", snap.bytes.clone(), true, false)
        .await
        .unwrap();
    // Another server's: refused unless allowed, naming the key.
    let err = cb
        .load("s", snap.bytes.clone(), false, false)
        .await
        .unwrap_err();
    let key = a.ledger.public_key().to_hex();
    assert!(
        matches!(&err, ClientError::FailedPrecondition(m) if m.contains(&key) && m.contains("allow_unknown_signer")),
        "{err}"
    );
    assert_eq!(cb.head("s").await.unwrap().sequence, 0);
    // Asking for it is not enough: the operator decides (regression: the
    // request flag alone made the server sign any signer's history).
    let err = cb
        .load("s", snap.bytes.clone(), false, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::FailedPrecondition(m) if m.contains("admin right")),
        "{err}"
    );
    assert_eq!(cb.head("s").await.unwrap().sequence, 0);
    // Accepted where the operator allows unknown signers; the signed head
    // then says the entries were loaded, and from whom.
    let open = LedgerConfig {
        accept_unknown_signers: true,
        ..LedgerConfig::default()
    };
    let d = TestServer::start(Arc::new(MemoryStore::new()), open).await;
    let cd = Client::connect(d.url()).await.unwrap();
    let r = cd.load("s", snap.bytes.clone(), false, true).await.unwrap();
    assert_eq!(r.entries_restored, 4);
    let head = cd.verify_head("s").await.unwrap();
    assert_eq!(
        head.loaded,
        Some(converge_ledger_core::LoadedFrom {
            through: 4,
            signer: a.ledger.public_key()
        })
    );
    // Appends after the load are the server's own: the mark stays at 4.
    cd.append("s", "k", b"mine".to_vec(), Default::default())
        .await
        .unwrap();
    assert_eq!(
        cd.verify_head("s").await.unwrap().loaded.unwrap().through,
        4
    );
    d.stop().await;
    // Or trusted by configuration.
    let config = LedgerConfig {
        trusted_keys: vec![a.ledger.public_key()],
        ..LedgerConfig::default()
    };
    let c = TestServer::start(Arc::new(MemoryStore::new()), config).await;
    let cc = Client::connect(c.url()).await.unwrap();
    assert_eq!(
        cc.load("s", snap.bytes, true, false)
            .await
            .unwrap()
            .entries_restored,
        4
    );
    for s in [a, b, c] {
        s.stop().await;
    }
}

/// A store whose whole content can be replaced underneath a running server:
/// a server that rewrote history.
struct Swappable(RwLock<Arc<MemoryStore>>);

impl Swappable {
    fn get(&self) -> Arc<MemoryStore> {
        self.0.read().unwrap().clone()
    }
}

impl Store for Swappable {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        self.get().write(now_ns, commands)
    }
    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        self.get().head(context)
    }
    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        self.get().scan(context, scan, visit)
    }
    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        self.get().entry(context, sequence)
    }
    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        self.get().find_by_hash(hash)
    }
    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        self.get().merkle_nodes(context, level, start, count)
    }
    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError> {
        self.get().contexts(after, visit)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_client_detects_a_server_that_rewrote_history() {
    let store = Arc::new(Swappable(RwLock::new(Arc::new(MemoryStore::new()))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signer = Arc::new(HeadSigner::from_seed([5; 32]));
    let ledger = Ledger::with_signer(
        store.clone(),
        LedgerConfig::default(),
        signer,
        Arc::new(SystemClock),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(converge_ledger_server::run(
        listener,
        ledger,
        ServerConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let c = Client::connect(format!("http://{addr}")).await.unwrap();
    fill(&c, "job", 10).await;
    let seen = c.verify_head("job").await.unwrap();
    assert_eq!(seen.sequence, 10);
    // Honest growth verifies.
    fill(&c, "job", 3).await;
    assert_eq!(c.verify_head("job").await.unwrap().sequence, 13);

    // The operator rewrites entry 4 and rebuilds a self-consistent chain,
    // signed by the same key, one entry longer.
    let forged = Arc::new(MemoryStore::new());
    let mut cmds = Vec::new();
    let honest = c.get("job", Default::default()).await.unwrap().entries;
    for e in &honest {
        let payload = if e.sequence == 4 {
            b"rewritten".to_vec()
        } else {
            e.payload.clone()
        };
        cmds.push(WriteCommand::Append(converge_ledger_store::AppendCommand {
            context: "job".into(),
            entry: converge_ledger_core::NewEntry {
                key: e.key.clone(),
                payload,
                metadata: e.metadata.clone(),
                lamport: 0,
            },
            idempotency_key: None,
        }));
    }
    forged.write(1, cmds).unwrap();
    *store.0.write().unwrap() = forged;
    fill(&c, "job", 1).await;

    // The forged head is validly signed, but not consistent with what this
    // client verified before.
    let err = c.verify_head("job").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Verification(m) if m.contains("not an extension")),
        "{err}"
    );
    // A fresh client without that memory cannot tell; one that kept the old
    // head can.
    let fresh = Client::connect(format!("http://{addr}")).await.unwrap();
    assert_eq!(fresh.verify_head("job").await.unwrap().sequence, 14);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A clock in the far future, for a server whose entries carry its times.
struct Future;

impl converge_ledger_store::Clock for Future {
    fn now_ns(&self) -> u64 {
        u64::MAX - 1
    }
}

/// Regression: entry times were not checked on Load: a snapshot with times
/// near 2^64 was accepted, and every later append to the context carried
/// that time (time never goes back). Now a loaded time must not be later
/// than the server's clock plus the allowed skew.
#[tokio::test]
async fn a_snapshot_from_the_future_is_refused() {
    let signer = Arc::new(converge_ledger_core::HeadSigner::from_seed([5; 32]));
    let ahead = converge_ledger_server::Ledger::with_signer(
        Arc::new(MemoryStore::new()),
        LedgerConfig::default(),
        signer.clone(),
        Arc::new(Future),
    );
    ahead
        .append(
            "t".into(),
            converge_ledger_core::NewEntry {
                key: "k".into(),
                payload: vec![1],
                metadata: Default::default(),
                lamport: 0,
            },
            None,
        )
        .await
        .unwrap();
    let snap = ahead.snapshot("t").await.unwrap();
    let now = converge_ledger_server::Ledger::with_signer(
        Arc::new(MemoryStore::new()),
        LedgerConfig::default(),
        signer,
        Arc::new(converge_ledger_store::SystemClock),
    );
    let e = now
        .load("t".into(), snap.bytes, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, converge_ledger_server::LedgerError::InvalidArgument(m)
            if m.contains("later than this server's clock")),
        "{e}"
    );
    assert!(now.head("t").await.unwrap().is_none());
}
