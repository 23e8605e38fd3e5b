//! The files a config names, checked on the file system before anything runs (by
//! `policy check` and by every command that loads the config), exactly as `rotate` would
//! meet them: files rekey writes are regular files (or links the provider follows); no
//! two providers write one file, and none writes one of rekey's own files (the config,
//! the journal, vault keys, certificates), however the paths are spelled; vault key files
//! are private regular files holding a key; a config that runs commands cannot be
//! changed by others. Checking changes nothing and never blocks: a file's type is read
//! from its metadata before it is opened.

use std::path::{Component, Path, PathBuf};

use super::{Config, CredentialConfig, Error, ProviderConfig};
use crate::atomic_file;
use crate::providers::local::VaultKey;

/// A file the config names.
struct Named {
    /// Which provider or credential names it, or `None` for rekey's own files.
    owner: Option<String>,
    /// What it is, in words: "the env file of provider app".
    what: String,
    /// Where it really is: links and `..` resolved.
    real: PathBuf,
    /// Whether rekey replaces it.
    written: bool,
}

/// Most links followed while resolving one path, as the kernel's own limit.
const LINKS_MAX: u32 = 40;

/// Where `path` really is: every link and `..` resolved. A part that does not exist yet
/// is resolved as far as the file system goes, then by its name.
pub(crate) fn real_path(path: &Path) -> PathBuf {
    resolve(path, 0)
}

fn resolve(path: &Path, links: u32) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A link to a file that does not exist yet: where it points.
    if links < LINKS_MAX
        && let Ok(target) = std::fs::read_link(path)
    {
        return resolve(&parent.join(target), links + 1);
    }
    match path.components().next_back() {
        Some(Component::ParentDir) => {
            let mut up = resolve(parent, links);
            up.pop();
            up
        }
        Some(Component::Normal(name)) => resolve(parent, links).join(name),
        _ => path.to_owned(),
    }
}

/// `path` with `suffix` appended to its file name (`journal.db` → `journal.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Reads a vault key file: a regular file (never a FIFO or a device, checked before it is
/// opened) that others may not read, holding 64 hex digits.
///
/// # Errors
/// A message naming the file, what is wrong and how to fix it.
pub(crate) fn read_key_file(path: &Path) -> Result<VaultKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read the key file {p}: {e}; create it with `openssl rand -hex 32 > {p}` and `chmod 600 {p}`"
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "the key file {}",
            atomic_file::check_target(path, true)
                .err()
                .map_or_else(|| format!("{p} is not a regular file"), |e| e.to_string())
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the key file {p} has mode {mode:o}; others may read it: run `chmod 600 {p}`"
        ));
    }
    let bytes = atomic_file::read(path, true)
        .map_err(|e| format!("the key file: {e}"))?
        .ok_or_else(|| format!("cannot read the key file {p}: it was removed"))?;
    let text = std::str::from_utf8(&bytes).unwrap_or_default();
    VaultKey::from_hex(text).map_err(|why| format!("{p}: {why}"))
}

impl Config {
    /// Checks the files this config names (see the module documentation).
    ///
    /// # Errors
    /// [`Error::Build`] naming the provider (or the config) and the file.
    pub(crate) fn check_files(&self) -> Result<(), Error> {
        let refuse = |what: String, why: String| Error::Build {
            path: self.path.clone(),
            what,
            why,
        };
        for (name, p) in &self.providers {
            let what = format!("provider {name}");
            match p {
                ProviderConfig::LocalVault {
                    path,
                    key_file,
                    follow_symlinks,
                    ..
                } => {
                    atomic_file::check_target(path, *follow_symlinks)
                        .map_err(|e| refuse(what.clone(), e.to_string()))?;
                    if let Some(key_file) = key_file {
                        read_key_file(key_file).map_err(|why| refuse(what.clone(), why))?;
                    }
                }
                ProviderConfig::EnvFile {
                    path,
                    follow_symlinks,
                    ..
                }
                | ProviderConfig::File {
                    path,
                    follow_symlinks,
                    ..
                } => {
                    atomic_file::check_target(path, *follow_symlinks)
                        .map_err(|e| refuse(what, e.to_string()))?;
                }
                _ => {}
            }
        }
        self.check_aliases()?;
        self.check_config_is_private()
    }

