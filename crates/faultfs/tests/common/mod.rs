//! Mounting for the tests: a fresh mount on a temporary directory, or a
//! skip (a failure with `CONVERGE_LEDGER_REQUIRE_SERVICES=1`) where FUSE
//! cannot mount.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use converge_ledger_faultfs::Options;

pub use converge_ledger_faultfs::testing::TestMount as Mounted;

/// A fresh mount with default options, or `None` (having said why) if this
/// machine cannot mount one.
pub fn mount(test: &str) -> Option<Mounted> {
    mount_with(test, Options::default())
}

pub fn mount_with(test: &str, options: Options) -> Option<Mounted> {
    converge_ledger_faultfs::testing::test_mount(test, options)
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
