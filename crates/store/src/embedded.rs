//! The embedded on-disk backend, on fjall (an LSM tree with a write-ahead
//! journal). See `docs/design.md` ("Storage") for why fjall, the keyspace
//! layout and the crash analysis.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use converge_ledger_core::{Digest, Entry, Head, record};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::derived::{DerivedKv, DerivedWrite, Guard, Pair};

use crate::journal::{self, Repaired, TailLimit};
use crate::sequencer::{Backing, stage};
use crate::store::{heads_after, visit_heads};
use crate::{Committed, Scan, Store, StoreError, WriteCommand};

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every group commit is fsynced before any of its writers is answered:
    /// acknowledged means on disk.
    Always,
    /// Group commits reach the OS at once and are fsynced at least every
    /// interval: a power loss can lose the last interval, a process crash
    /// loses nothing.
    Interval(Duration),
    /// The OS decides when to write back: a process crash loses nothing, a
    /// power loss can lose anything not yet written back.
    Never,
}

/// How to open an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory holding the database (created if missing).
    pub path: PathBuf,
    /// Durability of acknowledged writes.
    pub fsync: FsyncPolicy,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
}

impl EmbeddedOptions {
    /// Defaults: `fsync always`, 64 MiB cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            fsync: FsyncPolicy::Always,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Keyspace names; part of the on-disk format.
const KS_ENTRIES: &str = "entries";
const KS_HEADS: &str = "heads";
const KS_BY_HASH: &str = "by_hash";
const KS_BY_KEY: &str = "by_key";
const KS_IDEMPOTENCY: &str = "idempotency";
const KS_META: &str = "meta";
const KS_MERKLE: &str = "merkle";
/// The derived space (projections): rebuildable, never hashed.
const KS_DERIVED: &str = "derived";
/// fjall replays every journal not yet flushed on open (after a crash *and*
/// after a clean close), so the journal bound is the restart-time bound:
/// 64 MiB (fjall's minimum) instead of the 512 MiB default keeps opening
/// under about a second whatever the data size (BENCHMARKS.md, "Storage
/// engine choice" and "restart").
const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Smaller memtables flush sooner, so less journal is pending at any time.
const MEMTABLE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The most an `fsync always` store can have in flight at a power cut: one
/// group commit (16 MiB of commands, with their index records and
/// framing). A torn journal tail longer than this is damage, not a torn
/// write.
const IN_FLIGHT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Layout version stored under `meta/format`; bumped on any change.
const FORMAT_VERSION: u32 = 1;

/// The on-disk store.
pub struct EmbeddedStore {
    db: Database,
    entries: Keyspace,
    heads_ks: Keyspace,
    by_hash: Keyspace,
    by_key: Keyspace,
    idempotency: Keyspace,
    merkle: Keyspace,
    derived: Keyspace,
    /// Serialises guarded writes to `derived`.
    derived_lock: Mutex<()>,
    fsync: FsyncPolicy,
    /// Every context's id and committed head. Loaded at open (heads are
    /// stored, so no entry is replayed); changed only after a durable commit.
    state: RwLock<State>,
    /// Serialises writers so staging sees a stable committed state.
    write_lock: Mutex<()>,
    syncer: Option<Syncer>,
    /// The first failed write or fsync. The engine refuses writes after it
    /// (it cannot tell what reached the disk), so every later write gets
    /// this error, which says what went wrong first.
    failure: Arc<Mutex<Option<StoreError>>>,
    /// The torn journal tail cut at open, if a power loss left one.
    repaired: Option<Repaired>,
    /// The data directory.
    path: PathBuf,
}

#[derive(Default)]
struct State {
    /// Context name → interned id and head.
    contexts: BTreeMap<Arc<str>, Ctx>,
    /// Interned id → name.
    names: HashMap<u32, Arc<str>>,
    next_id: u32,
}

struct Ctx {
    id: u32,
    head: Head,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A storage engine failure, told apart by what the caller can do about it:
/// a full disk, a directory another process holds, a format from another
/// build, or a transient I/O failure.
fn engine(what: &str, e: fjall::Error) -> StoreError {
    fn no_space(e: &std::io::Error) -> bool {
        e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(ENOSPC)
    }
    match &e {
        fjall::Error::Io(i) | fjall::Error::Storage(fjall::LsmError::Io(i)) if no_space(i) => {
            StoreError::NoSpace(format!("{what}: the disk is full ({i})"))
        }
        fjall::Error::Locked => StoreError::Config(format!(
            "{what}: the data directory is in use by another process (one process owns an \
             embedded data directory; stop the other server or use another --data-dir)"
        )),
        fjall::Error::InvalidVersion(v) => StoreError::Config(format!(
            "{what}: the data directory holds storage engine format {v:?}, which this build \
             cannot read"
        )),
        fjall::Error::Poisoned => StoreError::Io(format!(
            "{what}: the storage engine refuses writes after an earlier failed write or fsync; \
             restart the server to recover from the journal"
        )),
        _ => StoreError::Io(format!("{what}: {e}")),
    }
}

/// `ENOSPC` on Linux and the BSDs.
const ENOSPC: i32 = 28;

fn entry_key(id: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `id ‖ u16 key length ‖ key`: the prefix of every by-key index record of
/// one key, so a prefix scan returns that key's sequences in order.
fn by_key_prefix(id: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + 2 + key.len() + 8);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn node_key(id: u32, level: u8, index: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4] = level;
    k[5..].copy_from_slice(&index.to_be_bytes());
    k
}

fn idempotency_key(id: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn be_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `options.path`. Of the data, only the
    /// stored heads are read, and fjall replays what its journal holds that
    /// was not yet flushed (at most 64 MiB, `JOURNAL_BYTES_MAX`): opening is bounded
    /// by the journal, not by the number of entries.
    pub fn open(options: EmbeddedOptions) -> Result<Self, StoreError> {
        let shown = options.path.display().to_string();
        create_dir_durably(&options.path).map_err(|e| io(format!("cannot create {shown}: {e}")))?;
        check_data_dir(&options.path)?;
        let open = || {
            Database::builder(&options.path)
                .cache_size(options.cache_bytes)
                .max_journaling_size(JOURNAL_BYTES_MAX)
                .open()
        };
        let (db, repaired) = match open() {
            Ok(db) => (db, None),
            // A torn journal tail (a power loss took writes that were not
            // synced): cut it, then open what is left.
            Err(fjall::Error::JournalRecovery(_)) => {
                let limit = match options.fsync {
                    FsyncPolicy::Always => TailLimit::InFlight(IN_FLIGHT_BYTES_MAX),
                    FsyncPolicy::Interval(_) | FsyncPolicy::Never => TailLimit::Unsynced,
                };
                let repaired = journal::repair(&options.path, limit)?;
                let db = open().map_err(|e| engine(&format!("cannot open {shown}"), e))?;
                (db, repaired)
            }
            Err(e) => return Err(engine(&format!("cannot open {shown}"), e)),
        };
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
            })
            .map_err(|e| engine(&format!("cannot open keyspace {name} in {shown}"), e))
        };
        let meta = ks(KS_META)?;
        match meta.get("format").map_err(io)? {
            None => {
                meta.insert("format", FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| engine("cannot record the storage format", e))?;
                db.persist(PersistMode::SyncAll)
                    .map_err(|e| engine("cannot record the storage format", e))?;
            }
            Some(v) if *v == FORMAT_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(StoreError::Config(format!(
                    "{shown} holds storage format {:?}; this build reads format {FORMAT_VERSION}",
                    &*v
                )));
            }
        }
        let failure = Arc::new(Mutex::new(None));
        let store = EmbeddedStore {
            entries: ks(KS_ENTRIES)?,
            heads_ks: ks(KS_HEADS)?,
            by_hash: ks(KS_BY_HASH)?,
            by_key: ks(KS_BY_KEY)?,
            idempotency: ks(KS_IDEMPOTENCY)?,
            merkle: ks(KS_MERKLE)?,
            derived: ks(KS_DERIVED)?,
            derived_lock: Mutex::new(()),
            fsync: options.fsync,
            state: RwLock::new(State::default()),
            write_lock: Mutex::new(()),
            syncer: match options.fsync {
                FsyncPolicy::Interval(every) => {
                    Some(Syncer::start(db.clone(), every, failure.clone()))
                }
                _ => None,
            },
            failure,
            repaired,
            path: options.path.clone(),
            db,
        };
        // fjall fsyncs each keyspace's own directory but not `keyspaces/`,
        // which names them: on a filesystem that keeps names only once
        // their directory is synced, a power cut would lose every keyspace
        // (and recovery skips journal records of keyspaces it cannot
        // find). Sync it, and the data directory, now that every keyspace
        // exists.
        for dir in [options.path.join("keyspaces"), options.path.clone()] {
            sync_dir(&dir).map_err(|e| io(format!("cannot fsync {}: {e}", dir.display())))?;
        }
        store.load_heads()?;
        Ok(store)
    }

    fn load_heads(&self) -> Result<(), StoreError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for item in self.heads_ks.iter() {
            let (k, v) = item.into_inner().map_err(io)?;
            let id = <[u8; 4]>::try_from(&*k)
                .map(u32::from_be_bytes)
                .map_err(|_| io("a heads key is not a 4-byte context id"))?;
            let (name, head) = decode_head_value(&v).map_err(|reason| StoreError::Corrupt {
                context: format!("#{id}"),
                sequence: 0,
                reason,
            })?;
            let name: Arc<str> = Arc::from(name);
            state.names.insert(id, name.clone());
            state.next_id = state.next_id.max(id + 1);
            state.contexts.insert(name, Ctx { id, head });
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn id_of(&self, context: &str) -> Option<u32> {
        self.read().contexts.get(context).map(|c| c.id)
    }

    /// The stored records `scan` selects, in sequence order, until `visit`
    /// returns `false` (or an error).
    fn scan_stored(
        &self,
        context: &str,
        scan: Scan<'_>,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let Some(id) = self.id_of(context) else {
            return Ok(());
        };
        if scan.after >= scan.until {
            return Ok(());
        }
        match scan.key {
            None => {
                let range = entry_key(id, scan.after + 1)..=entry_key(id, scan.until);
                for item in self.entries.range(range) {
                    let (k, v) = item.into_inner().map_err(io)?;
                    let seq = be_u64(&k[4..]).ok_or_else(|| io("malformed entry key"))?;
                    if !visit(seq, &v)? {
                        break;
                    }
                }
            }
            Some(key) => {
                let prefix = by_key_prefix(id, key);
                let mut from = prefix.clone();
                from.extend_from_slice(&(scan.after + 1).to_be_bytes());
                let mut to = prefix.clone();
                to.extend_from_slice(&scan.until.to_be_bytes());
                for item in self.by_key.range(from..=to) {
                    let k = item.key().map_err(io)?;
                    let seq =
                        be_u64(&k[prefix.len()..]).ok_or_else(|| io("malformed index key"))?;
                    let v = self
                        .entries
                        .get(entry_key(id, seq))
                        .map_err(io)?
                        .ok_or_else(|| StoreError::Corrupt {
                            context: context.to_owned(),
                            sequence: seq,
                            reason: "the key index names an entry that is missing".into(),
                        })?;
                    if !visit(seq, &v)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn decode_entry(
        &self,
        context: &str,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<Entry, StoreError> {
        let entry = record::decode(bytes).map_err(|e| StoreError::Corrupt {
            context: context.to_owned(),
            sequence,
            reason: e.0,
        })?;
        if entry.sequence != sequence {
            return Err(StoreError::Corrupt {
                context: context.to_owned(),
                sequence,
                reason: format!(
                    "record stored under sequence {sequence} says {}",
                    entry.sequence
                ),
            });
        }
        Ok(entry)
    }

    /// The error every write gets after the store's first failure: of the
    /// same kind, saying what failed first and what to do.
    fn failed(&self) -> Option<StoreError> {
        let first = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let refused = |m: &str| {
            format!(
                "the store refuses writes since an earlier failure ({m}); the engine cannot tell \
                 what of it reached the disk: restart the server to recover from the journal"
            )
        };
        Some(match &first {
            StoreError::Io(m) => StoreError::Io(refused(m)),
            StoreError::NoSpace(m) => StoreError::NoSpace(refused(m)),
            _ => first,
        })
    }

    /// Latches the first failure and returns it (or the first, if another
    /// came before).
    fn fail(&self, e: StoreError) -> StoreError {
        latch(&self.failure, e)
    }

    /// A storage engine failure of a write or sync, told apart by what the
    /// caller can do about it. When the engine only says it refuses writes
    /// after an earlier failure of its own (a background flush that failed,
    /// whose error it does not return), a probe write to the data directory
    /// tells a full disk from other failures.
    fn engine_failure(&self, what: &str, e: fjall::Error) -> StoreError {
        let poisoned = matches!(e, fjall::Error::Poisoned);
        let err = engine(what, e);
        if poisoned && let Some(full) = probe_space(&self.path) {
            return StoreError::NoSpace(format!("{what}: the disk is full ({full})"));
        }
        err
    }

    /// The torn journal tail that opening cut (a power loss took writes
    /// that were not synced, and left some of their sectors), if any.
    pub fn repaired(&self) -> Option<&Repaired> {
        self.repaired.as_ref()
    }

    /// Disk space used by the database, in bytes.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

fn encode_head_value(name: &str, head: &Head) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len() + 128);
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&head.encode());
    v
}

fn decode_head_value(v: &[u8]) -> Result<(String, Head), String> {
    let len = v
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("stored head is truncated")?;
    let name = v.get(4..4 + len).ok_or("stored head is truncated")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| "stored context name is not UTF-8")?;
    let head = Head::decode(&v[4 + len..]).map_err(|e| e.0)?;
    Ok((name, head))
}

impl Backing for EmbeddedStore {
    fn committed_head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        Ok(self.read().contexts.get(context).map(|c| c.head.clone()))
    }

    fn committed_idempotency(&self, context: &str, key: &str) -> Result<Option<u64>, StoreError> {
        let Some(id) = self.id_of(context) else {
            return Ok(None);
        };
        let Some(v) = self.idempotency.get(idempotency_key(id, key)).map_err(io)? else {
            return Ok(None);
        };
        // A record that does not decode is corruption, never "no key": read
        // as absent, it would let a retry append a duplicate.
        be_u64(&v).map(Some).ok_or_else(|| StoreError::Corrupt {
            context: context.to_owned(),
            sequence: 0,
            reason: format!(
                "the idempotency record of key {key:?} is {} bytes, not an 8-byte sequence",
                v.len()
            ),
        })
    }

    fn committed_entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        let Some(id) = self.id_of(context) else {
            return Ok(None);
        };
        match self.entries.get(entry_key(id, sequence)).map_err(io)? {
            None => Ok(None),
            Some(v) => self.decode_entry(context, sequence, &v).map(Some),
        }
    }
}

