//! The files a config names, checked on the file system before anything runs (by
//! `policy check` and by every command that loads the config), exactly as `rotate` would
//! meet them: files rekey writes are regular files (or links the provider follows).
//! Checking changes nothing and never blocks: a file's type is read from its metadata.

use super::{Config, Error, ProviderConfig};
use crate::atomic_file;

impl Config {
    /// Checks the files this config names (see the module documentation).
    ///
    /// # Errors
    /// [`Error::Build`] naming the provider and the file.
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
                    follow_symlinks,
                    ..
                }
                | ProviderConfig::EnvFile {
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
        Ok(())
    }
}
