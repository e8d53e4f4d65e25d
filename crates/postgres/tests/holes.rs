//! Lost rows below the head: a scan of a context on PostgreSQL names the
//! first missing entry, whether it lies between stored entries or after the
//! last one (a tail that ends below the head). Rows are deleted through an
//! administrative connection with the schema's triggers disabled, as a
//! damaged or badly restored database would lose them. Skipped, saying so,
//! when the database is unreachable (a failure with
//! `CONVERGE_LEDGER_REQUIRE_SERVICES=1`).

use converge_ledger_core::{Metadata, NewEntry};
use converge_ledger_postgres::PostgresStore;
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_store::{AppendCommand, Scan, Store, StoreError, WriteCommand};

fn append(context: &str, n: u64) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: context.to_owned(),
        entry: NewEntry {
            key: "k".into(),
            payload: format!("p{n}").into_bytes(),
            metadata: Metadata::new(),
            lamport: 0,
        },
        idempotency_key: None,
    })
}

fn scan(store: &PostgresStore, context: &str, after: u64) -> (Vec<u64>, Result<(), StoreError>) {
    let mut seen = Vec::new();
    let r = store.scan(
        context,
        Scan {
            after,
            until: u64::MAX,
            key: None,
        },
        &mut |e| {
            seen.push(e.sequence);
            true
        },
    );
    (seen, r)
}

fn missing_at(r: Result<(), StoreError>) -> u64 {
    match r {
        Err(StoreError::Corrupt { sequence, .. }) => sequence,
        other => panic!("expected a corruption report, got {other:?}"),
    }
}

#[test]
fn a_scan_names_entries_missing_below_the_head_in_the_middle_and_at_the_tail() {
    let Some(schema) = TestSchema::create("a_scan_names_entries_missing_below_the_head") else {
        return;
    };
    let store = PostgresStore::open(schema.options()).expect("open the store");
    for n in 1..=5 {
        store.write(n, vec![append("c", n)]).expect("append");
    }
    let (seen, r) = scan(&store, "c", 0);
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    r.expect("an intact context scans clean");

    let delete = |seq: u64| {
        schema.query(&format!(
            r#"ALTER TABLE "{s}".entries DISABLE TRIGGER USER;
               DELETE FROM "{s}".entries WHERE context = 'c' AND seq = {seq};
               ALTER TABLE "{s}".entries ENABLE TRIGGER USER;"#,
            s = schema.schema
        ));
    };
    // The last entry, below the head (5): the scan ends at 4 and must say
    // that 5 is missing, not that the context ends there.
    delete(5);
    let (seen, r) = scan(&store, "c", 0);
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(missing_at(r), 5);
    let (seen, r) = scan(&store, "c", 4);
    assert!(seen.is_empty());
    assert_eq!(missing_at(r), 5);
    // And one between two stored entries.
    delete(3);
    let (seen, r) = scan(&store, "c", 0);
    assert_eq!(seen, vec![1, 2]);
    assert_eq!(missing_at(r), 3);
}
