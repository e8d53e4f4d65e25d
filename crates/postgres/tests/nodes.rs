//! Several stores (nodes) over one schema, in one process: sequencing across
//! nodes, commit order as seen by readers, idempotency across nodes,
//! outages and recovery, schema versioning, the signing key record.
//!
//! Each test uses its own schema (dropped at the end) and is skipped, saying
//! so, when PostgreSQL is unreachable (a failure with
//! `CONVERGE_LEDGER_REQUIRE_SERVICES=1`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use converge_ledger_core::{Entry, Head, Metadata, NewEntry, PublicKey, merkle};
use converge_ledger_postgres::testkit::{Proxy, TestSchema};
use converge_ledger_postgres::{CHECKPOINT_INTERVAL, PostgresStore, SCHEMA_VERSION};
use converge_ledger_store::{
    AppendCommand, Scan, Store, StoreError, WriteCommand, WriteOutcome, proofs,
};

fn test_schema(name: &str) -> Option<TestSchema> {
    TestSchema::create(name)
}

fn append(ctx: &str, payload: &str, key: Option<&str>) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: NewEntry {
            key: "k".into(),
            payload: payload.as_bytes().to_vec(),
            metadata: Metadata::new(),
            lamport: 0,
        },
        idempotency_key: key.map(str::to_owned),
    })
}

fn all(store: &dyn Store, ctx: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    store
        .scan(
            ctx,
            Scan {
                after: 0,
                until: u64::MAX,
                key: None,
            },
            &mut |e| {
                out.push(e);
                true
            },
        )
        .unwrap();
    out
}

/// Chain from genesis, stored head equal to the fold, Merkle root from the
/// stored nodes equal to the head's; returns the entries.
fn verify(store: &dyn Store, ctx: &str) -> Vec<Entry> {
    let entries = all(store, ctx);
    let mut head = Head::empty(ctx);
    for e in &entries {
        head.check_next(ctx, e)
            .unwrap_or_else(|err| panic!("{ctx}: {err}"));
        head.advance(e);
    }
    assert_eq!(
        store.head(ctx).unwrap().as_ref(),
        Some(&head),
        "{ctx}: stored head"
    );
    assert_eq!(
        proofs::root_at(store, ctx, head.sequence).unwrap(),
        head.merkle_root(),
        "{ctx}: root from stored Merkle nodes"
    );
    let leaves: Vec<_> = entries
        .iter()
        .map(|e| merkle::leaf_hash(&e.hash.0))
        .collect();
    assert_eq!(head.merkle_root(), merkle::root_of_leaf_hashes(&leaves));
    entries
}

/// Three nodes, two writer threads each, batches of 1–8 appends to one hot
/// context (and a few to their own), while a fourth node reads: sequences
/// stay gapless and unique, every append is there exactly once, and the
/// result is one chain and one Merkle tree. Crosses a checkpoint.
#[test]
fn nodes_appending_to_one_context_form_one_gapless_chain() {
    let Some(schema) = test_schema("nodes_appending_to_one_context_form_one_gapless_chain") else {
        return;
    };
    let nodes: Vec<Arc<PostgresStore>> = (0..3)
        .map(|_| Arc::new(PostgresStore::open(schema.options()).unwrap()))
        .collect();
    let reader_node = PostgresStore::open(schema.options()).unwrap();
    const BATCHES: usize = 40;
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..2 {
            let node = node.clone();
            let appended = appended.clone();
            writers.push(std::thread::spawn(move || {
                let mut payloads = Vec::new();
                for b in 0..BATCHES {
                    let size = 1 + (b * 7 + n * 3 + t) % 8;
                    let cmds: Vec<WriteCommand> = (0..size)
                        .map(|i| {
                            let p = format!("n{n}-t{t}-b{b}-i{i}");
                            let ctx = if i == 0 && b % 10 == 0 {
                                format!("own-{n}")
                            } else {
                                "hot".to_string()
                            };
                            append(&ctx, &p, Some(&p))
                        })
                        .collect();
                    let c = node.write(1_000 + b as u64, cmds).unwrap();
                    for o in &c.outcomes {
                        assert!(matches!(o, WriteOutcome::Appended(_)), "{o:?}");
                    }
                    for (ctx, e) in &c.entries {
                        if &**ctx == "hot" {
                            payloads.push(String::from_utf8(e.payload.clone()).unwrap());
                        }
                    }
                    appended.fetch_add(size as u64, Ordering::Relaxed);
                }
                payloads
            }));
        }
    }
    // A reader on another node: every head it sees is readable in full and
    // never goes back.
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let head = reader_node.head("hot").unwrap().map_or(0, |h| h.sequence);
                assert!(head >= last, "the head went back from {last} to {head}");
                let mut n = 0;
                reader_node
                    .scan(
                        "hot",
                        Scan {
                            after: 0,
                            until: head,
                            key: None,
                        },
                        &mut |e| {
                            n += 1;
                            assert_eq!(e.sequence, n);
                            true
                        },
                    )
                    .unwrap();
                assert_eq!(n, head, "head {head} but {n} entries readable");
                last = head;
                reads += 1;
            }
            reads
        })
    };
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let node = &*nodes[0];
    let entries = verify(node, "hot");
    for n in 0..3 {
        verify(node, &format!("own-{n}"));
    }
    let stored: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a payload was stored twice");
    assert_eq!(stored.len(), acknowledged.len());
    for p in &acknowledged {
        assert!(unique.contains(p), "acknowledged {p} is missing");
    }
    assert!(
        entries.len() as u64 > CHECKPOINT_INTERVAL,
        "only {} entries",
        entries.len()
    );
    // Checkpoints: the head as it was at each recorded sequence.
    let checkpoints = node.checkpoints("hot").unwrap();
    assert!(!checkpoints.is_empty());
    for cp in checkpoints {
        let mut head = Head::empty("hot");
        for e in &entries[..cp.sequence as usize] {
            head.advance(e);
        }
        assert_eq!(cp, head, "checkpoint at {}", cp.sequence);
    }
    // Every node sees the same head.
    let heads: Vec<_> = nodes.iter().map(|n| n.head("hot").unwrap()).collect();
    assert!(heads.windows(2).all(|w| w[0] == w[1]));
}

