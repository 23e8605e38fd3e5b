//! Turns a validated config into provider instances, and finds the provider for each
//! target a plan names by address ([`Resolver`]). Secrets named by the config (client
//! secrets, tokens) are read from the environment here, never from the file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rekey_journal::Clock;
use url::Url;

use super::{
    Config, CredentialConfig, Error, PostgresMode, PostgresTls, PostgresValueFormat,
    ProviderConfig, parse_duration_ms,
};
use crate::probe::Probe;
use crate::provider::{Cast, Roles, SecretValue, role_list};
use crate::providers::azure::appservice::{AppSetting, Mode, SiteLocks};
use crate::providers::azure::azure_cli::{AZ_TIMEOUT_MS_DEFAULT, AzureCli};
use crate::providers::azure::budget::{VaultBudgets, vault_key};
use crate::providers::azure::certificate::ClientCertificate;
use crate::providers::azure::chain::{Chain, Link, LinkState};
use crate::providers::azure::credential::{Credential, Source, TokenCache};
use crate::providers::azure::graph::AppPasswords;
use crate::providers::azure::http::{Authed, Http};
use crate::providers::azure::keyvault::KeyVaultStore;
use crate::providers::azure::oauth::OAuthToken;
use crate::providers::azure::storage::StorageKeys;
use crate::providers::local::{
    CommandVerifier, FileDependent, LocalVault, RandomRotator, VaultKey,
};
use crate::providers::postgres::{self, Endpoint, PostgresRole, Tls};
use crate::resolve::{Registry, Resolve, ResolveError};
use crate::roles;
use crate::saga::{Address, CommandDigest, TargetRef};

/// Where IMDS answers on Azure VMs (reached without credentials; it hands them out).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Token scope of Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Token scope of Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// How a resolver looks up environment variables, now and when it builds a provider later.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Why a provider could not be built for an address.
#[derive(Debug)]
enum BuildError {
    /// The environment variable `var` is not set.
    MissingEnv { var: String },
    /// The config defines no credential `credential`.
    MissingCredential { credential: String },
    /// The config has no command with this digest.
    UnknownCommand { digest: CommandDigest },
    /// Anything else: a bad URL, an unreadable key file.
    Invalid { why: String },
}

/// A provider as built: in every role its kind plays, and as the read-only [`Probe`] of
/// `policy check --online` (every kind is both).
struct Built {
    roles: Roles,
    probe: Arc<dyn Probe>,
}

