//! Every file rekey writes goes through here: vault files, env and raw file dependents,
//! and what `rekey demo` sets up. A write makes a uniquely named temporary file in the
//! target's directory (created exclusively, never through a link, mode 0600 from the
//! start), writes and fsyncs it, gives it the target's owner, group and mode, renames it
//! over the target and fsyncs the directory. Readers therefore see the old file or the
//! new one, never a mix, and nobody who can write the directory can make rekey write
//! into a file of theirs.
//!
//! Files rekey reads secrets from go through [`read`]: a FIFO, a device or a directory is
//! refused before anything blocks on it.
//!
//! A target that is a symbolic link is refused unless the caller opts in (a provider's
//! `follow_symlinks = true`); then the file the link points to is replaced and the link
//! stays. This module knows nothing of secrets or providers: it moves bytes.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngExt;

/// Mode of a file rekey creates (an existing target keeps its own).
pub const NEW_FILE_MODE: u32 = 0o600;

/// Attempts at finding an unused temporary name before giving up.
const TEMP_ATTEMPTS_MAX: usize = 16;

/// Longest part of the target's name kept in a temporary file's name (names are at most
/// 255 bytes).
const TEMP_STEM_BYTES_MAX: usize = 100;

/// Why a file could not be read or written. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is a symbolic link and the caller did not opt in to following it.
    #[error(
        "{path} is a symbolic link; rekey does not write through links unless told to: set follow_symlinks = true on the provider, or point it at the file itself"
    )]
    Symlink { path: PathBuf },
    /// The path is a directory, a FIFO, a socket or a device.
    #[error("{path} is {kind}, not a regular file; point the config at a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The target belongs to another user or group, which rekey may not give the new file.
    #[error(
        "cannot give the new {path} its owner {uid}:{gid} ({cause}); the file was left as it was: run rekey as that user or as root, or give the file to the user running rekey"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        cause: std::io::Error,
    },
    /// Someone replaced rekey's temporary file while it was being written.
    #[error(
        "the temporary file {temp} was replaced while rekey wrote {path}; the file was left as it was: make its directory writable by its owner only"
    )]
    TempReplaced { path: PathBuf, temp: PathBuf },
    /// The operating system refused an operation.
    #[error("cannot {op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl Error {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |cause| Self::Io {
            op,
            path: path.to_owned(),
            cause,
        }
    }

    /// Whether trying again later may succeed (a full disk, an interrupted call); a link,
    /// a wrong file type, a missing file or a refused permission need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { cause, .. } => !matches!(
                cause.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            _ => false,
        }
    }
}

/// What a path's own metadata (not a link's target) says it is, in words.
fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// The file a write to `path` replaces, and its metadata when it exists.
///
/// # Errors
/// [`Error::Symlink`] for a link without `follow_symlinks`, [`Error::NotRegular`], or
/// [`Error::Io`] (a link that points nowhere, an unreadable directory).
pub fn check_target(
    path: &Path,
    follow_symlinks: bool,
) -> Result<(PathBuf, Option<Metadata>), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((path.to_owned(), None)),
        Err(e) => return Err(Error::io("inspect", path)(e)),
    };
    let (target, meta) = if meta.file_type().is_symlink() {
        if !follow_symlinks {
            return Err(Error::Symlink {
                path: path.to_owned(),
            });
        }
        let target =
            std::fs::canonicalize(path).map_err(Error::io("follow the symbolic link", path))?;
        let meta = std::fs::symlink_metadata(&target).map_err(Error::io("inspect", &target))?;
        (target, meta)
    } else {
        (path.to_owned(), meta)
    };
    if !meta.is_file() {
        return Err(Error::NotRegular {
            kind: kind_of(&meta),
            path: target,
        });
    }
    Ok((target, Some(meta)))
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Removes the temporary file on every path out of [`write`] except success.
struct TempGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Creates a new, uniquely named, empty file of mode 0600 beside `target`: exclusively
/// (`O_EXCL`, so an existing name, a planted file or a link there, is never opened) and
/// without following a link (`O_NOFOLLOW`).
fn create_temp(target: &Path) -> Result<(PathBuf, File), Error> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir_of(target);
    let name = target.file_name().map_or(&b"file"[..], OsStrExt::as_bytes);
    let stem = String::from_utf8_lossy(&name[..name.len().min(TEMP_STEM_BYTES_MAX)]);
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS_MAX {
        let mut random = [0u8; 8];
        rand::rng().fill(&mut random[..]);
        let temp = dir.join(format!(".{stem}.{}.rekey-tmp", hex::encode(random)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("create a temporary file beside", target)(e)),
        }
    }
    Err(Error::io("find an unused temporary name beside", target)(
        last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
    ))
}

/// Whether `temp` still names the file open as `file`.
fn still_ours(temp: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(temp), file.metadata()) {
        (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
        _ => false,
    }
}

