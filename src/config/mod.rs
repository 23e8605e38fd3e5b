//! The config file (TOML): where the journal lives, which providers exist, and which
//! secrets to rotate with which targets and policy. It is validated completely before
//! anything runs; every error names the file, the line and what to write instead.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::provider::role_list;
use crate::saga::{Plan, Role, TargetRef};
use crate::text::{EXCERPT_CHARS_MAX, excerpt, quoted};

/// Most attempts a forward step may be given.
pub const ATTEMPTS_MAX_LIMIT: u32 = 100;

mod build;
mod files;
mod journal;
pub use build::{ARM_SCOPE, GRAPH_SCOPE};

pub use crate::saga::address::{PostgresMode, PostgresTls, PostgresValueFormat};
pub use build::{Env, Resolver, address_of};
pub use journal::{JournalConfig, PgJournalConfig, from_argument as journal_from_argument};

/// A config that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read the config: {cause}; pass --config or set REKEY_CONFIG")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{path}: {what} needs the environment variable {var}, which is not set; export it before running rekey"
    )]
    MissingEnv {
        path: PathBuf,
        what: String,
        var: String,
    },
    #[error("{path}: {what}: {why}")]
    Build {
        path: PathBuf,
        what: String,
        why: String,
    },
    #[error("no secret named {} in {path}; configured secrets: {known}", quoted(.name))]
    UnknownSecret {
        path: PathBuf,
        name: String,
        known: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    journal: Spanned<journal::RawJournal>,
    runner: Option<RunnerConfig>,
    azure: Option<AzureConfig>,
    #[serde(default)]
    credentials: BTreeMap<String, Spanned<CredentialConfig>>,
    #[serde(default)]
    providers: BTreeMap<String, Spanned<RawProvider>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<RawSecret>>,
    daemon: Option<Spanned<RawDaemon>>,
    #[serde(default)]
    notifications: BTreeMap<String, crate::notify::NotificationConfig>,
    fleet: Option<Spanned<crate::fleet::config::RawFleet>>,
}

/// `[daemon]`: how `rekey run` serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<String>,
    api_token_env: Option<String>,
    viewer_token_env: Option<String>,
    console_secure_cookie: Option<bool>,
    max_concurrent_rotations: Option<usize>,
    webhook_secret_env: Option<String>,
    webhook_token_env: Option<String>,
    notice_days_before: Option<u32>,
    header_read_timeout: Option<String>,
    body_timeout: Option<String>,
    connections_max: Option<usize>,
    node_id: Option<String>,
    leader_ttl: Option<String>,
}

/// Days before a scheduled rotation that an upcoming notice is sent, by default.
pub const NOTICE_DAYS_BEFORE_DEFAULT: u32 = 3;

/// Where the daemon listens by default: loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8787";
/// Rotations the daemon drives at once by default.
pub const MAX_CONCURRENT_DEFAULT: usize = 64;

/// The validated `[daemon]` section.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The HTTP API, probes, metrics and webhook.
    pub listen: std::net::SocketAddr,
    /// The variable holding the operator role's bearer token (the API and the console:
    /// read and act); without it and `viewer_token_env`, `/v1` and `/ui` are off.
    pub api_token_env: Option<String>,
    /// The variable holding the viewer role's bearer token (read only: `GET /v1/*` and
    /// the console's pages, no rotation or discovery).
    pub viewer_token_env: Option<String>,
    /// Whether the console's session cookie is marked `Secure` (sent over HTTPS only).
    /// Default: on when `listen` is beyond loopback (a TLS proxy is expected in front),
    /// off on loopback; a request forwarded with `X-Forwarded-Proto: https` always gets it.
    pub console_secure_cookie: bool,
    pub max_concurrent_rotations: usize,
    /// The variable holding the Event Grid webhook's shared secret; without it the
    /// webhook is off.
    pub webhook_secret_env: Option<String>,
    /// The variable holding a bearer token the webhook also accepts.
    pub webhook_token_env: Option<String>,
    /// Send an upcoming notice this many days before a scheduled rotation.
    pub notice_days_before: u32,
    /// What one HTTP client may hold: head and body timeouts, connections open at once.
    pub http: crate::daemon::serve::Limits,
    /// This node's name among the nodes sharing the journal; the host name and the
    /// process id when unset.
    pub node_id: Option<String>,
    /// How long the leader lease (schedules, expiry polls, notices) lasts unrenewed.
    pub leader_ttl_ms: i64,
}

/// A provider as configured; `kind` says which system it speaks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// Rotator: random bytes from the OS-seeded CSPRNG, hex encoded.
    Random {
        #[serde(default = "default_random_bytes")]
        bytes: usize,
    },
    /// Store: a local vault file (the embedded default).
    LocalVault {
        path: PathBuf,
        /// A file (mode 0600) holding the 64-hex-digit key that seals values at rest.
        key_file: Option<PathBuf>,
        /// Or an environment variable holding that key.
        key_env: Option<String>,
        /// Read and write through a symbolic link at `path` (refused otherwise).
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// Dependent and verifier: one `KEY=value` line of an env file.
    EnvFile {
        path: PathBuf,
        key: String,
        /// A command (program and arguments, no shell) run after each change, e.g. a reload.
        after_write: Option<Vec<String>>,
        /// Read and write through a symbolic link at `path` (refused otherwise).
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// Dependent and verifier: a whole file holding the value.
    File {
        path: PathBuf,
        after_write: Option<Vec<String>>,
        /// Read and write through a symbolic link at `path` (refused otherwise).
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// Verifier: a command that gets the new value on standard input; exit 0 means it works.
    Command { command: Vec<String> },
    /// Store and verifier: an Azure Key Vault.
    KeyVault {
        vault_url: String,
        credential: String,
        content_type: Option<String>,
        /// Turn off only for loopback test vaults.
        #[serde(default = "yes")]
        verify_challenge_resource: bool,
        /// The vault's name as Event Grid events give it (`VaultName`), matched without
        /// regard to case. When not set, the first label of `vault_url`'s host, or for an
        /// IP address or localhost, its last path segment; a loaded [`Config`] holds the
        /// name in effect (`None`: the URL gives none, so no event matches this vault).
        vault_name: Option<String>,
        /// Most requests rekey sends this vault in any 10 s (default 1,900: 95% of Key
        /// Vault's 2,000). Lower it to leave room for the vault's other clients; stores of
        /// one vault share one budget, the smallest configured.
        requests_per_10s: Option<u32>,
    },
    /// Dependent: one App Service application setting.
    AppSetting {
        credential: String,
        subscription: String,
        resource_group: String,
        site: String,
        slot: Option<String>,
        setting: String,
        /// When set, the setting holds this Key Vault reference instead of the value.
        key_vault_reference: Option<String>,
    },
    /// Rotator and verifier: an Entra ID application's passwords.
    EntraPassword {
        credential: String,
        tenant: String,
        object_id: String,
        app_id: String,
        #[serde(default = "default_validity_days")]
        validity_days: i64,
        #[serde(default = "default_verify_scope")]
        verify_scope: String,
        #[serde(default = "default_propagation")]
        propagation: String,
    },
    /// Rotator: a storage account's key pair.
    StorageKeys {
        credential: String,
        subscription: String,
        resource_group: String,
        account: String,
        #[serde(default)]
        kerberos: bool,
    },
    /// Rotator: an access token from an OAuth 2.0 token endpoint.
    OauthToken {
        token_url: String,
        client_id: String,
        /// The environment variable holding the client secret (never the secret itself).
        client_secret_env: String,
        scope: String,
    },
    /// Rotator and verifier: a PostgreSQL login role (`mode = "single"`) or two login roles
    /// in one group role used in turn (`mode = "alternating"`).
    PostgresRole {
        host: String,
        #[serde(default = "default_postgres_port")]
        port: u16,
        dbname: String,
        admin_user: String,
        /// The environment variable holding the admin password (never the password itself).
        admin_password_env: String,
        mode: PostgresMode,
        /// Single mode: the role whose password rekey sets.
        role: Option<String>,
        /// Alternating mode: exactly two login roles, members of one group role.
        roles: Option<Vec<String>>,
        #[serde(default = "default_password_bytes")]
        password_bytes: usize,
        /// How the value is written: `password` (single mode's default) or `json` (with the
        /// role's name; required in alternating mode).
        value_format: Option<PostgresValueFormat>,
        /// Where verification logs in, when not `host` (a pooler, a replica).
        verify_host: Option<String>,
        verify_port: Option<u16>,
        #[serde(default)]
        tls: PostgresTls,
        /// A PEM root certificate to trust besides the system's.
        tls_ca_file: Option<PathBuf>,
    },
}

fn default_postgres_port() -> u16 {
    5432
}

fn default_password_bytes() -> usize {
    24
}

fn yes() -> bool {
    true
}

fn default_validity_days() -> i64 {
    180
}

fn default_verify_scope() -> String {
    "https://graph.microsoft.com/.default".into()
}

fn default_propagation() -> String {
    "2m".into()
}

/// How rekey authenticates to Azure; `kind` picks the method.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// A service principal's client secret, read from an environment variable.
    ClientSecret {
        tenant: String,
        client_id: String,
        client_secret_env: String,
    },
    /// A service principal's certificate: a PEM file holding its RSA private key and the
    /// certificate uploaded to the app registration.
    ClientCertificate {
        tenant: String,
        client_id: String,
        certificate_file: PathBuf,
    },
    /// A managed identity through the instance metadata service.
    ManagedIdentity {
        client_id: Option<String>,
        endpoint: Option<String>,
    },
    /// App Service's managed identity (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
    AppServiceIdentity { client_id: Option<String> },
    /// A bearer token from an environment variable (CI pipelines).
    StaticToken { token_env: String },
    /// The signed-in Azure CLI (`az login`), run as `az account get-access-token`.
    AzureCli {
        /// Ask the CLI for a token of this tenant; its default tenant otherwise.
        tenant: Option<String>,
        /// How long `az` may take, e.g. "10s" (1s to 120s).
        timeout: Option<String>,
    },
    /// Workload identity federation (AKS): each field defaults to the variable the
    /// workload identity webhook sets (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`; `AZURE_AUTHORITY_HOST` overrides the authority).
    WorkloadIdentity {
        tenant: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// Tries environment, workload identity, managed identity, then the Azure CLI, and
    /// keeps the first that works.
    Default {
        /// Tenant for the Azure CLI link.
        tenant: Option<String>,
        /// A user-assigned managed identity's client id for the managed identity link.
        managed_identity_client_id: Option<String>,
        /// The managed identity endpoint (IMDS by default).
        managed_identity_endpoint: Option<String>,
    },
}

/// How runners behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerConfig {
    /// How long a runner's lease on a rotation lasts without renewal, e.g. "15s". After a
    /// crash, another runner can take the rotation over once it has passed.
    lease_ttl: Option<Spanned<String>>,
}

/// Default lease duration.
pub const LEASE_TTL_MS_DEFAULT: i64 = 15_000;

/// Azure endpoints; the defaults are the public cloud.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    pub authority: Option<String>,
    pub arm: Option<String>,
    pub graph: Option<String>,
    /// Timeout of one call, e.g. "30s".
    pub timeout: Option<String>,
}

