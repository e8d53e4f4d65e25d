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
pub fn load_or_create_key(path: &Path, create: bool) -> Result<HeadSigner, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed = Digest::from_hex(text.trim()).map_err(|e| {
                KeyError(format!(
                    "{} is not a signing key (64 hex characters of an Ed25519 seed): {e}",
                    path.display()
                ))
            })?;
            Ok(HeadSigner::from_seed(seed.0))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let signer = HeadSigner::from_seed(random_seed());
            write_key(path, &signer)?;
            Ok(signer)
        }
        Err(e) => Err(KeyError(format!(
            "cannot read the signing key {}: {e}",
            path.display()
        ))),
    }
}

fn write_key(path: &Path, signer: &HeadSigner) -> Result<(), KeyError> {
    let fail = |e: std::io::Error| {
        KeyError(format!(
            "cannot write the signing key {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(fail)?;
    writeln!(f, "{}", Digest(signer.seed()).to_hex()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
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
}
