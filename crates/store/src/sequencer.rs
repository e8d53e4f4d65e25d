//! The append rule applied to a batch, shared by every backend (memory,
//! embedded, and backends in other crates such as PostgreSQL). Pure staging:
//! nothing here writes; the backend persists what [`stage`] returns and
//! installs the heads only once durable.
//!
//! A backend implements [`Backing`] over its *committed* state (for a shared
//! database: the state seen while holding the locks of the batch's contexts)
//! and calls [`stage`]; the result says exactly which entries, idempotency
//! keys, Merkle nodes and heads to write, and what to answer.

use std::collections::HashMap;
use std::sync::Arc;

use converge_ledger_core::merkle::is_stored_level;
use converge_ledger_core::{Digest, Entry, Head, LoadedFrom, NewEntry};

use crate::{
    AppendCommand, BatchCommand, Committed, ImportCommand, ImportRejection, StoreError,
    WriteCommand, WriteOutcome,
};

/// The idempotency record that holds the last sequence of the batch
/// appended under `key` (the record under `key` itself holds the first).
/// Its U+0001 cannot occur in a client's key (control characters are
/// refused), so the two never collide.
pub fn batch_end_key(key: &str) -> String {
    format!("{key}\u{1}end")
}

/// What staging needs to read from committed state.
pub trait Backing {
    /// Committed head of a context.
    fn committed_head(&self, context: &str) -> Result<Option<Head>, StoreError>;
    /// Committed sequence an idempotency key maps to.
    fn committed_idempotency(&self, context: &str, key: &str) -> Result<Option<u64>, StoreError>;
    /// A committed entry.
    fn committed_entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError>;
}

/// A staged batch: what to persist, and what to report once persisted.
#[derive(Default)]
pub struct Staged {
    /// Outcomes (one per command, in order) and the new entries, in commit
    /// order; what [`crate::Store::write`] returns once the batch is durable.
    pub committed: Committed,
    /// Final head of every touched context.
    pub heads: HashMap<Arc<str>, Head>,
    /// New idempotency keys: (context, key, sequence).
    pub idempotency: Vec<(Arc<str>, String, u64)>,
    /// Completed Merkle nodes at stored levels: (context, level, index, root).
    pub nodes: Vec<(Arc<str>, u8, u64, Digest)>,
}

struct Stager<'a, B: Backing> {
    backing: &'a B,
    staged: Staged,
    /// The committed head (sequence, hash) of every context the batch
    /// touches, as first read: what [`check_staged`] checks the result
    /// against.
    starts: HashMap<Arc<str>, (u64, Digest)>,
    /// (context, idempotency key) → sequence, for keys first used in this batch.
    pending_keys: HashMap<(Arc<str>, String), u64>,
    /// (context, sequence) → index into `staged.committed.entries`.
    pending_entries: HashMap<(Arc<str>, u64), usize>,
    /// Interned context names of this batch.
    names: HashMap<String, Arc<str>>,
}

/// Applies the append rule to `commands` in order over `backing`'s committed
/// state, as if one at a time: sequences, times, Lamport clocks, chain
/// links, Merkle frontiers, idempotency (within the batch too) and import
/// checks. Reads through `backing`; writes nothing. `now_ns` is the server
/// clock for every append of the batch.
pub fn stage<B: Backing>(
    backing: &B,
    now_ns: u64,
    commands: Vec<WriteCommand>,
) -> Result<Staged, StoreError> {
    let n = commands.len();
    let mut s = Stager {
        backing,
        staged: Staged::default(),
        starts: HashMap::new(),
        pending_keys: HashMap::new(),
        pending_entries: HashMap::new(),
        names: HashMap::new(),
    };
    s.staged.committed.outcomes.reserve(commands.len());
    for command in commands {
        let outcome = match command {
            WriteCommand::Append(a) => s.append(now_ns, a),
            WriteCommand::AppendBatch(b) => s.append_batch(now_ns, b),
            WriteCommand::Import(i) => s.import(i),
        };
        // Every read of a command happens before it stages anything, so a
        // command that meets corrupt data fails alone and leaves no trace;
        // any other storage error fails the whole batch.
        let outcome = match outcome {
            Ok(o) => o,
            Err(e @ StoreError::Corrupt { .. }) => WriteOutcome::Failed(e),
            Err(e) => return Err(e),
        };
        s.staged.committed.outcomes.push(outcome);
    }
    check_staged(&s.staged, &s.starts, n)?;
    Ok(s.staged)
}

