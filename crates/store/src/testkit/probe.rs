//! A store that forwards to another one, counts what is asked of it, and
//! can fail writes: what tests use to see what the layers above ask of
//! storage.

use std::sync::atomic::{AtomicU64, Ordering};

use converge_ledger_core::{Digest, Entry, Head};

use crate::{Committed, Scan, Store, StoreError, WriteCommand};

/// Forwards to `inner`; counts writes, heads read and entries scanned;
/// `fault` runs before every write and an error it returns fails the write
/// before anything of it is applied.
pub struct Probe {
    /// The store everything goes to.
    pub inner: std::sync::Arc<dyn Store>,
    /// Calls of [`Store::write`].
    pub writes: AtomicU64,
    /// Calls of [`Store::head`].
    pub heads: AtomicU64,
    /// Entries visited by scans.
    pub scanned: AtomicU64,
    /// Called before every write.
    pub fault: Box<dyn Fn() -> Option<StoreError> + Send + Sync>,
    /// What [`Store::failure`] reports besides the inner store's failure
    /// (set with [`Probe::latch`]).
    pub latched: std::sync::Mutex<Option<StoreError>>,
}

impl Probe {
    /// A probe that fails nothing.
    pub fn new(inner: std::sync::Arc<dyn Store>) -> Probe {
        Probe {
            inner,
            writes: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            fault: Box::new(|| None),
            latched: std::sync::Mutex::new(None),
        }
    }

    /// From now on, [`Store::failure`] reports `e`, as a store that failed
    /// for good (a failed fsync) does.
    pub fn latch(&self, e: StoreError) {
        *self.latched.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// A probe whose writes fail with what `fault` returns.
    pub fn failing(
        inner: std::sync::Arc<dyn Store>,
        fault: impl Fn() -> Option<StoreError> + Send + Sync + 'static,
    ) -> Probe {
        Probe {
            fault: Box::new(fault),
            ..Probe::new(inner)
        }
    }

    /// Writes attempted.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Heads read.
    pub fn heads_read(&self) -> u64 {
        self.heads.load(Ordering::SeqCst)
    }

    /// Entries scanned.
    pub fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::SeqCst)
    }
}

impl Store for Probe {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = (self.fault)() {
            return Err(e);
        }
        self.inner.write(now_ns, commands)
    }
    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(context)
    }
    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.scan(context, scan, &mut |e| {
            self.scanned.fetch_add(1, Ordering::SeqCst);
            visit(e)
        })
    }
    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        self.inner.entry(context, sequence)
    }
    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        self.inner.find_by_hash(hash)
    }
    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        self.inner.merkle_nodes(context, level, start, count)
    }
    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.contexts(after, visit)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn may_block(&self) -> bool {
        self.inner.may_block()
    }
    fn failure(&self) -> Option<StoreError> {
        let latched = self
            .latched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        latched.or_else(|| self.inner.failure())
    }
    fn stats(&self) -> crate::stats::StorageStats {
        self.inner.stats()
    }
}
