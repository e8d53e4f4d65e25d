//! Mounting for tests: a fresh mount on a temporary directory, or a skip
//! that says why (a failure with `CONVERGE_LEDGER_REQUIRE_SERVICES=1`,
//! which CI sets) where this machine cannot mount FUSE.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::{FaultFs, Options, available};

/// Set to `1` to make a machine without FUSE a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CONVERGE_LEDGER_REQUIRE_SERVICES";

/// A mount and its mountpoint. Fields drop in order: the mount first, then
/// the directory it was on.
pub struct TestMount {
    /// The filesystem.
    pub fs: FaultFs,
    dir: TempDir,
}

impl TestMount {
    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the mountpoint.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A fresh mount for the test named `test`, or `None` (having said why on
/// stderr) if this machine cannot mount one; panics instead under
/// [`REQUIRE_ENV`]`=1`.
pub fn test_mount(test: &str, options: Options) -> Option<TestMount> {
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
    Some(TestMount { fs, dir })
}
