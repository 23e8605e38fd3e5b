//! The discovery surface of the fakes (contract §10): Graph's application and service
//! principal listings (`$select`, `$top`, `@odata.nextLink`, `hint`, `keyCredentials` with
//! `customKeyIdentifier`, the tighter `keyCredentials` throttle), ARM's vault listing with
//! paging, and Key Vault's certificate listing with `x5t` and firewalled vaults.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::support::{ARM_SCOPE, Env, GRAPH_SCOPE, KV_SCOPE, SUB, env, status_json};
use crate::fake_azure::{
    App, FakeAzure, Fault, KeyCred, KvCert, PasswordCred, Route, SecretMeta, ServicePrincipal,
};

const SELECT: &str = "id,appId,displayName,passwordCredentials,keyCredentials,tags";

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn guid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Application `n`: one password (text `pw<n>-secret`), one certificate whose
/// `customKeyIdentifier` is the 20-byte thumbprint `[n; 20]`.
fn app(n: u32) -> App {
    App {
        object_id: guid(n),
        app_id: guid(0x100 + n),
        principal_id: guid(0x200 + n),
        display_name: format!("app-{n}"),
        tags: vec!["team:payments".into()],
        passwords: vec![PasswordCred::new(
            &guid(0x1000 + n),
            Some("prod"),
            &format!("pw{n}-secret"),
            ts("2025-01-01T00:00:00Z"),
            ts("2025-07-01T00:00:00Z"),
        )],
        keys: vec![KeyCred {
            key_id: guid(0x2000 + n),
            display_name: Some("CN=app".into()),
            custom_key_identifier: vec![n as u8; 20],
            start: ts("2025-01-01T00:00:00Z"),
            end: ts("2026-01-01T00:00:00Z"),
        }],
    }
}

async fn get(env: &Env, url: &str, token: &str) -> (u16, Value) {
    status_json(env.http.get(url).bearer_auth(token).send().await.unwrap()).await
}

/// Follows `@odata.nextLink` from `first`; returns every object and the page count.
async fn all_pages(env: &Env, first: &str, token: &str) -> (Vec<Value>, usize) {
    let (mut url, mut objects, mut pages) = (first.to_owned(), Vec::new(), 0);
    loop {
        let (status, body) = get(env, &url, token).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        objects.extend(body["value"].as_array().unwrap().iter().cloned());
        match body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return (objects, pages),
        }
    }
}

#[tokio::test]
async fn applications_list_in_pages_with_their_credentials_narrowed_to_select() {
    let env = env().await;
    for n in 1..=5 {
        env.fake.graph_insert_app(app(n));
    }
    env.fake.set_graph_page_size(2);
    let token = env.token(GRAPH_SCOPE).await;
    let first = format!(
        "{}/applications?$select={SELECT}&$top=999",
        env.fake.graph_url()
    );
    let (status, page) = get(&env, &first, &token).await;
    assert_eq!(status, 200);
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("{}/applications?", env.fake.graph_url())),
        "absolute: {next}"
    );
    assert!(next.contains("$select=") && next.contains("$top=999") && next.contains("$skiptoken="));
    assert!(
        page["@odata.context"]
            .as_str()
            .unwrap()
            .contains("applications(")
    );

    let (apps, pages) = all_pages(&env, &first, &token).await;
    assert_eq!((apps.len(), pages), (5, 3));
    let a = &apps[0];
    let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "appId",
            "displayName",
            "id",
            "keyCredentials",
            "passwordCredentials",
            "tags"
        ],
        "only what $select names"
    );
    let pw = &a["passwordCredentials"][0];
    assert_eq!(pw["hint"], "pw1");
    assert!(pw["secretText"].is_null(), "never the secret in a list");
    assert_eq!(pw["endDateTime"], "2025-07-01T00:00:00.0000000Z");
    let key = &a["keyCredentials"][0];
    assert_eq!(
        STANDARD
            .decode(key["customKeyIdentifier"].as_str().unwrap())
            .unwrap(),
        [1u8; 20]
    );
    assert_eq!(
        (key["type"].as_str(), key["usage"].as_str()),
        (Some("AsymmetricX509Cert"), Some("Verify"))
    );
    assert!(key["key"].is_null(), "lists carry no key");
    assert_eq!(a["tags"][0], "team:payments");
}

