//! The embedded default: a random-value rotator, a local vault file, an env-style file
//! dependent and a verifier that reads the file back. Enough to rotate a secret end to end
//! on a laptop with no cloud account, through the same runner as every other provider.
//!
//! Files are read and written through [`crate::atomic_file`]: a new file has mode 0600, an
//! existing one keeps its owner, group and mode, and a symbolic link is refused unless the
//! provider follows links. With a key (`key_file` or `key_env` in the config) each
//! value is sealed with XChaCha20-Poly1305, bound to its secret and version, so the file
//! alone reveals nothing and a value moved to another version fails to open.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::provider::{
    BoxFuture, Created, Dependent, Found, ProviderError, Reconciled, Reply, Rotator, SecretValue,
    Step, Store, Verifier,
};
use crate::providers::versions;

/// A file that could not be read or written, as a provider error: a link, a wrong file
/// type or a refused permission needs a person; a full disk may clear.
fn file_error(what: &str, e: &atomic_file::Error) -> ProviderError {
    match e {
        atomic_file::Error::Io { .. } if !e.is_transient() => {
            ProviderError::permanent(format!("{what}: {e}; check the path and its permissions"))
        }
        _ if e.is_transient() => ProviderError::transient(format!("{what}: {e}")),
        _ => ProviderError::permanent(format!("{what}: {e}")),
    }
}

/// Makes new values: `bytes` random bytes from the OS-seeded CSPRNG, hex encoded.
#[derive(Debug)]
pub struct RandomRotator {
    pub bytes: usize,
}

/// A random value has no source outside rekey: nothing to read, retire or discard (the
/// stores are its source), and nothing that can be in doubt.
impl Rotator for RandomRotator {
    fn capture<'a>(&'a self, _: Step<'a>, _: Option<&'a SecretValue>) -> Reply<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    fn create<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(async move {
            let mut raw = vec![0u8; self.bytes];
            rand::rng().fill(&mut raw[..]);
            Ok(Created {
                id: format!("random-{}", step.key),
                value: SecretValue::new(hex::encode(raw)),
            })
        })
    }

    fn retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Discarding a random value is forgetting it; nothing outside holds it.
    fn discard<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    fn discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn reconcile_create<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Reconciled> {
        Box::pin(async { Ok(Reconciled::NotApplied) })
    }

    fn reconcile_retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_discard<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// One version in the local vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Version {
    id: String,
    value: String,
    enabled: bool,
    tags: BTreeMap<String, String>,
}

/// The vault file: versions by secret name, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct VaultFile {
    secrets: BTreeMap<String, Vec<Version>>,
}

/// A versioned secret store in a local JSON file (created 0600), holding each secret under
/// its own name. Each version is tagged with the idempotency key that wrote it, as a Key
/// Vault version is.
#[derive(Debug)]
pub struct LocalVault {
    path: PathBuf,
    key: Option<VaultKey>,
    follow_symlinks: bool,
    lock: Mutex<()>,
}

/// The 32-byte key sealing a vault's values; zeroed on drop, never printed.
#[derive(Clone)]
pub struct VaultKey(zeroize::Zeroizing<[u8; 32]>);

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey([redacted])")
    }
}

/// Prefix of a sealed value: format version 1, then base64 of nonce and ciphertext.
const SEALED_PREFIX: &str = "sealed:v1:";