/// A consumer that reads "everything after my cursor" while three nodes
/// append never skips an entry: commit order is sequence order.
#[test]
fn a_cursor_reader_never_skips_an_entry() {
    let Some(schema) = test_schema("a_cursor_reader_never_skips_an_entry") else {
        return;
    };
    let nodes: Vec<Arc<PostgresStore>> = (0..3)
        .map(|_| Arc::new(PostgresStore::open(schema.options()).unwrap()))
        .collect();
    let reader_node = PostgresStore::open(schema.options()).unwrap();
    const PER_NODE: u64 = 150;
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let node = node.clone();
            std::thread::spawn(move || {
                for i in 0..PER_NODE {
                    node.write(i, vec![append("c", &format!("{n}-{i}"), None)])
                        .unwrap();
                }
            })
        })
        .collect();
    let total = 3 * PER_NODE;
    let mut cursor = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cursor < total {
        assert!(Instant::now() < deadline, "reader stuck at {cursor}");
        // No head read: the classic "WHERE seq > cursor" consumer.
        reader_node
            .scan(
                "c",
                Scan {
                    after: cursor,
                    until: u64::MAX,
                    key: None,
                },
                &mut |e| {
                    assert_eq!(e.sequence, cursor + 1, "skipped from {cursor}");
                    cursor = e.sequence;
                    true
                },
            )
            .unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(verify(&*nodes[1], "c").len() as u64, total);
}

/// Idempotency keys bind across nodes, also when two nodes race with the
/// same key: exactly one entry, the other node reports the duplicate.
#[test]
fn idempotency_keys_hold_across_nodes() {
    let Some(schema) = test_schema("idempotency_keys_hold_across_nodes") else {
        return;
    };
    let a = Arc::new(PostgresStore::open(schema.options()).unwrap());
    let b = Arc::new(PostgresStore::open(schema.options()).unwrap());
    let first = match &a
        .write(1, vec![append("i", "v", Some("k1"))])
        .unwrap()
        .outcomes[0]
    {
        WriteOutcome::Appended(e) => e.clone(),
        o => panic!("{o:?}"),
    };
    let again = b.write(2, vec![append("i", "v", Some("k1"))]).unwrap();
    assert_eq!(again.outcomes[0], WriteOutcome::Duplicate(first));
    assert!(again.entries.is_empty());
    let conflict = b.write(3, vec![append("i", "other", Some("k1"))]).unwrap();
    assert_eq!(
        conflict.outcomes[0],
        WriteOutcome::IdempotencyConflict { sequence: 1 }
    );
    for round in 0..20 {
        let key = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|s| {
                let barrier = barrier.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.write(10, vec![append("i", &key, Some(&key))])
                        .unwrap()
                        .outcomes
                        .remove(0)
                })
            })
            .collect();
        let outcomes: Vec<WriteOutcome> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let appended: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                WriteOutcome::Appended(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(appended.len(), 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.contains(&WriteOutcome::Duplicate(appended[0].clone())),
            "round {round}: {outcomes:?}"
        );
    }
    assert_eq!(verify(&*a, "i").len(), 21);
}

