//! Offline verification split into units across threads: the same verdict,
//! and the same first failing sequence, as a single pass, wherever the
//! damage is relative to the unit boundaries.

use std::sync::Arc;

use converge_ledger_core::{Metadata, NewEntry, record};
use converge_ledger_store::verify::{VerifyOptions, verify_context_with};
use converge_ledger_store::{AppendCommand, EmbeddedOptions, EmbeddedStore, Store, WriteCommand};

const ENTRIES: u64 = 53;

fn store(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    let s = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir)).unwrap());
    let commands = (0..ENTRIES)
        .map(|i| {
            WriteCommand::Append(AppendCommand {
                context: "ctx".into(),
                entry: NewEntry {
                    key: "k".into(),
                    payload: format!("payload {i}").into_bytes(),
                    metadata: Metadata::new(),
                    lamport: 0,
                },
                idempotency_key: None,
            })
        })
        .collect();
    s.write(1_000, commands).unwrap();
    s
}

/// Units of 1, 4 and 16 entries (53 is no multiple of any but 1), and the
/// default, on 1 to 3 threads.
fn layouts() -> Vec<VerifyOptions> {
    let mut v = Vec::new();
    for unit_log2 in [0, 2, 4, 16] {
        for threads in [1, 2, 3] {
            v.push(VerifyOptions { threads, unit_log2 });
        }
    }
    v
}

#[test]
fn an_intact_context_verifies_to_its_stored_head_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stored = s.head("ctx").unwrap().unwrap();
    for o in layouts() {
        let mut last = 0;
        let v = verify_context_with(s.as_ref(), "ctx", o, &mut |done, total| {
            assert!(done <= total);
            last = done;
        })
        .unwrap_or_else(|f| panic!("{o:?}: {f}"));
        assert_eq!(v.head, stored, "{o:?}");
        assert_eq!(last, ENTRIES, "{o:?}: progress reaches the end");
    }
}

/// Each kind of damage at sequences that start, end or sit inside a unit
/// (of 4), and at the first and last entry.
#[test]
fn the_first_failing_sequence_is_reported_whatever_the_layout() {
    type Damage = fn(&EmbeddedStore, u64);
    let damages: [(&str, Damage, &str); 4] = [
        (
            "rewritten payload",
            |s, seq| {
                let mut e = record::decode(&s.raw_entry("ctx", seq).unwrap()).unwrap();
                e.payload.push(b'!');
                s.raw_put_entry("ctx", seq, &record::encode(&e));
            },
            "hashes to",
        ),
        (
            "flipped byte",
            |s, seq| {
                let mut raw = s.raw_entry("ctx", seq).unwrap();
                let n = raw.len();
                raw[n / 2] ^= 0x40;
                s.raw_put_entry("ctx", seq, &raw);
            },
            "checksum",
        ),
        (
            "deleted entry",
            |s, seq| s.raw_delete_entry("ctx", seq),
            "missing",
        ),
        (
            "entry from elsewhere (relinked, rehashed)",
            |s, seq| {
                // A valid entry whose previous hash points nowhere.
                let mut e = record::decode(&s.raw_entry("ctx", seq).unwrap()).unwrap();
                e.prev_hash = converge_ledger_core::Digest::of(&[b"elsewhere"]);
                e.hash = e.compute_hash("ctx");
                s.raw_put_entry("ctx", seq, &record::encode(&e));
            },
            "does not link",
        ),
    ];
    for (what, damage, says) in damages {
        for seq in [1, 4, 5, 6, 8, 9, 33, ENTRIES] {
            let dir = tempfile::tempdir().unwrap();
            let s = store(dir.path());
            damage(&s, seq);
            for o in layouts() {
                let f = verify_context_with(s.as_ref(), "ctx", o, &mut |_, _| {})
                    .expect_err(&format!("{what} at {seq}, {o:?}"));
                // Inside a unit or at its first entry (checked against
                // the unit before), the damaged sequence itself.
                assert_eq!(f.sequence, seq, "{what} at {seq}, {o:?}: {f}");
                assert!(f.reason.contains(says), "{what} at {seq}, {o:?}: {f}");
            }
        }
    }
}

#[test]
fn damage_in_two_units_reports_the_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for seq in [41, 10] {
        s.raw_delete_entry("ctx", seq);
    }
    for o in layouts() {
        let f = verify_context_with(s.as_ref(), "ctx", o, &mut |_, _| {}).unwrap_err();
        assert_eq!(f.sequence, 10, "{o:?}: {f}");
    }
}
