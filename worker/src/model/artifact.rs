//! Artifacts: the files a model job reads, checked against their SHA-256
//! before use. Local paths (or `file://`) are read in place; fetched files
//! live in the worker's content-addressed cache.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ArtifactRef;

pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Resolves an artifact to a local file and its SHA-256, failing with a
/// clear reason on a mismatch.
pub fn fetch(a: &ArtifactRef, cache: &Path, what: &str) -> Result<(PathBuf, String), String> {
    let uri = a.uri.trim();
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if uri.starts_with("http://") || uri.starts_with("https://") {
        return fetch_remote(a, cache, what);
    } else {
        PathBuf::from(uri)
    };
    if !path.is_file() {
        return Err(format!("{what} {uri}: no such file on this worker"));
    }
    let digest = sha256_file(&path)?;
    check(a, &digest, what)?;
    Ok((path, digest))
}

fn check(a: &ArtifactRef, digest: &str, what: &str) -> Result<(), String> {
    match &a.sha256 {
        Some(want) if !want.eq_ignore_ascii_case(digest) => Err(format!(
            "{what} {}: sha256 mismatch: expected {want}, the file has {digest}",
            a.uri
        )),
        _ => Ok(()),
    }
}

fn fetch_remote(a: &ArtifactRef, _cache: &Path, what: &str) -> Result<(PathBuf, String), String> {
    Err(format!(
        "{what} {}: this worker cannot fetch http(s) artifacts yet; copy the file to the worker and give its path",
        a.uri
    ))
}
