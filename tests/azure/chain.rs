//! The credentials people use on their own machines and on AKS: the Azure CLI (a fake `az`
//! program that records how it was run), workload identity federation (a projected token
//! file that the kubelet rotates), and the `default` chain's order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rekey::config::Config;
use rekey::providers::azure::azure_cli::AzureCli;
use rekey::providers::azure::credential::{Credential, Source, TokenCache};
use rekey::providers::azure::keyvault::KeyVaultStore;
use rekey::saga::{Action, ErrorClass};

use super::{CLIENT_ID, CLIENT_SECRET, Env, KV_SCOPE, Perform, Step, T0_MS, VAULT, url};
use crate::fake_azure::{FakeAzure, Service};

const KV_RESOURCE: &str = "https://vault.azure.net";
const ISSUER: &str = "https://oidc.aks.example/issuer";
const SUBJECT: &str = "system:serviceaccount:rekey:rekey";

/// Writes an executable `az` into `dir/bin` that appends its arguments (one per line) to
/// `dir/az.log` and then runs `body`.
fn fake_az(dir: &Path, body: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let az = bin.join("az");
    let log = dir.join("az.log");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\necho --- >> '{}'\n{body}\n",
        log.display(),
        log.display()
    );
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    az
}

fn az_runs(dir: &Path) -> Vec<Vec<String>> {
    let log = std::fs::read_to_string(dir.join("az.log")).unwrap_or_default();
    log.split("---\n")
        .filter(|run| !run.is_empty())
        .map(|run| run.lines().map(str::to_owned).collect())
        .collect()
}

fn vault_with(env: &Env, credential: Arc<dyn Credential>) -> KeyVaultStore {
    KeyVaultStore::new(
        env.http.clone(),
        credential,
        url(&env.fake.keyvault_url(VAULT)),
    )
    .without_challenge_verification()
}

async fn capture(kv: &KeyVaultStore) -> Result<(), rekey::provider::ProviderError> {
    kv.apply(&Step::new("cli-secret", Action::Capture).call())
        .await
        .map(drop)
}

fn cli(az: PathBuf, tenant: Option<&str>, timeout_ms: u64) -> Source {
    Source::AzureCli(AzureCli {
        program: az,
        tenant: tenant.map(str::to_owned),
        timeout_ms,
    })
}

/// A signed-in CLI's token opens the vault; `az` is asked once per resource (cached),
/// with the tenant, as a program with its own arguments.
#[tokio::test]
async fn the_azure_cli_credential_uses_the_signed_in_cli() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, "cli-secret", "v");
    let tmp = tempfile::tempdir().unwrap();
    let token = env.fake.mint_token(KV_RESOURCE);
    let expires = T0_MS / 1000 + 3600;
    let az = fake_az(
        tmp.path(),
        &format!(
            r#"printf '{{"accessToken":"{token}","expires_on":{expires},"tokenType":"Bearer"}}'"#
        ),
    );
    let credential = TokenCache::new(env.http.clone(), cli(az, Some(FakeAzure::TENANT), 5_000));
    let kv = vault_with(&env, Arc::new(credential));
    capture(&kv).await.expect("the CLI's token opens the vault");
    capture(&kv).await.unwrap();
    let runs = az_runs(tmp.path());
    assert_eq!(runs.len(), 1, "the token was not cached: {runs:?}");
    let want = [
        "account",
        "get-access-token",
        "--output",
        "json",
        "--resource",
        KV_RESOURCE,
        "--tenant",
        FakeAzure::TENANT,
    ];
    assert_eq!(runs[0], want);
}

/// Not signed in, signed in to another tenant, and a CLI that hangs: each a clear error
/// that says what to run, and no token.
#[tokio::test]
async fn azure_cli_failures_say_what_to_do() {
    let env = Env::start().await;
    let cases = [
        (
            "echo \"ERROR: Please run 'az login' to setup account.\" >&2; exit 1",
            "run `az login`",
            ErrorClass::Permanent,
        ),
        (
            "echo \"ERROR: AADSTS90002: Tenant 'other' not found.\" >&2; exit 1",
            "run `az login --tenant other`",
            ErrorClass::Permanent,
        ),
        (
            "sleep 5",
            "did not answer within 300 ms",
            ErrorClass::Transient,
        ),
    ];
    for (body, says, class) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let az = fake_az(tmp.path(), body);
        let credential = TokenCache::new(env.http.clone(), cli(az, Some("other"), 300));
        let err = credential.token(KV_SCOPE).await.unwrap_err();
        assert!(err.message.contains(says), "{body}: {}", err.message);
        assert_eq!(err.class, class, "{body}");
    }
    let missing = TokenCache::new(env.http.clone(), cli("/nonexistent/az".into(), None, 300));
    let err = missing.token(KV_SCOPE).await.unwrap_err();
    assert!(
        err.message.contains("install the Azure CLI"),
        "{}",
        err.message
    );
}

/// An unsigned federated token, as a projected service-account token looks to rekey.
fn federated_token(subject: &str, exp_s: i64) -> String {
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        part(serde_json::json!({"alg": "RS256", "kid": "k1"})),
        part(serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": "api://AzureADTokenExchange", "exp": exp_s,
        }))
    )
}

