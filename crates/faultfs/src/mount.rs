//! The handle a test holds: mounting, power cuts (unmount, cut, remount),
//! fault switches, and the unmount when it is dropped.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session, SessionUnmounter};

use crate::cut::{CutReport, PowerCut};
use crate::fs::FaultFsys;
use crate::model::{DirSync, Model, Stats, Unsynced};

/// How to mount a [`FaultFs`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// When directory entries become durable; strict by default.
    pub dir_sync: DirSync,
}

impl Options {
    /// Options with `dir_sync` set.
    pub fn dir_sync(mut self, dir_sync: DirSync) -> Self {
        self.dir_sync = dir_sync;
        self
    }
}

/// A mounted fault-injecting filesystem whose state lives in this process.
///
/// Requests are served by a thread of this process; the programs under
/// test (children, or this process itself) use the mount as a directory.
/// Dropping the handle unmounts; the state goes with it.
pub struct FaultFs {
    mountpoint: PathBuf,
    model: Arc<Mutex<Model>>,
    /// The serving session; `None` only after a failed unmount.
    session: Mutex<Option<Running>>,
}

impl std::fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFs")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// One mount being served.
struct Running {
    unmounter: SessionUnmounter,
    thread: JoinHandle<io::Result<()>>,
}

fn config() -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".into()),
        // The kernel checks permissions from the mode bits.
        MountOption::DefaultPermissions,
    ];
    // One thread: requests are short and all take the model's lock.
    config.n_threads = Some(1);
    config
}

impl Running {
    fn start(mountpoint: &Path, model: Arc<Mutex<Model>>) -> io::Result<Running> {
        let mut session = Session::new(FaultFsys { model }, mountpoint, &config())?;
        let unmounter = session.unmount_callable();
        let thread = std::thread::Builder::new()
            .name("faultfs".into())
            .spawn(move || session.run())?;
        Ok(Running { unmounter, thread })
    }

    /// Unmounts and waits for the serving thread. If the mount is busy it
    /// is detached lazily (it disappears from the namespace and ends when
    /// its last user lets go), and the error says so.
    fn stop(mut self, mountpoint: &Path) -> io::Result<()> {
        if let Err(e) = self.unmounter.unmount() {
            detach_lazily(mountpoint);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot unmount {}: {e}; a process still uses it (kill every process \
                     using the mount, and close this process's files on it, before a power \
                     cut); it was detached lazily",
                    mountpoint.display()
                ),
            ));
        }
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the faultfs thread panicked")),
        }
    }
}

/// `umount -l`, through whichever tool this machine has.
fn detach_lazily(mountpoint: &Path) {
    for (tool, flags) in [
        ("fusermount3", "-uzq"),
        ("fusermount", "-uzq"),
        ("umount", "-l"),
    ] {
        let status = Command::new(tool)
            .arg(flags)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
    }
}

impl FaultFs {
    /// Mounts an empty filesystem (strict directory durability) at
    /// `mountpoint`, an existing empty directory.
    pub fn mount(mountpoint: &Path) -> io::Result<FaultFs> {
        FaultFs::mount_with(mountpoint, Options::default())
    }

    /// Mounts an empty filesystem with `options`.
    pub fn mount_with(mountpoint: &Path, options: Options) -> io::Result<FaultFs> {
        let model = Arc::new(Mutex::new(Model::new(options.dir_sync)));
        let running = Running::start(mountpoint, model.clone())?;
        Ok(FaultFs {
            mountpoint: mountpoint.to_owned(),
            model,
            session: Mutex::new(Some(running)),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates a power cut. The caller must first kill every process
    /// using the mount (and close this process's files on it).
    ///
    /// Unmounts (so the kernel keeps no cached page, attribute or name),
    /// throws away every change that was not durable — keeping a seeded
    /// random part of it with [`PowerCut::Torn`] — and mounts again at
    /// the same place. Open handles die with the old mount; inode numbers
    /// stay.
    ///
    /// # Errors
    /// If the mount is busy: it is then detached lazily, the state is left
    /// uncut, and every later call fails.
    pub fn power_cut(&self, cut: PowerCut) -> io::Result<CutReport> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let running = session.take().ok_or_else(|| {
            io::Error::other(format!(
                "{} is not mounted: an earlier power cut could not unmount it",
                self.mountpoint.display()
            ))
        })?;
        running.stop(&self.mountpoint)?;
        let report = self.model().power_cut(cut);
        *session = Some(Running::start(&self.mountpoint, self.model.clone())?);
        Ok(report)
    }

    /// While on, `fsync` and `fsyncdir` fail with `EIO` and make nothing
    /// durable (as a failing disk would).
    pub fn fail_fsync(&self, on: bool) {
        self.model().fail_fsync = on;
    }

    /// Caps the bytes allocated to file contents: a write, `fallocate`,
    /// create, `mkdir` or `link` that needs room past it fails with
    /// `ENOSPC` (writes whole: there are no short writes). `statfs` reports
    /// the limit as the capacity. `None`: 1 TiB, never reached.
    pub fn set_space_limit(&self, bytes: Option<u64>) {
        self.model().space_limit_bytes = bytes;
    }

    /// Counters and the current unsynced state.
    pub fn stats(&self) -> Stats {
        self.model().stats()
    }

    /// Every change a power cut would lose now, one per name or file: what
    /// a program forgot to fsync.
    pub fn unsynced(&self) -> Vec<Unsynced> {
        self.model().unsynced()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let running = self
            .session
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(running) = running
            && let Err(e) = running.stop(&self.mountpoint)
        {
            use std::io::Write as _;
            let _ = writeln!(io::stderr(), "faultfs: {e}");
        }
    }
}

/// Whether this machine can mount a [`FaultFs`]: `/dev/fuse` opens and a
/// trial mount (by `mount(2)` as root, else through `fusermount3`) works.
/// The answer is probed once per process.
///
/// # Errors
/// Why not, in words a person can act on.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return Err(
            "/dev/fuse does not exist: load the fuse module (modprobe fuse), or give \
                    the container the device"
                .into(),
        );
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("faultfs-probe-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = FaultFs::mount(&dir)
        .map_err(|e| {
            format!(
                "cannot mount a FUSE filesystem: {e} (as root mount(2) needs CAP_SYS_ADMIN; \
                 otherwise install fusermount3, Debian's fuse3 package)"
            )
        })
        .and_then(|fs| {
            let root = std::fs::metadata(&dir).map_err(|e| format!("the trial mount fails: {e}"));
            drop(fs);
            root.map(|_| ())
        });
    let _ = std::fs::remove_dir(&dir);
    result
}