#[tokio::test]
async fn bad_listing_queries_are_400s_as_graph_answers_them() {
    let env = env().await;
    env.fake.graph_insert_app(app(1));
    let token = env.token(GRAPH_SCOPE).await;
    let graph = env.fake.graph_url();
    let cases = [
        ("$top=1000", "Request_UnsupportedQuery"),
        ("$top=0", "Request_UnsupportedQuery"),
        ("$skip=1", "Request_BadRequest"),
        ("$select=id,secretText", "BadRequest"),
        ("$count=true", "Request_UnsupportedQuery"),
        ("$filter=displayName eq 'x'", "Request_UnsupportedQuery"),
        ("$skiptoken=not-one-of-ours", "Directory_ExpiredPageToken"),
    ];
    for (query, code) in cases {
        let (status, body) = get(&env, &format!("{graph}/applications?{query}"), &token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}");
        assert!(body["error"]["innerError"]["request-id"].is_string());
    }
    // Advanced queries work with the header.
    let response = env
        .http
        .get(format!(
            "{graph}/applications?$count=true&$filter=appId eq '{}'",
            guid(0x101)
        ))
        .bearer_auth(&token)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!((status, body["@odata.count"].as_u64()), (200, Some(1)));
    // No token: Graph's 401.
    let (status, _) = status_json(
        env.http
            .get(format!("{graph}/applications"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn service_principals_list_their_own_credentials() {
    let env = env().await;
    env.fake.graph_insert_principal(ServicePrincipal {
        object_id: guid(9),
        app_id: guid(0x109),
        display_name: "legacy-daemon".into(),
        principal_type: "Application".into(),
        passwords: vec![PasswordCred::new(
            &guid(0x1009),
            None,
            "sp-secret",
            ts("2025-01-01T00:00:00Z"),
            ts("2025-08-01T00:00:00Z"),
        )],
        keys: Vec::new(),
    });
    let token = env.token(GRAPH_SCOPE).await;
    let url = format!(
        "{}/servicePrincipals?$select=id,appId,displayName,servicePrincipalType,passwordCredentials,keyCredentials&$top=999",
        env.fake.graph_url()
    );
    let (sps, _) = all_pages(&env, &url, &token).await;
    assert_eq!(sps.len(), 1);
    assert_eq!(sps[0]["servicePrincipalType"], "Application");
    assert_eq!(sps[0]["passwordCredentials"][0]["hint"], "sp-");
    let (status, _) = get(
        &env,
        &format!(
            "{}/servicePrincipals?$select=signInAudience",
            env.fake.graph_url()
        ),
        &token,
    )
    .await;
    assert_eq!(status, 400, "not a service principal property");
}

#[tokio::test]
async fn listings_selecting_key_credentials_are_throttled_harder() {
    let env = env().await;
    env.fake.graph_insert_app(app(1));
    env.fake.set_graph_key_credentials_rate_limit(2, 60_000);
    let token = env.token(GRAPH_SCOPE).await;
    let graph = env.fake.graph_url();
    let with_keys = format!("{graph}/applications?$select={SELECT}");
    for _ in 0..2 {
        assert_eq!(get(&env, &with_keys, &token).await.0, 200);
    }
    let response = env
        .http
        .get(&with_keys)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let retry_after = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = status_json(response).await;
    assert_eq!((status, retry_after.as_str()), (429, "60"));
    assert_eq!(body["error"]["code"], "TooManyRequests");
    // Without keyCredentials the listing is not counted.
    let without = format!("{graph}/applications?$select=id,passwordCredentials");
    assert_eq!(get(&env, &without, &token).await.0, 200);
    // The default properties include keyCredentials.
    assert_eq!(
        get(&env, &format!("{graph}/applications"), &token).await.0,
        429
    );
    assert_eq!(env.fake.graph_throttled_count(), 2);
    env.clock.advance(60_000);
    assert_eq!(get(&env, &with_keys, &token).await.0, 200);
}

#[tokio::test]
async fn an_injected_500_fails_one_listing_page_then_it_recovers() {
    let env = env().await;
    env.fake.graph_insert_app(app(1));
    env.fake
        .inject(Route::GraphListApplications, Fault::Status { code: 500 }, 1);
    let token = env.token(GRAPH_SCOPE).await;
    let url = format!("{}/applications?$select={SELECT}", env.fake.graph_url());
    let (status, body) = get(&env, &url, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("generalException"))
    );
    assert_eq!(get(&env, &url, &token).await.0, 200);
}

#[tokio::test]
async fn arm_lists_a_subscriptions_vaults_in_pages() {
    let env = env().await;
    for name in ["kv-a", "kv-b", "kv-c"] {
        env.fake.arm_vault_seed(SUB, "rg1", name);
    }
    env.fake.set_arm_page_size(2);
    let token = env.token(ARM_SCOPE).await;
    let arm = env.fake.arm_url();
    let first = format!(
        "{arm}/subscriptions/{SUB}/providers/Microsoft.KeyVault/vaults?api-version=2024-11-01"
    );
    let (status, page) = get(&env, &first, &token).await;
    assert_eq!(status, 200);
    let next = page["nextLink"].as_str().unwrap().to_owned();
    assert!(
        next.starts_with(&arm) && next.contains("api-version=2024-11-01"),
        "{next}"
    );
    let v = &page["value"][0];
    assert_eq!(v["type"], "Microsoft.KeyVault/vaults");
    assert_eq!(v["name"], "kv-a");
    let uri = v["properties"]["vaultUri"].as_str().unwrap();
    assert_eq!(uri, format!("{}/", env.fake.keyvault_url("kv-a")));
    assert_eq!(v["properties"]["tenantId"], FakeAzure::TENANT);
    let (status, rest) = get(&env, &next, &token).await;
    assert_eq!((status, rest["value"].as_array().unwrap().len()), (200, 1));
    assert!(rest["nextLink"].is_null());

    let bad = first.replace("2024-11-01", "2099-01-01");
    let (status, body) = get(&env, &bad, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("NoRegisteredProviderFound"))
    );
    let other = first.replace(SUB, "00000000-aaaa-4bbb-8ccc-0000000000ff");
    let (status, body) = get(&env, &other, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("SubscriptionNotFound"))
    );
    env.fake.deny(Route::ArmListVaults);
    let (status, body) = get(&env, &first, &token).await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'Microsoft.KeyVault/vaults/read' over scope '/subscriptions/"),
        "{body}"
    );
}

