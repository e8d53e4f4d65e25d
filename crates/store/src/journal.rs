//! Point-in-time recovery of fjall's journal after a power loss.
//!
//! fjall 3 recovers a journal whose last batch is *incomplete*, but refuses
//! to open one whose batch is complete in shape and wrong in content — a
//! checksum mismatch. That is exactly what a power cut leaves when writes
//! were not fsynced (`--fsync never` or `interval`, or the one batch in
//! flight under `always`): the disk kept some sectors of the last writes
//! and not others, in any order. The database then cannot open at all,
//! although everything before the torn tail is intact.
//!
//! [`repair`] finds the first batch that does not verify, and cuts the
//! journal there: what follows it was never made durable, so dropping it is
//! what the policy allowed to happen. Every batch holds whole group commits
//! (entries, indexes and heads together), so the store that opens after
//! the cut is a consistent prefix of what was written.
//!
//! The journal format is fjall's, read here from its documented framing
//! (fjall 3.x, storage format version 3, checked against the `version`
//! marker before anything is touched): a sequence of batches, each a
//! *start* entry (tag 1, `u32` item count, `u64` sequence number), that
//! many *item* (tag 2) or *clear* (tag 4) entries, and an *end* entry (tag
//! 3, `u64` xxh3 checksum of the item bytes, the 4 magic bytes `FJL\x03`);
//! little-endian throughout; a zero byte where a batch would start is the
//! preallocated end of the file. The power-loss tests
//! (`crates/cli/tests/power_loss.rs`) exercise it under every policy, so a
//! change of format in a fjall upgrade fails them.

use std::path::{Path, PathBuf};

use crate::StoreError;

/// fjall's storage format this reader knows.
const FJALL_FORMAT: u8 = 3;
const TAG_START: u8 = 1;
const TAG_ITEM: u8 = 2;
const TAG_END: u8 = 3;
const TAG_CLEAR: u8 = 4;
const MAGIC: &[u8; 4] = b"FJL\x03";

/// What [`repair`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The journal file that held the first torn batch.
    pub file: PathBuf,
    /// Where in it the torn batch started: the file now ends there.
    pub offset: u64,
    /// Bytes of torn tail dropped (in that file and any later ones).
    pub bytes_dropped: u64,
    /// Later journal files removed with it.
    pub files_removed: usize,
}

/// How much torn tail [`repair`] may drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailLimit {
    /// Under `fsync always` only the one batch in flight can be unsynced:
    /// refuse (as corruption) a cut of more than these bytes, or one that
    /// would remove a later journal file.
    InFlight(u64),
    /// Under `never` and `interval` anything after the last sync can be
    /// torn.
    Unsynced,
}

/// Cuts the journals of the fjall database in `dir` at the first batch
/// that does not verify, if any; `Ok(None)` when every batch verifies.
pub fn repair(dir: &Path, limit: TailLimit) -> Result<Option<Repaired>, StoreError> {
    let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what}: {e}"));
    match std::fs::read(dir.join("version")) {
        Ok(v) if v.get(..4) == Some(&[b'F', b'J', b'L', FJALL_FORMAT][..]) => {}
        Ok(v) => {
            return Err(StoreError::Config(format!(
                "{} has storage engine format marker {v:?}; journal repair reads format {FJALL_FORMAT} only",
                dir.display()
            )));
        }
        Err(e) => return Err(io("reading the storage engine's format marker", e)),
    }
    let mut journals: Vec<(u64, PathBuf)> = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| io("listing the journals", e))? {
        let path = item.map_err(|e| io("listing the journals", e))?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse().ok());
        if let Some(id) = id {
            journals.push((id, path));
        }
    }
    journals.sort();
    for (i, (_, path)) in journals.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| io("reading a journal", e))?;
        let Some(torn) = first_torn_batch(&bytes) else {
            continue;
        };
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64;
        let later = &journals[i + 1..];
        let later_bytes: u64 = later
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let dropped = end.saturating_sub(torn as u64) + later_bytes;
        if let TailLimit::InFlight(max) = limit
            && (dropped > max || !later.is_empty() || valid_batch_after(&bytes, torn))
        {
            return Err(StoreError::Corrupt {
                context: String::new(),
                sequence: 0,
                reason: format!(
                    "journal {} does not verify from offset {torn} on ({dropped} bytes, {} later \
                     journals, or valid batches after it): more than the one batch an fsync-always \
                     store can have in flight, so this is damage, not a torn write; restore from a \
                     snapshot or backup",
                    path.display(),
                    later.len()
                ),
            });
        }
        cut(path, torn as u64).map_err(|e| io("cutting a torn journal", e))?;
        for (_, p) in later {
            std::fs::remove_file(p).map_err(|e| io("removing a journal after a torn one", e))?;
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the data directory", e))?;
        return Ok(Some(Repaired {
            file: path.clone(),
            offset: torn as u64,
            bytes_dropped: dropped,
            files_removed: later.len(),
        }));
    }
    Ok(None)
}

