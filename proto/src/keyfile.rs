//! Secret key files, shared by the CLI (a member's key) and the worker (its
//! node key): 64 hex digits, mode 0600, refused when others can read them
//! (as ssh refuses a private key others can read).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coop_core::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("no randomness for a key: {0}")]
    NoRandomness(String),
    #[error(
        "{0} exists already: keep it, or replace it with --force (the identity it holds is lost)"
    )]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is readable by others: chmod 600 it (a secret key is its holder's alone)")]
    Readable(PathBuf),
    #[error("{0} is not a coop key (32 bytes in hex)")]
    NotAKey(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh key from the operating system's randomness.
pub fn generate() -> Result<SecretKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyFileError::NoRandomness(e.to_string()))?;
    Ok(SecretKey::from_bytes(&seed))
}

/// Writes a secret key (hex) readable by its owner alone.
pub fn write(path: &Path, key: &SecretKey, overwrite: bool) -> Result<(), KeyFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            io(path)(e)
        }
    })?;
    writeln!(file, "{}", hex::encode(key.to_bytes())).map_err(io(path))
}

/// Reads a secret key, refusing one that others may read.
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyFileError::Readable(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| KeyFileError::NotAKey(path.to_path_buf()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyFileError::NotAKey(path.to_path_buf()))?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// The key at `path`, created there first when there is none.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    if path.exists() {
        return load(path);
    }
    let key = generate()?;
    match write(path, &key, false) {
        Ok(()) => Ok(key),
        // Another process created it first: use theirs.
        Err(KeyFileError::Exists(_)) => load(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_and_a_readable_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("coop-keyfile-{}", std::process::id()));
        let path = dir.join("k");
        let _ = std::fs::remove_dir_all(&dir);
        let key = load_or_create(&path).unwrap();
        assert_eq!(load(&path).unwrap().public_key(), key.public_key());
        assert_eq!(
            load_or_create(&path).unwrap().public_key(),
            key.public_key()
        );
        assert!(matches!(
            write(&path, &key, false),
            Err(KeyFileError::Exists(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Readable(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::NotAKey(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