/// The invariants of the write path, checked in every build before anything
/// is persisted: one outcome per command; per context, the new entries take
/// the sequences right after the committed head, each linked to the one
/// before; the final head names the last of them, and its Merkle frontier
/// has one leaf per entry. A violation is a bug: the whole batch fails with
/// [`StoreError::Internal`] and nothing of it is written.
pub fn check_staged(
    staged: &Staged,
    starts: &HashMap<Arc<str>, (u64, Digest)>,
    commands: usize,
) -> Result<(), StoreError> {
    let broken = |what: String| {
        Err(StoreError::Internal(format!(
            "a staged batch breaks an invariant ({what}); nothing of it was written"
        )))
    };
    if staged.committed.outcomes.len() != commands {
        return broken(format!(
            "{} outcomes for {commands} commands",
            staged.committed.outcomes.len()
        ));
    }
    let mut tips: HashMap<&Arc<str>, (u64, Digest)> = HashMap::new();
    for (context, entry) in &staged.committed.entries {
        let tip = match tips.get(context) {
            Some(t) => *t,
            None => match starts.get(context) {
                Some(t) => *t,
                None => return broken(format!("an entry of {context:?}, whose head was not read")),
            },
        };
        if entry.sequence != tip.0 + 1 || entry.prev_hash != tip.1 {
            return broken(format!(
                "entry {} of {context:?} does not follow sequence {} and its hash",
                entry.sequence, tip.0
            ));
        }
        tips.insert(context, (entry.sequence, entry.hash));
    }
    for (context, head) in &staged.heads {
        let Some(&(sequence, hash)) = tips.get(context).or_else(|| starts.get(context)) else {
            return broken(format!("a head for {context:?}, whose head was not read"));
        };
        if head.sequence != sequence || head.hash != hash || head.frontier.size() != sequence {
            return broken(format!(
                "the head of {context:?} is at sequence {} with {} Merkle leaves, its last entry at {sequence}",
                head.sequence,
                head.frontier.size()
            ));
        }
    }
    Ok(())
}