type RawProvider = ProviderConfig;

fn default_random_bytes() -> usize {
    32
}

fn default_attempts() -> u32 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    rotator: Spanned<String>,
    stores: Vec<Spanned<String>>,
    #[serde(default)]
    dependents: Vec<Spanned<String>>,
    verifiers: Vec<Spanned<String>>,
    /// How long the old credential stays valid after verification, e.g. "7d", "2s".
    grace: Spanned<String>,
    #[serde(default = "default_attempts")]
    attempts_max: u32,
    /// Secrets sharing one underlying credential share a lock key.
    lock_key: Option<String>,
    /// When the daemon rotates it unattended; without it, only on request or event.
    schedule: Option<crate::triggers::schedule::ScheduleConfig>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The SQLite journal file; empty when the journal is in PostgreSQL (`journal` says
    /// which: open it with `crate::journal_open`).
    pub journal_path: PathBuf,
    /// Where the journal lives: a SQLite file or a PostgreSQL database.
    pub journal: JournalConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub credentials: BTreeMap<String, CredentialConfig>,
    pub azure: AzureEndpoints,
    pub secrets: BTreeMap<String, Plan>,
    /// Lease duration for runners, in milliseconds.
    pub lease_ttl_ms: i64,
    pub daemon: DaemonConfig,
    /// Each scheduled secret's validated schedule.
    pub schedules: BTreeMap<String, crate::triggers::schedule::Schedule>,
    /// Where the daemon sends notices, by channel name.
    pub notifications: BTreeMap<String, crate::notify::NotificationConfig>,
    /// Fleet discovery (`rekey discover`), when `[fleet]` is present.
    pub fleet: Option<crate::fleet::config::FleetConfig>,
}

/// Validated Azure endpoints and timeout.
#[derive(Debug, Clone)]
pub struct AzureEndpoints {
    pub endpoints: crate::providers::azure::Endpoints,
    pub timeout_ms: u64,
}

/// Line and column (in characters, as editors count) of the byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where to define a missing `name` in `table`: `[table.name]` when it is a valid name,
/// else the table (the name itself is quoted elsewhere in the message).
fn section(table: &str, name: &str) -> String {
    if valid_name(name) {
        format!("[{table}.{name}]")
    } else {
        format!("one under [{table}] with a name of A-Z a-z 0-9 - _ .")
    }
}

/// Longest message of the TOML parser or another library that an error repeats.
const FOREIGN_CHARS_MAX: usize = 400;

/// A message from the TOML parser or another library, made fit to print: each string it
/// quotes (`"..."` in debug form, or `` `...` ``) becomes a short excerpt with control
/// characters escaped, and so does the rest.
fn foreign(message: &str) -> String {
    let mut out = String::new();
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut inner = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => inner.push(unescape(&mut chars)),
                        c => inner.push(c),
                    }
                }
                out.push_str(&quoted(&inner));
                if !closed {
                    break;
                }
            }
            '`' => {
                let inner: String = chars.by_ref().take_while(|c| *c != '`').collect();
                out.push('`');
                out.push_str(&excerpt(&inner, EXCERPT_CHARS_MAX));
                out.push('`');
            }
            c => out.push_str(&excerpt(&c.to_string(), 8)),
        }
    }
    excerpt(&out, FOREIGN_CHARS_MAX)
}

