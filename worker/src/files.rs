//! The files an ended job left in its work dir, read back for its member
//! (`coop fetch`). Paths resolve beneath the work dir one component at a
//! time with `O_NOFOLLOW`, so a link the job left behind cannot reach the
//! worker's own files or another member's.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::executor::READER_FILE;

/// Longest relative path asked for.
pub const MAX_PATH_LEN: usize = 4096;
/// Most files a listing returns.
pub const MAX_LISTED: usize = 10_000;
/// Deepest directory a listing walks into.
const MAX_DEPTH: usize = 32;

/// Why a path is refused before anything is opened.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(format!("a path is 1 to {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') || path.contains('\0') {
        return Err(format!(
            "{path:?}: give a path relative to the job's work dir"
        ));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{path:?}: no empty, '.' or '..' components in a path"
        ));
    }
    if path == READER_FILE {
        return Err(format!(
            "{path:?} is the worker's own record, not the job's"
        ));
    }
    Ok(())
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string
    // that outlives the call; a non-negative result is a descriptor we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` (checked by `check_relative`) beneath `root`, following no
/// symbolic link on the way; only a regular file is returned.
pub fn open_beneath(root: &Path, rel: &str) -> io::Result<File> {
    let root = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `root` is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by no one else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let parts: Vec<&str> = rel.split('/').collect();
    let (last, dirs) = parts.split_last().expect("split yields one part at least");
    for part in dirs {
        dir = openat(&dir, part, libc::O_DIRECTORY | libc::O_RDONLY)?;
    }
    let file = File::from(openat(&dir, last, libc::O_RDONLY | libc::O_NONBLOCK)?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Every regular file under `root` (links and the worker's own record
/// left out), by relative path, with its size; at most `MAX_LISTED`.
pub fn list(root: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    walk(root, "", 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<(String, u64)>) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        if out.len() >= MAX_LISTED {
            return Ok(());
        }
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        // file_type does not follow links: a link is neither a file nor a dir.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &rel, depth + 1, out)?;
        } else if kind.is_file() && rel != READER_FILE {
            out.push((rel, entry.metadata()?.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn paths_resolve_beneath_the_dir_and_never_through_a_link() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "not yours").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/out.npy"), "data").unwrap();
        std::fs::write(root.join(READER_FILE), "ana\nkey\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linkdir")).unwrap();

        let mut text = String::new();
        open_beneath(root, "sub/out.npy")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "data");
        assert!(open_beneath(root, "link").is_err());
        assert!(open_beneath(root, "linkdir/secret").is_err());
        assert!(
            open_beneath(root, "sub").is_err(),
            "a directory is not a file"
        );
        assert!(open_beneath(root, "missing").is_err());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "sub/../out",
            "a//b",
            "./x",
            READER_FILE,
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative("sub/out.npy").is_ok());
        assert_eq!(list(root).unwrap(), vec![("sub/out.npy".to_string(), 4)]);
    }
}