/// Gives the temporary file the replaced file's owner, group and permission bits, so an
/// application that could read the old file can read the new one.
fn keep_owner_and_mode(file: &File, target: &Path, old: &Metadata) -> Result<(), Error> {
    let mine = file.metadata().map_err(Error::io("inspect", target))?;
    if (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
        std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())).map_err(|cause| {
            Error::Owner {
                path: target.to_owned(),
                uid: old.uid(),
                gid: old.gid(),
                cause,
            }
        })?;
    }
    // Permission bits only: set-id bits have no business on a file holding a secret.
    file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o777))
        .map_err(Error::io("set the mode of", target))
}

/// Replaces the file at `path` with `bytes`, atomically and durably (see the module
/// documentation). A new file gets mode 0600; an existing one keeps its owner, group and
/// mode. With `follow_symlinks`, a link at `path` stays and the file it points to is
/// replaced; without it, a link is refused.
///
/// # Errors
/// [`Error`]; in every case the file at `path` is left as it was and no temporary file
/// remains.
pub fn write(path: &Path, bytes: &[u8], follow_symlinks: bool) -> Result<(), Error> {
    let (target, existing) = check_target(path, follow_symlinks)?;
    let (temp, mut file) = create_temp(&target)?;
    let mut guard = TempGuard {
        path: &temp,
        armed: true,
    };
    file.write_all(bytes).map_err(Error::io("write", &temp))?;
    if let Some(old) = &existing {
        keep_owner_and_mode(&file, &target, old)?;
    }
    file.sync_all().map_err(Error::io("flush", &temp))?;
    if !still_ours(&temp, &file) {
        return Err(Error::TempReplaced {
            path: target.clone(),
            temp: temp.clone(),
        });
    }
    std::fs::rename(&temp, &target).map_err(Error::io("replace", &target))?;
    guard.armed = false;
    sync_dir(&target)
}

/// Creates the file at `path` holding `bytes` (mode 0600), atomically: it appears whole
/// or not at all. Returns `false`, and writes nothing, when `path` exists already (even
/// as a link).
///
/// # Errors
/// [`Error::Io`]; no temporary file remains.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<bool, Error> {
    let (temp, mut file) = create_temp(path)?;
    let _guard = TempGuard {
        path: &temp,
        armed: true,
    };
    file.write_all(bytes).map_err(Error::io("write", &temp))?;
    file.sync_all().map_err(Error::io("flush", &temp))?;
    // A hard link is made only if nothing is at `path`; the guard then drops the
    // temporary name, leaving the file under `path` alone.
    match std::fs::hard_link(&temp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io("create", path)(e)),
    }
    sync_dir(path)?;
    Ok(true)
}

/// Makes a rename or link in the directory of `path` durable.
fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = dir_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("flush the directory", dir))
}

/// The contents of the regular file at `path`, or `None` when nothing is there. Never
/// blocks on a FIFO or a device: the type is checked before opening, and the file is
/// opened without waiting (`O_NONBLOCK`) and checked again. Without `follow_symlinks`, a
/// link is refused.
///
/// # Errors
/// [`Error::Symlink`], [`Error::NotRegular`] or [`Error::Io`].
pub fn read(
    path: &Path,
    follow_symlinks: bool,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
    let meta = if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match meta {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(Error::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Error::NotRegular {
                path: path.to_owned(),
                kind: kind_of(&meta),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("inspect", path)(e)),
    }
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // The path became a link after it was inspected.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && !follow_symlinks => {
            return Err(Error::Symlink {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    let meta = file.metadata().map_err(Error::io("inspect", path))?;
    if !meta.is_file() {
        return Err(Error::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .map_err(Error::io("read", path))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    /// Names in `dir` other than `keep`: leftovers of a write.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }

    #[test]
    fn a_new_file_is_owner_only_and_an_existing_one_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        write(&path, b"K=1\n", false).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&path, b"K=2\n", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"K=2\n");
        assert_eq!(mode(&path), 0o640);
        assert_eq!(others(dir.path(), &["app.env"]), Vec::<String>::new());
    }

    #[test]
    fn a_link_is_refused_unless_followed_and_then_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.env");
        let link = dir.path().join("link.env");
        std::fs::write(&real, b"old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = write(&link, b"new", false).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("follow_symlinks = true"), "{err}");
        assert!(matches!(read(&link, false), Err(Error::Symlink { .. })));
        assert_eq!(std::fs::read(&real).unwrap(), b"old");

        write(&link, b"new", true).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert_eq!(read(&link, true).unwrap().unwrap().as_slice(), b"new");
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for (path, kind) in [(&fifo, "a FIFO"), (&dir.path().to_owned(), "a directory")] {
            for follow in [false, true] {
                let err = read(path, follow).unwrap_err();
                assert!(err.to_string().contains(kind), "{err}");
                let err = write(path, b"x", follow).unwrap_err();
                assert!(err.to_string().contains(kind), "{err}");
            }
        }
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        assert!(create_new(&path, b"first").unwrap());
        assert!(!create_new(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(others(dir.path(), &["vault.key"]), Vec::<String>::new());
    }
}