impl VaultKey {
    /// A key from 64 hex digits (how key files and variables hold it).
    ///
    /// # Errors
    /// A message saying what the text should look like (never the text itself).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| {
            "a vault key is 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`".to_owned()
        })?;
        Ok(Self(key))
    }

    /// A fresh random key from the OS-seeded CSPRNG, as 64 hex digits.
    pub fn generate_hex() -> String {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut raw[..]);
        hex::encode(&raw[..])
    }

    fn cipher(&self) -> chacha20poly1305::XChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        chacha20poly1305::XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*self.0))
    }

    fn seal(&self, secret: &str, version: &str, value: &str) -> Result<String, ProviderError> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, Payload};
        let mut nonce = [0u8; 24];
        rand::rng().fill(&mut nonce[..]);
        let aad = format!("{secret}/{version}");
        let sealed = self
            .cipher()
            .encrypt(
                &chacha20poly1305::XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                ProviderError::permanent(format!("cannot seal version {version} of {secret}"))
            })?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    fn open(
        &self,
        secret: &str,
        version: &str,
        stored: &str,
    ) -> Result<SecretValue, ProviderError> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, Payload};
        let refused = || {
            ProviderError::permanent(format!(
                "version {version} of {secret} cannot be opened with the configured vault key (wrong key, or the file was edited)"
            ))
        };
        let raw = stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|r| r.len() > 24)
            .ok_or_else(refused)?;
        let (nonce, sealed) = raw.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| refused())?;
        let aad = format!("{secret}/{version}");
        let plain = self
            .cipher()
            .decrypt(
                &chacha20poly1305::XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| refused())?;
        String::from_utf8(plain)
            .map(SecretValue::new)
            .map_err(|_| refused())
    }
}

/// The tag carrying the idempotency key of the step that wrote a version.
pub const KEY_TAG: &str = "rekey-key";

impl LocalVault {
    /// The vault file at `path` (created on first write), values in plain text.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            key: None,
            follow_symlinks: false,
            lock: Mutex::new(()),
        }
    }

    /// Reads and writes through a symbolic link at the vault's path (refused otherwise).
    pub fn with_follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// The vault file at `path`, every value written sealed with `key`.
    pub fn sealed(path: impl Into<PathBuf>, key: VaultKey) -> Self {
        Self {
            key: Some(key),
            ..Self::new(path)
        }
    }

    /// A stored value in the clear.
    fn reveal(&self, secret: &str, v: &Version) -> Result<SecretValue, ProviderError> {
        match (&self.key, v.value.starts_with(SEALED_PREFIX)) {
            (Some(key), true) => key.open(secret, &v.id, &v.value),
            (None, true) => Err(ProviderError::permanent(format!(
                "local vault {} holds sealed values but no key is configured; set key_file or key_env",
                self.path.display()
            ))),
            // Plain values (written before a key was configured) stay readable.
            (_, false) => Ok(SecretValue::new(v.value.clone())),
        }
    }

    fn load(&self) -> Result<VaultFile, ProviderError> {
        match atomic_file::read(&self.path, self.follow_symlinks) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::permanent(format!(
                    "local vault {} is not a rekey vault file ({e}); move it aside",
                    self.path.display()
                ))
            }),
            Ok(None) => Ok(VaultFile::default()),
            Err(e) => Err(file_error("cannot read the local vault", &e)),
        }
    }

    fn save(&self, file: &VaultFile) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| ProviderError::permanent(format!("cannot encode the vault: {e}")))?;
        atomic_file::write(&self.path, &bytes, self.follow_symlinks)
            .map_err(|e| file_error("cannot write the local vault", &e))
    }

    /// Runs `f` on `secret`'s versions under the lock, saving when it returns `true`.
    fn update<T>(
        &self,
        secret: &str,
        f: impl FnOnce(&mut Vec<Version>) -> Result<(T, bool), ProviderError>,
    ) -> Result<T, ProviderError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.load()?;
        let versions = file.secrets.entry(secret.to_owned()).or_default();
        let (out, changed) = f(versions)?;
        if changed {
            self.save(&file)?;
        }
        Ok(out)
    }

    /// Sets `value` as `secret`'s latest version, tagged with `key`.
    pub fn set(
        &self,
        secret: &str,
        value: &SecretValue,
        key: &str,
    ) -> Result<String, ProviderError> {
        self.update(secret, |versions| {
            let version = self.new_version(secret, value, key)?;
            let id = version.id.clone();
            versions.push(version);
            Ok((id, true))
        })
    }

    /// A new enabled version of `secret` holding `value` (sealed when a key is set).
    fn new_version(
        &self,
        secret: &str,
        value: &SecretValue,
        key: &str,
    ) -> Result<Version, ProviderError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let stored = match &self.key {
            Some(key) => key.seal(secret, &id, value.expose())?,
            None => value.expose().to_owned(),
        };
        Ok(Version {
            id,
            value: stored,
            enabled: true,
            tags: BTreeMap::from([(KEY_TAG.to_owned(), key.to_owned())]),
        })
    }

    /// The enabled versions rekey knows of, other than `live` (see [`versions`]).
    fn superseded(versions: &[Version], live: Option<&str>, captured: Option<&str>) -> Vec<String> {
        let listed = versions.iter().map(|v| versions::Listed {
            id: &v.id,
            enabled: v.enabled,
            written_by_rekey: v.tags.contains_key(KEY_TAG),
        });
        versions::superseded(listed, live, captured)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Disables what `live` supersedes (I8); true when anything changed.
    fn disable_superseded_by(
        versions: &mut [Version],
        live: Option<&str>,
        captured: Option<&str>,
    ) -> bool {
        let off = Self::superseded(versions, live, captured);
        for v in versions.iter_mut().filter(|v| off.contains(&v.id)) {
            v.enabled = false;
        }
        !off.is_empty()
    }

    /// The version written with `key`, if any.
    fn tagged<'v>(versions: &'v [Version], key: &str) -> Option<&'v Version> {
        versions
            .iter()
            .find(|v| v.tags.get(KEY_TAG).map(String::as_str) == Some(key))
    }

    /// The newest enabled version: what a reader gets, and what a capture records.
    fn live(versions: &[Version]) -> Option<&Version> {
        versions.iter().rev().find(|v| v.enabled)
    }

    /// Retirement: every version rekey knows of except the live one is disabled.
    fn retire_superseded(&self, secret: &str, captured: Option<&str>) -> Result<(), ProviderError> {
        self.update(secret, |vs| {
            let live = Self::live(vs).map(|v| v.id.clone());
            Ok((
                (),
                Self::disable_superseded_by(vs, live.as_deref(), captured),
            ))
        })
    }

    /// Compensation: the old value goes back as the newest version, once per `key`. What
    /// it supersedes is disabled by the compensation's own `DisableOld` step, which needs
    /// no value (the old one is read from this copy until then).
    fn write_back(
        &self,
        secret: &str,
        old: &SecretValue,
        key: &str,
    ) -> Result<String, ProviderError> {
        self.update(secret, |vs| {
            if let Some(v) = Self::tagged(vs, key) {
                return Ok((v.id.clone(), false));
            }
            let version = self.new_version(secret, old, key)?;
            let id = version.id.clone();
            vs.push(version);
            Ok((id, true))
        })
    }
}

