use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use converge_ledger_core::{Digest, DigestMap, Entry, Head};

use crate::sequencer::{Backing, stage};
use crate::store::{heads_after, visit_heads};
use crate::{Committed, Scan, Store, StoreError, WriteCommand};

/// A store that keeps everything in RAM: fast, and gone with the process
/// (the original ledger's `ram_copies`). Acknowledged means "in memory".
#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    /// Serialises writers so staging sees a stable committed state.
    write_lock: Mutex<()>,
    derived: crate::derived::MemoryDerived,
}

#[derive(Default)]
struct State {
    contexts: BTreeMap<Arc<str>, Context>,
    /// Keyed by SHA-256 digests: a cheap keyed hasher, not SipHash.
    by_hash: DigestMap<(Arc<str>, u64)>,
}

struct Context {
    head: Head,
    /// `entries[i]` has sequence `i + 1`.
    entries: Vec<Arc<Entry>>,
    idempotency: HashMap<String, u64>,
    /// Merkle nodes at stored levels: (level, index) → root.
    nodes: HashMap<(u8, u64), Digest>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backing for MemoryStore {
    fn committed_head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        Ok(self.read().contexts.get(context).map(|c| c.head.clone()))
    }

    fn committed_idempotency(&self, context: &str, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .read()
            .contexts
            .get(context)
            .and_then(|c| c.idempotency.get(key).copied()))
    }

    fn committed_entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        Ok(self.read().contexts.get(context).and_then(|c| {
            sequence
                .checked_sub(1)
                .and_then(|i| c.entries.get(i as usize))
                .map(|e| Entry::clone(e))
        }))
    }
}

impl Store for MemoryStore {
    fn may_block(&self) -> bool {
        false
    }

    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        let _writer = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let staged = stage(self, now_ns, commands)?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for (context, entry) in &staged.committed.entries {
            let c = state
                .contexts
                .entry(context.clone())
                .or_insert_with(|| Context {
                    head: Head::empty(context),
                    entries: Vec::new(),
                    idempotency: HashMap::new(),
                    nodes: HashMap::new(),
                });
            c.entries.push(entry.clone());
            state
                .by_hash
                .insert(entry.hash, (context.clone(), entry.sequence));
        }
        for (context, key, seq) in staged.idempotency {
            if let Some(c) = state.contexts.get_mut(&context) {
                c.idempotency.insert(key, seq);
            }
        }
        for (context, level, index, root) in staged.nodes {
            if let Some(c) = state.contexts.get_mut(&context) {
                c.nodes.insert((level, index), root);
            }
        }
        for (context, head) in staged.heads {
            if let Some(c) = state.contexts.get_mut(&context) {
                debug_assert_eq!(c.entries.len() as u64, head.sequence);
                c.head = head;
            }
        }
        Ok(staged.committed)
    }

    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        self.committed_head(context)
    }

    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        // Copy out in small chunks so the lock is never held while the
        // visitor runs.
        const CHUNK: usize = 256;
        let mut next = scan.after;
        loop {
            let chunk: Vec<Arc<Entry>> = {
                let state = self.read();
                let Some(c) = state.contexts.get(context) else {
                    return Ok(());
                };
                let end = scan.until.min(c.entries.len() as u64);
                if next >= end {
                    return Ok(());
                }
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut i = next;
                while i < end && chunk.len() < CHUNK {
                    let e = &c.entries[i as usize];
                    if scan.key.is_none_or(|k| e.key == k) {
                        chunk.push(e.clone());
                    }
                    i += 1;
                }
                next = i;
                chunk
            };
            for e in chunk {
                if !visit(Entry::clone(&e)) {
                    return Ok(());
                }
            }
        }
    }

    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        self.committed_entry(context, sequence)
    }

    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .read()
            .by_hash
            .get(hash)
            .map(|(c, s)| (c.to_string(), *s)))
    }

    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        let state = self.read();
        let Some(c) = state.contexts.get(context) else {
            return Ok(Vec::new());
        };
        Ok((start..start.saturating_add(count))
            .map_while(|i| c.nodes.get(&(level, i)).copied())
            .collect())
    }

    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError> {
        visit_heads(
            after,
            |cursor, n| heads_after(&self.read().contexts, cursor, n, |c| &c.head),
            visit,
        );
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn derived(&self) -> Option<&dyn crate::derived::DerivedKv> {
        Some(&self.derived)
    }
}