impl Store for EmbeddedStore {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        let _writer = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        let staged = stage(self, now_ns, commands)?;
        if staged.heads.is_empty() && staged.committed.entries.is_empty() {
            return Ok(staged.committed);
        }
        // Assign ids to new contexts; installed only after the commit.
        let mut new_ids: HashMap<Arc<str>, u32> = HashMap::new();
        let ids: HashMap<Arc<str>, u32> = {
            let state = self.read();
            let mut next = state.next_id;
            staged
                .heads
                .keys()
                .map(|name| {
                    let id = match state.contexts.get(name) {
                        Some(c) => c.id,
                        None => {
                            let id = next;
                            next += 1;
                            new_ids.insert(name.clone(), id);
                            id
                        }
                    };
                    (name.clone(), id)
                })
                .collect()
        };
        let durability = match self.fsync {
            FsyncPolicy::Always => Some(PersistMode::SyncAll),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Some(PersistMode::Buffer),
        };
        let mut batch = self.db.batch().durability(durability);
        let mut buf = Vec::new();
        for (context, entry) in &staged.committed.entries {
            let id = ids[context];
            buf.clear();
            record::encode_into(entry, &mut buf);
            batch.insert(&self.entries, entry_key(id, entry.sequence), buf.as_slice());
            batch.insert(&self.by_hash, entry.hash.0, entry_key(id, entry.sequence));
            let mut k = by_key_prefix(id, &entry.key);
            k.extend_from_slice(&entry.sequence.to_be_bytes());
            batch.insert(&self.by_key, k, [0u8; 0]);
        }
        for (context, key, seq) in &staged.idempotency {
            batch.insert(
                &self.idempotency,
                idempotency_key(ids[context], key),
                seq.to_be_bytes(),
            );
        }
        for (context, level, index, root) in &staged.nodes {
            batch.insert(&self.merkle, node_key(ids[context], *level, *index), root.0);
        }
        for (context, head) in &staged.heads {
            if head.sequence > 0 {
                batch.insert(
                    &self.heads_ks,
                    ids[context].to_be_bytes(),
                    encode_head_value(context, head),
                );
            }
        }
        batch.commit().map_err(|e| {
            self.fail(self.engine_failure(
                "committing a batch failed; nothing of it was acknowledged",
                e,
            ))
        })?;
        // Durable: now, and only now, the heads move.
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for (name, head) in staged.heads {
            if head.sequence == 0 {
                continue;
            }
            match state.contexts.get_mut(&name) {
                Some(c) => c.head = head,
                None => {
                    let id = new_ids[&name];
                    state.names.insert(id, name.clone());
                    state.next_id = state.next_id.max(id + 1);
                    state.contexts.insert(name, Ctx { id, head });
                }
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
        self.scan_stored(context, scan, |seq, bytes| {
            Ok(visit(self.decode_entry(context, seq, bytes)?))
        })
    }

    fn scan_records(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_stored(context, scan, |seq, bytes| {
            let corrupt = |reason: String| StoreError::Corrupt {
                context: context.to_owned(),
                sequence: seq,
                reason,
            };
            let stored = record::check(bytes).map_err(|e| corrupt(e.0))?;
            if stored != seq {
                return Err(corrupt(format!(
                    "record stored under sequence {seq} says {stored}"
                )));
            }
            Ok(visit(seq, bytes))
        })
    }

    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        self.committed_entry(context, sequence)
    }

    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        let Some(v) = self.by_hash.get(hash.0).map_err(io)? else {
            return Ok(None);
        };
        if v.len() != 12 {
            return Err(io("malformed hash index value"));
        }
        let id = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        let seq = be_u64(&v[4..]).ok_or_else(|| io("malformed hash index value"))?;
        Ok(self.read().names.get(&id).map(|n| (n.to_string(), seq)))
    }

    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        let Some(id) = self.id_of(context) else {
            return Ok(Vec::new());
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let end = start.saturating_add(count - 1);
        let mut out = Vec::with_capacity(count.min(1024) as usize);
        for item in self
            .merkle
            .range(node_key(id, level, start)..=node_key(id, level, end))
        {
            let v = item.value().map_err(io)?;
            out.push(Digest::from_slice(&v).ok_or_else(|| StoreError::Corrupt {
                context: context.to_owned(),
                sequence: 0,
                reason: format!(
                    "a Merkle node at level {level} is {} bytes, not 32",
                    v.len()
                ),
            })?);
        }
        Ok(out)
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
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.fail(self.engine_failure("fsync failed", e)))
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed()
    }

    fn stats(&self) -> crate::stats::StorageStats {
        crate::stats::StorageStats {
            disk_bytes: self.db.disk_space().ok(),
            pool: None,
        }
    }

    fn derived(&self) -> Option<&dyn DerivedKv> {
        Some(self)
    }
}