impl LocalVault {
    /// True when nothing that `live` supersedes is still enabled: a retirement or a
    /// restore that disabled what it had to is done, and is not repeated after a crash.
    fn settled(versions: &[Version], live: Option<&str>, captured: Option<&str>) -> bool {
        Self::superseded(versions, live, captured).is_empty()
    }

    /// Reads `secret`'s versions under the lock, changing nothing.
    fn inspect<T>(
        &self,
        secret: &str,
        f: impl FnOnce(&[Version]) -> T,
    ) -> Result<T, ProviderError> {
        self.update(secret, |vs| Ok((f(vs), false)))
    }
}

/// A store of each secret under its own name (the step's `secret`).
impl Store for LocalVault {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(
            async move { self.inspect(step.secret, |vs| Self::live(vs).map(|v| v.id.clone())) },
        )
    }

    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String> {
        Box::pin(async move { self.set(step.secret, new, step.key) })
    }

    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            match (old, written) {
                // Versions cannot be un-created: write the old value back as the newest.
                (Some(old), _) => self.write_back(step.secret, old, step.key).map(Some),
                // There was no old value: disable what this rotation wrote.
                (None, Some(_)) => {
                    self.update(step.secret, |vs| {
                        Ok(((), Self::disable_superseded_by(vs, None, captured)))
                    })?;
                    Ok(None)
                }
                // Nothing was written and nothing was there: nothing to undo.
                (None, None) => Ok(None),
            }
        })
    }

    fn disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, ()> {
        Box::pin(async move { self.retire_superseded(step.secret, captured) })
    }

    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async move {
            self.inspect(step.secret, |vs| match Self::tagged(vs, step.key) {
                Some(v) => Found::Applied {
                    id: Some(v.id.clone()),
                },
                None => Found::NotApplied,
            })
        })
    }

    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(async move {
            self.inspect(step.secret, |vs| {
                let copy = Self::tagged(vs, step.key).map(|v| v.id.as_str());
                match (had_old, copy) {
                    // Without an old value, done when what the rotation wrote is disabled.
                    (false, _) if Self::settled(vs, None, captured) => Found::Applied { id: None },
                    // Done when the copy of the old value exists.
                    (true, Some(id)) => Found::Applied {
                        id: Some(id.to_owned()),
                    },
                    _ => Found::NotApplied,
                }
            })
        })
    }

    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(async move {
            self.inspect(step.secret, |vs| {
                let live = Self::live(vs).map(|v| v.id.as_str());
                if Self::settled(vs, live, captured) {
                    Found::Applied { id: None }
                } else {
                    Found::NotApplied
                }
            })
        })
    }

    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue> {
        Box::pin(async move {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            // Version ids are unique across the vault, so the version names its secret.
            let file = self.load()?;
            let (secret, v) = file
                .secrets
                .iter()
                .find_map(|(name, vs)| vs.iter().find(|v| v.id == version).map(|v| (name, v)))
                .ok_or_else(|| {
                    ProviderError::permanent(format!(
                        "local vault {}: no version {version}; was the vault file replaced?",
                        self.path.display()
                    ))
                })?;
            self.reveal(secret, v)
        })
    }
}