/// What building a provider for an address needs beyond the address: the config's
/// credentials (built once, when the config is loaded), its Azure endpoints, and what the
/// providers of one vault or one site share.
struct Builder {
    http: Http,
    clock: Arc<dyn Clock>,
    endpoints: crate::providers::azure::Endpoints,
    credentials: BTreeMap<String, Arc<dyn Credential>>,
    site_locks: SiteLocks,
    budgets: VaultBudgets,
    /// The smallest request limit any configured store of a vault asks for, by vault.
    vault_limits: HashMap<String, u32>,
    /// Every command the config runs (verifiers, hooks), by digest: only these run.
    commands: HashMap<CommandDigest, Vec<String>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One token source per `[credentials]` entry, by name, fetching tokens with `http`.
    /// Secrets the entries name are read through `env` here.
    ///
    /// # Errors
    /// [`Error::MissingEnv`] for an unset variable, [`Error::Build`] for the rest.
    pub fn build_credentials(
        &self,
        http: &Http,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Arc<dyn Credential>>, Error> {
        let build_err = |what: String, why: String| Error::Build {
            path: self.path.clone(),
            what,
            why,
        };
        let secret_env = |what: &str, var: &str| self.secret_env(env, what, var);
        let url = |what: &str, v: &str| {
            Url::parse(v).map_err(|e| build_err(what.to_owned(), e.to_string()))
        };
        let mut credentials: BTreeMap<String, Arc<dyn Credential>> = BTreeMap::new();
        for (name, c) in &self.credentials {
            let what = format!("credential {name}");
            let source = match c {
                CredentialConfig::ClientSecret {
                    tenant,
                    client_id,
                    client_secret_env,
                } => Source::ClientSecret {
                    authority: self.azure.endpoints.authority.clone(),
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    secret: secret_env(&what, client_secret_env)?,
                },
                CredentialConfig::ClientCertificate {
                    tenant,
                    client_id,
                    certificate_file,
                } => Source::ClientCertificate {
                    authority: self.azure.endpoints.authority.clone(),
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    certificate: ClientCertificate::from_pem_file(certificate_file)
                        .map_err(|e| build_err(what.clone(), e.to_string()))?,
                },
                CredentialConfig::ManagedIdentity {
                    client_id,
                    endpoint,
                } => Source::Imds {
                    endpoint: url(&what, endpoint.as_deref().unwrap_or(IMDS_ENDPOINT))?,
                    client_id: client_id.clone(),
                },
                CredentialConfig::AppServiceIdentity { client_id } => {
                    let endpoint = env("IDENTITY_ENDPOINT").ok_or_else(|| Error::MissingEnv {
                        path: self.path.clone(),
                        what: what.clone(),
                        var: "IDENTITY_ENDPOINT".into(),
                    })?;
                    Source::AppService {
                        endpoint: url(&what, &endpoint)?,
                        header: secret_env(&what, "IDENTITY_HEADER")?,
                        client_id: client_id.clone(),
                    }
                }
                CredentialConfig::StaticToken { token_env } => Source::Static {
                    token: secret_env(&what, token_env)?,
                },
                CredentialConfig::AzureCli { tenant, timeout } => {
                    Source::AzureCli(azure_cli(env, tenant.clone(), timeout.as_deref()))
                }
                CredentialConfig::WorkloadIdentity {
                    tenant,
                    client_id,
                    token_file,
                } => {
                    let setting = |field: &Option<String>, var: &str| {
                        field
                            .clone()
                            .or_else(|| env(var).filter(|v| !v.is_empty()))
                            .ok_or_else(|| Error::MissingEnv {
                                path: self.path.clone(),
                                what: what.clone(),
                                var: var.to_owned(),
                            })
                    };
                    let file = token_file.as_ref().map(|f| f.display().to_string());
                    Source::WorkloadIdentity {
                        authority: self.authority_from(env)?,
                        tenant: setting(tenant, "AZURE_TENANT_ID")?,
                        client_id: setting(client_id, "AZURE_CLIENT_ID")?,
                        token_file: setting(&file, "AZURE_FEDERATED_TOKEN_FILE")?.into(),
                    }
                }
                CredentialConfig::Default {
                    tenant,
                    managed_identity_client_id,
                    managed_identity_endpoint,
                } => {
                    let links = self.default_chain(
                        http,
                        env,
                        tenant.clone(),
                        managed_identity_client_id.clone(),
                        managed_identity_endpoint.as_deref(),
                    )?;
                    credentials.insert(name.clone(), Arc::new(Chain::new(name.clone(), links)));
                    continue;
                }
            };
            credentials.insert(
                name.clone(),
                Arc::new(TokenCache::new(http.clone(), source)),
            );
        }
        Ok(credentials)
    }

    /// The secret in environment variable `var`, which `what` needs.
    fn secret_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        what: &str,
        var: &str,
    ) -> Result<SecretValue, Error> {
        env(var)
            .filter(|v| !v.is_empty())
            .map(SecretValue::new)
            .ok_or_else(|| Error::MissingEnv {
                path: self.path.clone(),
                what: what.to_owned(),
                var: var.to_owned(),
            })
    }

