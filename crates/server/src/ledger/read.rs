//! Reads: heads, bounded chunks of entries, entries by hash, and Merkle
//! proofs.

use converge_ledger_core::{Digest, Entry, Head, SignedHead};
use converge_ledger_store::{Scan, proofs};

use super::Ledger;
use crate::LedgerError;

/// An inclusion proof and what it proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's sequence.
    pub sequence: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// The entry's hash.
    pub entry_hash: Digest,
    /// Audit path, leaf side first.
    pub path: Vec<Digest>,
    /// Root of the tree of `tree_size` entries.
    pub root: Digest,
}

/// A consistency proof and the two roots it links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub old_size: u64,
    /// Size of the newer tree.
    pub new_size: u64,
    /// The proof.
    pub proof: Vec<Digest>,
    /// Root of the older tree.
    pub old_root: Digest,
    /// Root of the newer tree.
    pub new_root: Digest,
}

impl Ledger {
    /// The committed head of `context` (`None`: no entries).
    pub async fn head(&self, context: &str) -> Result<Option<Head>, LedgerError> {
        self.config.limits.check_context_id(context)?;
        let store = self.store.clone();
        let context = context.to_owned();
        self.quick(move || store.head(&context).map_err(LedgerError::from))
            .await
    }

    /// Validates a read of `context` filtered by `key` (empty: all keys) and
    /// returns the head sequence the read ends at (0: no entries).
    pub async fn read_head(&self, context: &str, key: &str) -> Result<u64, LedgerError> {
        self.config.limits.check_key_filter(key)?;
        Ok(self.head(context).await?.map_or(0, |h| h.sequence))
    }

    /// Entries of `context` with `after < sequence <= until`, filtered by
    /// `key`, at most `max_entries`, stopping before `max_bytes` (by
    /// [`Entry::approximate_size`]) would be exceeded (but always at least
    /// one entry). Returns the entries and whether the read stopped early on
    /// a limit.
    pub async fn read_chunk(
        &self,
        context: &str,
        after: u64,
        until: u64,
        key: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, bool), LedgerError> {
        let page = Page::new(context, after, Some(until), key, max_entries, max_bytes);
        let store = self.store.clone();
        self.read_call(key, move || {
            let (_, entries, truncated) = page.read(store.as_ref())?;
            Ok((entries, truncated))
        })
        .await
    }

