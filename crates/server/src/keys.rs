//! The server's Ed25519 head-signing key: where it comes from and how it is
//! kept. See `docs/design.md`, "Signed heads".

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use converge_ledger_core::{Digest, HeadSigner};

/// The key file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// 32 bytes from the operating system's CSPRNG (`/dev/urandom`).
///
/// # Panics
///
/// If the OS has no `/dev/urandom`: a server must not sign with a guessable
/// key.
pub fn random_seed() -> [u8; 32] {
    use std::io::Read as _;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("reading 32 bytes from /dev/urandom for a signing key");
    seed
}

/// Reads the signing key at `path` (64 hex characters: the Ed25519 secret
/// seed), or creates it there with a fresh random seed and mode 0600 when
/// `create` is set and the file does not exist.
///
/// A key file that other users may read is refused: whoever reads it can
/// sign heads in this server's name. Creation is safe against concurrent
/// creators (two nodes started at once with the same new path): the key is
/// written and synced under a name of its own, then linked into place, which
/// fails if another creator got there first; exactly one key results, and
/// every caller returns it. The directory is synced after the link, so the
/// key survives a power loss once this returns.
pub fn load_or_create_key(path: &Path, create: bool) -> Result<HeadSigner, KeyError> {
    match read_key(path) {
        Err(ReadError::Missing) if create => {
            write_key(path, &HeadSigner::from_seed(random_seed()))?;
            read_key(path).map_err(|e| e.into_key_error(path))
        }
        read => read.map_err(|e| e.into_key_error(path)),
    }
}

enum ReadError {
    Missing,
    Other(KeyError),
}

impl ReadError {
    fn into_key_error(self, path: &Path) -> KeyError {
        match self {
            ReadError::Missing => {
                KeyError(format!("the signing key {} does not exist", path.display()))
            }
            ReadError::Other(e) => e,
        }
    }
}

fn read_key(path: &Path) -> Result<HeadSigner, ReadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => {
            return Err(ReadError::Other(KeyError(format!(
                "cannot read the signing key {}: {e}",
                path.display()
            ))));
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| {
                ReadError::Other(KeyError(format!(
                    "cannot read the signing key {}: {e}",
                    path.display()
                )))
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ReadError::Other(KeyError(format!(
                "the signing key {} may be read by other users (mode {:04o}); whoever reads it can \
                 sign heads in this server's name. Restrict it with `chmod 600 {}` (and check who \
                 may have copied it)",
                path.display(),
                mode & 0o7777,
                path.display()
            ))));
        }
    }
    let seed = Digest::from_hex(text.trim()).map_err(|e| {
        ReadError::Other(KeyError(format!(
            "{} is not a signing key (64 hex characters of an Ed25519 seed): {e}",
            path.display()
        )))
    })?;
    Ok(HeadSigner::from_seed(seed.0))
}

fn write_key(path: &Path, signer: &HeadSigner) -> Result<(), KeyError> {
    let fail = |e: std::io::Error| {
        KeyError(format!(
            "cannot write the signing key {}: {e}",
            path.display()
        ))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    // A name no concurrent creator shares.
    let tmp = PathBuf::from(format!(
        "{}.{}-{}.tmp",
        path.display(),
        std::process::id(),
        Digest(random_seed()).to_hex().get(..16).unwrap_or_default()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = (|| {
        let mut f = options.open(&tmp)?;
        writeln!(f, "{}", Digest(signer.seed()).to_hex())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            // Another creator's key is in place: theirs is the one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            linked => linked,
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(fail)?;
    sync_dir(dir).map_err(fail)
}

/// Makes the entries of `dir` (a new or renamed file in it) durable: a
/// file's own fsync does not cover its name.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        assert!(load_or_create_key(&path, false).is_err());
        let a = load_or_create_key(&path, true).unwrap();
        let b = load_or_create_key(&path, false).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "nonsense").unwrap();
        let e = load_or_create_key(&path, true).unwrap_err();
        assert!(e.0.contains("64 hex"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_that_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        load_or_create_key(&path, true).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key(&path, false).unwrap_err();
        assert!(
            e.0.contains("other users") && e.0.contains("chmod 600"),
            "{e}"
        );
    }

    /// Regression: two nodes started at once with the same new key path
    /// raced on one temporary name, and one failed with "No such file or
    /// directory".
    #[test]
    fn concurrent_creators_of_one_key_all_get_the_same_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("shared/signing.key");
            let start = std::sync::Barrier::new(8);
            let keys: Vec<_> = std::thread::scope(|s| {
                let threads: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            load_or_create_key(&path, true).map(|k| k.public_key())
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let first = keys[0].clone().unwrap();
            for k in keys {
                assert_eq!(k.unwrap(), first);
            }
            let left: Vec<_> = std::fs::read_dir(dir.path().join("shared"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("signing.key")]);
        }
    }
}
