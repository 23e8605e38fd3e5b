//! Token sources and where tokens may go: per-scope caching, managed identity through IMDS
//! and App Service (whose expiries are strings), client certificates, and the refusal to send a token to a
//! non-loopback plain-HTTP URL.

use std::sync::Arc;
use std::time::Duration;

use rekey::provider::SecretValue;
use rekey::providers::azure::certificate::ClientCertificate;
use rekey::providers::azure::credential::{Credential, Source, TokenCache};
use rekey::providers::azure::keyvault::KeyVaultStore;
use rekey::saga::{Action, ErrorClass};

use super::{ARM_SCOPE, CLIENT_ID, Env, KV_SCOPE, Perform, Step, VAULT, url};
use crate::fake_azure::Service;

/// An address nothing answers on: the guard must refuse before any connection is tried.
const UNROUTABLE_VAULT: &str = "http://10.255.255.1/";

fn requests_to(env: &Env, service: Service) -> usize {
    env.fake
        .requests()
        .iter()
        .filter(|r| r.service == service)
        .count()
}

/// One token request per scope while the token is fresh; a new one once it nears expiry.
#[tokio::test]
async fn token_cache_fetches_once_per_scope() {
    let env = Env::start().await;
    let cred = &env.credential;
    let kv1 = cred.token(KV_SCOPE).await.unwrap();
    let kv2 = cred.token(KV_SCOPE).await.unwrap();
    assert_eq!(kv1, kv2);
    assert_eq!(env.token_requests(CLIENT_ID), 1);

    let arm = cred.token(ARM_SCOPE).await.unwrap();
    assert_ne!(arm, kv1, "a token is per scope");
    assert_eq!(env.token_requests(CLIENT_ID), 2);
    cred.token(ARM_SCOPE).await.unwrap();
    assert_eq!(env.token_requests(CLIENT_ID), 2);

    // The fake's tokens last 3599 s; within the 5-minute margin the cache refreshes.
    env.manual().advance(3_599_000 - 4 * 60_000);
    let kv3 = cred.token(KV_SCOPE).await.unwrap();
    assert_ne!(kv3, kv1);
    assert_eq!(env.token_requests(CLIENT_ID), 3);
}

/// Reads the secret through a vault using `credential` (proving its token is accepted),
/// twice, and checks `service` was asked for a token only once (its string expiry was
/// understood as a time in the future).
async fn vault_reads_with(env: &Env, credential: TokenCache, service: Service) {
    env.fake.kv_seed(VAULT, "mi-secret", "v");
    let kv = KeyVaultStore::new(
        env.http.clone(),
        Arc::new(credential),
        url(&env.fake.keyvault_url(VAULT)),
    )
    .without_challenge_verification();
    for _ in 0..2 {
        let got = kv
            .apply(&Step::new("mi-secret", Action::Capture).call())
            .await
            .unwrap();
        assert!(got.id.is_some());
    }
    assert_eq!(requests_to(env, service), 1, "the token was not cached");
    let req = env
        .fake
        .requests()
        .into_iter()
        .find(|r| r.service == service)
        .unwrap();
    assert!(
        req.path.contains("resource=https%3A%2F%2Fvault.azure.net")
            && !req.path.contains(".default"),
        "managed identity takes a v1 resource: {}",
        req.path
    );
}

/// Managed identity through IMDS: a token the vault accepts, cached.
#[tokio::test]
async fn imds_tokens_work_and_are_cached() {
    let env = Env::start().await;
    let cred = TokenCache::new(
        env.http.clone(),
        Source::Imds {
            endpoint: url(&env.fake.imds_url()),
            client_id: None,
        },
    );
    vault_reads_with(&env, cred, Service::Imds).await;
}

/// Managed identity through App Service's `IDENTITY_ENDPOINT`: the same.
#[tokio::test]
async fn app_service_identity_tokens_work_and_are_cached() {
    let env = Env::start().await;
    let (endpoint, header) = env.fake.identity_endpoint();
    let cred = TokenCache::new(
        env.http.clone(),
        Source::AppService {
            endpoint: url(&endpoint),
            header: SecretValue::new(header),
            client_id: None,
        },
    );
    vault_reads_with(&env, cred, Service::AppServiceIdentity).await;
}

/// A vault at a plain-HTTP, non-loopback URL is refused before anything is sent: the
/// call returns at once (no connection attempt to an address nothing answers on), no token
/// is fetched, and the message says why.
#[tokio::test]
async fn no_token_goes_to_a_non_loopback_http_url() {
    let env = Env::start().await;
    for verify in [true, false] {
        let mut kv = KeyVaultStore::new(
            env.http.clone(),
            env.credential.clone(),
            url(UNROUTABLE_VAULT),
        );
        if !verify {
            kv = kv.without_challenge_verification();
        }
        let step = Step::new("payments-api", Action::Write).value("v");
        let call = step.call();
        let err = tokio::time::timeout(Duration::from_millis(250), kv.apply(&call))
            .await
            .expect("the guard must refuse at once, without connecting")
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message
                .contains("refusing to send credentials to http://10.255.255.1"),
            "{}",
            err.message
        );
    }
    assert!(env.fake.requests().is_empty(), "nothing was to be sent");
}