/// Appends with idempotency keys look their keys up through the primary
/// key, also where nothing ever analyzes the tables (autovacuum off, as on
/// some servers): a plan cached while the table was empty must not go on
/// scanning the whole table for every append as it grows.
#[test]
fn idempotency_lookups_use_the_index_where_nothing_analyzes_the_table() {
    let Some(schema) = test_schema("idempotency_lookups_use_the_index") else {
        return;
    };
    let store = PostgresStore::open(schema.options()).unwrap();
    let table = format!(r#""{}".idempotency"#, schema.options().schema);
    schema.query(&format!(
        "ALTER TABLE {table} SET (autovacuum_enabled = false)"
    ));
    let n = 2000;
    for i in 0..n {
        let key = format!("key-{i}");
        let outcome = store
            .write(1, vec![append(&format!("c{}", i % 4), "v", Some(&key))])
            .unwrap()
            .outcomes
            .remove(0);
        assert!(matches!(outcome, WriteOutcome::Appended(_)), "{outcome:?}");
    }
    // The store's sessions report their scans when they end.
    drop(store);
    let scans = || {
        let row = schema.query(&format!(
            "SELECT seq_scan, idx_scan FROM pg_stat_user_tables \
             WHERE relid = '{table}'::regclass"
        ));
        let n = |i: usize| row[0][i].as_deref().unwrap_or("0").parse::<u64>().unwrap();
        (n(0), n(1))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (seq, idx) = loop {
        let (seq, idx) = scans();
        if seq + idx >= n || std::time::Instant::now() > deadline {
            break (seq, idx);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        seq + idx >= n,
        "{seq} + {idx} scans reported for {n} lookups"
    );
    assert!(
        seq <= n / 10,
        "{seq} full scans of the idempotency table for {n} appends ({idx} through the index)"
    );
}

/// The database goes away (connections cut, new ones refused): writes and
/// reads fail as `Io` naming PostgreSQL; when it is back the same store
/// works again without reopening, and nothing acknowledged was lost.
#[test]
fn an_outage_fails_requests_clearly_and_the_store_recovers() {
    let Some(schema) = test_schema("an_outage_fails_requests_clearly_and_the_store_recovers")
    else {
        return;
    };
    // Create the schema directly, then use the store through the proxy.
    drop(PostgresStore::open(schema.options()).unwrap());
    let proxy = Proxy::start(&schema.upstream());
    let mut options = schema.options();
    options.url = schema.url_via(&proxy);
    options.connect_timeout = Duration::from_secs(2);
    let store = PostgresStore::open(options).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let c = store
            .write(i, vec![append("o", &format!("before-{i}"), None)])
            .unwrap();
        acknowledged.push(c.entries[0].1.hash);
    }
    proxy.set_down(true);
    let e = store
        .write(10, vec![append("o", "during", None)])
        .unwrap_err();
    let StoreError::Io(message) = &e else {
        panic!("{e:?}")
    };
    assert!(
        message.contains("PostgreSQL at 127.0.0.1:") && message.contains("unavailable"),
        "{message}"
    );
    let e = store.head("o").unwrap_err();
    assert!(
        matches!(&e, StoreError::Io(m) if m.contains("unavailable")),
        "{e:?}"
    );
    proxy.set_down(false);
    // Back: the very next calls work (dead connections are replaced).
    let c = store.write(20, vec![append("o", "after", None)]).unwrap();
    acknowledged.push(c.entries[0].1.hash);
    let entries = verify(&store, "o");
    let stored: Vec<_> = entries.iter().map(|e| e.hash).collect();
    for h in &acknowledged {
        assert!(stored.contains(h), "acknowledged {h} lost");
    }
    // "during" was refused before anything was sent: not there.
    assert!(entries.iter().all(|e| e.payload != b"during"));
}

/// Every backend of the store is terminated (as a database restart does):
/// the store notices, reconnects and goes on; nothing acknowledged is lost.
#[test]
fn terminated_connections_are_replaced() {
    let Some(schema) = test_schema("terminated_connections_are_replaced") else {
        return;
    };
    let store = PostgresStore::open(schema.options()).unwrap();
    let mut acked = 0u64;
    let mut failures = Vec::new();
    for round in 0..5 {
        // Reads too, on connections that are about to be cut.
        assert_eq!(store.head("t").unwrap().map_or(0, |h| h.sequence), acked);
        for i in 0..10 {
            match store.write(i, vec![append("t", &format!("{round}-{i}"), None)]) {
                Ok(_) => acked += 1,
                Err(e) => failures.push(e),
            }
        }
        assert!(schema.terminate_backends() > 0, "no backend to terminate");
    }
    // A terminated connection is noticed before anything is written (a dead
    // pooled connection fails the first step of a write, which is retried
    // on a fresh one; reads are retried likewise), so not a single call
    // fails.
    assert!(failures.is_empty(), "{failures:?}");
    store.write(99, vec![append("t", "last", None)]).unwrap();
    assert_eq!(verify(&store, "t").len() as u64, acked + 1);
}

/// Nodes that start together migrate the schema once; a schema newer than
/// the build is refused with a message and left alone.
#[test]
fn the_schema_is_versioned_and_migrated_once() {
    let Some(schema) = test_schema("the_schema_is_versioned_and_migrated_once") else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let options = schema.options();
            std::thread::spawn(move || PostgresStore::open(options).map(|s| s.schema_version()))
        })
        .collect();
    for o in opens {
        assert_eq!(o.join().unwrap().unwrap(), SCHEMA_VERSION);
    }
    let rows = schema.query(&format!(
        r#"SELECT version FROM "{}".schema_migrations ORDER BY version"#,
        schema.schema
    ));
    assert_eq!(rows.len() as i32, SCHEMA_VERSION, "{rows:?}");
    schema.query(&format!(
        r#"INSERT INTO "{}".schema_migrations (version, description) VALUES (99, 'from the future')"#,
        schema.schema
    ));
    let e = PostgresStore::open(schema.options())
        .err()
        .expect("refused");
    let StoreError::Config(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains("version 99") && m.contains("upgrade"), "{m}");
}