/// How a file dependent holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    /// An env-style file (`KEY=value` lines) in which rekey owns the line `key`.
    Env { key: String },
    /// The whole file is the value.
    Raw,
}

/// A file an application reads the secret from, replaced atomically (created 0600, an
/// existing file keeping its owner, group and mode), and
/// optionally a command run after each change (e.g. a reload).
#[derive(Debug)]
pub struct FileDependent {
    path: PathBuf,
    format: FileFormat,
    after_write: Option<Vec<String>>,
    follow_symlinks: bool,
}

/// The env-file dependent, by its most common name.
pub type EnvFile = FileDependent;

/// Longest a hook or verification command may run.
pub const COMMAND_TIMEOUT_MS: u64 = 60_000;

impl FileDependent {
    /// The line `key=...` of the env file at `path`.
    pub fn new(path: impl Into<PathBuf>, key: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: FileFormat::Env { key: key.into() },
            after_write: None,
            follow_symlinks: false,
        }
    }

    /// The whole file at `path`.
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: FileFormat::Raw,
            after_write: None,
            follow_symlinks: false,
        }
    }

    /// Runs `command` (program and arguments, no shell) after every change of the file.
    pub fn with_after_write(mut self, command: Vec<String>) -> Self {
        self.after_write = Some(command);
        self
    }

    /// Reads and writes through a symbolic link at the file's path (refused otherwise).
    pub fn with_follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    fn what(&self) -> String {
        match &self.format {
            FileFormat::Env { key } => format!("{} ({key})", self.path.display()),
            FileFormat::Raw => self.path.display().to_string(),
        }
    }

    /// The file's text, if it exists.
    fn read_text(&self) -> Result<Option<zeroize::Zeroizing<String>>, ProviderError> {
        let Some(bytes) = atomic_file::read(&self.path, self.follow_symlinks)
            .map_err(|e| file_error(&format!("cannot read {}", self.what()), &e))?
        else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProviderError::permanent(format!(
                "{} is not UTF-8 text; rekey writes only text files",
                self.what()
            ))
        })?;
        Ok(Some(zeroize::Zeroizing::new(text)))
    }

    /// The current value, if any.
    pub fn read(&self) -> Result<Option<SecretValue>, ProviderError> {
        let Some(text) = self.read_text()? else {
            return Ok(None);
        };
        Ok(match &self.format {
            FileFormat::Env { key } => {
                let prefix = format!("{key}=");
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map(SecretValue::new)
            }
            FileFormat::Raw => Some(SecretValue::new(text.as_str())),
        })
    }

    /// Sets the value (or removes it), leaving every other line as it was, then runs the
    /// hook. Writes nothing, and runs nothing, when the file already says `value`.
    async fn write(&self, value: Option<&SecretValue>) -> Result<(), ProviderError> {
        if self.read()?.as_ref() == value {
            return Ok(());
        }
        let out = match &self.format {
            FileFormat::Env { key } => {
                let text = self.read_text()?.unwrap_or_default();
                let prefix = format!("{key}=");
                let mut lines: Vec<String> = text
                    .lines()
                    .filter(|l| !l.starts_with(&prefix))
                    .map(str::to_owned)
                    .collect();
                if let Some(v) = value {
                    lines.push(format!("{prefix}{}", v.expose()));
                }
                let mut out = lines.join("\n");
                out.push('\n');
                zeroize::Zeroizing::new(out)
            }
            FileFormat::Raw => {
                zeroize::Zeroizing::new(value.map_or(String::new(), |v| v.expose().to_owned()))
            }
        };
        atomic_file::write(&self.path, out.as_bytes(), self.follow_symlinks)
            .map_err(|e| file_error(&format!("cannot write {}", self.what()), &e))?;
        if let Some(command) = &self.after_write {
            run_command(
                command,
                None,
                value,
                &format!("after writing {}", self.what()),
            )
            .await?;
        }
        Ok(())
    }
}

