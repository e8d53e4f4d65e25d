//! Conformance cases. Batches: order, atomicity, retries, conditions.

use super::*;

/// A batch takes consecutive sequences in its own order, interleaves with
/// single appends of the same write exactly as submitted, and chains like
/// single appends.
pub fn batches_append_in_order_and_atomically(h: &mut dyn Harness) {
    let s = h.store();
    let c = s
        .write(
            5,
            vec![
                append("b", "k", "one"),
                batch("b", &["two", "three", "four"], None, None),
                append("b", "k", "five"),
                batch("other", &["x"], None, None),
            ],
        )
        .unwrap();
    let b = appended_batch(&c.outcomes[1]);
    assert_eq!(
        b.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(appended(&c.outcomes[2]).sequence, 5);
    assert_eq!(appended_batch(&c.outcomes[3])[0].sequence, 1);
    let stored = all(s, "b");
    let payloads: Vec<&[u8]> = stored.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        vec![
            b"one".as_slice(),
            b"two".as_slice(),
            b"three".as_slice(),
            b"four".as_slice(),
            b"five".as_slice()
        ]
    );
    assert_eq!(*b[0], stored[1]);
    assert_eq!(c.entries.len(), 6, "every new entry is published");
    verify_chain(s, "b");
    verify_chain(s, "other");
    // An empty batch appends nothing.
    let e = s
        .write(6, vec![batch("b", &[], Some("empty"), None)])
        .unwrap();
    assert_eq!(e.outcomes[0], WriteOutcome::AppendedBatch(Vec::new()));
    assert_eq!(s.head("b").unwrap().unwrap().sequence, 5);
}

/// A batch sent again under its idempotency key returns the first entries
/// and appends nothing, within a write, across writes and after reopening;
/// the key with other entries is a conflict naming the first sequence.
pub fn batch_retries_and_conflicts(h: &mut dyn Harness) {
    let c = h
        .store()
        .write(
            1,
            vec![
                append("r", "k", "zero"),
                batch("r", &["a", "b"], Some("batch-1"), None),
                batch("r", &["a", "b"], Some("batch-1"), None),
            ],
        )
        .unwrap();
    let first = appended_batch(&c.outcomes[1]);
    assert_eq!(first[0].sequence, 2);
    assert_eq!(c.outcomes[2], WriteOutcome::DuplicateBatch(first.clone()));
    let again = h
        .store()
        .write(2, vec![batch("r", &["a", "b"], Some("batch-1"), Some(0))])
        .unwrap();
    assert_eq!(
        again.outcomes[0],
        WriteOutcome::DuplicateBatch(first.clone()),
        "a retry is recognised before the head condition"
    );
    assert!(again.entries.is_empty());
    for other in [&["a", "c"][..], &["a"][..], &["a", "b", "c"][..]] {
        let c = h
            .store()
            .write(3, vec![batch("r", other, Some("batch-1"), None)])
            .unwrap();
        assert_eq!(
            c.outcomes[0],
            WriteOutcome::IdempotencyConflict { sequence: 2 },
            "{other:?}"
        );
    }
    // A single append under the batch's key is not a retry of it, even
    // with the batch's first entry; a batch of one under a single
    // append's key is.
    let single = WriteCommand::Append(AppendCommand {
        context: "r".into(),
        entry: new("k", "a"),
        idempotency_key: Some("batch-1".into()),
    });
    let c = h.store().write(3, vec![single]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::IdempotencyConflict { sequence: 2 }
    );
    let one = appended(
        &h.store()
            .write(3, vec![append_idem("r", "k", "solo", "single-1")])
            .unwrap()
            .outcomes[0],
    );
    let c = h
        .store()
        .write(3, vec![batch("r", &["solo"], Some("single-1"), None)])
        .unwrap();
    assert_eq!(c.outcomes[0], WriteOutcome::DuplicateBatch(vec![one]));
    if h.reopen() {
        let after = h
            .store()
            .write(4, vec![batch("r", &["a", "b"], Some("batch-1"), None)])
            .unwrap();
        assert_eq!(after.outcomes[0], WriteOutcome::DuplicateBatch(first));
    }
    assert_eq!(h.store().head("r").unwrap().unwrap().sequence, 4);
    verify_chain(h.store(), "r");
}

/// A conditional batch appends only at the expected head; otherwise it
/// reports the actual head and appends nothing, and the rest of the write
/// commits as usual.
pub fn conditional_batches_check_the_head(h: &mut dyn Harness) {
    let s = h.store();
    let c = s
        .write(
            1,
            vec![
                batch("c", &["a"], None, Some(0)),
                batch("c", &["b"], None, Some(0)),
                batch("c", &["c", "d"], None, Some(1)),
                batch("c", &["e"], None, Some(2)),
                append("c", "k", "f"),
            ],
        )
        .unwrap();
    assert_eq!(appended_batch(&c.outcomes[0])[0].sequence, 1);
    assert_eq!(
        c.outcomes[1],
        WriteOutcome::SequenceMismatch {
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(appended_batch(&c.outcomes[2])[1].sequence, 3);
    assert_eq!(
        c.outcomes[3],
        WriteOutcome::SequenceMismatch {
            expected: 2,
            actual: 3
        }
    );
    assert_eq!(appended(&c.outcomes[4]).sequence, 4);
    let later = s.write(2, vec![batch("c", &["g"], None, Some(4))]).unwrap();
    assert_eq!(appended_batch(&later.outcomes[0])[0].sequence, 5);
    let payloads: Vec<Vec<u8>> = all(s, "c").into_iter().map(|e| e.payload).collect();
    assert_eq!(
        payloads,
        [b"a", b"c", b"d", b"f", b"g"].map(|p| p.to_vec()).to_vec()
    );
    verify_chain(s, "c");
}