    /// Every file the config names, rekey's own first.
    fn named_files(&self) -> Vec<Named> {
        let own = |what: &str, path: PathBuf| Named {
            owner: None,
            what: what.to_owned(),
            real: path,
            written: false,
        };
        let mut files = vec![own("the config file", real_path(&self.path))];
        match &self.journal {
            super::JournalConfig::Sqlite { path } => {
                let journal = real_path(path);
                files.extend([
                    own("the journal", journal.clone()),
                    own("the journal's -wal file", with_suffix(&journal, "-wal")),
                    own("the journal's -shm file", with_suffix(&journal, "-shm")),
                ]);
            }
            super::JournalConfig::Postgres(pg) => {
                if let Some(ca) = &pg.tls_ca_file {
                    files.push(own("the journal's CA file (tls_ca_file)", real_path(ca)));
                }
            }
        }
        let mut add = |owner: String, what: String, path: &Path, written: bool| {
            files.push(Named {
                owner: Some(owner),
                what,
                real: real_path(path),
                written,
            });
        };
        for (name, c) in &self.credentials {
            if let CredentialConfig::ClientCertificate {
                certificate_file, ..
            } = c
            {
                let what = format!("the certificate file of credential {name}");
                add(format!("credential {name}"), what, certificate_file, false);
            }
        }
        for (name, p) in &self.providers {
            let owner = format!("provider {name}");
            match p {
                ProviderConfig::LocalVault { path, key_file, .. } => {
                    let what = format!("the vault file of provider {name}");
                    add(owner.clone(), what, path, true);
                    if let Some(key_file) = key_file {
                        let what = format!("the key file of provider {name}");
                        add(owner, what, key_file, false);
                    }
                }
                ProviderConfig::EnvFile { path, .. } => {
                    add(
                        owner,
                        format!("the env file of provider {name}"),
                        path,
                        true,
                    );
                }
                ProviderConfig::File { path, .. } => {
                    add(owner, format!("the file of provider {name}"), path, true);
                }
                ProviderConfig::PostgresRole {
                    tls_ca_file: Some(ca),
                    ..
                } => {
                    let what = format!("the CA file (tls_ca_file) of provider {name}");
                    add(owner, what, ca, false);
                }
                _ => {}
            }
        }
        files
    }

    /// No file rekey writes is written by two providers or is one of rekey's own files.
    /// Files that are only read (a key file two vaults share) may be named twice.
    fn check_aliases(&self) -> Result<(), Error> {
        let files = self.named_files();
        for (i, a) in files.iter().enumerate() {
            for b in &files[i + 1..] {
                if a.real != b.real || !(a.written || b.written) {
                    continue;
                }
                let (writer, other) = if a.written { (a, b) } else { (b, a) };
                return Err(Error::Build {
                    path: self.path.clone(),
                    what: writer.owner.clone().unwrap_or_default(),
                    why: format!(
                        "{} is {}, which is also {}; every file rekey writes must belong to one provider only and be none of rekey's own files (config, journal, keys, certificates): point it at another file",
                        writer.what,
                        writer.real.display(),
                        other.what
                    ),
                });
            }
        }
        Ok(())
    }

    /// The commands this config runs as the user running rekey, in words.
    fn commands(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|(name, p)| match p {
                ProviderConfig::EnvFile {
                    after_write: Some(_),
                    ..
                }
                | ProviderConfig::File {
                    after_write: Some(_),
                    ..
                } => Some(format!("after_write of provider {name}")),
                ProviderConfig::Command { .. } => Some(format!("command of provider {name}")),
                _ => None,
            })
            .collect()
    }

    /// A config that runs commands may not be changed, or replaced, by anyone but its
    /// owner: otherwise anyone could run a program as the user running rekey.
    fn check_config_is_private(&self) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let commands = self.commands();
        if commands.is_empty() {
            return Ok(());
        }
        let file = real_path(&self.path);
        let given_dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut dirs = vec![real_path(given_dir)];
        dirs.extend(file.parent().map(Path::to_owned));
        dirs.dedup();
        let loose = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777)
                .filter(|mode| mode & 0o002 != 0)
        };
        let refuse = |whose: String, path: &Path, mode: u32| Error::Build {
            path: self.path.clone(),
            what: "the config".into(),
            why: format!(
                "it runs commands as the user running rekey ({}), but anyone may change {whose} (mode {mode:o}): run `chmod o-w {}`, or keep the config where only its owner can write",
                commands.join(", "),
                path.display()
            ),
        };
        if let Some(mode) = loose(&file) {
            return Err(refuse(
                format!("the config file {}", file.display()),
                &file,
                mode,
            ));
        }
        for dir in &dirs {
            if let Some(mode) = loose(dir) {
                return Err(refuse(
                    format!("the directory {} holding it", dir.display()),
                    dir,
                    mode,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_paths_resolve_links_and_dots_even_for_files_not_there_yet() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("linked")).unwrap();
        std::os::unix::fs::symlink("sub/later.env", root.join("dangling")).unwrap();
        for (spelled, real) in [
            ("sub/../a.env", "a.env"),
            ("linked/a.env", "sub/a.env"),
            ("linked/../b.env", "b.env"),
            ("new/x/../y.env", "new/y.env"),
            ("dangling", "sub/later.env"),
            ("./sub/./c.env", "sub/c.env"),
        ] {
            assert_eq!(real_path(&root.join(spelled)), root.join(real), "{spelled}");
        }
    }
}