/// Runs `command` (no shell), feeding `stdin` if given, within [`COMMAND_TIMEOUT_MS`].
/// A failure's message (journaled, logged, traced) gives the exit status only: a command
/// may echo the value, whole or changed. The end of its stderr goes to rekey's own stderr
/// alone, with every run of the value's characters masked ([`scrub`]).
async fn run_command(
    command: &[String],
    stdin: Option<&SecretValue>,
    secret: Option<&SecretValue>,
    purpose: &str,
) -> Result<(), ProviderError> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ProviderError::permanent(format!("{purpose}: the command is empty")))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ProviderError::permanent(format!("{purpose}: cannot start {program}: {e}")))?;
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(v) = stdin {
            // A command that exits without reading its input is judged by its exit code.
            let _ = pipe.write_all(v.expose().as_bytes()).await;
        }
        drop(pipe);
    }
    let output = tokio::time::timeout(
        std::time::Duration::from_millis(COMMAND_TIMEOUT_MS),
        child.wait_with_output(),
    )
    .await
    .map_err(|_| {
        ProviderError::transient(format!(
            "{purpose}: {program} did not finish within {} s",
            COMMAND_TIMEOUT_MS / 1000
        ))
    })?
    .map_err(|e| ProviderError::transient(format!("{purpose}: waiting for {program}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let status = output.status;
    let values: Vec<&str> = [stdin, secret]
        .into_iter()
        .flatten()
        .map(SecretValue::expose)
        .collect();
    let shown = command_output_tail(&output.stderr, &values);
    if !shown.is_empty() {
        // The terminal only: never a tracing field or an error text, which are journaled
        // and exported.
        eprintln!(
            "rekey: {purpose}: {program} failed ({status}); the end of its stderr, values masked:"
        );
        for line in shown.lines() {
            eprintln!("rekey:   | {line}");
        }
    }
    Err(ProviderError::permanent(format!(
        "{purpose}: {program} failed ({status}){}",
        if shown.is_empty() {
            ""
        } else {
            "; its output is shown on rekey's stderr only, never recorded"
        }
    )))
}

/// Characters of a command's stderr shown when it fails.
const COMMAND_TAIL_CHARS: usize = 300;
/// Shortest run of a value's characters that [`scrub`] masks wherever it appears.
const SCRUB_RUN_CHARS: usize = 8;

/// The end of a failed command's stderr: scrubbed of `values`, control characters escaped.
fn command_output_tail(stderr: &[u8], values: &[&str]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    // Scrub a little more than is shown, so a run cut by the tail is still found.
    let skip = text.chars().count().saturating_sub(COMMAND_TAIL_CHARS * 2);
    let scrubbed = scrub(&text.chars().skip(skip).collect::<String>(), values);
    let skip = scrubbed.chars().count().saturating_sub(COMMAND_TAIL_CHARS);
    let tail: String = scrubbed.chars().skip(skip).collect();
    tail.lines()
        .map(|line| crate::text::excerpt(line, COMMAND_TAIL_CHARS))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every run of [`SCRUB_RUN_CHARS`] or more characters that also occurs in one
/// of `values` (ignoring ASCII case) masked as `[redacted]`: a command that echoes a value
/// with a few characters changed shows none of its runs, only what it changed.
fn scrub(text: &str, values: &[&str]) -> String {
    let chars: Vec<char> = text.chars().collect();
    let lower: Vec<char> = chars.iter().map(char::to_ascii_lowercase).collect();
    let mut masked = vec![false; chars.len()];
    for value in values.iter().filter(|v| !v.is_empty()) {
        let value: Vec<char> = value.chars().map(|c| c.to_ascii_lowercase()).collect();
        let run = SCRUB_RUN_CHARS.min(value.len());
        let runs: std::collections::HashSet<&[char]> = value.windows(run).collect();
        for (i, window) in lower.windows(run).enumerate() {
            if runs.contains(window) {
                masked[i..i + run].fill(true);
            }
        }
    }
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        match (masked[i], i > 0 && masked[i - 1]) {
            (true, true) => {}
            (true, false) => out.push_str("[redacted]"),
            (false, _) => out.push(*c),
        }
    }
    out
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    /// Whether `text` holds any run of `n` characters of `value`.
    fn holds_run(text: &str, value: &str, n: usize) -> bool {
        let value: Vec<char> = value.chars().collect();
        value
            .windows(n)
            .any(|w| text.contains(&w.iter().collect::<String>()))
    }

    #[test]
    fn a_value_echoed_changed_or_in_another_case_shows_no_run_of_it() {
        let value = "6f1c0a9e2b7d4c5a8e3f1b0d9c7a6e5f4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a";
        let mut changed: Vec<char> = value.chars().collect();
        changed[20] = 'X';
        let changed: String = changed.into_iter().collect();
        for echoed in [
            format!("login failed for {changed}\n"),
            format!("bad key {}", value.to_uppercase()),
            format!("{}…{}", &value[..30], &value[40..]),
            format!("{value}{value}"),
        ] {
            let shown = command_output_tail(echoed.as_bytes(), &[value]);
            assert!(!holds_run(&shown, value, SCRUB_RUN_CHARS), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        let shown = command_output_tail(format!("no {changed}").as_bytes(), &[value]);
        assert_eq!(shown, "no [redacted]X[redacted]");
        // A short value is masked where it appears whole; other text is kept.
        assert_eq!(scrub("pw=abc; abd", &["abc"]), "pw=[redacted]; abd");
        assert_eq!(
            scrub("nothing to hide\there", &[value]),
            "nothing to hide\there"
        );
        assert_eq!(
            command_output_tail(b"bell\x07 and\nnext line", &[value]),
            "bell\\x07 and\nnext line"
        );
    }
}

/// A verifier that runs a command with the new value on its standard input; exit status 0
/// means the value works (e.g. a script that logs in with it).
#[derive(Debug)]
pub struct CommandVerifier {
    pub command: Vec<String>,
}

impl Verifier for CommandVerifier {
    fn verify<'a>(&'a self, _: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(
            async move { run_command(&self.command, Some(new), Some(new), "verification").await },
        )
    }
}

/// Setting a line to a value is idempotent and compared first: running an update or a
/// revert again is always safe, so neither is ever found done by reconciling.
impl Dependent for FileDependent {
    /// The id says whether the line existed; never anything about its value.
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            let present = self.read()?.is_some();
            Ok(Some(if present { "present" } else { "absent" }.into()))
        })
    }

    fn update<'a>(&'a self, _: Step<'a>, new: &'a SecretValue) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            self.write(Some(new)).await?;
            Ok(None)
        })
    }

    /// Sets the old value back; without one, removes the line (or empties the file).
    fn revert<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            self.write(old).await?;
            Ok(None)
        })
    }

    fn reconcile_update<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_revert<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// As a verifier: the file holds the new value.
