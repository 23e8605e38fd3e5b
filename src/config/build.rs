//! Turns a validated config into provider instances. Secrets named by the config (client
//! secrets, tokens) are read from the environment here, never from the file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rekey_journal::Clock;
use url::Url;

use super::{
    Config, CredentialConfig, Error, PostgresMode, PostgresTls, PostgresValueFormat,
    ProviderConfig, parse_duration_ms,
};
use crate::probe::Probe;
use crate::provider::{Roles, SecretValue};
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
use crate::resolve::Registry;
use crate::roles;

/// Where IMDS answers on Azure VMs (reached without credentials; it hands them out).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Token scope of Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Token scope of Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

impl Config {
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
        let built: HashMap<String, Roles> = self.build(clock, env)?;
        Ok(built
            .into_iter()
            .fold(Registry::new(), |out, (name, roles)| {
                out.with_roles(name, roles)
            }))
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
        self.build(clock, env)
    }

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

    /// Each configured provider, built as `B`.
    fn build<B: Built>(
        &self,
        clock: Arc<dyn Clock>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HashMap<String, B>, Error> {
        let build_err = |what: String, why: String| Error::Build {
            path: self.path.clone(),
            what,
            why,
        };
        let http = Http::new(self.azure.timeout_ms, clock.clone())
            .map_err(|e| build_err("the HTTP client".into(), e.message))?;
        let secret_env = |what: &str, var: &str| self.secret_env(env, what, var);
        let url = |what: &str, v: &str| {
            Url::parse(v).map_err(|e| build_err(what.to_owned(), e.to_string()))
        };

        let credentials = self.build_credentials(&http, env)?;
        let authed = |credential: &str, scope: &str| Authed {
            http: http.clone(),
            credential: credentials[credential].clone(),
            scope: scope.to_owned(),
        };
        let endpoints = &self.azure.endpoints;

        let site_locks = SiteLocks::default();
        // One request budget per vault, at the smallest limit any of its stores asks for.
        let budgets = VaultBudgets::default();
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
        // A provider, as `B` (its roles or its probe): the roles are found here, where the
        // provider's type is known.
        macro_rules! built {
            ($provider:expr $(,)?) => {{
                let provider = Arc::new($provider);
                B::built(roles!(provider.clone()), provider)
            }};
        }
        let mut out: HashMap<String, B> = HashMap::new();
        for (name, p) in &self.providers {
            let what = format!("provider {name}");
            let provider = match p {
                ProviderConfig::Random { bytes } => built!(RandomRotator { bytes: *bytes }),
                ProviderConfig::LocalVault {
                    path,
                    key_file,
                    key_env,
                    follow_symlinks,
                } => {
                    let key =
                        match (key_file, key_env) {
                            (Some(file), _) => Some(
                                super::files::read_key_file(file)
                                    .map_err(|why| build_err(what.clone(), why))?,
                            ),
                            (None, Some(var)) => {
                                let hex = secret_env(&what, var)?;
                                Some(VaultKey::from_hex(hex.expose()).map_err(|why| {
                                    build_err(what.clone(), format!("{var}: {why}"))
                                })?)
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
                ProviderConfig::EnvFile {
                    path,
                    key,
                    after_write,
                    follow_symlinks,
                } => {
                    let file = FileDependent::new(path, key.clone())
                        .with_follow_symlinks(*follow_symlinks);
                    built!(match after_write {
                        Some(c) => file.with_after_write(c.clone()),
                        None => file,
                    })
                }
                ProviderConfig::File {
                    path,
                    after_write,
                    follow_symlinks,
                } => {
                    let file = FileDependent::raw(path).with_follow_symlinks(*follow_symlinks);
                    built!(match after_write {
                        Some(c) => file.with_after_write(c.clone()),
                        None => file,
                    })
                }
                ProviderConfig::Command { command } => built!(CommandVerifier {
                    command: command.clone(),
                }),
                ProviderConfig::KeyVault {
                    vault_url,
                    credential,
                    content_type,
                    verify_challenge_resource,
                    ..
                } => {
                    let vault = url(&what, vault_url)?;
                    let limit = vault_limits.get(&vault_key(&vault)).copied();
                    let mut kv = KeyVaultStore::new(
                        http.clone(),
                        credentials[credential.as_str()].clone(),
                        vault.clone(),
                    )
                    .with_budget(budgets.budget_with_limit(&vault, limit));
                    if !verify_challenge_resource {
                        kv = kv.without_challenge_verification();
                    }
                    if let Some(ct) = content_type {
                        kv = kv.with_content_type(ct.clone());
                    }
                    built!(kv)
                }
                ProviderConfig::AppSetting {
                    credential,
                    subscription,
                    resource_group,
                    site,
                    slot,
                    setting,
                    key_vault_reference,
                } => built!(AppSetting {
                    api: authed(credential, ARM_SCOPE),
                    arm: endpoints.arm.clone(),
                    subscription: subscription.clone(),
                    resource_group: resource_group.clone(),
                    site: site.clone(),
                    slot: slot.clone(),
                    setting: setting.clone(),
                    mode: key_vault_reference
                        .clone()
                        .map_or(Mode::Literal, Mode::Reference),
                    lock: site_locks.lock(subscription, resource_group, site, slot.as_deref()),
                }),
                ProviderConfig::EntraPassword {
                    credential,
                    tenant,
                    object_id,
                    app_id,
                    validity_days,
                    verify_scope,
                    propagation,
                } => built!(AppPasswords {
                    api: authed(credential, GRAPH_SCOPE),
                    graph: endpoints.graph.clone(),
                    object_id: object_id.clone(),
                    app_id: app_id.clone(),
                    tenant: tenant.clone(),
                    authority: endpoints.authority.clone(),
                    validity_days: *validity_days,
                    verify_scope: verify_scope.clone(),
                    propagation_ms_max: parse_duration_ms(propagation)
                        .map_err(|why| build_err(what.clone(), why))?
                        as u64,
                }),
                ProviderConfig::StorageKeys {
                    credential,
                    subscription,
                    resource_group,
                    account,
                    kerberos,
                } => built!(StorageKeys {
                    api: authed(credential, ARM_SCOPE),
                    arm: endpoints.arm.clone(),
                    subscription: subscription.clone(),
                    resource_group: resource_group.clone(),
                    account: account.clone(),
                    kerberos: *kerberos,
                }),
                ProviderConfig::OauthToken {
                    token_url,
                    client_id,
                    client_secret_env,
                    scope,
                } => built!(OAuthToken {
                    http: http.clone(),
                    token_url: url(&what, token_url)?,
                    client_id: client_id.clone(),
                    client_secret: secret_env(&what, client_secret_env)?,
                    scope: scope.clone(),
                }),
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
                } => {
                    let mode = match (mode, role, roles.as_deref()) {
                        (PostgresMode::Single, Some(role), _) => {
                            postgres::Mode::Single { role: role.clone() }
                        }
                        (PostgresMode::Alternating, _, Some([a, b])) => {
                            postgres::Mode::Alternating {
                                roles: [a.clone(), b.clone()],
                            }
                        }
                        // `Config::parse` refuses these.
                        _ => return Err(build_err(what, "roles do not fit the mode".into())),
                    };
                    let tls = match tls {
                        PostgresTls::Disable => Tls::Disable,
                        PostgresTls::VerifyFull => Tls::verify_full(tls_ca_file.as_deref())
                            .map_err(|why| build_err(what.clone(), why))?,
                    };
                    let admin = Endpoint {
                        host: host.clone(),
                        port: *port,
                    };
                    built!(PostgresRole {
                        verify: Endpoint {
                            host: verify_host.clone().unwrap_or_else(|| host.clone()),
                            port: verify_port.unwrap_or(*port),
                        },
                        admin,
                        dbname: dbname.clone(),
                        admin_user: admin_user.clone(),
                        admin_password: secret_env(&what, admin_password_env)?,
                        admin_password_env: admin_password_env.clone(),
                        mode,
                        password_bytes: *password_bytes,
                        value_format: match value_format {
                            Some(PostgresValueFormat::Json) => postgres::ValueFormat::Json,
                            Some(PostgresValueFormat::Password) | None => {
                                postgres::ValueFormat::Password
                            }
                        },
                        tls,
                        clock: clock.clone(),
                        verify_attempts: postgres::VERIFY_ATTEMPTS,
                        verify_backoff_ms: postgres::VERIFY_BACKOFF_MS,
                    })
                }
            };
            out.insert(name.clone(), provider);
        }
        Ok(out)
    }
}
/// What a configured provider is built into: its [`Roles`] for the runner, or the
/// [`Probe`] of `policy check --online`. Every provider kind is both.
trait Built: Sized {
    fn built<P: Probe + 'static>(roles: Roles, provider: Arc<P>) -> Self;
}

impl Built for Roles {
    fn built<P: Probe + 'static>(roles: Roles, _: Arc<P>) -> Self {
        roles
    }
}

impl Built for Arc<dyn Probe> {
    fn built<P: Probe + 'static>(_: Roles, provider: Arc<P>) -> Self {
        provider
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