#[tokio::test]
async fn certificates_list_with_x5t_and_their_backing_secret_is_managed() {
    let env = env().await;
    let thumbprint: [u8; 20] = core::array::from_fn(|i| i as u8 + 1);
    env.fake.kv_seed_certificate(
        "kv1",
        KvCert {
            name: "gateway-tls".into(),
            thumbprint,
            tags: BTreeMap::from([("owner".into(), "gateway".into())]),
            enabled: true,
            nbf: None,
            exp: Some(1_767_225_600),
            created: 1_750_000_000,
            updated: 1_750_000_000,
        },
    );
    env.fake.kv_seed_item(
        "kv1",
        "orders-client-secret",
        "v",
        SecretMeta {
            tags: BTreeMap::from([("CredentialId".into(), guid(1))]),
            content_type: Some("client-secret".into()),
            exp: Some(1_767_225_600),
            enabled: true,
        },
    );
    let token = env.token(KV_SCOPE).await;
    let certs_url = format!(
        "{}/certificates?api-version=7.5&maxresults=25",
        env.fake.keyvault_url("kv1")
    );
    let (status, certs) = get(&env, &certs_url, &token).await;
    assert_eq!(status, 200, "{certs}");
    let c = &certs["value"][0];
    assert_eq!(c["x5t"], URL_SAFE_NO_PAD.encode(thumbprint));
    assert_eq!(
        c["id"],
        format!("{}/certificates/gateway-tls", env.fake.keyvault_url("kv1"))
    );
    assert_eq!(c["attributes"]["exp"], 1_767_225_600);
    assert_eq!(c["tags"]["owner"], "gateway");

    let (status, secrets) = get(&env, &env.kv("kv1", ""), &token).await;
    assert_eq!(status, 200);
    let listed: Vec<(&str, bool, Option<&str>)> = secrets["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().rsplit('/').next().unwrap(),
                s["managed"].as_bool().unwrap_or(false),
                s["contentType"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("gateway-tls", true, Some("application/x-pkcs12")),
            ("orders-client-secret", false, Some("client-secret"))
        ]
    );
    assert!(
        secrets["value"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("value").is_none())
    );
    let response = env
        .http
        .put(env.kv("kv1", "/gateway-tls"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["innererror"]["code"],
        "SecretManagedByKeyVault"
    );
}

#[tokio::test]
async fn a_firewalled_vault_challenges_then_refuses_every_call() {
    let env = env().await;
    env.fake.kv_seed("kv-locked", "s", "v");
    env.fake.kv_set_firewall("kv-locked", true);
    let (status, _) =
        status_json(env.http.get(env.kv("kv-locked", "")).send().await.unwrap()).await;
    assert_eq!(status, 401, "the challenge comes first");
    let token = env.token(KV_SCOPE).await;
    for url in [
        env.kv("kv-locked", ""),
        format!(
            "{}/certificates?api-version=7.5",
            env.fake.keyvault_url("kv-locked")
        ),
    ] {
        let (status, body) = get(&env, &url, &token).await;
        assert_eq!(status, 403);
        assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByFirewall");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Client address is not authorized")
        );
    }
    env.fake.kv_set_firewall("kv-locked", false);
    assert_eq!(get(&env, &env.kv("kv-locked", ""), &token).await.0, 200);
}