/// The character a debug-form escape stands for (the backslash already read).
fn unescape(chars: &mut std::str::Chars<'_>) -> char {
    match chars.next() {
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('0') => '\0',
        Some('u') => {
            let hex: String = chars
                .by_ref()
                .skip_while(|c| *c == '{')
                .take_while(|c| *c != '}')
                .collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or(char::REPLACEMENT_CHARACTER)
        }
        Some(other) => other,
        None => '\\',
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Config {
    /// Reads and validates the config at `path`, and checks the files it names as a
    /// rotation would meet them (`files.rs`), changing nothing.
    ///
    /// # Errors
    /// [`Error::Read`], or [`Error::Invalid`] with the line and column of the first problem
    /// (invalid UTF-8 included); [`Error::Build`] for a file a rotation would refuse.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|cause| Error::Read {
            path: path.to_owned(),
            cause,
        })?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                let prefix = String::from_utf8_lossy(&bytes[..valid]);
                let (line, column) = line_col(&prefix, valid);
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    message: format!(
                        "the file is not valid UTF-8 (byte 0x{:02x} here); a config file must be UTF-8 text: save it as UTF-8",
                        bytes[valid]
                    ),
                });
            }
        };
        let config = Self::parse(path, &text)?;
        config.check_files()?;
        Ok(config)
    }

    /// Validates config text as if read from `path` (relative paths resolve beside it).
    ///
    /// # Errors
    /// [`Error::Invalid`] with the line of the first problem.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map_or(0, |s| s.start));
            Error::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(e.span(), foreign(e.message().trim())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let mut credentials = BTreeMap::new();
        for (name, spanned) in &raw.credentials {
            if !valid_name(name) {
                return Err(invalid(
                    Some(spanned.span()),
                    format!(
                        "credential name {} must be 1 to 100 characters of A-Z a-z 0-9 - _ .",
                        quoted(name)
                    ),
                ));
            }
            let credential = match spanned.get_ref().clone() {
                CredentialConfig::ClientCertificate {
                    tenant,
                    client_id,
                    certificate_file,
                } => CredentialConfig::ClientCertificate {
                    tenant,
                    client_id,
                    certificate_file: resolve(&certificate_file),
                },
                CredentialConfig::AzureCli {
                    timeout: Some(t), ..
                } if !parse_duration_ms(&t).is_ok_and(|ms| (1_000..=120_000).contains(&ms)) => {
                    return Err(invalid(
                        Some(spanned.span()),
                        format!(
                            "credential {name}: timeout = {:?} must be a duration from 1s to 120s, e.g. \"10s\"",
                            t.chars().take(40).collect::<String>()
                        ),
                    ));
                }
                CredentialConfig::WorkloadIdentity {
                    tenant,
                    client_id,
                    token_file,
                } => CredentialConfig::WorkloadIdentity {
                    tenant,
                    client_id,
                    token_file: token_file.map(|f| resolve(&f)),
                },
                other => other,
            };
            credentials.insert(name.clone(), credential);
        }
        let journal = journal::validate(raw.journal.get_ref(), &resolve)
            .map_err(|(at, m)| invalid(at.or_else(|| Some(raw.journal.span())), m))?;
        let azure = azure_endpoints(raw.azure.as_ref()).map_err(|m| invalid(None, m))?;
        let lease_ttl_ms = match raw.runner.as_ref().and_then(|r| r.lease_ttl.as_ref()) {
            None => LEASE_TTL_MS_DEFAULT,
            Some(t) => {
                let (here, t) = (Some(t.span()), t.get_ref());
                match parse_duration_ms(t) {
                    Ok(ms) if (500..=3_600_000).contains(&ms) => ms,
                    Ok(_) => {
                        let why = format!("[runner] lease_ttl = {} must be 500ms to 1h", quoted(t));
                        return Err(invalid(here, why));
                    }
                    Err(why) => {
                        let why = format!(
                            "[runner] lease_ttl = {} {why}; write e.g. \"15s\"",
                            quoted(t)
                        );
                        return Err(invalid(here, why));
                    }
                }
            }
        };

        let mut providers = BTreeMap::new();
        for (name, spanned) in &raw.providers {
            if !valid_name(name) {
                return Err(invalid(
                    Some(spanned.span()),
                    format!(
                        "provider name {} must be 1 to 100 characters of A-Z a-z 0-9 - _ .",
                        quoted(name)
                    ),
                ));
            }
            let p = match spanned.get_ref().clone() {
                ProviderConfig::Random { bytes } => {
                    if !(16..=1024).contains(&bytes) {
                        return Err(invalid(
                            Some(spanned.span()),
                            format!(
                                "provider {name}: bytes = {bytes} is out of range; use 16 to 1024 (32 is the default)"
                            ),
                        ));
                    }
                    ProviderConfig::Random { bytes }
                }
                ProviderConfig::LocalVault {
                    path,
                    key_file,
                    key_env,
                    follow_symlinks,
                } => {
                    if key_file.is_some() && key_env.is_some() {
                        return Err(invalid(
                            Some(spanned.span()),
                            format!("provider {name}: set key_file or key_env, not both"),
                        ));
                    }
                    ProviderConfig::LocalVault {
                        path: resolve(&path),
                        key_file: key_file.as_deref().map(resolve),
                        key_env,
                        follow_symlinks,
                    }
                }
                mut p @ ProviderConfig::KeyVault { .. } => {
                    check_azure_provider(name, &p, &credentials)
                        .map_err(|m| invalid(Some(spanned.span()), m))?;
                    if let ProviderConfig::KeyVault {
                        vault_url,
                        vault_name: given,
                        ..
                    } = &mut p
                    {
                        match given {
                            Some(v) => check_vault_name(name, v).map_err(|m| {
                                let here = provider_key_span(text, name, "vault_name");
                                invalid(here.or(Some(spanned.span())), m)
                            })?,
                            None => *given = vault_name(vault_url),
                        }
                    }
                    p
                }
                other @ (ProviderConfig::AppSetting { .. }
                | ProviderConfig::EntraPassword { .. }
                | ProviderConfig::StorageKeys { .. }
                | ProviderConfig::OauthToken { .. }) => {
                    check_azure_provider(name, &other, &credentials)
                        .map_err(|m| invalid(Some(spanned.span()), m))?;
                    other
                }
                mut p @ ProviderConfig::PostgresRole { .. } => {
                    check_postgres(name, &p).map_err(|m| invalid(Some(spanned.span()), m))?;
                    if let ProviderConfig::PostgresRole { tls_ca_file, .. } = &mut p {
                        *tls_ca_file = tls_ca_file.as_deref().map(resolve);
                    }
                    p
                }
                ProviderConfig::EnvFile {
                    path,
                    key,
                    after_write,
                    follow_symlinks,
                } => {
                    check_command(name, "after_write", after_write.as_deref())
                        .map_err(|m| invalid(Some(spanned.span()), m))?;
                    if key.is_empty() || key.contains(['=', '\n']) {
                        return Err(invalid(
                            Some(spanned.span()),
                            format!(
                                "provider {name}: key {} must be a non-empty variable name without '=' or newlines",
                                quoted(&key)
                            ),
                        ));
                    }
                    ProviderConfig::EnvFile {
                        path: resolve(&path),
                        key,
                        after_write,
                        follow_symlinks,
                    }
                }
                ProviderConfig::File {
                    path,
                    after_write,
                    follow_symlinks,
                } => {
                    check_command(name, "after_write", after_write.as_deref())
                        .map_err(|m| invalid(Some(spanned.span()), m))?;
                    ProviderConfig::File {
                        path: resolve(&path),
                        after_write,
                        follow_symlinks,
                    }
                }
                ProviderConfig::Command { command } => {
                    check_command(name, "command", Some(&command))
                        .map_err(|m| invalid(Some(spanned.span()), m))?;
                    ProviderConfig::Command { command }
                }
            };
            providers.insert(name.clone(), p);
        }

        let mut secrets = BTreeMap::new();
        let mut schedules = BTreeMap::new();
        for (name, spanned) in &raw.secrets {
            let s = spanned.get_ref();
            let here = Some(spanned.span());
            if !valid_name(name) {
                return Err(invalid(
                    here,
                    format!(
                        "secret name {} must be 1 to 100 characters of A-Z a-z 0-9 - _ .",
                        quoted(name)
                    ),
                ));
            }
            let mut targets = Vec::new();
            let mut add = |role: Role, refs: &[Spanned<String>], what: &str| -> Result<(), Error> {
                if refs.is_empty() && matches!(role, Role::Store | Role::Verifier) {
                    return Err(invalid(
                        here.clone(),
                        format!(
                            "secret {name}: needs at least one {what}, e.g. {what}s = [\"my-vault\"]"
                        ),
                    ));
                }
                for r in refs {
                    let target = r.get_ref();
                    let Some(kind) = providers.get(target) else {
                        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                        return Err(invalid(
                            Some(r.span()),
                            format!(
                                "secret {name}: {what} {} is not defined; define {} or use one of: {}",
                                quoted(target),
                                section("providers", target),
                                if known.is_empty() {
                                    "(none defined)".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    };
                    let plays = kind_roles(kind);
                    if !plays.contains(&role) {
                        return Err(invalid(
                            Some(r.span()),
                            format!(
                                "secret {name}: provider {} ({}) cannot be a {what}; it can be: {}",
                                quoted(target),
                                kind_name(kind),
                                role_list(&plays)
                            ),
                        ));
                    }
                    // The address is what the journal keeps: the rotation finds its
                    // target even if this entry is renamed or removed later.
                    targets.push(TargetRef::at(role, target, address_of(kind, name)));
                }
                Ok(())
            };
            add(Role::Rotator, std::slice::from_ref(&s.rotator), "rotator")?;
            add(Role::Store, &s.stores, "store")?;
            add(Role::Dependent, &s.dependents, "dependent")?;
            add(Role::Verifier, &s.verifiers, "verifier")?;
            let grace_ms = parse_duration_ms(s.grace.get_ref()).map_err(|why| {
                invalid(
                    Some(s.grace.span()),
                    format!(
                        "secret {name}: grace = {} {why}; write e.g. \"7d\", \"12h\" or \"30s\"",
                        quoted(s.grace.get_ref())
                    ),
                )
            })?;
            if s.attempts_max == 0 || s.attempts_max > ATTEMPTS_MAX_LIMIT {
                return Err(invalid(
                    here,
                    format!(
                        "secret {name}: attempts_max = {} must be 1 to {ATTEMPTS_MAX_LIMIT}",
                        s.attempts_max
                    ),
                ));
            }
            // Every rotation of one Entra application's passwords shares one lock, so a
            // configured secret and a fleet rotation of the same app never run at once.
            let lock_key = s.lock_key.clone().unwrap_or_else(|| {
                match targets
                    .iter()
                    .find(|t| t.role == Role::Rotator)
                    .and_then(|t| t.address.as_ref())
                {
                    Some(crate::saga::Address::EntraPassword { app_id, .. }) => {
                        crate::fleet::plan::entra_app_lock_key(app_id)
                    }
                    _ => name.clone(),
                }
            });
            if !valid_name(&lock_key) {
                return Err(invalid(
                    here,
                    format!(
                        "secret {name}: lock_key {} must be 1 to 100 characters of A-Z a-z 0-9 - _ .",
                        quoted(&lock_key)
                    ),
                ));
            }
            if let Some(schedule) = &s.schedule {
                let schedule = schedule
                    .validate()
                    .map_err(|e| invalid(here.clone(), format!("secret {name}: [schedule] {e}")))?;
                schedules.insert(name.clone(), schedule);
            }
            secrets.insert(
                name.clone(),
                Plan {
                    secret: name.clone(),
                    lock_key,
                    targets,
                    grace_ms,
                    attempts_max: s.attempts_max,
                },
            );
        }
        let here = raw.daemon.as_ref().map(Spanned::span);
        let d = raw.daemon.as_ref().map(Spanned::get_ref);
        let listen = d
            .and_then(|d| d.listen.as_deref())
            .unwrap_or(LISTEN_DEFAULT);
        let listen = listen.parse().map_err(|_| {
            invalid(
                here.clone(),
                format!(
                    "[daemon] listen = {} is not an address and port; write e.g. \"{LISTEN_DEFAULT}\"",
                    quoted(listen)
                ),
            )
        })?;
        let max = d
            .and_then(|d| d.max_concurrent_rotations)
            .unwrap_or(MAX_CONCURRENT_DEFAULT);
        if !(1..=10_000).contains(&max) {
            return Err(invalid(
                here,
                format!("[daemon] max_concurrent_rotations = {max} must be 1 to 10000"),
            ));
        }
        let http = http_limits(d).map_err(|m| invalid(here.clone(), m))?;
        let node_id = d.and_then(|d| d.node_id.clone());
        if let Some(id) = node_id.as_deref().filter(|id| !valid_name(id)) {
            return Err(invalid(
                here,
                format!(
                    "[daemon] node_id = {} must be 1 to 100 characters of A-Z a-z 0-9 - _ .",
                    quoted(id)
                ),
            ));
        }
        let leader_ttl_ms = match d.and_then(|d| d.leader_ttl.as_deref()) {
            None => crate::daemon::leader::TTL_DEFAULT_MS,
            Some(t) => match parse_duration_ms(t) {
                Ok(ms) if (3_000..=600_000).contains(&ms) => ms,
                Ok(_) => {
                    return Err(invalid(
                        here,
                        format!("[daemon] leader_ttl = {} must be 3s to 10m", quoted(t)),
                    ));
                }
                Err(why) => {
                    return Err(invalid(
                        here,
                        format!(
                            "[daemon] leader_ttl = {} {why}; write e.g. \"15s\"",
                            quoted(t)
                        ),
                    ));
                }
            },
        };
        let daemon = DaemonConfig {
            http,
            node_id,
            leader_ttl_ms,
            listen,
            api_token_env: d.and_then(|d| d.api_token_env.clone()),
            viewer_token_env: d.and_then(|d| d.viewer_token_env.clone()),
            console_secure_cookie: d
                .and_then(|d| d.console_secure_cookie)
                .unwrap_or(!listen.ip().is_loopback()),
            max_concurrent_rotations: max,
            webhook_secret_env: d.and_then(|d| d.webhook_secret_env.clone()),
            webhook_token_env: d.and_then(|d| d.webhook_token_env.clone()),
            notice_days_before: d
                .and_then(|d| d.notice_days_before)
                .unwrap_or(NOTICE_DAYS_BEFORE_DEFAULT),
        };
        let fleet = match &raw.fleet {
            None => None,
            Some(f) => {
                let names: Vec<&str> = credentials.keys().map(String::as_str).collect();
                Some(crate::fleet::config::validate(f, &names).map_err(|(at, m)| invalid(at, m))?)
            }
        };
        Ok(Config {
            fleet,
            daemon,
            schedules,
            notifications: raw.notifications,
            path: path.to_owned(),
            journal_path: journal
                .sqlite_path()
                .map(Path::to_owned)
                .unwrap_or_default(),
            journal,
            providers,
            credentials,
            azure,
            secrets,
            lease_ttl_ms,
        })
    }

    /// The longest one provider request that may change something can take, when the
    /// config names Azure providers: the Azure timeout (`[azure] timeout`). A runner's
    /// lease is made to outlive it before each call. `None` without Azure providers.
    pub fn call_timeout_ms(&self) -> Option<i64> {
        let azure = self.providers.values().any(|p| {
            matches!(
                p,
                ProviderConfig::KeyVault { .. }
                    | ProviderConfig::AppSetting { .. }
                    | ProviderConfig::EntraPassword { .. }
                    | ProviderConfig::StorageKeys { .. }
                    | ProviderConfig::OauthToken { .. }
            )
        });
        azure.then(|| i64::try_from(self.azure.timeout_ms).unwrap_or(i64::MAX))
    }

    /// The configured secret a Key Vault event is about: named `secret` (names are
    /// case-insensitive in Key Vault) and stored in the vault named `vault`.
    pub fn secret_in_vault(&self, vault: &str, secret: &str) -> Option<&str> {
        self.secrets.values().find_map(|plan| {
            let in_vault = plan.targets.iter().any(|t| {
                t.role == Role::Store
                    && self
                        .vault_name_of(&t.name)
                        .is_some_and(|n| n.eq_ignore_ascii_case(vault))
            });
            (in_vault && plan.secret.eq_ignore_ascii_case(secret)).then_some(plan.secret.as_str())
        })
    }

    /// The vaults events are matched against: each `key_vault` provider that stores a
    /// secret, with the vault name in effect (`None` when its URL gives none and
    /// `vault_name` is not set), in provider order.
    pub fn event_vaults(&self) -> Vec<(&str, Option<&str>)> {
        let stores: std::collections::BTreeSet<&str> = self
            .secrets
            .values()
            .flat_map(|plan| &plan.targets)
            .filter(|t| t.role == Role::Store)
            .map(|t| t.name.as_str())
            .collect();
        self.providers
            .iter()
            .filter(|(name, p)| {
                stores.contains(name.as_str()) && matches!(p, ProviderConfig::KeyVault { .. })
            })
            .map(|(name, _)| (name.as_str(), self.vault_name_of(name)))
            .collect()
    }

    /// The vault name in effect of the `key_vault` provider `provider`.
    fn vault_name_of(&self, provider: &str) -> Option<&str> {
        match self.providers.get(provider) {
            Some(ProviderConfig::KeyVault { vault_name, .. }) => vault_name.as_deref(),
            _ => None,
        }
    }

    /// The plan of the secret `name`.
    ///
    /// # Errors
    /// [`Error::UnknownSecret`] listing the configured names.
    pub fn plan(&self, name: &str) -> Result<&Plan, Error> {
        self.secrets.get(name).ok_or_else(|| Error::UnknownSecret {
            path: self.path.clone(),
            name: name.to_owned(),
            known: if self.secrets.is_empty() {
                "(none)".into()
            } else {
                self.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }
}

/// The `[daemon]` HTTP limits, defaults filled in.
fn http_limits(d: Option<&RawDaemon>) -> Result<crate::daemon::serve::Limits, String> {
    let mut limits = crate::daemon::serve::Limits::default();
    let timeout = |key: &str, value: Option<&String>, default: std::time::Duration| {
        let Some(text) = value else {
            return Ok(default);
        };
        let ms = parse_duration_ms(text).map_err(|why| {
            format!(
                "[daemon] {key} = {} {why}; write e.g. \"10s\"",
                quoted(text)
            )
        })?;
        if !(1_000..=600_000).contains(&ms) {
            return Err(format!(
                "[daemon] {key} = {} must be 1s to 10m",
                quoted(text)
            ));
        }
        Ok(std::time::Duration::from_millis(ms.unsigned_abs()))
    };
    limits.header_read_timeout = timeout(
        "header_read_timeout",
        d.and_then(|d| d.header_read_timeout.as_ref()),
        limits.header_read_timeout,
    )?;
    limits.body_timeout = timeout(
        "body_timeout",
        d.and_then(|d| d.body_timeout.as_ref()),
        limits.body_timeout,
    )?;
    if let Some(n) = d.and_then(|d| d.connections_max) {
        if !(1..=CONNECTIONS_MAX_LIMIT).contains(&n) {
            return Err(format!(
                "[daemon] connections_max = {n} must be 1 to {CONNECTIONS_MAX_LIMIT}"
            ));
        }
        limits.connections_max = n;
    }
    Ok(limits)
}

/// Most connections `[daemon] connections_max` may allow.
pub const CONNECTIONS_MAX_LIMIT: usize = 65_536;

/// A vault's name as Event Grid gives it, when `vault_name` is not set: the first label of
/// `https://<name>.vault.azure.net`, or, for a vault served under a path on an IP address
/// or localhost (test servers, emulators), the last path segment.
pub(crate) fn vault_name(vault_url: &str) -> Option<String> {
    let url = url::Url::parse(vault_url).ok()?;
    match url.host()? {
        url::Host::Domain(d) if d != "localhost" => d.split('.').next().map(str::to_owned),
        _ => url
            .path_segments()?
            .rfind(|s| !s.is_empty())
            .map(str::to_owned),
    }
}

/// Checks that provider `name`'s `vault_name` is a Key Vault name as Azure allows one:
/// 3 to 24 characters of A-Z a-z 0-9 and `-`, starting with a letter, ending with a letter
/// or digit, no `--`.
fn check_vault_name(name: &str, vault_name: &str) -> Result<(), String> {
    let b = vault_name.as_bytes();
    let fits = (3..=24).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !vault_name.contains("--");
    if fits {
        return Ok(());
    }
    Err(format!(
        "provider {name}: vault_name = {} is not a Key Vault name: 3 to 24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, no two hyphens in a row; write the vault's name as Event Grid events give it (their VaultName), e.g. \"contoso-prod\"",
        quoted(vault_name)
    ))
}

/// Where the value of `key` in `[providers.<provider>]` is written in `text`, for an error
/// about that one key (a provider's own span is its table header).
fn provider_key_span(text: &str, provider: &str, key: &str) -> Option<Range<usize>> {
    #[derive(Deserialize)]
    struct Spans {
        #[serde(default)]
        providers: BTreeMap<String, BTreeMap<String, Spanned<toml::Value>>>,
    }
    let spans: Spans = toml::from_str(text).ok()?;
    Some(spans.providers.get(provider)?.get(key)?.span())
}

/// The roles a kind plays: those whose traits the kind's provider type implements, as the
/// compiler sees them (no table to keep in step with the types).
pub fn kind_roles(kind: &ProviderConfig) -> Vec<Role> {
    use crate::providers::azure::{
        appservice::AppSetting, graph::AppPasswords, keyvault::KeyVaultStore, oauth::OAuthToken,
        storage::StorageKeys,
    };
    use crate::providers::local::{CommandVerifier, FileDependent, LocalVault, RandomRotator};
    use crate::providers::postgres::PostgresRole;
    match kind {
        ProviderConfig::Random { .. } => crate::roles_of!(RandomRotator),
        ProviderConfig::LocalVault { .. } => crate::roles_of!(LocalVault),
        ProviderConfig::EnvFile { .. } | ProviderConfig::File { .. } => {
            crate::roles_of!(FileDependent)
        }
        ProviderConfig::Command { .. } => crate::roles_of!(CommandVerifier),
        ProviderConfig::KeyVault { .. } => crate::roles_of!(KeyVaultStore),
        ProviderConfig::AppSetting { .. } => crate::roles_of!(AppSetting),
        ProviderConfig::EntraPassword { .. } => crate::roles_of!(AppPasswords),
        ProviderConfig::StorageKeys { .. } => crate::roles_of!(StorageKeys),
        ProviderConfig::OauthToken { .. } => crate::roles_of!(OAuthToken),
        ProviderConfig::PostgresRole { .. } => crate::roles_of!(PostgresRole),
    }
}

fn kind_name(kind: &ProviderConfig) -> &'static str {
    match kind {
        ProviderConfig::Random { .. } => "kind random",
        ProviderConfig::LocalVault { .. } => "kind local_vault",
        ProviderConfig::EnvFile { .. } => "kind env_file",
        ProviderConfig::File { .. } => "kind file",
        ProviderConfig::Command { .. } => "kind command",
        ProviderConfig::KeyVault { .. } => "kind key_vault",
        ProviderConfig::AppSetting { .. } => "kind app_setting",
        ProviderConfig::EntraPassword { .. } => "kind entra_password",
        ProviderConfig::StorageKeys { .. } => "kind storage_keys",
        ProviderConfig::OauthToken { .. } => "kind oauth_token",
        ProviderConfig::PostgresRole { .. } => "kind postgres_role",
    }
}

/// A command is a program and its arguments (no shell): at least the program.
fn check_command(name: &str, field: &str, command: Option<&[String]>) -> Result<(), String> {
    match command {
        Some([program, ..]) if !program.trim().is_empty() => Ok(()),
        Some(_) => Err(format!(
            "provider {name}: {field} must name a program, e.g. {field} = [\"systemctl\", \"reload\", \"app\"]"
        )),
        None => Ok(()),
    }
}

/// Checks an Azure provider's fields: its credential exists, its URLs parse, its numbers
/// are in range.
fn check_azure_provider(
    name: &str,
    p: &ProviderConfig,
    credentials: &BTreeMap<String, CredentialConfig>,
) -> Result<(), String> {
    let credential = match p {
        ProviderConfig::KeyVault { credential, .. }
        | ProviderConfig::AppSetting { credential, .. }
        | ProviderConfig::EntraPassword { credential, .. }
        | ProviderConfig::StorageKeys { credential, .. } => Some(credential),
        _ => None,
    };
    if let Some(c) = credential
        && !credentials.contains_key(c)
    {
        let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
        return Err(format!(
            "provider {name}: credential {} is not defined; define {} or use one of: {}",
            quoted(c),
            section("credentials", c),
            if known.is_empty() {
                "(none defined)".to_owned()
            } else {
                known.join(", ")
            }
        ));
    }
    let url = |field: &str, value: &str| {
        url::Url::parse(value).map(drop).map_err(|e| {
            format!(
                "provider {name}: {field} = {} is not a URL ({e})",
                quoted(value)
            )
        })
    };
    match p {
        ProviderConfig::KeyVault {
            vault_url,
            requests_per_10s,
            ..
        } => {
            let limit = crate::providers::azure::budget::KEY_VAULT_LIMIT;
            if let Some(n) = requests_per_10s
                && !(1..=limit).contains(n)
            {
                return Err(format!(
                    "provider {name}: requests_per_10s = {n} must be 1 to {limit} (Key Vault's limit per vault)"
                ));
            }
            url("vault_url", vault_url)
        }
        ProviderConfig::OauthToken { token_url, .. } => url("token_url", token_url),
        ProviderConfig::EntraPassword {
            validity_days,
            propagation,
            ..
        } => {
            if !(1..=730).contains(validity_days) {
                return Err(format!(
                    "provider {name}: validity_days = {validity_days} must be 1 to 730 (Entra allows up to 2 years)"
                ));
            }
            parse_duration_ms(propagation).map(drop).map_err(|why| {
                format!(
                    "provider {name}: propagation = {} {why}; write e.g. \"2m\"",
                    quoted(propagation)
                )
            })
        }
        _ => Ok(()),
    }
}

/// Longest role name PostgreSQL keeps (`NAMEDATALEN` - 1).
const POSTGRES_NAME_MAX: usize = 63;

/// Checks a `postgres_role` provider: the mode has the role names it needs, names fit
/// PostgreSQL, numbers are in range, and plain connections stay on this machine.
fn check_postgres(name: &str, p: &ProviderConfig) -> Result<(), String> {
    let ProviderConfig::PostgresRole {
        host,
        port,
        dbname,
        admin_user,
        admin_password_env,
        mode,
        role,
        roles,
        password_bytes,
        value_format,
        verify_host,
        verify_port,
        tls,
        tls_ca_file,
    } = p
    else {
        return Ok(());
    };
    let pg_name = |field: &str, v: &str| {
        if v.is_empty() || v.len() > POSTGRES_NAME_MAX || v.contains('\0') {
            Err(format!(
                "provider {name}: {field} = {} must be 1 to {POSTGRES_NAME_MAX} bytes without NUL, exactly as pg_roles shows it",
                quoted(v)
            ))
        } else {
            Ok(())
        }
    };
    for (field, v) in [("host", host), ("dbname", dbname)] {
        if v.is_empty() {
            return Err(format!("provider {name}: {field} must not be empty"));
        }
    }
    pg_name("admin_user", admin_user)?;
    if admin_password_env.is_empty() || admin_password_env.contains(['=', '\0']) {
        return Err(format!(
            "provider {name}: admin_password_env = {} must name an environment variable (the password itself never goes in the file)",
            quoted(admin_password_env)
        ));
    }
    if *port == 0 || *verify_port == Some(0) {
        return Err(format!("provider {name}: ports must be 1 to 65535"));
    }
    match (mode, role, roles) {
        (PostgresMode::Single, Some(r), None) => pg_name("role", r)?,
        (PostgresMode::Single, _, _) => {
            return Err(format!(
                "provider {name}: mode = \"single\" needs role = \"<login role>\" and no roles"
            ));
        }
        (PostgresMode::Alternating, None, Some(rs)) if rs.len() == 2 && rs[0] != rs[1] => {
            for r in rs {
                pg_name("roles", r)?;
            }
        }
        (PostgresMode::Alternating, _, _) => {
            return Err(format!(
                "provider {name}: mode = \"alternating\" needs roles = [\"<login role>\", \"<other login role>\"] (two different roles in one group role) and no role"
            ));
        }
    }
    if *mode == PostgresMode::Alternating && *value_format != Some(PostgresValueFormat::Json) {
        return Err(format!(
            "provider {name}: mode = \"alternating\" hands out a different role each time, so the value must name it: set value_format = \"json\" ({{\"username\": ..., \"password\": ...}})"
        ));
    }
    if !(16..=256).contains(password_bytes) {
        return Err(format!(
            "provider {name}: password_bytes = {password_bytes} must be 16 to 256 (24 is the default)"
        ));
    }
    if *tls == PostgresTls::Disable {
        let verify = verify_host.as_deref().unwrap_or(host);
        for h in [host.as_str(), verify] {
            if !crate::providers::postgres::is_local_host(h) {
                return Err(format!(
                    "provider {name}: tls = \"disable\" is allowed only for loopback addresses and Unix sockets, and {} is neither; remove tls to use TLS (add tls_ca_file for a private CA)",
                    quoted(h)
                ));
            }
        }
        if tls_ca_file.is_some() {
            return Err(format!(
                "provider {name}: tls_ca_file has no effect with tls = \"disable\"; remove one of them"
            ));
        }
    }
    Ok(())
}

fn azure_endpoints(raw: Option<&AzureConfig>) -> Result<AzureEndpoints, String> {
    let mut endpoints = crate::providers::azure::Endpoints::default();
    let mut timeout_ms = crate::providers::azure::http::CALL_TIMEOUT_MS;
    if let Some(a) = raw {
        let parse = |field: &str, v: &str| {
            url::Url::parse(v)
                .map_err(|e| format!("[azure] {field} = {} is not a URL ({e})", quoted(v)))
        };
        if let Some(v) = &a.authority {
            endpoints.authority = parse("authority", v)?;
        }
        if let Some(v) = &a.arm {
            endpoints.arm = parse("arm", v)?;
        }
        if let Some(v) = &a.graph {
            endpoints.graph = parse("graph", v)?;
        }
        if let Some(t) = &a.timeout {
            let ms = parse_duration_ms(t)
                .map_err(|why| format!("[azure] timeout = {} {why}", quoted(t)))?;
            if !(1_000..=600_000).contains(&ms) {
                return Err(format!("[azure] timeout = {} must be 1s to 10m", quoted(t)));
            }
            timeout_ms = ms as u64;
        }
    }
    Ok(AzureEndpoints {
        endpoints,
        timeout_ms,
    })
}

/// Parses "7d", "12h", "30s", "1h 30m" (jiff's friendly format) into milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let span: jiff::Span = text
        .parse()
        .map_err(|e: jiff::Error| format!("is not a duration ({})", foreign(&e.to_string())))?;
    // Policy durations count days as 24 hours: a grace period is elapsed time, not a date.
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("cannot be used as a duration ({})", foreign(&e.to_string())))?;
    if d.is_negative() {
        return Err("is negative".into());
    }
    i64::try_from(d.as_millis()).map_err(|_| "is too long".into())
}

/// Every table of the config file and the keys it takes, as `docs/config.md` documents
/// them: one `### <heading>` per entry and one table row per key (a tagged table's `kind`
/// is in its heading). Unit tests hold this list to the serde types in both directions
/// (each table's keys and each tagged table's kinds are exactly what deserializing
/// accepts), and `docs/config.md` to this list, so a key cannot go undocumented.
pub const KEYS: &[(&str, &[&str])] = &[
    (
        "[journal]",
        &["path", "url", "password_env", "tls", "tls_ca_file"],
    ),
    ("[runner]", &["lease_ttl"]),
    ("[azure]", &["authority", "arm", "graph", "timeout"]),
    (
        "[credentials.NAME] kind = \"client_secret\"",
        &["tenant", "client_id", "client_secret_env"],
    ),
    (
        "[credentials.NAME] kind = \"client_certificate\"",
        &["tenant", "client_id", "certificate_file"],
    ),
    (
        "[credentials.NAME] kind = \"managed_identity\"",
        &["client_id", "endpoint"],
    ),
    (
        "[credentials.NAME] kind = \"app_service_identity\"",
        &["client_id"],
    ),
    ("[credentials.NAME] kind = \"static_token\"", &["token_env"]),
    (
        "[credentials.NAME] kind = \"azure_cli\"",
        &["tenant", "timeout"],
    ),
    (
        "[credentials.NAME] kind = \"workload_identity\"",
        &["tenant", "client_id", "token_file"],
    ),
    (
        "[credentials.NAME] kind = \"default\"",
        &[
            "tenant",
            "managed_identity_client_id",
            "managed_identity_endpoint",
        ],
    ),
    ("[providers.NAME] kind = \"random\"", &["bytes"]),
    (
        "[providers.NAME] kind = \"local_vault\"",
        &["path", "key_file", "key_env", "follow_symlinks"],
    ),
    (
        "[providers.NAME] kind = \"env_file\"",
        &["path", "key", "after_write", "follow_symlinks"],
    ),
    (
        "[providers.NAME] kind = \"file\"",
        &["path", "after_write", "follow_symlinks"],
    ),
    ("[providers.NAME] kind = \"command\"", &["command"]),
    (
        "[providers.NAME] kind = \"key_vault\"",
        &[
            "vault_url",
            "credential",
            "content_type",
            "verify_challenge_resource",
            "requests_per_10s",
            "vault_name",
        ],
    ),
    (
        "[providers.NAME] kind = \"app_setting\"",
        &[
            "credential",
            "subscription",
            "resource_group",
            "site",
            "slot",
            "setting",
            "key_vault_reference",
        ],
    ),
    (
        "[providers.NAME] kind = \"entra_password\"",
        &[
            "credential",
            "tenant",
            "object_id",
            "app_id",
            "validity_days",
            "verify_scope",
            "propagation",
        ],
    ),
    (
        "[providers.NAME] kind = \"storage_keys\"",
        &[
            "credential",
            "subscription",
            "resource_group",
            "account",
            "kerberos",
        ],
    ),
    (
        "[providers.NAME] kind = \"oauth_token\"",
        &["token_url", "client_id", "client_secret_env", "scope"],
    ),
    (
        "[providers.NAME] kind = \"postgres_role\"",
        &[
            "host",
            "port",
            "dbname",
            "admin_user",
            "admin_password_env",
            "mode",
            "role",
            "roles",
            "password_bytes",
            "value_format",
            "verify_host",
            "verify_port",
            "tls",
            "tls_ca_file",
        ],
    ),
    (
        "[secrets.NAME]",
        &[
            "rotator",
            "stores",
            "dependents",
            "verifiers",
            "grace",
            "attempts_max",
            "lock_key",
            "schedule",
        ],
    ),
    (
        "[secrets.NAME.schedule]",
        &[
            "every_days",
            "at",
            "time_zone",
            "cron",
            "before_expiry_days",
            "jitter_minutes",
            "windows",
            "freezes",
        ],
    ),
    ("[secrets.NAME.schedule] windows", &["days", "hours"]),
    ("[secrets.NAME.schedule] freezes", &["from", "until"]),
    (
        "[daemon]",
        &[
            "listen",
            "api_token_env",
            "viewer_token_env",
            "console_secure_cookie",
            "max_concurrent_rotations",
            "webhook_secret_env",
            "webhook_token_env",
            "notice_days_before",
            "header_read_timeout",
            "body_timeout",
            "connections_max",
            "node_id",
            "leader_ttl",
        ],
    ),
    ("[notifications.NAME]", &["kind", "url_env", "on"]),
    (
        "[fleet]",
        &[
            "tenants",
            "days_before_expiry",
            "min_confidence",
            "read_values_for_hint",
            "verify_challenge_resource",
            "name_templates",
            "tag_keys",
            "exclude",
            "rotation",
            "discover_every",
            "notice_days_before",
        ],
    ),
    (
        "[fleet.rotation]",
        &[
            "grace",
            "validity_days",
            "max_concurrent",
            "max_concurrent_per_tenant",
            "attempts_max",
            "propagation",
        ],
    ),
    (
        "[fleet.tenants.NAME]",
        &[
            "credential",
            "subscriptions",
            "vaults",
            "service_principals",
            "app_service_sites",
        ],
    ),
    ("[fleet.tag_keys]", &["app_id", "key_id", "app_name"]),
    (
        "[fleet.exclude]",
        &[
            "app_ids",
            "app_names",
            "secret_names",
            "vaults",
            "subscriptions",
        ],
    ),
];

/// The keys of [`KEYS`] that take one of a fixed set of words: (heading, key, words).
/// Held to the serde types and to `docs/config.md` like [`KEYS`].
pub const KEY_WORDS: &[(&str, &str, &[&str])] = &[
    ("[journal]", "tls", &["verify_full", "disable"]),
    (
        "[providers.NAME] kind = \"postgres_role\"",
        "mode",
        &["single", "alternating"],
    ),
    (
        "[providers.NAME] kind = \"postgres_role\"",
        "value_format",
        &["password", "json"],
    ),
    (
        "[providers.NAME] kind = \"postgres_role\"",
        "tls",
        &["verify_full", "disable"],
    ),
    (
        "[notifications.NAME]",
        "kind",
        &["teams", "slack", "webhook"],
    ),
    (
        "[notifications.NAME]",
        "on",
        &["completed", "compensated", "stuck", "upcoming", "fleet"],
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    const GOOD: &str = r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "/abs/vault.json"

[providers.app]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[secrets.payments-api]
rotator = "random"
stores = ["vault"]
dependents = ["app"]
verifiers = ["app"]
grace = "7d"
"#;

    /// Each case edits `base` (`from` → `to`) and must be refused at `line` with a message
    /// containing `want`.
    fn assert_each_invalid(base: &str, cases: &[(&str, &str, usize, &str)]) {
        for (from, to, line, want) in cases {
            let text = base.replacen(from, to, 1);
            assert_ne!(text, base, "case {want:?} did not change the config");
            match parse(&text) {
                Err(Error::Invalid {
                    line: got, message, ..
                }) => {
                    assert!(
                        message.contains(want),
                        "{message:?} should contain {want:?}"
                    );
                    assert_eq!(got, *line, "line of {want:?}");
                }
                other => panic!("{want:?}: expected an invalid-config error, got {other:?}"),
            }
        }
    }

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/rekey/rekey.toml"), text)
    }

    #[test]
    fn a_valid_config_becomes_plans_with_resolved_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.journal_path, Path::new("/etc/rekey/journal.db"));
        let plan = c.plan("payments-api").unwrap();
        assert_eq!(plan.grace_ms, 7 * 86_400_000);
        assert_eq!(plan.attempts_max, 5);
        assert_eq!(plan.lock_key, "payments-api");
        let roles: Vec<Role> = plan.targets.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [Role::Rotator, Role::Store, Role::Dependent, Role::Verifier]
        );
        assert!(matches!(
            &c.providers["vault"],
            ProviderConfig::LocalVault { path, .. } if path == Path::new("/abs/vault.json")
        ));
        assert!(matches!(
            &c.providers["app"],
            ProviderConfig::EnvFile { path, .. } if path == Path::new("/etc/rekey/app.env")
        ));
    }

    #[test]
    fn the_console_cookie_is_secure_by_default_beyond_loopback() {
        let with = |daemon: &str| {
            parse(&format!("{GOOD}\n[daemon]\n{daemon}\n"))
                .unwrap()
                .daemon
        };
        assert!(!with("listen = \"127.0.0.1:8787\"").console_secure_cookie);
        assert!(!with("listen = \"[::1]:8787\"").console_secure_cookie);
        assert!(with("listen = \"0.0.0.0:8787\"").console_secure_cookie);
        assert!(
            !with("listen = \"0.0.0.0:8787\"\nconsole_secure_cookie = false").console_secure_cookie
        );
        assert!(with("console_secure_cookie = true").console_secure_cookie);
        let d = with("viewer_token_env = \"REKEY_VIEWER\"");
        assert_eq!(d.viewer_token_env.as_deref(), Some("REKEY_VIEWER"));
    }

    #[test]
    fn a_key_vault_request_budget_must_fit_the_service_limit() {
        let text = |n: u32| {
            format!(
                r#"[journal]
path = "journal.db"

[credentials.x]
kind = "static_token"
token_env = "T"

[providers.random]
kind = "random"

[providers.vault]
kind = "key_vault"
vault_url = "https://kv.vault.azure.net"
credential = "x"
requests_per_10s = {n}

[secrets.s]
rotator = "random"
stores = ["vault"]
verifiers = ["vault"]
grace = "1h"
"#
            )
        };
        let c = parse(&text(500)).unwrap();
        assert!(matches!(
            &c.providers["vault"],
            ProviderConfig::KeyVault {
                requests_per_10s: Some(500),
                ..
            }
        ));
        for n in [0, 2_001] {
            let err = parse(&text(n)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("requests_per_10s = {n} must be 1 to 2000")),
                "{err}"
            );
        }
    }

    /// A config of one secret `s` in one `key_vault` store `vault` at `url`, with `extra`
    /// lines at the end of the store's table (from line 15).
    /// A runner's lease is made to outlive Azure calls only where there are some: with local
    /// providers alone, no call timeout lengthens it.
    #[test]
    fn the_call_timeout_is_azures_when_azure_providers_are_configured() {
        assert_eq!(parse(GOOD).unwrap().call_timeout_ms(), None);
        let kv = key_vault_config("https://contoso.vault.azure.net", "");
        assert_eq!(
            parse(&kv).unwrap().call_timeout_ms(),
            Some(crate::providers::azure::http::CALL_TIMEOUT_MS as i64)
        );
        let kv = format!("[azure]\ntimeout = \"5s\"\n\n{kv}");
        assert_eq!(parse(&kv).unwrap().call_timeout_ms(), Some(5_000));
    }

    fn key_vault_config(url: &str, extra: &str) -> String {
        format!(
            r#"[journal]
path = "journal.db"

[credentials.x]
kind = "static_token"
token_env = "T"

[providers.random]
kind = "random"

[providers.vault]
kind = "key_vault"
vault_url = "{url}"
credential = "x"
{extra}
[secrets.s]
rotator = "random"
stores = ["vault"]
verifiers = ["vault"]
grace = "1h"
"#
        )
    }

    /// Events are matched by the store's `vault_name`, which defaults to the first label of
    /// the host, or the last path segment for an IP address or localhost, and is kept as
    /// written when set (matching ignores case).
    #[test]
    fn a_key_vaults_event_name_defaults_to_its_url_unless_vault_name_is_set() {
        let named = "vault_name = \"Contoso-Prod\"\n";
        let cases = [
            (
                "https://contoso-prod.vault.azure.net",
                "",
                Some("contoso-prod"),
            ),
            (
                "https://KV1.privatelink.vaultcore.azure.net/",
                "",
                Some("kv1"),
            ),
            ("http://127.0.0.1:8443/kv/store-a", "", Some("store-a")),
            ("http://localhost:8443/store-b/", "", Some("store-b")),
            ("http://[::1]:8443/kv/store-c", "", Some("store-c")),
            ("https://10.1.2.3/", "", None),
            ("https://10.1.2.3/", named, Some("Contoso-Prod")),
            (
                "http://127.0.0.1:8443/kv/store-a",
                named,
                Some("Contoso-Prod"),
            ),
            ("https://kv.corp.example", named, Some("Contoso-Prod")),
        ];
        for (url, extra, want) in cases {
            let c = parse(&key_vault_config(url, extra)).unwrap();
            assert_eq!(c.event_vaults(), [("vault", want)], "{url} {extra}");
            for vault in ["store-a", "kv", "10", "10.1.2.3", "contoso"] {
                if Some(vault) != want {
                    assert_eq!(c.secret_in_vault(vault, "s"), None, "{url} {extra} {vault}");
                }
            }
            if let Some(name) = want {
                assert_eq!(
                    c.secret_in_vault(&name.to_ascii_uppercase(), "S"),
                    Some("s")
                );
                assert_eq!(c.secret_in_vault(name, "other"), None);
            }
        }
    }

    /// A `vault_name` that cannot be a Key Vault's is refused, naming the file, the line
    /// and column of the value, the key, the value and what a name may hold.
    #[test]
    fn a_bad_vault_name_is_refused_with_its_place_and_the_rule() {
        let url = "https://kv.corp.example";
        for good in ["abc", "Contoso-Prod-1", &format!("a{}", "b".repeat(23))] {
            let text = key_vault_config(url, &format!("vault_name = \"{good}\"\n"));
            assert!(parse(&text).is_ok(), "{good}");
        }
        let long = "a".repeat(25);
        for bad in [
            "",
            "ab",
            &long,
            "1kv",
            "-kv",
            "kv-",
            "k--v",
            "kv_1",
            "kv.1",
            "kv 1",
            "ünïcødé",
        ] {
            let text = key_vault_config(url, &format!("vault_name = \"{bad}\"\n"));
            let err = parse(&text).unwrap_err().to_string();
            let want = format!(
                "/etc/rekey/rekey.toml:15:14: provider vault: vault_name = {} is not a Key Vault name: 3 to 24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, no two hyphens in a row",
                quoted(bad)
            );
            assert!(err.starts_with(&want), "{err}");
        }
    }

    /// Each bad config is refused with its line and a message saying what is wrong.
    #[test]
    fn bad_configs_name_the_line_and_the_fix() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "kind = \"random\"",
                "kind = \"randum\"",
                5,
                "unknown variant `randum`",
            ),
            (
                "stores = [\"vault\"]",
                "stores = [\"vault2\"]",
                18,
                "store \"vault2\" is not defined; define [providers.vault2]",
            ),
            (
                "grace = \"7d\"",
                "grace = \"soon\"",
                21,
                "grace = \"soon\" is not a duration",
            ),
            ("grace = \"7d\"", "grace = \"-1h\"", 21, "is negative"),
            (
                "grace = \"7d\"",
                "grace = \"7d\"\ncolour = \"blue\"",
                22,
                "unknown field `colour`",
            ),
            (
                "rotator = \"random\"",
                "rotator = \"vault\"",
                17,
                "provider \"vault\" (kind local_vault) cannot be a rotator; it can be: store",
            ),
            (
                "verifiers = [\"app\"]",
                "verifiers = []",
                16,
                "needs at least one verifier",
            ),
            (
                "grace = \"7d\"",
                "grace = 7",
                21,
                "invalid type: integer `7`, expected a string",
            ),
            (
                "grace = \"7d\"",
                "grace = \"7d\"\nattempts_max = 0",
                16,
                "attempts_max = 0 must be 1 to 100",
            ),
        ];
        assert_each_invalid(GOOD, cases);
    }

    /// One provider of every kind.
    const EVERY_KIND: &str = r#"