/// The same guard for ARM and for a token endpoint: a plain-HTTP, non-loopback ARM gets no
/// bearer token, and a client secret is never posted to such an authority.
#[tokio::test]
async fn no_token_or_client_secret_goes_to_a_non_loopback_http_url() {
    let env = Env::start().await;
    let mut app = env.app_setting(
        None,
        "KEY",
        rekey::providers::azure::appservice::Mode::Literal,
    );
    app.arm = url("http://10.255.255.1/");
    let step = Step::new("s", Action::Capture);
    let call = step.call();
    let err = tokio::time::timeout(Duration::from_millis(500), app.apply(&call))
        .await
        .expect("the guard must refuse at once")
        .unwrap_err();
    assert!(
        err.message.contains("refusing to send credentials"),
        "{}",
        err.message
    );

    let cred = TokenCache::new(
        env.http.clone(),
        Source::ClientSecret {
            authority: url("http://10.255.255.1/"),
            tenant: "t".into(),
            client_id: CLIENT_ID.into(),
            secret: SecretValue::new("never-sent"),
        },
    );
    let err = tokio::time::timeout(Duration::from_millis(250), cred.token(KV_SCOPE))
        .await
        .expect("the guard must refuse at once")
        .unwrap_err();
    assert!(
        err.message.contains("refusing to send credentials"),
        "{}",
        err.message
    );
    assert!(
        env.fake
            .requests()
            .iter()
            .all(|r| !r.body.contains("never-sent")),
        "the secret went somewhere"
    );
}

/// A self-signed RSA certificate and its PEM file (private key, then certificate).
fn certificate() -> (openssl::x509::X509, Vec<u8>) {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "rekey-it").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let mut pem = key.private_key_to_pem_pkcs8().unwrap();
    pem.extend(cert.to_pem().unwrap());
    (cert, pem)
}

fn certificate_source(env: &Env, client_id: &str, pem: &[u8]) -> TokenCache {
    TokenCache::new(
        env.http.clone(),
        Source::ClientCertificate {
            authority: url(&env.fake.authority_url()),
            tenant: crate::fake_azure::FakeAzure::TENANT.to_owned(),
            client_id: client_id.to_owned(),
            certificate: ClientCertificate::from_pem(pem, "test.pem").unwrap(),
        },
    )
}

/// A service principal's certificate gets tokens: the signed assertion is checked by the
/// fake authority (thumbprint, signature, audience, issuer, validity), the token opens the
/// vault, and no private key material is sent.
#[tokio::test]
async fn client_certificate_assertions_get_tokens() {
    let env = Env::start().await;
    let (cert, pem) = certificate();
    env.fake.register_client_certificate(
        crate::fake_azure::FakeAzure::TENANT,
        "cert-client",
        &cert.to_der().unwrap(),
    );
    env.fake.kv_seed(VAULT, "cert-secret", "v");
    let kv = KeyVaultStore::new(
        env.http.clone(),
        Arc::new(certificate_source(&env, "cert-client", &pem)),
        url(&env.fake.keyvault_url(VAULT)),
    )
    .without_challenge_verification();
    for _ in 0..2 {
        let got = kv
            .apply(&Step::new("cert-secret", Action::Capture).call())
            .await
            .unwrap();
        assert!(got.id.is_some());
    }
    let logins: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::Login)
        .collect();
    assert_eq!(logins.len(), 1, "the token was not cached");
    assert!(
        logins[0].body.contains("client_assertion="),
        "{}",
        logins[0].body
    );
    let key_b64 = String::from_utf8_lossy(&pem)
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        env.fake
            .requests()
            .iter()
            .all(|r| !r.body.contains(&key_b64) && !r.body.contains("client_secret")),
        "key material or a secret was sent"
    );
}

/// A certificate the app registration does not hold, or one registered for another client,
/// is refused permanently with the authority's reason, and nothing is retried.
#[tokio::test]
async fn unregistered_certificates_are_refused_with_the_reason() {
    let env = Env::start().await;
    let (registered, _) = certificate();
    let (_, other_pem) = certificate();
    env.fake.register_client_certificate(
        crate::fake_azure::FakeAzure::TENANT,
        "cert-client",
        &registered.to_der().unwrap(),
    );
    let err = certificate_source(&env, "cert-client", &other_pem)
        .token(KV_SCOPE)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains("not registered on application"),
        "{}",
        err.message
    );
    assert_eq!(requests_to(&env, Service::Login), 1);
}