/// Truncates `path` to `len` and syncs it.
fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// The offset of the first batch of `journal` that does not verify, or
/// `None` if every batch does up to the end (a zero byte, or the end of
/// the file).
fn first_torn_batch(journal: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < journal.len() && journal[at] != 0 {
        match batch_end(journal, at) {
            Some(next) => at = next,
            None => return Some(at),
        }
    }
    None
}

/// Whether a whole, verifying batch starts anywhere after the torn one at
/// `torn`: then the damage is in the middle of the journal, where only
/// synced batches can be under `fsync always`.
fn valid_batch_after(journal: &[u8], torn: usize) -> bool {
    (torn + 1..journal.len()).any(|at| journal[at] == TAG_START && batch_end(journal, at).is_some())
}

/// The end of the batch starting at `at`, if it is whole and its checksum
/// verifies.
fn batch_end(j: &[u8], at: usize) -> Option<usize> {
    let mut r = Cursor { bytes: j, at };
    if r.u8()? != TAG_START {
        return None;
    }
    let count = r.u32()?;
    let _seqno = r.u64()?;
    let items_start = r.at;
    for _ in 0..count {
        match r.u8()? {
            TAG_ITEM => {
                let _value_type = r.u8()?;
                let _compression = r.u8()?;
                let _keyspace = r.u64()?;
                let key_len = r.u16()? as usize;
                let _value_len = r.u32()?;
                let stored_len = r.u32()? as usize;
                r.skip(key_len.checked_add(stored_len)?)?;
            }
            TAG_CLEAR => {
                r.u64()?;
            }
            _ => return None,
        }
    }
    let items_end = r.at;
    if r.u8()? != TAG_END {
        return None;
    }
    let checksum = r.u64()?;
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    (xxhash_rust::xxh3::xxh3_64(&j[items_start..items_end]) == checksum).then_some(r.at)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as fjall writes it: start, items, end with the checksum.
    fn batch(items: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in items {
            body.push(TAG_ITEM);
            body.push(0); // value type
            body.push(0); // no compression
            body.extend_from_slice(&7u64.to_le_bytes());
            body.extend_from_slice(&(k.len() as u16).to_le_bytes());
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(v);
        }
        let mut out = vec![TAG_START];
        out.extend_from_slice(&(items.len() as u32).to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&body);
        out.push(TAG_END);
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        out.extend_from_slice(MAGIC);
        out
    }

    #[test]
    fn whole_batches_followed_by_preallocated_zeros_verify() {
        let mut j = batch(&[(b"k", b"v")]);
        j.extend(batch(&[(b"a", b"1"), (b"b", b"22")]));
        j.extend(vec![0; 100]);
        assert_eq!(first_torn_batch(&j), None);
    }

    #[test]
    fn a_batch_with_a_lost_sector_is_the_torn_tail() {
        let first = batch(&[(b"k", b"v")]);
        let mut second = batch(&[(b"a", &[9u8; 600][..])]);
        // The middle of the batch never reached the disk: zeros.
        second[300..400].fill(0);
        let mut j = first.clone();
        j.extend(&second);
        assert_eq!(first_torn_batch(&j), Some(first.len()));
        assert!(!valid_batch_after(&j, first.len()));
        // A whole batch after the torn one: damage in the middle.
        j.extend(batch(&[(b"c", b"3")]));
        assert!(valid_batch_after(&j, first.len()));
    }
}
