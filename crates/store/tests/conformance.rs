//! The Store conformance suite against both backends of this crate.

use converge_ledger_store::testkit::Harness;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store};

struct Memory(MemoryStore);

impl Harness for Memory {
    fn store(&self) -> &dyn Store {
        &self.0
    }
    fn reopen(&mut self) -> bool {
        false
    }
}

struct Embedded {
    dir: tempfile::TempDir,
    store: Option<EmbeddedStore>,
}

impl Embedded {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(Self::options(&dir)).unwrap();
        Embedded {
            dir,
            store: Some(store),
        }
    }
    fn options(dir: &tempfile::TempDir) -> EmbeddedOptions {
        let mut o = EmbeddedOptions::new(dir.path());
        o.fsync = FsyncPolicy::Never;
        o.cache_bytes = 4 * 1024 * 1024;
        o
    }
}

impl Harness for Embedded {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().unwrap()
    }
    fn reopen(&mut self) -> bool {
        drop(self.store.take());
        self.store = Some(EmbeddedStore::open(Self::options(&self.dir)).unwrap());
        true
    }
}

mod memory {
    use super::*;
    converge_ledger_store::conformance_tests!(Memory(MemoryStore::new()));
}

mod embedded {
    use super::*;
    converge_ledger_store::conformance_tests!(Embedded::new());
}
