//! Costs of the integrity machinery: offline verification speed, and the
//! share of the append path spent maintaining the Merkle tree.
//!
//! ```sh
//! cargo run --release -p converge-ledger-bench --bin integrity-bench -- [ENTRIES] [RUNS]
//! ```

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use converge_ledger_core::merkle::{is_stored_level, leaf_hash};
use converge_ledger_core::{Digest, Frontier, Metadata, NewEntry};
use converge_ledger_store::verify::{VerifyOptions, verify_context_with};
use converge_ledger_store::{
    AppendCommand, EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store, WriteCommand,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn batch(context: &str, n: usize, base: usize) -> Vec<WriteCommand> {
    (0..n)
        .map(|i| {
            let mut payload = vec![0u8; 256];
            let x = ((base + i) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            payload[..8].copy_from_slice(&x.to_le_bytes());
            WriteCommand::Append(AppendCommand {
                context: context.into(),
                entry: NewEntry {
                    key: format!("k{}", i % 8),
                    payload,
                    metadata: Metadata::new(),
                    lamport: 0,
                },
                idempotency_key: None,
            })
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let entries: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = EmbeddedOptions::new(dir.path());
    options.fsync = FsyncPolicy::Never;
    let store = Arc::new(EmbeddedStore::open(options).expect("open"));

    // Build the context, timing the write path (CPU-bound: fsync never).
    const BATCH: usize = 4096;
    let started = Instant::now();
    let mut written = 0;
    while written < entries {
        let n = BATCH.min(entries - written);
        store.write(1, batch("ctx", n, written)).expect("write");
        written += n;
    }
    let write_s = started.elapsed().as_secs_f64();
    let write_ns_per_entry = write_s * 1e9 / entries as f64;

    // The same write path without storage engine: the append rule, hashing,
    // the Merkle frontier and the in-memory indexes.
    let memory = MemoryStore::new();
    let started = Instant::now();
    let mut written = 0;
    while written < entries {
        let n = BATCH.min(entries - written);
        memory.write(1, batch("ctx", n, written)).expect("write");
        written += n;
    }
    let memory_ns_per_entry = started.elapsed().as_secs_f64() * 1e9 / entries as f64;
    drop(memory);

    // Offline verification of the whole context: as `verify` runs it (one
    // thread per core), and on one thread, alternating.
    let mut verify = Vec::new();
    let mut verify_one_thread = Vec::new();
    let one_thread = VerifyOptions {
        threads: 1,
        ..VerifyOptions::default()
    };
    for _ in 0..runs {
        for (options, rates) in [
            (VerifyOptions::default(), &mut verify),
            (one_thread, &mut verify_one_thread),
        ] {
            let t = Instant::now();
            let v = verify_context_with(store.as_ref(), "ctx", options, &mut |_, _| {})
                .expect("verifies");
            assert_eq!(v.head.sequence, entries as u64);
            rates.push(entries as f64 / t.elapsed().as_secs_f64());
        }
    }

    // Merkle maintenance per entry, as the append path does it: one leaf
    // hash, the frontier merges, and collecting the nodes that are stored.
    let hashes: Vec<Digest> = (0..entries as u64)
        .map(|i| Digest::of(&[&i.to_be_bytes()]))
        .collect();
    let mut merkle = Vec::new();
    for _ in 0..runs {
        let mut f = Frontier::new();
        let mut stored = Vec::new();
        let t = Instant::now();
        for h in &hashes {
            f.push_leaf_hash_with(leaf_hash(&h.0), |level, index, root| {
                if is_stored_level(level) {
                    stored.push((level, index, *root));
                }
            });
        }
        std::hint::black_box(f.root());
        merkle.push(t.elapsed().as_secs_f64() * 1e9 / entries as f64);
    }
    let merkle_ns = median(merkle);
    println!("entries                         {entries}");
    println!(
        "store write path (fsync never)  {write_ns_per_entry:.0} ns/entry ({:.0} entries/s)",
        1e9 / write_ns_per_entry
    );
    println!(
        "memory write path               {memory_ns_per_entry:.0} ns/entry ({:.0} entries/s)",
        1e9 / memory_ns_per_entry
    );
    println!(
        "offline verify                  {:.0} entries/s (median of {runs})",
        median(verify)
    );
    println!(
        "offline verify, one thread      {:.0} entries/s (median of {runs})",
        median(verify_one_thread)
    );
    println!("Merkle maintenance              {merkle_ns:.0} ns/entry (median of {runs})");
    println!(
        "tree share of the write path    {:.1}% (plus one 45-byte node record per 15 entries)",
        merkle_ns * 100.0 / write_ns_per_entry
    );
}
