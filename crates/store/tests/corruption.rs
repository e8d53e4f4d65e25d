//! A command that has to read a corrupt record fails alone: the rest of its
//! group commit commits, and nothing of the failed command is written.

use converge_ledger_core::{Metadata, NewEntry};
use converge_ledger_store::{
    AppendCommand, BatchCommand, EmbeddedOptions, EmbeddedStore, ImportCommand, Store, StoreError,
    WriteCommand, WriteOutcome,
};

fn new(payload: &str) -> NewEntry {
    NewEntry {
        key: "k".into(),
        payload: payload.as_bytes().to_vec(),
        metadata: Metadata::new(),
        lamport: 0,
    }
}

fn append(ctx: &str, payload: &str, idem: Option<&str>) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: new(payload),
        idempotency_key: idem.map(Into::into),
    })
}

fn corrupt(s: &EmbeddedStore, ctx: &str, seq: u64) {
    let mut raw = s.raw_entry(ctx, seq).unwrap();
    let n = raw.len();
    raw[n / 2] ^= 0x10;
    s.raw_put_entry(ctx, seq, &raw);
}

fn is_corrupt(o: &WriteOutcome, ctx: &str, seq: u64) -> bool {
    matches!(o, WriteOutcome::Failed(StoreError::Corrupt { context, sequence, .. })
        if context == ctx && *sequence == seq)
}

#[test]
fn only_the_command_that_reads_a_corrupt_record_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap();
    s.write(
        1,
        vec![
            append("bad", "first", Some("key-1")),
            append("bad", "second", None),
        ],
    )
    .unwrap();
    let snapshot: Vec<_> = {
        let mut v = Vec::new();
        s.scan(
            "bad",
            converge_ledger_store::Scan {
                after: 0,
                until: u64::MAX,
                key: None,
            },
            &mut |e| {
                v.push(e);
                true
            },
        )
        .unwrap();
        v
    };
    corrupt(&s, "bad", 1);
    corrupt(&s, "bad", 2);

    let c = s
        .write(
            2,
            vec![
                // Retry of key-1: must read entry 1, which is corrupt.
                append("bad", "first", Some("key-1")),
                append("good", "unaffected", None),
                // A batch retry under key-1, same.
                WriteCommand::AppendBatch(BatchCommand {
                    context: "bad".into(),
                    entries: vec![new("first")],
                    idempotency_key: Some("key-1".into()),
                    expected_sequence: None,
                }),
                // An import overlapping entries 1 and 2 reads entry 2 (the
                // chain makes it stand for both).
                WriteCommand::Import(ImportCommand {
                    context: "bad".into(),
                    entries: snapshot,
                    fail_if_exists: false,
                    signer: converge_ledger_core::PublicKey([7; 32]),
                }),
                // An append without a key reads nothing stored: it commits.
                append("bad", "third", None),
            ],
        )
        .unwrap();
    assert!(is_corrupt(&c.outcomes[0], "bad", 1), "{:?}", c.outcomes[0]);
    assert!(matches!(&c.outcomes[1], WriteOutcome::Appended(e) if e.sequence == 1));
    assert!(is_corrupt(&c.outcomes[2], "bad", 1), "{:?}", c.outcomes[2]);
    assert!(is_corrupt(&c.outcomes[3], "bad", 2), "{:?}", c.outcomes[3]);
    assert!(matches!(&c.outcomes[4], WriteOutcome::Appended(e) if e.sequence == 3));
    assert_eq!(s.head("bad").unwrap().unwrap().sequence, 3);
    assert_eq!(s.head("good").unwrap().unwrap().sequence, 1);
    assert_eq!(c.entries.len(), 2, "only the two appends were written");
}

/// Regression: a malformed idempotency record was read as "no key", so the
/// retry it should have recognised appended a duplicate. It is corruption
/// (`DATA_LOSS` over gRPC), and nothing is appended.
#[test]
fn a_malformed_idempotency_record_is_corruption_never_an_absent_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap();
    s.write(1, vec![append("c", "once", Some("retry-me"))])
        .unwrap();
    s.raw_put_idempotency("c", "retry-me", &[0, 0, 1]);
    let c = s
        .write(2, vec![append("c", "once", Some("retry-me"))])
        .unwrap();
    assert!(
        matches!(&c.outcomes[0], WriteOutcome::Failed(StoreError::Corrupt { context, reason, .. })
            if context == "c" && reason.contains("retry-me")),
        "{:?}",
        c.outcomes
    );
    assert_eq!(s.head("c").unwrap().unwrap().sequence, 1);
}
