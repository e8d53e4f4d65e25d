//! Mounting for the tests: a fresh mount on a temporary directory, or a
//! skip (a failure with `CONVERGE_LEDGER_REQUIRE_SERVICES=1`) where FUSE
//! cannot mount.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use converge_ledger_faultfs::{FaultFs, Options, available};
use tempfile::TempDir;

/// Set to `1` to make a machine without FUSE a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CONVERGE_LEDGER_REQUIRE_SERVICES";

/// A mount and its mountpoint. Fields drop in order: the mount first, then
/// the directory it was on.
pub struct Mounted {
    pub fs: FaultFs,
    dir: TempDir,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A fresh mount with default options, or `None` (having said why) if this
/// machine cannot mount one.
pub fn mount(test: &str) -> Option<Mounted> {
    mount_with(test, Options::default())
}

pub fn mount_with(test: &str, options: Options) -> Option<Mounted> {
    if let Err(reason) = available() {
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("{test}: FUSE is needed and {REQUIRE_ENV}=1 requires it: {reason}");
        }
        // Straight to the descriptor, past the test harness's capture.
        let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fs = FaultFs::mount_with(dir.path(), options).expect("mounting faultfs");
    Some(Mounted { fs, dir })
}

/// `fsync` of a directory.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates `path` with `bytes` and fsyncs the file (not its directory).
pub fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
}
