//! Reading and writing key material on disk: errors name the file, private files are 0600
//! from the moment they exist, and replacements are atomic (write, then rename).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads a whole (small) file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Reads a file if it exists.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Creates `dir` (and parents) readable only by its owner.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(format!("creating directory {}", dir.display()), e))
}

/// Atomically replaces `path` with `contents`, readable only by its owner (mode 0600).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic(path, contents, true)
}

/// Atomically replaces `path` with `contents` (certificates: default permissions).
pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic(path, contents, false)
}

/// A temporary name beside `path`, unique within this process and across processes.
fn temporary_path(path: &Path, file_name: &std::ffi::OsStr) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Creates `path` with `contents` only if it does not exist yet (atomically: a temporary
/// file hard-linked into place). Returns `false` when another writer got there first.
pub(crate) fn create_exclusive(path: &Path, contents: &[u8], private: bool) -> Result<bool> {
    let context = || format!("creating {}", path.display());
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::io(context(), std::io::Error::other("not a file path")))?;
    let temporary = temporary_path(path, file_name);
    write_atomic(&temporary, contents, private)?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(context(), e)),
    }
}

/// Writes a temporary file beside `path` and renames it over `path`, so readers never see a
/// half-written file; a private file is created 0600, never widened afterwards.
fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let context = || format!("writing {}", path.display());
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::io(context(), std::io::Error::other("not a file path")))?;
    let temporary = temporary_path(path, file_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    // A stale temporary (from a crash) would keep its old mode: start from nothing.
    let _ = std::fs::remove_file(&temporary);
    let result = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::io(context(), e));
    }
    Ok(())
}
