//! A FUSE test filesystem that simulates power loss, in the manner of
//! LazyFS: the ledger's promise that *an acknowledged append survives
//! power loss* is tested against a disk that forgets everything it was not
//! told to keep.
//!
//! The filesystem lives in memory and its state is owned by the test
//! process: [`FaultFs::mount`] serves it from a background thread at a
//! directory, the program under test (typically `converge-ledger serve` as
//! a child process) uses that directory as its data directory, and the test
//! kills the program and calls [`FaultFs::power_cut`]. A killed process
//! loses nothing on a real disk — the page cache survives it — so killing
//! alone cannot tell `fsync always` from `fsync never`; a power cut can.
//!
//! ```no_run
//! use converge_ledger_faultfs::{FaultFs, PowerCut, available};
//! # fn main() -> std::io::Result<()> {
//! available().map_err(std::io::Error::other)?;
//! let dir = tempfile::tempdir()?;
//! let fs = FaultFs::mount(dir.path())?;
//! // ... run the program on dir.path(), kill it ...
//! let report = fs.power_cut(PowerCut::Torn { seed: 7 })?;
//! // ... start the program again and check what it finds ...
//! # let _ = report; Ok(()) }
//! ```
//!
//! # The durability model
//!
//! This is the contract the ledger is tested against. It is strict POSIX,
//! as LazyFS and ALICE assume: nothing is durable unless an `fsync` made it
//! so.
//!
//! **File content.** Each regular file has a *durable* content and size
//! and a *current* one. `write`, `truncate` (`setattr` of the size) and
//! `fallocate` change the current version only; reads see the current
//! version. `fsync` or `fdatasync` of the file (any descriptor of it)
//! makes its current content and size durable. `close` promises nothing.
//!
//! **Names.** Each directory has durable and current entries (name →
//! object). `create`, `mknod`, `mkdir`, `symlink`, `link`, `unlink`,
//! `rmdir` and `rename` change the current entries only. A directory's
//! entries become durable when that directory is fsynced (`fsync` of a
//! descriptor of the directory, `fsyncdir` in FUSE) — not when a file in
//! it is fsynced. So a new file whose content was fsynced but whose
//! directory was not is gone after a power cut; an unlinked file is back;
//! a file created in a new directory needs the new directory *and* its
//! parent fsynced. A `rename` is atomic: its old and its new name become
//! durable together, whichever of the two directories is fsynced (a
//! journaling filesystem commits both in one transaction; without this a
//! cut could leave a file under both names or a directory with two
//! parents). Until then a cut brings back the old name, and whatever the
//! new name replaced.
//!
//! [`DirSync::OnFileFsync`] relaxes this the way ext4 does: an `fsync` of
//! a file also makes durable every entry that names it (added or removed)
//! and the entries naming each directory above it. The default,
//! [`DirSync::Strict`], is what the ledger is held to.
//!
//! **Power cuts.** [`PowerCut::DropUnsynced`] keeps exactly the durable
//! state. [`PowerCut::Torn`] models writes torn at 512-byte sectors: for
//! every file with unsynced changes, the size is either the durable or the
//! current size, and each sector whose current content differs from the
//! durable one independently takes its current content with probability
//! 1/2. A sector past the durable size that was not kept reads as zeros
//! when the chosen size covers it. The coins come from a seeded generator
//! and are drawn in a fixed order, so a seed names one outcome of one
//! state. Names are not torn: they revert as with `DropUnsynced`. What no
//! durable name reaches is gone.
//!
//! **What the model leaves out.** Permissions, owners and times are not
//! versioned: a cut keeps them as last set. `fdatasync` is `fsync`.
//! Writes are ordered only by `fsync`: a torn cut may keep a later sector
//! and lose an earlier one. There are no short writes: a write that does
//! not fit under the space limit fails whole with `ENOSPC`. `rename` with
//! `RENAME_EXCHANGE` or `RENAME_WHITEOUT` fails with `EINVAL`
//! (`RENAME_NOREPLACE` works). Only regular files, directories and
//! symlinks exist (`mknod` of anything else: `EPERM`); no extended
//! attributes. File locks are the kernel's (local to this machine).
//!
//! **Caches.** Attributes and names are given to the kernel with a zero
//! TTL, files are opened without `FOPEN_KEEP_CACHE`, and a power cut
//! unmounts and mounts again, so no process ever reads a page or an
//! attribute from before the cut. Inode numbers stay the same across cuts
//! (an object's number is never reused); open handles die with the mount.
//! Reads may go through the page cache, which stays true because every
//! write goes through to the filesystem at once (no writeback cache).
//! `mmap` and `O_DIRECT` are left to the kernel's FUSE defaults and are not
//! exercised by the tests: fjall and lsm-tree use neither.
//!
//! **Faults.** [`FaultFs::fail_fsync`] makes `fsync` and `fsyncdir` fail
//! with `EIO` and keep nothing durable. [`FaultFs::set_space_limit`] caps
//! the bytes allocated to file contents (4 KiB pages of the current
//! versions, so truncating a file longer creates a hole and costs
//! nothing); past it, writes, `fallocate` and new names fail with
//! `ENOSPC`, and `statfs` reports the limit as the capacity.

mod content;
mod cut;
mod fs;
mod model;
mod mount;
mod rng;
pub mod testing;

pub use cut::{CutReport, PowerCut};
pub use model::{DirSync, Stats, Unsynced};
pub use mount::{FaultFs, Options, available};
