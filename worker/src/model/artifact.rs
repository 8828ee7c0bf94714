//! Artifacts: the files a model job reads, checked against their SHA-256
//! before use. Local paths (or `file://`) are read in place; fetched files
//! live in the worker's content-addressed cache.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use coop_core::Artifact as ArtifactRef;

use super::error::ModelError;

pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ModelError::Artifact(format!("open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ModelError::Artifact(format!("read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Resolves an artifact to a local file and its SHA-256, failing with a
/// clear reason on a mismatch.
pub fn fetch(a: &ArtifactRef, cache: &Path, what: &str) -> Result<(PathBuf, String), ModelError> {
    let uri = a.uri.trim();
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if uri.starts_with("http://") || uri.starts_with("https://") {
        return fetch_remote(a, cache, what);
    } else {
        PathBuf::from(uri)
    };
    if !path.is_file() {
        return Err(ModelError::Artifact(format!(
            "{what} {uri}: no such file on this worker"
        )));
    }
    let digest = sha256_file(&path)?;
    check(a, &digest, what)?;
    Ok((path, digest))
}

fn check(a: &ArtifactRef, digest: &str, what: &str) -> Result<(), ModelError> {
    match &a.sha256 {
        Some(want) if !want.eq_ignore_ascii_case(digest) => Err(ModelError::Artifact(format!(
            "{what} {}: sha256 mismatch: expected {want}, the file has {digest}",
            a.uri
        ))),
        _ => Ok(()),
    }
}

/// Largest artifact fetched over the network, and the cache's default size.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;
/// Environment variable carrying the cache limit to the model child.
pub const CACHE_LIMIT_ENV: &str = "COOP_CACHE_MAX_BYTES";

fn cache_limit() -> u64 {
    std::env::var(CACHE_LIMIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CACHE_BYTES)
}

/// Fetches an http(s) artifact into the content-addressed cache
/// (`cache/<sha256>`). With a sha256 given and already cached, nothing is
/// fetched; without one, the file is fetched every time (the cache cannot
/// know whether the URI now serves something else).
fn fetch_remote(
    a: &ArtifactRef,
    cache: &Path,
    what: &str,
) -> Result<(PathBuf, String), ModelError> {
    std::fs::create_dir_all(cache)
        .map_err(|e| ModelError::Artifact(format!("create cache {}: {e}", cache.display())))?;
    let limit = cache_limit();
    if let Some(want) = &a.sha256 {
        let cached = cache.join(want.to_lowercase());
        // The cache is shared by every job on the worker: a hit is hashed
        // again, so a file planted under a digest's name is never used.
        if cached.is_file() {
            if sha256_file(&cached)?.eq_ignore_ascii_case(want) {
                touch(&cached);
                return Ok((cached, want.to_lowercase()));
            }
            let _ = std::fs::remove_file(&cached);
        }
    }
    let response = ureq::get(&a.uri)
        .call()
        .map_err(|e| ModelError::Artifact(format!("{what} {}: fetch failed: {e}", a.uri)))?;
    let mut reader = response
        .into_body()
        .into_with_config()
        .limit(limit)
        .reader();
    let tmp = cache.join(format!(".fetch-{}-{}", std::process::id(), unique()));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp)
            .map_err(|e| ModelError::Artifact(format!("create {}: {e}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                ModelError::Artifact(format!("{what} {}: download failed: {e}", a.uri))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])
                .map_err(|e| ModelError::Artifact(format!("write {}: {e}", tmp.display())))?;
        }
        out.sync_all()
            .map_err(|e| ModelError::Artifact(e.to_string()))?;
        Ok::<_, ModelError>(hex::encode(hasher.finalize()))
    })();
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = check(a, &digest, what) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let path = cache.join(&digest);
    std::fs::rename(&tmp, &path)
        .map_err(|e| ModelError::Artifact(format!("store {} in the cache: {e}", a.uri)))?;
    evict(cache, limit, &path);
    Ok((path, digest))
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Marks a cached file as just used (its mtime orders eviction).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used cached files until the cache fits in
/// `limit` bytes, never the one just stored.
pub fn evict(cache: &Path, limit: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    meta.len(),
                    e.path(),
                )
            })
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, size, path) in files {
        if total <= limit {
            break;
        }
        if path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_cache_under_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64))
                .unwrap();
        }
        evict(dir.path(), 150, &dir.path().join("a"));
        let left: Vec<bool> = ["a", "b", "c"]
            .iter()
            .map(|n| dir.path().join(n).exists())
            .collect();
        // "a" is the oldest but was just stored; "b" goes, then "c" to fit 150.
        assert_eq!(left, vec![true, false, false]);
    }
}