impl Verifier for FileDependent {
    fn verify<'a>(&'a self, _: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(async move {
            if self.read()?.as_ref() == Some(new) {
                Ok(())
            } else {
                Err(ProviderError::permanent(format!(
                    "verification failed: {} does not hold the new value",
                    self.what()
                )))
            }
        })
    }
}

/// The directory a file rekey writes goes in must exist: the write puts a temporary file
/// beside it.
fn probe_dir(path: &std::path::Path, what: &str) -> Result<(), ProviderError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(ProviderError::permanent(format!(
            "{what}: the directory {} does not exist; create it",
            dir.display()
        )))
    }
}

/// Nothing outside this process is involved.
impl crate::probe::Probe for RandomRotator {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async {
            crate::probe::Probed::passed(
                "nothing to probe: values come from the operating system's random source",
            )
        })
    }
}

/// Reads the vault file (the offline checks already vetted the path and the key file) and,
/// when values are sealed, opens the secret's live version with the configured key.
impl crate::probe::Probe for LocalVault {
    fn probe<'a>(
        &'a self,
        secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let what = format!("local vault {}", self.path.display());
            let probed = (|| {
                probe_dir(&self.path, &what)?;
                let file = self.load()?;
                let versions = file.secrets.get(secret).map_or(&[][..], Vec::as_slice);
                match Self::live(versions) {
                    None => Ok(format!(
                        "{what}: no live version of {secret} yet; the first rotation writes one"
                    )),
                    Some(live) => {
                        // Proves the key opens what rotations will restore from.
                        self.reveal(secret, live)?;
                        Ok(format!(
                            "{what}: {secret} has a live version{}",
                            if self.key.is_some() {
                                ", opened with the configured key"
                            } else {
                                ""
                            }
                        ))
                    }
                }
            })();
            probed.into()
        })
    }
}