[journal]
path = "journal.db"

[credentials.azure]
kind = "static_token"
token_env = "TOKEN"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.env]
kind = "env_file"
path = "app.env"
key = "K"

[providers.file]
kind = "file"
path = "app.key"

[providers.command]
kind = "command"
command = ["true"]

[providers.kv]
kind = "key_vault"
vault_url = "https://kv1.vault.azure.net"
credential = "azure"

[providers.web]
kind = "app_setting"
credential = "azure"
subscription = "sub"
resource_group = "rg"
site = "web"
setting = "KEY"

[providers.entra]
kind = "entra_password"
credential = "azure"
tenant = "tenant"
object_id = "object"
app_id = "app"

[providers.keys]
kind = "storage_keys"
credential = "azure"
subscription = "sub"
resource_group = "rg"
account = "acct"

[providers.token]
kind = "oauth_token"
token_url = "https://login.example.com/token"
client_id = "client"
client_secret_env = "CLIENT_SECRET"
scope = "api"

[providers.db]
kind = "postgres_role"
host = "127.0.0.1"
dbname = "app"
admin_user = "admin"
admin_password_env = "PG_ADMIN_PASSWORD"
mode = "single"
role = "app"
"#;

    /// The roles config validation allows a kind are exactly the roles its built provider
    /// plays: both come from the provider type's trait implementations.
    #[test]
    fn every_kind_is_built_in_the_roles_its_config_allows() {
        let c = parse(EVERY_KIND).unwrap();
        assert_eq!(c.providers.len(), 11);
        let clock: std::sync::Arc<dyn rekey_journal::Clock> =
            std::sync::Arc::new(rekey_journal::ManualClock::new(0));
        let built = c.build_providers(clock, &|_| Some("x".into())).unwrap();
        for (name, kind) in &c.providers {
            let allowed = kind_roles(kind);
            assert!(!allowed.is_empty(), "{name} plays no role");
            assert_eq!(built.roles(name).unwrap().roles(), allowed, "{name}");
        }
    }

    /// A secret rotating an Entra application's passwords locks the application, as
    /// every fleet rotation of it does; an explicit lock_key still wins.
    #[test]
    fn entra_password_secrets_lock_their_application() {
        let secrets = "\n[secrets.api]\nrotator = \"entra\"\nstores = [\"kv\"]\nverifiers = [\"entra\"]\ngrace = \"1h\"\n\n[secrets.other]\nrotator = \"random\"\nstores = [\"kv\"]\nverifiers = [\"kv\"]\ngrace = \"1h\"\n\n[secrets.pinned]\nrotator = \"entra\"\nstores = [\"kv\"]\nverifiers = [\"entra\"]\nlock_key = \"mine\"\ngrace = \"1h\"\n";
        let c = parse(&format!("{EVERY_KIND}{secrets}")).unwrap();
        assert_eq!(c.secrets["api"].lock_key, "entra-app.app");
        assert_eq!(
            c.secrets["api"].lock_key,
            crate::fleet::plan::entra_app_lock_key("APP")
        );
        assert_eq!(c.secrets["other"].lock_key, "other");
        assert_eq!(c.secrets["pinned"].lock_key, "mine");
    }

    #[test]
    fn fleet_rotation_settings_have_defaults_and_bounds() {
        let fleet = "\n[credentials.reader]\nkind = \"static_token\"\ntoken_env = \"T\"\n\n[fleet.tenants.c]\ncredential = \"reader\"\n";
        let base = format!("{GOOD}{fleet}");
        let rotation = parse(&base).unwrap().fleet.unwrap().rotation;
        assert_eq!(rotation, crate::fleet::config::RotationConfig::default());
        assert_eq!(rotation.grace_ms, 24 * 3_600_000);
        let set = "\n[fleet.rotation]\ngrace = \"1h\"\nmax_concurrent = 4\nmax_concurrent_per_tenant = 2\nvalidity_days = 30\n";
        let rotation = parse(&format!("{base}{set}"))
            .unwrap()
            .fleet
            .unwrap()
            .rotation;
        assert_eq!(
            (
                rotation.grace_ms,
                rotation.max_concurrent,
                rotation.max_concurrent_per_tenant,
                rotation.validity_days
            ),
            (3_600_000, 4, 2, 30)
        );
        for (bad, why) in [
            ("grace = \"soon\"", "[fleet.rotation] grace = \"soon\""),
            ("max_concurrent = 0", "max_concurrent = 0 must be 1 to 1000"),
            (
                "validity_days = 99999",
                "validity_days = 99999 must be 1 to 3650",
            ),
            ("parallel = 3", "unknown field `parallel`"),
        ] {
            let err = parse(&format!("{base}\n[fleet.rotation]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn daemon_http_limits_have_safe_defaults_and_bounds() {
        let limits = parse(GOOD).unwrap().daemon.http;
        assert_eq!(limits, crate::daemon::serve::Limits::default());
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.body_timeout, Duration::from_secs(30));
        assert_eq!(limits.connections_max, 256);
        let daemon = "\n[daemon]\nheader_read_timeout = \"5s\"\nbody_timeout = \"1m\"\nconnections_max = 10\n";
        let limits = parse(&format!("{GOOD}{daemon}")).unwrap().daemon.http;
        assert_eq!(limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(limits.body_timeout, Duration::from_secs(60));
        assert_eq!(limits.connections_max, 10);
        let base = format!("{GOOD}{daemon}");
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "header_read_timeout = \"5s\"",
                "header_read_timeout = \"0s\"",
                23,
                "[daemon] header_read_timeout = \"0s\" must be 1s to 10m",
            ),
            (
                "body_timeout = \"1m\"",
                "body_timeout = \"soon\"",
                23,
                "[daemon] body_timeout = \"soon\" is not a duration",
            ),
            (
                "connections_max = 10",
                "connections_max = 0",
                23,
                "[daemon] connections_max = 0 must be 1 to 65536",
            ),
        ];
        assert_each_invalid(&base, cases);
    }

    /// The message of an invalid-config error for `text`.
    fn message_of(text: &str) -> String {
        match parse(text) {
            Err(Error::Invalid { message, .. }) => message,
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn errors_quote_short_escaped_excerpts_of_what_was_written() {
        let huge = "z".repeat(1 << 20);
        let excerpt = format!("\"{}…\"", "z".repeat(59));
        let daemon = |line: &str| format!("{GOOD}\n[daemon]\n{line}\n");
        let cases = [
            (
                daemon(&format!("connections_max = \"{huge}\"")),
                format!("invalid type: string {excerpt}, expected usize"),
            ),
            (
                format!("{GOOD}colour = \"{huge}\"\n"),
                "unknown field `colour`".to_owned(),
            ),
            (
                daemon(&format!("\"{huge}\" = 1")),
                format!("unknown field `{}…`", "z".repeat(59)),
            ),
            (
                daemon("\"a\\u001b[2Jb\" = 1"),
                "unknown field `a\\x1b[2Jb`".to_owned(),
            ),
            (
                daemon("connections_max = \"a\\\"b\\\\c\\u0007\""),
                "invalid type: string \"a\"b\\c\\x07\", expected usize".to_owned(),
            ),
            (
                daemon("listen = \"\\u0007bell\""),
                "[daemon] listen = \"\\x07bell\" is not an address and port".to_owned(),
            ),
            (
                daemon(&format!("body_timeout = \"{huge}\"")),
                format!("[daemon] body_timeout = {excerpt} is not a duration"),
            ),
            (
                GOOD.replace("grace = \"7d\"", &format!("grace = \"{huge}\"")),
                format!("secret payments-api: grace = {excerpt} is not a duration"),
            ),
            (
                GOOD.replace("stores = [\"vault\"]", &format!("stores = [\"{huge}\"]")),
                format!(
                    "secret payments-api: store {excerpt} is not defined; define one under [providers] with a name of A-Z a-z 0-9 - _ . or use one of"
                ),
            ),
        ];
        for (text, want) in cases {
            let message = message_of(&text);
            assert!(
                message.contains(&want),
                "{message:?} should contain {want:?}"
            );
            assert!(message.chars().count() < 500, "{} chars", message.len());
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(!message.contains("\\u{"), "debug form: {message:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_reported_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rekey.toml");
        for (bytes, line, column) in [
            (&b"[journal]\npath = \"j\xffx\"\n"[..], 2, 10),
            (&b"# caf\xc3\xa9\n\xc3\xa9\xfe"[..], 2, 2),
            (&b"\x80"[..], 1, 1),
        ] {
            std::fs::write(&path, bytes).unwrap();
            match Config::load(&path) {
                Err(Error::Invalid {
                    line: l,
                    column: c,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c), (line, column), "{message}");
                    assert!(
                        message.starts_with("the file is not valid UTF-8 (byte 0x")
                            && message.contains("a config file must be UTF-8 text"),
                        "{message}"
                    );
                }
                other => panic!("expected an invalid-config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_secret_lists_the_configured_ones() {
        let c = parse(GOOD).unwrap();
        let err = c.plan("payments").unwrap_err().to_string();
        assert!(err.contains("no secret named \"payments\""), "{err}");
        assert!(err.contains("configured secrets: payments-api"), "{err}");
    }

    const PG: &str = r#"[journal]
path = "journal.db"

[providers.db]
kind = "postgres_role"
host = "db.example.com"
dbname = "app"
admin_user = "rekey_admin"
admin_password_env = "PG_ADMIN_PASSWORD"
mode = "alternating"
roles = ["app_blue", "app_green"]
value_format = "json"
tls_ca_file = "ca.pem"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[secrets.db]
rotator = "db"
stores = ["vault"]
verifiers = ["db"]
grace = "1d"
"#;

    #[test]
    fn a_postgres_role_gets_its_defaults_and_serves_as_rotator_and_verifier() {
        let c = parse(PG).unwrap();
        let ProviderConfig::PostgresRole {
            port,
            password_bytes,
            tls,
            tls_ca_file,
            verify_host,
            ..
        } = &c.providers["db"]
        else {
            panic!("{:?}", c.providers["db"]);
        };
        assert_eq!(*port, 5432);
        assert_eq!(*password_bytes, 24);
        assert_eq!(*tls, PostgresTls::VerifyFull);
        assert_eq!(tls_ca_file.as_deref(), Some(Path::new("/etc/rekey/ca.pem")));
        assert_eq!(*verify_host, None);
        let roles: Vec<Role> = c
            .plan("db")
            .unwrap()
            .targets
            .iter()
            .map(|t| t.role)
            .collect();
        assert_eq!(roles, [Role::Rotator, Role::Store, Role::Verifier]);
    }

    /// Each bad `postgres_role` is refused with its line and what to write instead.
    #[test]
    fn bad_postgres_roles_name_the_line_and_the_fix() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "tls_ca_file = \"ca.pem\"",
                "tls = \"disable\"",
                4,
                "tls = \"disable\" is allowed only for loopback addresses and Unix sockets",
            ),
            (
                "tls_ca_file = \"ca.pem\"",
                "tls_ca_file = \"ca.pem\"\nverify_host = \"10.0.0.9\"\ntls = \"disable\"",
                4,
                "allowed only for loopback",
            ),
            (
                "mode = \"alternating\"",
                "mode = \"single\"",
                4,
                "mode = \"single\" needs role = ",
            ),
            (
                "value_format = \"json\"",
                "value_format = \"password\"",
                4,
                "set value_format = \"json\"",
            ),
            (
                "value_format = \"json\"\n",
                "",
                4,
                "so the value must name it",
            ),
            (
                "roles = [\"app_blue\", \"app_green\"]",
                "roles = [\"app_blue\"]",
                4,
                "mode = \"alternating\" needs roles = [",
            ),
            (
                "roles = [\"app_blue\", \"app_green\"]",
                "roles = [\"app_blue\", \"app_blue\"]",
                4,
                "two different roles",
            ),
            (
                "tls_ca_file = \"ca.pem\"",
                "password_bytes = 8",
                4,
                "password_bytes = 8 must be 16 to 256",
            ),
            (
                "admin_password_env = \"PG_ADMIN_PASSWORD\"",
                "admin_password = \"hunter2\"",
                4,
                "unknown field `admin_password`",
            ),
            (
                "mode = \"alternating\"",
                "mode = \"dual\"",
                4,
                "unknown variant `dual`",
            ),
            (
                "roles = [\"app_blue\", \"app_green\"]",
                "roles = [\"app_blue\", \"a_name_longer_than_sixty_three_bytes_which_postgres_would_cut_off\"]",
                4,
                "must be 1 to 63 bytes",
            ),
            (
                "stores = [\"vault\"]",
                "stores = [\"db\"]",
                21,
                "provider \"db\" (kind postgres_role) cannot be a store; it can be: rotator, verifier",
            ),
        ];
        assert_each_invalid(PG, cases);
    }

    #[test]
    fn plain_postgres_connections_are_allowed_on_this_machine_only() {
        for host in ["127.0.0.1", "localhost", "::1", "/var/run/postgresql"] {
            let text = PG
                .replace("db.example.com", host)
                .replace("tls_ca_file = \"ca.pem\"", "tls = \"disable\"");
            assert!(parse(&text).is_ok(), "{host}");
        }
    }

    #[test]
    fn the_admin_password_comes_from_the_environment_only() {
        let text = PG.replace("tls_ca_file = \"ca.pem\"\n", "");
        let c = parse(&text).unwrap();
        let clock: std::sync::Arc<dyn rekey_journal::Clock> =
            std::sync::Arc::new(rekey_journal::SystemClock);
        match c.build_providers(clock.clone(), &|_| None) {
            Err(Error::MissingEnv { var, what, .. }) => {
                assert_eq!(var, "PG_ADMIN_PASSWORD");
                assert_eq!(what, "provider db");
            }
            other => panic!("expected a missing variable, got {other:?}"),
        }
        let env = |v: &str| (v == "PG_ADMIN_PASSWORD").then(|| "secret".to_owned());
        assert!(
            c.build_providers(clock, &env)
                .unwrap()
                .roles("db")
                .is_some()
        );
    }

    /// The word the drift tests write where a key or a kind is expected.
    const BOGUS: &str = "zz_not_a_key";

    /// A config (beside a valid `[journal]`) whose table `heading`, as written in [`KEYS`],
    /// holds the line `line`.
    fn config_with(heading: &str, line: &str) -> String {
        let heading = heading.replace("NAME", "n");
        if heading == "[journal]" {
            return format!("[journal]\n{line}\n");
        }
        let table = match heading.split_once("] ") {
            Some((table, kind)) if kind.starts_with("kind = ") => {
                format!("{table}]\n{kind}\n{line}\n")
            }
            // A list of inline tables, e.g. `windows = [{ days = [...], hours = "..." }]`.
            Some((table, list)) => format!("{table}]\n{list} = [{{ {line} }}]\n"),
            None => format!("{heading}\n{line}\n"),
        };
        format!("[journal]\npath = \"j.db\"\n{table}")
    }

    /// The names serde lists as expected when it refuses `BOGUS` as a `what` ("field" or
    /// "variant") in `text`: every key (or kind) the type accepts there.
    fn expected(text: &str, what: &str) -> BTreeSet<String> {
        let message = match parse(text) {
            Err(Error::Invalid { message, .. }) => message,
            other => panic!("{text}\nshould be refused, got {other:?}"),
        };
        let prefix = format!("unknown {what} `{BOGUS}`, ");
        let Some((_, rest)) = message.split_once(&prefix) else {
            panic!("{text}\nrefused with {message:?}, not with {prefix:?}");
        };
        if rest.starts_with("there are no") {
            return BTreeSet::new();
        }
        let list = rest
            .strip_prefix("expected ")
            .unwrap_or_else(|| panic!("{message:?}"));
        let list = list.strip_prefix("one of ").unwrap_or(list);
        list.split(", ")
            .flat_map(|part| part.split(" or "))
            .map(|name| name.trim().trim_matches('`').to_owned())
            .collect()
    }

    fn set(words: &[&str]) -> BTreeSet<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    /// `KEYS` and `KEY_WORDS` say exactly what the config types accept, in both directions:
    /// a key (or kind, or word) added to a type but not to the table fails here, and so
    /// does one in the table that the types refuse.
    #[test]
    fn the_key_table_is_exactly_what_the_config_accepts() {
        for (heading, keys) in KEYS {
            let accepted = expected(&config_with(heading, &format!("{BOGUS} = 1")), "field");
            assert_eq!(set(keys), accepted, "KEYS entry {heading}");
        }
        let top: BTreeSet<String> = KEYS
            .iter()
            .filter_map(|(heading, _)| heading[1..].split(['.', ']']).next())
            .map(str::to_owned)
            .collect();
        let accepted = expected(
            &format!("{BOGUS} = 1\n[journal]\npath = \"j.db\"\n"),
            "field",
        );
        assert_eq!(top, accepted, "the top-level tables of KEYS");
        for table in ["credentials", "providers"] {
            let prefix = format!("[{table}.NAME] kind = \"");
            let kinds: BTreeSet<String> = KEYS
                .iter()
                .filter_map(|(heading, _)| heading.strip_prefix(prefix.as_str()))
                .map(|kind| kind.trim_end_matches('"').to_owned())
                .collect();
            let text = format!("[journal]\npath = \"j.db\"\n[{table}.n]\nkind = \"{BOGUS}\"\n");
            assert_eq!(kinds, expected(&text, "variant"), "the kinds of [{table}]");
        }
        for (heading, key, words) in KEY_WORDS {
            assert!(
                KEYS.iter()
                    .any(|(h, keys)| h == heading && keys.contains(key)),
                "KEY_WORDS names {key} of {heading}, which KEYS does not list"
            );
            // A key taking one word, or a list of them.
            let one = config_with(heading, &format!("{key} = \"{BOGUS}\""));
            let list = config_with(heading, &format!("{key} = [\"{BOGUS}\"]"));
            let text = match parse(&one) {
                Err(Error::Invalid { message, .. }) if message.contains("a sequence") => list,
                _ => one,
            };
            assert_eq!(set(words), expected(&text, "variant"), "{key} of {heading}");
        }
    }

    /// The rows of the key table under `### <heading>` in `docs`, by key. Each row must have
    /// five non-empty cells: key, type, default, example, what it is for.
    fn key_rows(docs: &str, heading: &str) -> BTreeMap<String, String> {
        let title = format!("### {heading}");
        let start = docs
            .lines()
            .position(|l| l == title)
            .unwrap_or_else(|| panic!("docs/config.md has no heading `{title}`: add one"));
        let mut rows = BTreeMap::new();
        for line in docs
            .lines()
            .skip(start + 1)
            .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        {
            let Some((key, _)) = line.strip_prefix("| `").and_then(|r| r.split_once('`')) else {
                continue;
            };
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            assert!(
                cells.len() == 5 && cells.iter().all(|c| !c.trim().is_empty()),
                "docs/config.md, {heading}: the row of `{key}` needs five cells (key | type | default | example | what it is for): {line}"
            );
            assert!(
                rows.insert(key.to_owned(), line.to_owned()).is_none(),
                "docs/config.md, {heading}: `{key}` has two rows"
            );
        }
        rows
    }

    /// `docs/config.md` documents every key of every table (type, default, example and what
    /// it is for) under that table's heading, every word a key takes, and nothing else.
    #[test]
    fn docs_config_md_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
        let docs = std::fs::read_to_string(&path).unwrap();
        for (heading, keys) in KEYS {
            let rows = key_rows(&docs, heading);
            for key in *keys {
                assert!(
                    rows.contains_key(*key),
                    "docs/config.md: `{key}` of {heading} is not documented; add a row `| `{key}` | type | default | example | what it is for |` under `### {heading}`"
                );
            }
            for key in rows.keys() {
                assert!(
                    keys.contains(&key.as_str()),
                    "docs/config.md documents `{key}` under {heading}, but the config takes no such key there"
                );
            }
        }
        for (heading, key, words) in KEY_WORDS {
            let row = &key_rows(&docs, heading)[*key];
            for word in *words {
                assert!(
                    row.contains(&format!("`\"{word}\"`")),
                    "docs/config.md, {heading}: the row of `{key}` does not name `\"{word}\"`"
                );
            }
        }
    }
}