    /// The builder of this config's providers: its credentials built (environment
    /// variables read) and its vaults' request limits known.
    fn builder(
        &self,
        clock: Arc<dyn Clock>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Builder, Error> {
        let build_err = |what: String, why: String| Error::Build {
            path: self.path.clone(),
            what,
            why,
        };
        let http = Http::new(self.azure.timeout_ms, clock.clone())
            .map_err(|e| build_err("the HTTP client".into(), e.message))?;
        let credentials = self.build_credentials(&http, env)?;
        let mut vault_limits: HashMap<String, u32> = HashMap::new();
        for p in self.providers.values() {
            if let ProviderConfig::KeyVault {
                vault_url,
                requests_per_10s: Some(n),
                ..
            } = p
                && let Ok(vault) = Url::parse(vault_url)
            {
                vault_limits
                    .entry(vault_key(&vault))
                    .and_modify(|m| *m = (*m).min(*n))
                    .or_insert(*n);
            }
        }
        let commands = self
            .providers
            .values()
            .filter_map(|p| match p {
                ProviderConfig::Command { command } => Some(command),
                ProviderConfig::EnvFile { after_write, .. }
                | ProviderConfig::File { after_write, .. } => after_write.as_ref(),
                _ => None,
            })
            .map(|command| (CommandDigest::of(command), command.clone()))
            .collect();
        Ok(Builder {
            http,
            commands,
            clock,
            endpoints: self.azure.endpoints.clone(),
            credentials,
            site_locks: SiteLocks::default(),
            // One request budget per vault, at the smallest limit any of its stores asks for.
            budgets: VaultBudgets::default(),
            vault_limits,
        })
    }

    /// One provider instance per configured provider, by name, in every role its kind
    /// plays. `env` looks up environment variables (injected so tests need not touch the
    /// process environment).
    ///
    /// # Errors
    /// [`Error::MissingEnv`] for an unset variable, [`Error::Build`] for the rest.
    pub fn build_providers(
        &self,
        clock: Arc<dyn Clock>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Registry, Error> {
        let builder = self.builder(clock, env)?;
        let mut out = Registry::new();
        for (name, built) in self.build_configured(&builder, env)? {
            out = out.with_roles(name, built.roles);
        }
        Ok(out)
    }

    /// One read-only probe per configured provider, by name (`policy check --online`),
    /// built exactly as [`Config::build_providers`] builds the providers, from the same
    /// settings and environment variables.
    ///
    /// # Errors
    /// As [`Config::build_providers`].
    pub fn build_probes(
        &self,
        clock: Arc<dyn Clock>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HashMap<String, Arc<dyn Probe>>, Error> {
        let builder = self.builder(clock, env)?;
        Ok(self
            .build_configured(&builder, env)?
            .into_iter()
            .map(|(name, built)| (name, built.probe))
            .collect())
    }

    /// Builds every configured provider, by name, with its address (item left empty).
    fn build_configured(
        &self,
        builder: &Builder,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, Built)>, Error> {
        let mut out = Vec::new();
        for (name, p) in &self.providers {
            let what = format!("provider {name}");
            let built = builder
                .build(&address_of(p, ""), env)
                .map_err(|e| match e {
                    BuildError::MissingEnv { var } => Error::MissingEnv {
                        path: self.path.clone(),
                        what,
                        var,
                    },
                    BuildError::MissingCredential { credential } => Error::Build {
                        path: self.path.clone(),
                        what,
                        why: format!("no credential {credential:?} is defined"),
                    },
                    BuildError::UnknownCommand { digest } => Error::Build {
                        path: self.path.clone(),
                        what,
                        why: format!("no command with digest {}", digest.short()),
                    },
                    BuildError::Invalid { why } => Error::Build {
                        path: self.path.clone(),
                        what,
                        why,
                    },
                })?;
            out.push((name.clone(), built));
        }
        Ok(out)
    }

    /// The resolver rotations find their providers with: every configured provider built
    /// now (so bad input is found before the journal is opened), and providers for the
    /// addresses a journal names built when a rotation first needs them. `env` looks up
    /// environment variables, then and later.
    ///
    /// # Errors
    /// [`Error::MissingEnv`] for an unset variable, [`Error::Build`] for the rest.
    pub fn resolver(&self, clock: Arc<dyn Clock>, env: Env) -> Result<Resolver, Error> {
        let builder = self.builder(clock, &*env)?;
        let mut by_name = Registry::new();
        let mut by_address = HashMap::new();
        for (name, built) in self.build_configured(&builder, &*env)? {
            let key = address_of(&self.providers[&name], "").provider_key();
            by_address.insert(key, built.roles.clone());
            by_name = by_name.with_roles(name, built.roles);
        }
        Ok(Resolver {
            config: self.path.clone(),
            builder,
            env,
            by_name,
            by_address: Mutex::new(by_address),
        })
    }
}

/// Finds the provider for a target: by its address, building (once) a provider for an
/// address the config no longer names; or, for a target journaled before targets carried
/// addresses, by its provider's name in the config.
pub struct Resolver {
    config: PathBuf,
    builder: Builder,
    env: Env,
    by_name: Registry,
    /// Providers by [`Address::provider_key`]: every secret of one vault shares one.
    by_address: Mutex<HashMap<String, Roles>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Makes every App Service setting this resolver builds (or built) hold the journal
    /// lease of its site around each write, from `leases`, so rekey processes sharing the
    /// journal never overwrite each other's settings. Call it once the journal is open.
    pub fn share_site_leases(
        &self,
        leases: Arc<dyn crate::providers::azure::appservice::SiteLeases>,
    ) {
        self.builder.site_locks.share_leases(leases);
    }

    /// The provider for `address`, built and kept the first time it is asked for.
    fn provider(&self, target: &TargetRef, address: &Address) -> Result<Roles, ResolveError> {
        let key = address.provider_key();
        let mut built = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(roles) = built.get(&key) {
            return Ok(roles.clone());
        }
        let what = format!("{:?} ({address})", target.name);
        let roles = self
            .builder
            .build(address, &*self.env)
            .map(|built| built.roles)
            .map_err(|e| match e {
                BuildError::MissingCredential { credential } => ResolveError::MissingCredential {
                    target: what.clone(),
                    credential,
                    config: self.config.display().to_string(),
                },
                BuildError::MissingEnv { var } => ResolveError::Build {
                    target: what.clone(),
                    why: format!(
                        "needs the environment variable {var}, which is not set; export it, then resume"
                    ),
                },
                BuildError::UnknownCommand { digest } => ResolveError::Build {
                    target: what.clone(),
                    why: format!(
                        "runs a command (sha256 {}…) that {} no longer has; put the command back as it was when the rotation started, then resume",
                        digest.short(),
                        self.config.display()
                    ),
                },
                BuildError::Invalid { why } => ResolveError::Build {
                    target: what.clone(),
                    why,
                },
            })?;
        built.insert(key, roles.clone());
        Ok(roles)
    }
}

impl Resolve for Resolver {
    fn resolve(&self, target: &TargetRef) -> Result<Cast, ResolveError> {
        let Some(address) = &target.address else {
            // Journaled before targets carried addresses: the name, through the config.
            return self.by_name.resolve(target);
        };
        let roles = self.provider(target, address)?;
        roles
            .cast(target.role)
            .ok_or_else(|| ResolveError::Miscast {
                what: format!("target {:?} ({address})", target.name),
                role: target.role,
                can: role_list(&roles.roles()),
            })
    }
}

impl Builder {
    /// The credential `name`, for an address that names it.
    fn credential(&self, name: &str) -> Result<Arc<dyn Credential>, BuildError> {
        self.credentials
            .get(name)
            .cloned()
            .ok_or_else(|| BuildError::MissingCredential {
                credential: name.to_owned(),
            })
    }

    /// The configured command with `digest`: the journal names a command, the config
    /// says what it is.
    fn command(&self, digest: &CommandDigest) -> Result<Vec<String>, BuildError> {
        self.commands
            .get(digest)
            .cloned()
            .ok_or_else(|| BuildError::UnknownCommand {
                digest: digest.clone(),
            })
    }

    fn authed(&self, credential: &str, scope: &str) -> Result<Authed, BuildError> {
        Ok(Authed {
            http: self.http.clone(),
            credential: self.credential(credential)?,
            scope: scope.to_owned(),
        })
    }

    /// The provider at `address`, in every role its kind plays.
    fn build(
        &self,
        address: &Address,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Built, BuildError> {
        // The provider's roles are found here, where its type is known.
        macro_rules! built {
            ($provider:expr $(,)?) => {{
                let provider = Arc::new($provider);
                Built {
                    roles: roles!(provider.clone()),
                    probe: provider,
                }
            }};
        }
        let secret_env = |var: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(SecretValue::new)
                .ok_or_else(|| BuildError::MissingEnv {
                    var: var.to_owned(),
                })
        };
        let invalid = |why: String| BuildError::Invalid { why };
        let url = |v: &str| Url::parse(v).map_err(|e| invalid(format!("{v:?}: {e}")));
        let endpoints = &self.endpoints;
        Ok(match address {
            Address::Random { bytes } => built!(RandomRotator { bytes: *bytes }),
            Address::LocalVault {
                path,
                secret: _,
                key_file,
                key_env,
                follow_symlinks,
            } => {
                let key = match (key_file, key_env) {
                    (Some(file), _) => Some(super::files::read_key_file(file).map_err(invalid)?),
                    (None, Some(var)) => {
                        let hex = secret_env(var)?;
                        Some(
                            VaultKey::from_hex(hex.expose())
                                .map_err(|why| invalid(format!("{var}: {why}")))?,
                        )
                    }
                    (None, None) => None,
                };
                built!(
                    match key {
                        Some(key) => LocalVault::sealed(path, key),
                        None => LocalVault::new(path),
                    }
                    .with_follow_symlinks(*follow_symlinks),
                )
            }
            Address::EnvFile {
                path,
                key,
                after_write,
                follow_symlinks,
            } => {
                let file =
                    FileDependent::new(path, key.clone()).with_follow_symlinks(*follow_symlinks);
                built!(match after_write {
                    Some(c) => file.with_after_write(self.command(c)?),
                    None => file,
                })
            }
            Address::File {
                path,
                after_write,
                follow_symlinks,
            } => {
                let file = FileDependent::raw(path).with_follow_symlinks(*follow_symlinks);
                built!(match after_write {
                    Some(c) => file.with_after_write(self.command(c)?),
                    None => file,
                })
            }
            Address::Command { command } => built!(CommandVerifier {
                command: self.command(command)?,
            }),
            Address::KeyVault {
                vault_url,
                secret: _,
                credential,
                content_type,
                verify_challenge_resource,
                // Per item: the store reads them from each step's address.
                tags: _,
                credential_tags: _,
                keep_metadata: _,
            } => {
                let vault = url(vault_url)?;
                let limit = self.vault_limits.get(&vault_key(&vault)).copied();
                let mut kv = KeyVaultStore::new(
                    self.http.clone(),
                    self.credential(credential)?,
                    vault.clone(),
                )
                .with_budget(self.budgets.budget_with_limit(&vault, limit));
                if !verify_challenge_resource {
                    kv = kv.without_challenge_verification();
                }
                if let Some(ct) = content_type {
                    kv = kv.with_content_type(ct.clone());
                }
                built!(kv)
            }
            Address::AppSetting {
                credential,
                subscription,
                resource_group,
                site,
                slot,
                setting,
                key_vault_reference,
            } => built!(AppSetting {
                api: self.authed(credential, ARM_SCOPE)?,
                arm: endpoints.arm.clone(),
                subscription: subscription.clone(),
                resource_group: resource_group.clone(),
                site: site.clone(),
                slot: slot.clone(),
                setting: setting.clone(),
                mode: key_vault_reference
                    .clone()
                    .map_or(Mode::Literal, Mode::Reference),
                lock: self
                    .site_locks
                    .lock(subscription, resource_group, site, slot.as_deref()),
            }),
            Address::EntraPassword {
                credential,
                tenant,
                object_id,
                app_id,
                validity_days,
                verify_scope,
                propagation,
                retire,
            } => built!(AppPasswords {
                api: self.authed(credential, GRAPH_SCOPE)?,
                graph: endpoints.graph.clone(),
                object_id: object_id.clone(),
                app_id: app_id.clone(),
                tenant: tenant.clone(),
                authority: endpoints.authority.clone(),
                validity_days: *validity_days,
                verify_scope: verify_scope.clone(),
                propagation_ms_max: parse_duration_ms(propagation).map_err(invalid)? as u64,
                retire: retire.clone(),
            }),
            Address::StorageKeys {
                credential,
                subscription,
                resource_group,
                account,
                kerberos,
            } => built!(StorageKeys {
                api: self.authed(credential, ARM_SCOPE)?,
                arm: endpoints.arm.clone(),
                subscription: subscription.clone(),
                resource_group: resource_group.clone(),
                account: account.clone(),
                kerberos: *kerberos,
            }),
            Address::OauthToken {
                token_url,
                client_id,
                client_secret_env,
                scope,
            } => built!(OAuthToken {
                http: self.http.clone(),
                token_url: url(token_url)?,
                client_id: client_id.clone(),
                client_secret: secret_env(client_secret_env)?,
                scope: scope.clone(),
            }),
            Address::PostgresRole {
                host,
                port,
                dbname,
                admin_user,
                admin_password_env,
                mode,
                roles,
                password_bytes,
                value_format,
                verify_host,
                verify_port,
                tls,
                tls_ca_file,
            } => {
                let mode = match (mode, roles.as_slice()) {
                    (PostgresMode::Single, [role]) => postgres::Mode::Single { role: role.clone() },
                    (PostgresMode::Alternating, [a, b]) => postgres::Mode::Alternating {
                        roles: [a.clone(), b.clone()],
                    },
                    // `Config::parse` refuses these.
                    _ => return Err(invalid("roles do not fit the mode".into())),
                };
                let tls = match tls {
                    PostgresTls::Disable => Tls::Disable,
                    PostgresTls::VerifyFull => {
                        crate::providers::postgres::tls_verify_full(tls_ca_file.as_deref())
                            .map_err(invalid)?
                    }
                };
                built!(PostgresRole {
                    admin: Endpoint {
                        host: host.clone(),
                        port: *port,
                    },
                    verify: Endpoint {
                        host: verify_host.clone(),
                        port: *verify_port,
                    },
                    dbname: dbname.clone(),
                    admin_user: admin_user.clone(),
                    admin_password: secret_env(admin_password_env)?,
                    admin_password_env: admin_password_env.clone(),
                    mode,
                    password_bytes: *password_bytes,
                    value_format: match value_format {
                        PostgresValueFormat::Json => postgres::ValueFormat::Json,
                        PostgresValueFormat::Password => postgres::ValueFormat::Password,
                    },
                    tls,
                    clock: self.clock.clone(),
                    verify_attempts: postgres::VERIFY_ATTEMPTS,
                    verify_backoff_ms: postgres::VERIFY_BACKOFF_MS,
                })
            }
        })
    }
}

/// The address of the configured provider `p`, holding `secret` when it is a vault.
pub fn address_of(p: &ProviderConfig, secret: &str) -> Address {
    match p.clone() {
        ProviderConfig::Random { bytes } => Address::Random { bytes },
        ProviderConfig::LocalVault {
            path,
            key_file,
            key_env,
            follow_symlinks,
        } => Address::LocalVault {
            path,
            secret: secret.to_owned(),
            key_file,
            key_env,
            follow_symlinks,
        },
        ProviderConfig::EnvFile {
            path,
            key,
            after_write,
            follow_symlinks,
        } => Address::EnvFile {
            path,
            key,
            after_write: after_write.as_deref().map(CommandDigest::of),
            follow_symlinks,
        },
        ProviderConfig::File {
            path,
            after_write,
            follow_symlinks,
        } => Address::File {
            path,
            after_write: after_write.as_deref().map(CommandDigest::of),
            follow_symlinks,
        },
        ProviderConfig::Command { command } => Address::Command {
            command: CommandDigest::of(&command),
        },
        ProviderConfig::KeyVault {
            vault_url,
            credential,
            content_type,
            verify_challenge_resource,
            // A pace for this process, and the name events give the vault: the current
            // config's, not properties of the target.
            requests_per_10s: _,
            vault_name: _,
        } => Address::KeyVault {
            vault_url,
            secret: secret.to_owned(),
            credential,
            content_type,
            verify_challenge_resource,
            tags: std::collections::BTreeMap::new(),
            credential_tags: Vec::new(),
            keep_metadata: false,
        },
        ProviderConfig::AppSetting {
            credential,
            subscription,
            resource_group,
            site,
            slot,
            setting,
            key_vault_reference,
        } => Address::AppSetting {
            credential,
            subscription,
            resource_group,
            site,
            slot,
            setting,
            key_vault_reference,
        },
        ProviderConfig::EntraPassword {
            credential,
            tenant,
            object_id,
            app_id,
            validity_days,
            verify_scope,
            propagation,
        } => Address::EntraPassword {
            credential,
            tenant,
            object_id,
            app_id,
            validity_days,
            verify_scope,
            propagation,
            retire: None,
        },
        ProviderConfig::StorageKeys {
            credential,
            subscription,
            resource_group,
            account,
            kerberos,
        } => Address::StorageKeys {
            credential,
            subscription,
            resource_group,
            account,
            kerberos,
        },
        ProviderConfig::OauthToken {
            token_url,
            client_id,
            client_secret_env,
            scope,
        } => Address::OauthToken {
            token_url,
            client_id,
            client_secret_env,
            scope,
        },
        ProviderConfig::PostgresRole {
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
        } => Address::PostgresRole {
            verify_host: verify_host.unwrap_or_else(|| host.clone()),
            verify_port: verify_port.unwrap_or(port),
            host,
            port,
            dbname,
            admin_user,
            admin_password_env,
            mode,
            roles: role
                .into_iter()
                .chain(roles.into_iter().flatten())
                .collect(),
            password_bytes,
            value_format: value_format.unwrap_or(PostgresValueFormat::Password),
            tls,
            tls_ca_file,
        },
    }
}

/// The Azure CLI found on the `PATH` that `env` gives (so tests can put a fake one there).
fn azure_cli(
    env: &dyn Fn(&str) -> Option<String>,
    tenant: Option<String>,
    timeout: Option<&str>,
) -> AzureCli {
    // Not found: the first candidate, so the error names where it was looked for.
    let candidates: Vec<std::path::PathBuf> = env("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("az"))
                .collect()
        })
        .unwrap_or_default();
    let program = candidates
        .iter()
        .find(|candidate| candidate.is_file())
        .or(candidates.first())
        .cloned()
        .unwrap_or_else(|| "az".into());
    let timeout_ms = timeout
        .and_then(|t| parse_duration_ms(t).ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(AZ_TIMEOUT_MS_DEFAULT);
    AzureCli {
        program,
        tenant,
        timeout_ms,
    }
}

impl Config {
    /// The authority: `AZURE_AUTHORITY_HOST` when set (workload identity sets it), else
    /// the configured or public one.
    fn authority_from(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Url, Error> {
        match env("AZURE_AUTHORITY_HOST").filter(|v| !v.is_empty()) {
            None => Ok(self.azure.endpoints.authority.clone()),
            Some(host) => Url::parse(&host).map_err(|e| Error::Build {
                path: self.path.clone(),
                what: "AZURE_AUTHORITY_HOST".into(),
                why: format!("{host:?} is not a URL ({e})"),
            }),
        }
    }

    /// The `default` chain's links, each ready or saying which settings it lacks.
    fn default_chain(
        &self,
        http: &Http,
        env: &dyn Fn(&str) -> Option<String>,
        tenant: Option<String>,
        mi_client_id: Option<String>,
        mi_endpoint: Option<&str>,
    ) -> Result<Vec<Link>, Error> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let ready = |source: Source, probe: Option<Url>| LinkState::Ready {
            cache: Box::new(TokenCache::new(http.clone(), source)),
            probe,
        };
        let missing = |names: &[&str]| {
            let unset: Vec<&str> = names.iter().copied().filter(|n| var(n).is_none()).collect();
            LinkState::Unavailable(format!("{} not set", unset.join(", ")))
        };
        let authority = self.authority_from(env)?;
        let environment = match (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_CLIENT_SECRET"),
        ) {
            (Some(tenant), Some(client_id), Some(secret)) => ready(
                Source::ClientSecret {
                    authority: authority.clone(),
                    tenant,
                    client_id,
                    secret: SecretValue::new(secret),
                },
                None,
            ),
            _ => missing(&["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]),
        };
        let workload = match (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_FEDERATED_TOKEN_FILE"),
        ) {
            (Some(tenant), Some(client_id), Some(file)) => ready(
                Source::WorkloadIdentity {
                    authority,
                    tenant,
                    client_id,
                    token_file: file.into(),
                },
                None,
            ),
            _ => missing(&[
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
            ]),
        };
        let parse = |v: &str| {
            Url::parse(v).map_err(|e| Error::Build {
                path: self.path.clone(),
                what: "the managed identity endpoint".into(),
                why: format!("{v:?} is not a URL ({e})"),
            })
        };
        let managed = match (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => ready(
                Source::AppService {
                    endpoint: parse(&endpoint)?,
                    header: SecretValue::new(header),
                    client_id: mi_client_id,
                },
                None,
            ),
            _ => {
                let endpoint = parse(mi_endpoint.unwrap_or(IMDS_ENDPOINT))?;
                ready(
                    Source::Imds {
                        endpoint: endpoint.clone(),
                        client_id: mi_client_id,
                    },
                    Some(endpoint),
                )
            }
        };
        let cli = ready(Source::AzureCli(azure_cli(env, tenant, None)), None);
        Ok(vec![
            Link {
                label: "environment",
                state: environment,
            },
            Link {
                label: "workload identity",
                state: workload,
            },
            Link {
                label: "managed identity",
                state: managed,
            },
            Link {
                label: "Azure CLI",
                state: cli,
            },
        ])
    }
}
