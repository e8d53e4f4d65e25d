//! Conformance cases. Imports (Load): into empty, other, non-empty contexts.

use super::*;

/// Into an empty context: exact keys, payloads, metadata, sequences,
/// timestamps and hashes.
pub fn import_into_empty_context_restores_exactly(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 5, 77);
    let entries = snapshot_entries(&src, "a");
    let s = h.store();
    let c = s
        .write(1, vec![import("a", entries.clone(), true)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 5,
            head: 5
        }
    );
    assert_eq!(c.entries.len(), 5);
    assert_eq!(all(s, "a"), entries);
    verify_chain(s, "a");
    // Appends continue the chain with time never going back.
    let next = fill(s, "a", 1, 1);
    assert_eq!(next[0].sequence, 6);
    assert_eq!(next[0].appended_at_ns, 77);
}

/// Into another context id: same content and sequences, a new chain.
pub fn import_into_another_context_rechains(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 4, 77);
    let entries = snapshot_entries(&src, "a");
    let s = h.store();
    let c = s
        .write(1, vec![import("b", rechain("b", &entries), false)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 4,
            head: 4
        }
    );
    let got = all(s, "b");
    for (g, e) in got.iter().zip(&entries) {
        assert_eq!(
            (
                g.sequence,
                &g.key,
                &g.payload,
                &g.metadata,
                g.appended_at_ns
            ),
            (
                e.sequence,
                &e.key,
                &e.payload,
                &e.metadata,
                e.appended_at_ns
            )
        );
        assert_ne!(g.hash, e.hash);
    }
    verify_chain(s, "b");
}

/// `fail_if_exists` on a non-empty context writes nothing.
pub fn import_fail_if_exists_changes_nothing(h: &mut dyn Harness) {
    let s = h.store();
    fill(s, "a", 2, 1);
    let before = all(s, "a");
    let src = crate::MemoryStore::new();
    fill(&src, "a", 3, 1);
    let c = s
        .write(2, vec![import("a", snapshot_entries(&src, "a"), true)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::ImportRejected(ImportRejection::AlreadyExists { head: 2 })
    );
    assert!(c.entries.is_empty());
    assert_eq!(all(s, "a"), before);
}

/// A snapshot that extends the stored chain appends only the missing tail;
/// loading it again, or a shorter prefix, changes nothing.
pub fn import_extends_a_prefix_and_is_idempotent(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 6, 5);
    let full = snapshot_entries(&src, "a");
    let s = h.store();
    s.write(1, vec![import("a", full[..2].to_vec(), false)])
        .unwrap();
    let c = s.write(1, vec![import("a", full.clone(), false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 4,
            head: 6
        }
    );
    let seqs: Vec<u64> = c.entries.iter().map(|(_, e)| e.sequence).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    let c = s.write(1, vec![import("a", full.clone(), false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 0,
            head: 6
        }
    );
    let c = s
        .write(1, vec![import("a", full[..3].to_vec(), false)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 0,
            head: 6
        }
    );
    assert_eq!(all(s, "a"), full);
}

/// A snapshot that disagrees with stored history is refused, naming the
/// first differing sequence.
pub fn import_that_diverges_names_the_first_sequence(h: &mut dyn Harness) {
    let s = h.store();
    let src = crate::MemoryStore::new();
    fill(&src, "a", 8, 5);
    let theirs = snapshot_entries(&src, "a");
    s.write(1, vec![import("a", theirs[..5].to_vec(), false)])
        .unwrap();
    let mut forked = theirs.clone();
    forked[3].payload = b"fork".to_vec();
    let forked = rechain("a", &forked);
    let c = s.write(2, vec![import("a", forked, false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::ImportRejected(ImportRejection::Diverged { sequence: 4 })
    );
    assert_eq!(s.head("a").unwrap().unwrap().sequence, 5);
}