    /// [`Ledger::read_chunk`] with the entries as the extension `Read`'s
    /// `READ_ENCODING_RECORDS` carries them: each entry record preceded by
    /// its u32 big-endian length, as the store holds it where it can. Also
    /// returns the number of entries and the last one's sequence (0: none).
    pub async fn read_records_chunk(
        &self,
        context: &str,
        after: u64,
        until: u64,
        key: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<RecordsChunk, LedgerError> {
        let page = Page::new(context, after, Some(until), key, max_entries, max_bytes);
        let store = self.store.clone();
        self.read_call(key, move || page.read_records(store.as_ref(), until))
            .await
    }

    /// One page of a read: the head sequence of `context` (0: no entries)
    /// and, up to it, what [`Ledger::read_chunk`] returns after `after`,
    /// in one call to the store (one hand-off to the blocking pool).
    pub async fn read_page(
        &self,
        context: &str,
        after: u64,
        key: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(u64, Vec<Entry>, bool), LedgerError> {
        self.config.limits.check_key_filter(key.unwrap_or(""))?;
        self.config.limits.check_context_id(context)?;
        let page = Page::new(context, after, None, key, max_entries, max_bytes);
        let store = self.store.clone();
        self.read_call(key, move || page.read(store.as_ref())).await
    }

    /// The committed head of `context` (empty head when unknown), signed.
    pub async fn signed_head(&self, context: &str) -> Result<(Head, SignedHead), LedgerError> {
        let head = self
            .head(context)
            .await?
            .unwrap_or_else(|| Head::empty(context));
        let signed = self.signer.sign(context, &head);
        Ok((head, signed))
    }

    /// Proof that entry `sequence` is in the tree of the first `tree_size`
    /// entries (`tree_size` 0: the head).
    pub async fn inclusion_proof(
        &self,
        context: &str,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, LedgerError> {
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let size = if tree_size == 0 { head } else { tree_size };
        if size > head {
            return Err(LedgerError::OutOfRange(format!(
                "tree size {size} is beyond the head of context {context:?} ({head})"
            )));
        }
        if sequence == 0 || sequence > size {
            return Err(LedgerError::OutOfRange(format!(
                "sequence {sequence} is not in the tree of size {size} of context {context:?} (sequences start at 1)"
            )));
        }
        let store = self.store.clone();
        let context = context.to_owned();
        self.quick(move || {
            let entry = store.entry(&context, sequence)?.ok_or_else(|| {
                LedgerError::DataLoss(format!(
                    "entry {sequence} of {context:?} is missing below the head"
                ))
            })?;
            let path = proofs::inclusion_proof(store.as_ref(), &context, sequence, size)?;
            let root = proofs::root_at(store.as_ref(), &context, size)?;
            Ok(InclusionProof {
                sequence,
                tree_size: size,
                entry_hash: entry.hash,
                path,
                root,
            })
        })
        .await
    }

    /// Proof that the tree of `old_size` entries is a prefix of the tree of
    /// `new_size` entries (`new_size` 0: the head).
    pub async fn consistency_proof(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let new = if new_size == 0 { head } else { new_size };
        if new > head {
            return Err(LedgerError::OutOfRange(format!(
                "tree size {new} is beyond the head of context {context:?} ({head})"
            )));
        }
        if old_size == 0 || old_size > new {
            return Err(LedgerError::OutOfRange(format!(
                "old size {old_size} must be between 1 and the new size {new}"
            )));
        }
        let store = self.store.clone();
        let context = context.to_owned();
        self.quick(move || {
            let proof = proofs::consistency_proof(store.as_ref(), &context, old_size, new)?;
            let old_root = proofs::root_at(store.as_ref(), &context, old_size)?;
            let new_root = proofs::root_at(store.as_ref(), &context, new)?;
            Ok(ConsistencyProof {
                old_size,
                new_size: new,
                proof,
                old_root,
                new_root,
            })
        })
        .await
    }

    /// Up to `limit` non-empty contexts with ids after `after`, in id order,
    /// with their heads; only those `visible` admits are counted and
    /// returned (a caller's read grants), and a page reads at most a bounded
    /// number of heads beyond them.
    pub async fn list_contexts(
        &self,
        after: &str,
        limit: usize,
        visible: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<(String, Head)>, LedgerError> {
        let store = self.store.clone();
        let after = after.to_owned();
        self.quick(move || {
            let mut out = Vec::new();
            store.contexts(&after, &mut |c, h| {
                if visible(c) {
                    out.push((c.to_owned(), h.clone()));
                }
                out.len() < limit
            })?;
            Ok(out)
        })
        .await
    }

    /// The entry with this hash and its context.
    pub async fn get_by_hash(&self, hash: Digest) -> Result<Option<(String, Entry)>, LedgerError> {
        let store = self.store.clone();
        self.quick(move || {
            let Some((context, sequence)) = store.find_by_hash(&hash)? else {
                return Ok(None);
            };
            let entry = store.entry(&context, sequence)?.ok_or_else(|| {
                LedgerError::DataLoss(format!(
                    "the hash index names {context:?}#{sequence}, which is missing"
                ))
            })?;
            Ok(Some((context, entry)))
        })
        .await
    }
}

/// Framed entry records (see [`Ledger::read_records_chunk`]).
#[derive(Debug, Default)]
pub struct RecordsChunk {
    /// u32 big-endian length ‖ record, per entry.
    pub framed: Vec<u8>,
    /// Entries in `framed`.
    pub count: u64,
    /// Sequence of the last of them (0: none).
    pub last: u64,
}

/// What [`Ledger::read_chunk`] and [`Ledger::read_page`] read, owned so
/// it can move to the blocking pool.
struct Page {
    context: String,
    after: u64,
    /// Up to this sequence; `None`: the head, read in the same call.
    until: Option<u64>,
    key: Option<String>,
    max_entries: usize,
    max_bytes: usize,
}

impl Page {
    fn new(
        context: &str,
        after: u64,
        until: Option<u64>,
        key: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Page {
        Page {
            context: context.to_owned(),
            after,
            until,
            key: key.map(str::to_owned),
            max_entries,
            max_bytes,
        }
    }

    /// The sequence the read ends at, the entries, and whether a limit
    /// stopped it early.
    fn read(
        &self,
        store: &dyn converge_ledger_store::Store,
    ) -> Result<(u64, Vec<Entry>, bool), LedgerError> {
        let until = match self.until {
            Some(until) => until,
            None => store.head(&self.context)?.map_or(0, |h| h.sequence),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        let scan = Scan {
            after: self.after,
            until,
            key: self.key.as_deref(),
        };
        store.scan(&self.context, scan, &mut |e| {
            let size = e.approximate_size();
            if out.len() >= self.max_entries || (!out.is_empty() && bytes + size > self.max_bytes) {
                truncated = true;
                return false;
            }
            bytes += size;
            out.push(e);
            true
        })?;
        Ok((until, out, truncated))
    }

    /// [`Page::read`] up to `until`, as framed records. A frame counts
    /// towards `max_bytes` with its length prefix; it is never larger than
    /// the entry's `approximate_size`, which bounds the same read in entry
    /// messages.
    fn read_records(
        &self,
        store: &dyn converge_ledger_store::Store,
        until: u64,
    ) -> Result<RecordsChunk, LedgerError> {
        let mut out = RecordsChunk::default();
        let scan = Scan {
            after: self.after,
            until,
            key: self.key.as_deref(),
        };
        store.scan_records(&self.context, scan, &mut |seq, record| {
            let size = record.len() + 4;
            if out.count as usize >= self.max_entries
                || (out.count > 0 && out.framed.len() + size > self.max_bytes)
            {
                return false;
            }
            out.framed
                .extend_from_slice(&(record.len() as u32).to_be_bytes());
            out.framed.extend_from_slice(record);
            out.count += 1;
            out.last = seq;
            true
        })?;
        Ok(out)
    }
}
