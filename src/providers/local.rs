//! The embedded default: a random-value rotator, a local vault file, an env-style file
//! dependent and a verifier that reads the file back. Enough to rotate a secret end to end
//! on a laptop with no cloud account, through the same runner as every other provider.
//!
//! The vault file has mode 0600. With a key (`key_file` or `key_env` in the config) each
//! value is sealed with XChaCha20-Poly1305, bound to its secret and version, so the file
//! alone reveals nothing and a value moved to another version fails to open.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::provider::{Applied, BoxFuture, Call, Provider, ProviderError, Reconciled, SecretValue};
use crate::saga::Action;

fn unsupported(call: &Call<'_>, what: &str) -> ProviderError {
    ProviderError::permanent(format!(
        "{what} {} cannot perform {} (step {}); the plan names it in the wrong role",
        call.target.name,
        call.step.action.as_str(),
        call.step
    ))
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> ProviderError {
    let message = format!("{what} {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound => {
            ProviderError::permanent(format!("{message}; check the path and its permissions"))
        }
        _ => ProviderError::transient(message),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("rekey-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes new values: `bytes` random bytes from the OS-seeded CSPRNG, hex encoded.
#[derive(Debug)]
pub struct RandomRotator {
    pub bytes: usize,
}

impl Provider for RandomRotator {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match call.step.action {
                // A random value has no source to read or retire: the stores are its source.
                Action::Capture | Action::RetireOld => Ok(Applied::default()),
                Action::Create => {
                    let mut raw = vec![0u8; self.bytes];
                    rand::rng().fill(&mut raw[..]);
                    Ok(Applied {
                        id: Some(format!("random-{}", call.key)),
                        value: Some(SecretValue::new(hex::encode(raw))),
                    })
                }
                _ => Err(unsupported(call, "rotator")),
            }
        })
    }

    fn compensate<'a>(
        &'a self,
        _call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        // Discarding a random value is forgetting it; nothing outside holds it.
        Box::pin(async { Ok(Applied::default()) })
    }

    fn reconcile<'a>(
        &'a self,
        _call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>> {
        // Creating a value touches nothing outside, so no effect can be in doubt.
        Box::pin(async { Ok(Reconciled::NotApplied) })
    }

    fn read_value<'a>(
        &'a self,
        _version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async { Err(ProviderError::permanent("a rotator holds no stored values")) })
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

/// A versioned secret store in a local JSON file (mode 0600), holding each secret under
/// its own name. Each version is tagged with the idempotency key that wrote it, as a Key
/// Vault version is.
#[derive(Debug)]
pub struct LocalVault {
    path: PathBuf,
    key: Option<VaultKey>,
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
            lock: Mutex::new(()),
        }
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
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::permanent(format!(
                    "local vault {} is not a rekey vault file ({e}); move it aside",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VaultFile::default()),
            Err(e) => Err(io_error("cannot read local vault", &self.path, &e)),
        }
    }

    fn save(&self, file: &VaultFile) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| ProviderError::permanent(format!("cannot encode the vault: {e}")))?;
        write_atomic(&self.path, &bytes)
            .map_err(|e| io_error("cannot write local vault", &self.path, &e))
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
            let id = uuid::Uuid::now_v7().simple().to_string();
            let stored = match &self.key {
                Some(key) => key.seal(secret, &id, value.expose())?,
                None => value.expose().to_owned(),
            };
            versions.push(Version {
                id: id.clone(),
                value: stored,
                enabled: true,
                tags: BTreeMap::from([(KEY_TAG.to_owned(), key.to_owned())]),
            });
            Ok((id, true))
        })
    }

    fn set_enabled(&self, secret: &str, version: &str, enabled: bool) -> Result<(), ProviderError> {
        self.update(secret, |versions| {
            let v = versions
                .iter_mut()
                .find(|v| v.id == version)
                .ok_or_else(|| {
                    ProviderError::permanent(format!(
                        "local vault {}: no version {version} of {secret}",
                        self.path.display(),
                    ))
                })?;
            let changed = v.enabled != enabled;
            v.enabled = enabled;
            Ok(((), changed))
        })
    }
}

