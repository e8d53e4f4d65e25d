//! Conformance cases. Lookups, listings, persistence and proofs from stored nodes.

use super::*;

/// Every entry is found by its hash.
pub fn find_by_hash_locates_entries(h: &mut dyn Harness) {
    let s = h.store();
    let es = fill(s, "h", 3, 1);
    for e in &es {
        assert_eq!(
            s.find_by_hash(&e.hash).unwrap(),
            Some(("h".to_string(), e.sequence))
        );
    }
    assert_eq!(s.find_by_hash(&Digest::ZERO).unwrap(), None);
}

/// `contexts` lists every non-empty context with its head.
pub fn contexts_are_listed_with_heads(h: &mut dyn Harness) {
    let s = h.store();
    fill(s, "b", 2, 1);
    fill(s, "a", 1, 1);
    let list = |after: &str, limit: usize| {
        let mut seen = Vec::new();
        s.contexts(after, &mut |c, head| {
            seen.push((c.to_string(), head.sequence));
            seen.len() < limit
        })
        .unwrap();
        seen
    };
    assert_eq!(
        list("", usize::MAX),
        vec![("a".to_string(), 1), ("b".to_string(), 2)]
    );
    assert_eq!(list("a", usize::MAX), vec![("b".to_string(), 2)]);
    assert_eq!(list("", 1), vec![("a".to_string(), 1)]);
    assert!(list("b", usize::MAX).is_empty());
    // More contexts than one internal batch (256), paged by 100.
    let names: Vec<String> = (0..600).map(|i| format!("p{i:04}")).collect();
    for chunk in names.chunks(200) {
        let commands = chunk.iter().map(|n| append(n, "k", "v")).collect();
        s.write(2, commands).unwrap();
    }
    let mut paged = Vec::new();
    let mut after = "p".to_string();
    loop {
        let page = list(&after, 100);
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        paged.extend(page.into_iter().map(|(c, _)| c));
    }
    assert_eq!(paged, names);
}

/// Entries, heads, indexes and idempotency keys survive a reopen.
pub fn everything_survives_reopen(h: &mut dyn Harness) {
    fill(h.store(), "r", 4, 1);
    h.store()
        .write(2, vec![append_idem("r", "k", "v", "key")])
        .unwrap();
    let before = all(h.store(), "r");
    let head = h.store().head("r").unwrap();
    if !h.reopen() {
        eprintln!("everything_survives_reopen: this backend does not persist; nothing to reopen");
        return;
    }
    assert_eq!(all(h.store(), "r"), before);
    assert_eq!(h.store().head("r").unwrap(), head);
    assert_eq!(scan(h.store(), "r", 0, u64::MAX, Some("k1")).len(), 1);
    assert!(h.store().find_by_hash(&before[2].hash).unwrap().is_some());
    let next = fill(h.store(), "r", 1, 3);
    assert_eq!(next[0].sequence, 6);
    assert_eq!(next[0].prev_hash, before[4].hash);
}

/// Inclusion and consistency proofs built from the store's nodes verify
/// against the head's root, for every size, across batches, imports and a
/// reopen; and cost few reads.
pub fn merkle_proofs_come_from_stored_nodes(h: &mut dyn Harness) {
    use converge_ledger_core::merkle;
    for n in [1u64, 7, 40, 29] {
        fill(h.store(), "m", n, 1);
    }
    let src = crate::MemoryStore::new();
    fill(&src, "n", 300, 5);
    h.store()
        .write(1, vec![import("n", snapshot_entries(&src, "n"), false)])
        .unwrap();
    let reopened = h.reopen();
    let s = h.store();
    for ctx in ["m", "n"] {
        let entries = all(s, ctx);
        let leaves: Vec<Digest> = entries
            .iter()
            .map(|e| merkle::leaf_hash(&e.hash.0))
            .collect();
        let size = entries.len() as u64;
        assert_eq!(
            crate::proofs::root_at(s, ctx, size).unwrap(),
            s.head(ctx).unwrap().unwrap().merkle_root(),
            "{ctx}: root from stored nodes"
        );
        for tree in [1, 2, 15, 16, 17, 33, 64, size - 1, size] {
            let root = merkle::root_of_leaf_hashes(&leaves[..tree as usize]);
            assert_eq!(crate::proofs::root_at(s, ctx, tree).unwrap(), root);
            for seq in [1, tree / 2 + 1, tree] {
                let proof = crate::proofs::inclusion_proof(s, ctx, seq, tree).unwrap();
                merkle::verify_inclusion(&leaves[seq as usize - 1], seq - 1, tree, &proof, &root)
                    .unwrap();
            }
            for old in [1, tree / 3 + 1, tree] {
                let old_root = merkle::root_of_leaf_hashes(&leaves[..old as usize]);
                let proof = crate::proofs::consistency_proof(s, ctx, old, tree).unwrap();
                merkle::verify_consistency(old, tree, &old_root, &root, &proof).unwrap();
            }
        }
        let mut nodes = crate::proofs::StoreNodes::new(s, ctx);
        merkle::inclusion_proof(&mut nodes, 0, size).unwrap();
        assert!(nodes.reads <= 3 * 64, "{} reads for one proof", nodes.reads);
    }
    let _ = reopened;
}
