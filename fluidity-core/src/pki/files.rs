//! Reading and writing key material on disk: errors name the file, private files are 0600
//! from the moment they exist, replacements are atomic (write, then rename), no file is
//! opened through a symbolic link, and a directory that holds keys must belong to us and be
//! closed to everyone else (another local user must not be able to plant a key or a link).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Options that never follow a symbolic link in the last path component.
fn no_follow(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options
}

fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = no_follow(std::fs::OpenOptions::new().read(true)).open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a whole (small) file (a configured certificate or key: links are fine here, the
/// operator chose the path).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Reads a file of ours (a cached key or certificate) if it exists, never through a link.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match read_no_follow(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(
            format!("reading {} (a symbolic link is refused)", path.display()),
            e,
        )),
    }
}

/// This process's user id (the owner of the files it creates).
#[cfg(unix)]
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        // Linux: /proc/self belongs to the process's user. Elsewhere: a file we create does.
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return Some(meta.uid());
        }
        let probe = std::env::temp_dir().join(format!(".fluidity-uid-{}", std::process::id()));
        let uid = std::fs::File::create(&probe)
            .and_then(|file| file.metadata())
            .map(|meta| meta.uid())
            .ok();
        let _ = std::fs::remove_file(&probe);
        uid
    })
}

/// Creates `dir` (and parents) readable only by its owner. An existing `dir` must belong to
/// this user; if others may read or write it, it is closed (mode 0700) with a warning.
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
        .map_err(|e| Error::io(format!("creating directory {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let context = || format!("checking directory {}", dir.display());
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(context(), e))?;
        if let Some(uid) = current_uid()
            && meta.uid() != uid
        {
            return Err(Error::io(
                context(),
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "it belongs to user {} and we run as user {uid}: keys are not kept in \
                         another user's directory",
                        meta.uid()
                    ),
                ),
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(directory = %dir.display(), mode = format!("{mode:o}"), "closing a key directory others could read or write (now 0700)");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(context(), e))?;
        }
    }
    Ok(())
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
    // A new file, never an existing one or a link planted under the temporary name.
    no_follow(options.write(true).create_new(true));
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

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_are_refused_and_open_directories_closed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&keys).unwrap();
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // A key "planted" as a link to another file is not read.
        let elsewhere = dir.path().join("attacker.key");
        std::fs::write(&elsewhere, b"not ours").unwrap();
        std::os::unix::fs::symlink(&elsewhere, keys.join("agent.key")).unwrap();
        let err = read_if_exists(&keys.join("agent.key")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        // Writing replaces the link itself; the link's target is untouched.
        write_private(&keys.join("agent.key"), b"ours").unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not ours");
        assert_eq!(
            read_if_exists(&keys.join("agent.key")).unwrap().unwrap(),
            b"ours"
        );
    }
}