impl<B: Backing> Stager<'_, B> {
    fn intern(&mut self, context: String) -> Arc<str> {
        if let Some(n) = self.names.get(&context) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(context.as_str());
        self.names.insert(context, n.clone());
        n
    }

    /// The head as of everything staged so far.
    fn head(&mut self, context: &Arc<str>) -> Result<&mut Head, StoreError> {
        if !self.staged.heads.contains_key(context) {
            let head = self
                .backing
                .committed_head(context)?
                .unwrap_or_else(|| Head::empty(context));
            self.starts
                .insert(context.clone(), (head.sequence, head.hash));
            self.staged.heads.insert(context.clone(), head);
        }
        Ok(self.staged.heads.get_mut(context).expect("inserted above"))
    }

    /// An entry as of everything staged so far.
    fn entry(&self, context: &Arc<str>, sequence: u64) -> Result<Option<Arc<Entry>>, StoreError> {
        if let Some(&i) = self.pending_entries.get(&(context.clone(), sequence)) {
            return Ok(Some(self.staged.committed.entries[i].1.clone()));
        }
        Ok(self
            .backing
            .committed_entry(context, sequence)?
            .map(Arc::new))
    }

    fn push(&mut self, context: &Arc<str>, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        self.pending_entries.insert(
            (context.clone(), entry.sequence),
            self.staged.committed.entries.len(),
        );
        self.staged
            .committed
            .entries
            .push((context.clone(), entry.clone()));
        entry
    }

    fn append(&mut self, now_ns: u64, a: AppendCommand) -> Result<WriteOutcome, StoreError> {
        let context = self.intern(a.context);
        if let Some(key) = &a.idempotency_key
            && let Some(sequence) = self.known_key(&context, key)?
        {
            // The key of a batch of several entries is not this entry's.
            if self
                .known_key(&context, &batch_end_key(key))?
                .is_some_and(|last| last != sequence)
            {
                return Ok(WriteOutcome::IdempotencyConflict { sequence });
            }
            let existing = self
                .entry(&context, sequence)?
                .ok_or_else(|| StoreError::Corrupt {
                    context: context.to_string(),
                    sequence,
                    reason: format!("idempotency key {key:?} points at a missing entry"),
                })?;
            let same = existing.key == a.entry.key
                && existing.payload == a.entry.payload
                && existing.metadata == a.entry.metadata;
            return Ok(if same {
                WriteOutcome::Duplicate(existing)
            } else {
                WriteOutcome::IdempotencyConflict { sequence }
            });
        }
        let entry = self.push_new(&context, now_ns, a.entry)?;
        if let Some(key) = a.idempotency_key {
            self.pending_keys
                .insert((context.clone(), key.clone()), entry.sequence);
            self.staged
                .idempotency
                .push((context.clone(), key, entry.sequence));
        }
        Ok(WriteOutcome::Appended(entry))
    }

    /// Appends one new entry at the staged head of `context`.
    fn push_new(
        &mut self,
        context: &Arc<str>,
        now_ns: u64,
        new: NewEntry,
    ) -> Result<Arc<Entry>, StoreError> {
        let entry = self.head(context)?.next_entry(context, new, now_ns);
        let mut nodes = std::mem::take(&mut self.staged.nodes);
        self.head(context)?
            .advance_with(&entry, |level, index, root| {
                if is_stored_level(level) {
                    nodes.push((context.clone(), level, index, *root));
                }
            });
        self.staged.nodes = nodes;
        Ok(self.push(context, entry))
    }

    /// The sequence `key` is bound to in `context`, staged or committed.
    fn known_key(&self, context: &Arc<str>, key: &str) -> Result<Option<u64>, StoreError> {
        match self.pending_keys.get(&(context.clone(), key.to_owned())) {
            Some(&seq) => Ok(Some(seq)),
            None => self.backing.committed_idempotency(context, key),
        }
    }

    fn append_batch(&mut self, now_ns: u64, b: BatchCommand) -> Result<WriteOutcome, StoreError> {
        let context = self.intern(b.context);
        if b.entries.is_empty() {
            let actual = self.head(&context)?.sequence;
            return Ok(match b.expected_sequence {
                Some(expected) if expected != actual => {
                    WriteOutcome::SequenceMismatch { expected, actual }
                }
                _ => WriteOutcome::AppendedBatch(Vec::new()),
            });
        }
        if let Some(key) = &b.idempotency_key
            && let Some(first) = self.known_key(&context, key)?
        {
            // A single append's key has no end record: a batch of one.
            let last = self
                .known_key(&context, &batch_end_key(key))?
                .unwrap_or(first);
            if last.checked_sub(first) != Some(b.entries.len() as u64 - 1) {
                return Ok(WriteOutcome::IdempotencyConflict { sequence: first });
            }
            let mut existing = Vec::with_capacity(b.entries.len());
            for (i, new) in b.entries.iter().enumerate() {
                match self.entry(&context, first + i as u64)? {
                    Some(e)
                        if e.key == new.key
                            && e.payload == new.payload
                            && e.metadata == new.metadata =>
                    {
                        existing.push(e)
                    }
                    _ => return Ok(WriteOutcome::IdempotencyConflict { sequence: first }),
                }
            }
            return Ok(WriteOutcome::DuplicateBatch(existing));
        }
        let actual = self.head(&context)?.sequence;
        if let Some(expected) = b.expected_sequence
            && expected != actual
        {
            return Ok(WriteOutcome::SequenceMismatch { expected, actual });
        }
        let mut appended = Vec::with_capacity(b.entries.len());
        for new in b.entries {
            appended.push(self.push_new(&context, now_ns, new)?);
        }
        if let Some(key) = b.idempotency_key {
            let last = actual + appended.len() as u64;
            let end = batch_end_key(&key);
            self.pending_keys
                .insert((context.clone(), end.clone()), last);
            self.staged.idempotency.push((context.clone(), end, last));
            self.pending_keys
                .insert((context.clone(), key.clone()), actual + 1);
            self.staged
                .idempotency
                .push((context.clone(), key, actual + 1));
        }
        Ok(WriteOutcome::AppendedBatch(appended))
    }

    fn import(&mut self, i: ImportCommand) -> Result<WriteOutcome, StoreError> {
        let context = self.intern(i.context);
        let current = self.head(&context)?.sequence;
        let n = i.entries.len() as u64;
        if current > 0 && i.fail_if_exists {
            return Ok(WriteOutcome::ImportRejected(
                ImportRejection::AlreadyExists { head: current },
            ));
        }
        let overlap = current.min(n);
        if overlap > 0 {
            // Hash chaining makes agreement at `overlap` imply agreement at
            // every sequence below it, and disagreement at k imply
            // disagreement above k: one read decides, a binary search names
            // the first difference.
            let differs = |s: &Self, seq: u64| -> Result<bool, StoreError> {
                let stored = s.entry(&context, seq)?;
                Ok(stored.map(|e| e.hash) != Some(i.entries[(seq - 1) as usize].hash))
            };
            if differs(self, overlap)? {
                let (mut lo, mut hi) = (1, overlap);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if differs(self, mid)? {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                return Ok(WriteOutcome::ImportRejected(ImportRejection::Diverged {
                    sequence: lo,
                }));
            }
        }
        // Check the whole tail before staging any of it: an import is all or
        // nothing.
        let mut probe = self.head(&context)?.clone();
        let mut new_nodes = Vec::new();
        let tail = &i.entries[overlap as usize..];
        for entry in tail {
            if let Err(e) = probe.check_next(&context, entry) {
                return Ok(WriteOutcome::ImportRejected(ImportRejection::Diverged {
                    sequence: e.sequence,
                }));
            }
            probe.advance_with(entry, |level, index, root| {
                if is_stored_level(level) {
                    new_nodes.push((context.clone(), level, index, *root));
                }
            });
        }
        self.staged.nodes.append(&mut new_nodes);
        let restored = tail.len() as u64;
        if restored > 0 {
            probe.loaded = Some(LoadedFrom {
                through: probe.sequence,
                signer: i.signer,
            });
        }
        for entry in i.entries.into_iter().skip(overlap as usize) {
            self.push(&context, entry);
        }
        *self.head(&context)? = probe;
        let head = self.head(&context)?.sequence;
        Ok(WriteOutcome::Imported { restored, head })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppendCommand, MemoryStore, Store};
    use converge_ledger_core::Metadata;

    fn append(context: &str, payload: &str) -> WriteCommand {
        WriteCommand::Append(AppendCommand {
            context: context.into(),
            entry: NewEntry {
                key: "k".into(),
                payload: payload.as_bytes().to_vec(),
                metadata: Metadata::new(),
                lamport: 0,
            },
            idempotency_key: None,
        })
    }

    fn staged_pair() -> (Staged, HashMap<Arc<str>, (u64, Digest)>) {
        let store = MemoryStore::new();
        store.write(1, vec![append("c", "committed")]).unwrap();
        let head = store.head("c").unwrap().unwrap();
        let staged = stage(&store, 2, vec![append("c", "a"), append("c", "b")]).unwrap();
        let starts = HashMap::from([(Arc::from("c"), (head.sequence, head.hash))]);
        (staged, starts)
    }

    #[test]
    fn a_correct_batch_passes_the_write_path_checks() {
        let (staged, starts) = staged_pair();
        check_staged(&staged, &starts, 2).unwrap();
    }

    #[test]
    fn a_batch_that_breaks_a_write_path_invariant_is_refused_as_a_bug() {
        let broken = |f: &dyn Fn(&mut Staged)| {
            let (mut staged, starts) = staged_pair();
            f(&mut staged);
            let e = check_staged(&staged, &starts, 2).unwrap_err();
            assert!(matches!(e, StoreError::Internal(_)), "{e:?}");
        };
        // A skipped sequence.
        broken(&|s| Arc::make_mut(&mut s.committed.entries[1].1).sequence += 1);
        // A broken chain link.
        broken(&|s| Arc::make_mut(&mut s.committed.entries[1].1).prev_hash = Digest([9; 32]));
        // A head that does not name the last entry.
        broken(&|s| s.heads.values_mut().for_each(|h| h.sequence -= 1));
        // A Merkle frontier with a leaf missing.
        broken(&|s| {
            s.heads.values_mut().for_each(|h| {
                let mut shorter = Head::empty("c");
                shorter.frontier = Default::default();
                h.frontier = shorter.frontier;
            })
        });
        // An outcome missing.
        broken(&|s| {
            s.committed.outcomes.pop();
        });
    }
}