/// The derived space in its own keyspace, written atomically (a fjall
/// batch is all or nothing after a crash) and without an fsync of its own:
/// the keyspaces share one journal, so the next group commit's fsync makes
/// a projection batch durable with it, and a crash before that loses only
/// the last batches, which reflect receipts written before them; the
/// projector folds those receipts again. Projections so never add a disk
/// flush beside the entries' own.
impl DerivedKv for EmbeddedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.derived.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let range = self.derived.range(start..end);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut push = |(k, v): (fjall::Slice, fjall::Slice)| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        };
        if reverse {
            for item in range.rev() {
                if !push(item.into_inner().map_err(io)?) {
                    break;
                }
            }
        } else {
            for item in range {
                if !push(item.into_inner().map_err(io)?) {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn write_if(&self, guards: &[Guard], writes: &[DerivedWrite]) -> Result<bool, StoreError> {
        let _writer = self.derived_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        for (key, expected) in guards {
            let current = self.derived.get(key).map_err(io)?;
            if current.as_deref() != expected.as_deref() {
                return Ok(false);
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for (key, value) in writes {
            match value {
                Some(v) => batch.insert(&self.derived, key.as_slice(), v.as_slice()),
                None => batch.remove(&self.derived, key.as_slice()),
            }
        }
        batch.commit().map_err(|e| {
            self.fail(self.engine_failure(
                "committing a projection batch failed; the store refuses writes until restarted",
                e,
            ))
        })?;
        Ok(true)
    }
}

/// Raw access to stored records, for tamper and corruption tests only.
#[cfg(feature = "testkit")]
impl EmbeddedStore {
    /// The stored record of an entry, as bytes.
    pub fn raw_entry(&self, context: &str, sequence: u64) -> Option<Vec<u8>> {
        let id = self.id_of(context)?;
        self.entries
            .get(entry_key(id, sequence))
            .ok()
            .flatten()
            .map(|v| v.to_vec())
    }

    /// Overwrites the stored record of an entry with arbitrary bytes.
    pub fn raw_put_entry(&self, context: &str, sequence: u64, bytes: &[u8]) {
        let id = self.id_of(context).expect("context exists");
        self.entries
            .insert(entry_key(id, sequence), bytes)
            .expect("raw write");
        self.db.persist(PersistMode::SyncAll).expect("raw persist");
    }

    /// Overwrites the stored record of an idempotency key with arbitrary
    /// bytes.
    pub fn raw_put_idempotency(&self, context: &str, key: &str, bytes: &[u8]) {
        let id = self.id_of(context).expect("context exists");
        self.idempotency
            .insert(idempotency_key(id, key), bytes)
            .expect("raw write");
        self.db.persist(PersistMode::SyncAll).expect("raw persist");
    }

    /// Deletes the stored record of an entry.
    pub fn raw_delete_entry(&self, context: &str, sequence: u64) {
        let id = self.id_of(context).expect("context exists");
        self.entries
            .remove(entry_key(id, sequence))
            .expect("raw delete");
        self.db.persist(PersistMode::SyncAll).expect("raw persist");
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(s) = self.syncer.take() {
            s.stop();
        }
        // Everything acknowledged under `interval`/`never` reaches the disk
        // on a clean close. The server syncs (and reports a failure) before
        // it drops the store; this covers direct users, who call
        // `Store::sync` to learn of a failure.
        if self.failed().is_none() {
            let _ = self.db.persist(PersistMode::SyncAll);
        }
    }
}

/// Writes and removes a small file in `dir`: the error, if it fails because
/// the disk is full.
fn probe_space(dir: &std::path::Path) -> Option<std::io::Error> {
    use std::io::Write as _;
    let probe = dir.join(".space-probe");
    let written = std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(&[0u8; 64 * 1024]).and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(e)
            if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(ENOSPC) =>
        {
            Some(e)
        }
        _ => None,
    }
}

/// Records `e` as the store's failure unless one is recorded already;
/// returns the recorded one.
fn latch(failure: &Mutex<Option<StoreError>>, e: StoreError) -> StoreError {
    failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(e)
        .clone()
}

/// Makes the entries of `dir` durable: a file's or a directory's own fsync
/// does not cover its name.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `path` and its missing ancestors, syncing the parent of each
/// directory created, so that the data directory survives a power cut as
/// soon as the store that made it is open.
fn create_dir_durably(path: &std::path::Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = path;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(path)?;
    for dir in missing.iter().rev() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// Refuses to adopt a directory that holds something other than a ledger:
/// a mistyped `--data-dir` must not scatter the engine's files among
/// someone's documents. An empty directory, or one with the engine's
/// version marker, is accepted; so are `signing.key` (the server may create
/// it first) and `lost+found` (the root of a fresh filesystem).
fn check_data_dir(path: &std::path::Path) -> Result<(), StoreError> {
    let shown = path.display();
    let read = std::fs::read_dir(path).map_err(|e| io(format!("cannot read {shown}: {e}")))?;
    let mut foreign = Vec::new();
    for item in read {
        let name = item
            .map_err(|e| io(format!("cannot read {shown}: {e}")))?
            .file_name();
        match name.to_string_lossy().as_ref() {
            // fjall's format marker: this is a storage directory.
            "version" => return Ok(()),
            "signing.key" | "lost+found" | ".space-probe" => {}
            n if n.starts_with("signing.key.") => {}
            n => foreign.push(n.to_owned()),
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = foreign.len().saturating_sub(5);
    foreign.truncate(5);
    Err(StoreError::Config(format!(
        "{shown} is not empty and holds no ledger data ({}{}); refusing to store the ledger \
         among other files: give --data-dir an empty or new directory",
        foreign.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

/// The background fsync of the `interval` policy.
struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Syncer {
    fn start(db: Database, every: Duration, failure: Arc<Mutex<Option<StoreError>>>) -> Syncer {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-fsync".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    let (guard, _) = cv
                        .wait_timeout(stopped, every)
                        .unwrap_or_else(|p| p.into_inner());
                    stopped = guard;
                    // A failed fsync poisons the database, and is latched
                    // as the store's failure: later writes fail loudly
                    // rather than being acknowledged without disk, and
                    // shutdown reports it.
                    if let Err(e) = db.persist(PersistMode::SyncAll) {
                        latch(&failure, engine("the interval fsync failed", e));
                        return;
                    }
                }
            })
            .expect("spawning the fsync thread");
        Syncer { stop, thread }
    }

    fn stop(self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        let _ = self.thread.join();
    }
}