/// The first node records its public signing key; later nodes get it back
/// (and the server refuses to start with a different one).
#[test]
fn the_signing_key_is_recorded_once() {
    let Some(schema) = test_schema("the_signing_key_is_recorded_once") else {
        return;
    };
    let a = PostgresStore::open(schema.options()).unwrap();
    let b = PostgresStore::open(schema.options()).unwrap();
    let k1 = PublicKey([1; 32]);
    let k2 = PublicKey([2; 32]);
    assert_eq!(a.register_signing_key(&k1).unwrap(), k1);
    assert_eq!(b.register_signing_key(&k2).unwrap(), k1);
    assert_eq!(b.register_signing_key(&k1).unwrap(), k1);
}

/// History cannot be changed through SQL either: updates, deletes and
/// truncation of entries are refused by the schema; a row altered behind
/// the triggers' back is reported as corrupt, never served.
#[test]
fn history_is_append_only_in_the_database_too() {
    let Some(schema) = test_schema("history_is_append_only_in_the_database_too") else {
        return;
    };
    let store = PostgresStore::open(schema.options()).unwrap();
    store
        .write(1, vec![append("h", "one", None), append("h", "two", None)])
        .unwrap();
    let s = &schema.schema;
    for sql in [
        format!(r#"UPDATE "{s}".entries SET payload = 'x' WHERE seq = 1"#),
        format!(r#"DELETE FROM "{s}".entries WHERE seq = 2"#),
        format!(r#"TRUNCATE "{s}".entries"#),
    ] {
        let e = converge_ledger_postgres::testkit::admin_query(&schema.url(), &sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    schema.query(&format!(
        r#"ALTER TABLE "{s}".entries DISABLE TRIGGER entries_append_only;
           UPDATE "{s}".entries SET payload = 'forged' WHERE seq = 1;
           DELETE FROM "{s}".entries WHERE seq = 2;"#
    ));
    let e = store.entry("h", 1).unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt { sequence: 1, reason, .. } if reason.contains("altered")),
        "{e:?}"
    );
    // Entry 2 is gone: reading up to the head reports the hole instead of
    // ending early.
    let e = store
        .scan(
            "h",
            Scan {
                after: 1,
                until: 2,
                key: None,
            },
            &mut |e| panic!("served {e:?}"),
        )
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt { sequence: 2, reason, .. } if reason.contains("missing")),
        "{e:?}"
    );
}

/// Text columns cannot hold NUL: such a write is refused as a whole, with a
/// message, and nothing is written.
#[test]
fn nul_in_ids_is_refused_cleanly() {
    let Some(schema) = test_schema("nul_in_ids_is_refused_cleanly") else {
        return;
    };
    let store = PostgresStore::open(schema.options()).unwrap();
    let e = store
        .write(1, vec![append("ok", "v", None), append("bad\0", "v", None)])
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Internal(m) if m.contains("NUL")),
        "{e:?}"
    );
    assert!(store.head("ok").unwrap().is_none());
    store.write(1, vec![append("ok", "v", None)]).unwrap();
}