impl Provider for LocalVault {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match (call.step.action, call.value) {
                (Action::Capture, _) => {
                    let current = self.update(call.secret, |vs| {
                        Ok((
                            vs.iter().rev().find(|v| v.enabled).map(|v| v.id.clone()),
                            false,
                        ))
                    })?;
                    Ok(Applied {
                        id: current,
                        value: None,
                    })
                }
                (Action::Write, Some(value)) => Ok(Applied {
                    id: Some(self.set(call.secret, value, call.key)?),
                    value: None,
                }),
                (Action::DisableOld, _) => {
                    if let Some(old) = call.captured {
                        self.set_enabled(call.secret, old, false)?;
                    }
                    Ok(Applied::default())
                }
                _ => Err(unsupported(call, "store")),
            }
        })
    }

    fn compensate<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match (call.step.action, call.value, call.produced) {
                // Versions cannot be un-created: write the old value back as the newest.
                (Action::Restore, Some(old), _) => Ok(Applied {
                    id: Some(self.set(call.secret, old, call.key)?),
                    value: None,
                }),
                // There was no old value: disable the version this rotation wrote.
                (Action::Restore, None, Some(new)) => {
                    self.set_enabled(call.secret, new, false)?;
                    Ok(Applied::default())
                }
                _ => Err(unsupported(call, "store")),
            }
        })
    }

    fn reconcile<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>> {
        Box::pin(async move {
            self.update(call.secret, |vs| {
                let tagged = vs
                    .iter()
                    .find(|v| v.tags.get(KEY_TAG).map(String::as_str) == Some(call.key));
                let found = match (call.step.action, tagged) {
                    (Action::Write | Action::Restore, Some(v)) => Reconciled::Applied {
                        id: Some(v.id.clone()),
                    },
                    // Capture and disable are safe to repeat.
                    _ => Reconciled::NotApplied,
                };
                Ok((found, false))
            })
        })
    }

    fn read_value<'a>(
        &'a self,
        version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
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

/// An env-style file (`KEY=value` lines) in which rekey owns one line.
#[derive(Debug)]
pub struct EnvFile {
    path: PathBuf,
    key: String,
}

impl EnvFile {
    /// The line `key=...` of the file at `path`.
    pub fn new(path: impl Into<PathBuf>, key: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            key: key.into(),
        }
    }

    /// The current value of our line, if any.
    pub fn read(&self) -> Result<Option<SecretValue>, ProviderError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read", &self.path, &e)),
        };
        let prefix = format!("{}=", self.key);
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(SecretValue::new))
    }

    /// Sets our line to `value` (or removes it), leaving every other line as it was.
    fn write(&self, value: Option<&SecretValue>) -> Result<(), ProviderError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_error("cannot read", &self.path, &e)),
        };
        let prefix = format!("{}=", self.key);
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
        write_atomic(&self.path, out.as_bytes())
            .map_err(|e| io_error("cannot write", &self.path, &e))
    }
}

impl Provider for EnvFile {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match (call.step.action, call.value) {
                // The id says whether the line existed; never anything about its value.
                (Action::Capture, _) => Ok(Applied {
                    id: Some(
                        if self.read()?.is_some() {
                            "present"
                        } else {
                            "absent"
                        }
                        .into(),
                    ),
                    value: None,
                }),
                (Action::Update, Some(v)) => {
                    self.write(Some(v))?;
                    Ok(Applied::default())
                }
                (Action::Verify, Some(v)) => {
                    if self.read()?.as_ref() == Some(v) {
                        Ok(Applied::default())
                    } else {
                        Err(ProviderError::permanent(format!(
                            "verification failed: {} does not hold the new value of {}",
                            self.path.display(),
                            self.key
                        )))
                    }
                }
                _ => Err(unsupported(call, "file")),
            }
        })
    }

    fn compensate<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match call.step.action {
                Action::Revert => {
                    self.write(call.value)?;
                    Ok(Applied::default())
                }
                _ => Err(unsupported(call, "file")),
            }
        })
    }

    fn reconcile<'a>(
        &'a self,
        _call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>> {
        // Setting a line to a value is idempotent: running it again is always safe.
        Box::pin(async { Ok(Reconciled::NotApplied) })
    }

    fn read_value<'a>(
        &'a self,
        _version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::permanent(
                "a file dependent holds no versions",
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