/// Workload identity reads the projected token at every token request: after the kubelet
/// rotated it (the old one expired), the next token request uses the new one.
#[tokio::test]
async fn workload_identity_reads_the_rotated_token_file() {
    let env = Env::start().await;
    env.fake
        .register_federated_credential(FakeAzure::TENANT, CLIENT_ID, ISSUER, SUBJECT);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("azure-identity-token");
    let now_s = T0_MS / 1000;
    std::fs::write(&file, federated_token(SUBJECT, now_s + 600)).unwrap();
    let credential = TokenCache::new(
        env.http.clone(),
        Source::WorkloadIdentity {
            authority: url(&env.fake.authority_url()),
            tenant: FakeAzure::TENANT.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            token_file: file.clone(),
        },
    );
    credential.token(KV_SCOPE).await.expect("first token");

    // An hour later the access token is due again and the first file token has expired;
    // the kubelet has written a fresh one.
    env.manual().advance(3_600_000);
    std::fs::write(&file, federated_token(SUBJECT, now_s + 3_600 + 600)).unwrap();
    credential
        .token(KV_SCOPE)
        .await
        .expect("a token from the rotated file");

    // A token for a subject the app does not trust is refused in Entra's words.
    env.manual().advance(3_600_000);
    std::fs::write(
        &file,
        federated_token("system:serviceaccount:x:y", now_s + 9_000),
    )
    .unwrap();
    let err = credential.token(KV_SCOPE).await.unwrap_err();
    assert!(err.message.contains("AADSTS70021"), "{}", err.message);
}

fn default_config(env: &Env, mi_endpoint: &str) -> Config {
    let text = format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"

[credentials.d]
kind = "default"
managed_identity_endpoint = "{mi_endpoint}"

[providers.random]
kind = "random"

[providers.vault]
kind = "key_vault"
vault_url = "{vault}"
credential = "d"
verify_challenge_resource = false

[secrets.s]
rotator = "random"
stores = ["vault"]
verifiers = ["vault"]
grace = "1h"
"#,
        authority = env.fake.authority_url(),
        vault = env.fake.keyvault_url(VAULT),
    );
    Config::parse(Path::new("/tmp/rekey.toml"), &text).expect("valid config")
}

/// Builds the vault of `config` with `vars` as the environment and reads a secret through
/// it; returns which token services were asked.
async fn chain_picks(env: &Env, config: &Config, vars: &[(&str, String)]) -> Vec<Service> {
    env.fake.kv_seed(VAULT, "s", "v");
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let providers = config.build_providers(env.clock.clone(), &lookup).unwrap();
    providers
        .roles("vault")
        .unwrap()
        .apply(&Step::new("s", Action::Capture).call())
        .await
        .expect("the chain found a credential");
    env.fake
        .requests()
        .into_iter()
        .map(|r| r.service)
        .filter(|s| matches!(s, Service::Login | Service::Imds))
        .collect()
}

/// The default chain tries environment, workload identity, managed identity, then the
/// Azure CLI: each test sets up a later link and more, and the earliest set up wins.
#[tokio::test]
async fn the_default_chain_takes_the_first_link_that_is_set_up() {
    // Environment wins over a reachable managed identity.
    let env = Env::start().await;
    let config = default_config(&env, &env.fake.imds_url());
    let vars = [
        ("AZURE_TENANT_ID", FakeAzure::TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
    ];
    assert_eq!(chain_picks(&env, &config, &vars).await, [Service::Login]);

    // Without environment variables: managed identity.
    let env = Env::start().await;
    let config = default_config(&env, &env.fake.imds_url());
    assert_eq!(chain_picks(&env, &config, &[]).await, [Service::Imds]);

    // Nothing listens where managed identity would be: the Azure CLI on PATH.
    let env = Env::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!(
        "http://{}/metadata/identity/oauth2/token",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let config = default_config(&env, &dead);
    let tmp = tempfile::tempdir().unwrap();
    let token = env.fake.mint_token(KV_RESOURCE);
    let expires = T0_MS / 1000 + 3600;
    fake_az(
        tmp.path(),
        &format!(r#"printf '{{"accessToken":"{token}","expires_on":{expires}}}'"#),
    );
    let path = tmp.path().join("bin").display().to_string();
    assert_eq!(chain_picks(&env, &config, &[("PATH", path)]).await, []);
    assert_eq!(az_runs(tmp.path()).len(), 1, "the Azure CLI was asked");

    // Nothing set up at all: the error names why each link did not work.
    let env = Env::start().await;
    let config = default_config(&env, &dead);
    let nowhere = |name: &str| (name == "PATH").then(|| "/nonexistent".to_owned());
    let providers = config.build_providers(env.clock.clone(), &nowhere).unwrap();
    let err = providers
        .roles("vault")
        .unwrap()
        .apply(&Step::new("s", Action::Capture).call())
        .await
        .unwrap_err();
    for says in [
        "environment: AZURE_TENANT_ID",
        "workload identity:",
        "managed identity: nothing",
        "Azure CLI:",
    ] {
        assert!(err.message.contains(says), "{says}: {}", err.message);
    }
}