/// Reads the file (the offline checks already vetted its path and type); its value is not
/// shown.
impl crate::probe::Probe for FileDependent {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let what = self.what();
            let probed = (|| {
                probe_dir(&self.path, &what)?;
                Ok(
                    match (self.read_text()?.is_some(), self.read()?.is_some()) {
                        (false, _) => {
                            format!("{what} does not exist yet; the first rotation creates it")
                        }
                        (true, false) => {
                            format!("{what}: readable; the first rotation adds the value")
                        }
                        (true, true) => format!("{what}: readable (value not shown)"),
                    },
                )
            })();
            probed.into()
        })
    }
}

/// A verification command changes nothing and needs no permission of its own.
impl crate::probe::Probe for CommandVerifier {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            crate::probe::Probed::passed(format!(
                "nothing to probe: the command {:?} runs only during a rotation, with the new value",
                self.command.first().map_or("", String::as_str)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let key = VaultKey::from_hex(&VaultKey::generate_hex()).unwrap();
        let other = VaultKey::from_hex(&VaultKey::generate_hex()).unwrap();
        let sealed = key.seal("api", "v1", "s3cret-value").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("s3cret"));
        assert_eq!(
            key.open("api", "v1", &sealed).unwrap().expose(),
            "s3cret-value"
        );
        for (k, secret, version) in [
            (&other, "api", "v1"),
            (&key, "api", "v2"),
            (&key, "web", "v1"),
        ] {
            let err = k.open(secret, version, &sealed).unwrap_err();
            assert!(err.message.contains("cannot be opened"), "{}", err.message);
            assert!(!err.message.contains("s3cret"));
        }
        assert!(
            VaultKey::from_hex("abc")
                .unwrap_err()
                .contains("64 hex digits")
        );
    }

    #[test]
    fn a_sealed_vault_writes_no_value_in_the_clear_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.json");
        let key = VaultKey::from_hex(&VaultKey::generate_hex()).unwrap();
        let vault = LocalVault::sealed(&path, key);
        let id = vault
            .set("api", &SecretValue::new("plain-value-123"), "k1")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("plain-value-123"), "{text}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let back = rt.block_on(vault.read_value(&id)).unwrap();
        assert_eq!(back.expose(), "plain-value-123");
        // Without the key, the sealed value is refused with a hint, not garbage.
        let err = rt
            .block_on(LocalVault::new(&path).read_value(&id))
            .unwrap_err();
        assert!(
            err.message.contains("no key is configured"),
            "{}",
            err.message
        );
    }
}
