//! Key Vault: versions, challenge, tokens, bundle shape, case folding, disabled versions,
//! soft delete and paging.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::support::{self, ARM_SCOPE, CLIENT_SECRET, KV_SCOPE, env, is_kv_version, status_json};
use crate::fake_azure::{Effect, FakeAzure};

#[tokio::test]
async fn api_version_must_be_one_the_service_knows() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let token = env.token(KV_SCOPE).await;
    let base = format!("{}/secrets/s", env.fake.keyvault_url("v1"));
    for v in ["7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"] {
        let r = env
            .http
            .get(format!("{base}?api-version={v}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "api-version {v}");
    }
    for query in ["?api-version=7.2", "", "?api-version=7.5&api-version=7.5"] {
        let r = env
            .http
            .get(format!("{base}{query}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(r).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("BadParameter")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn no_token_gets_the_challenge_and_exact_body() {
    let env = env().await;
    let r = env.http.put(env.kv("v1", "/s")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
            env.fake.authority_url(),
            FakeAzure::TENANT
        )
    );
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":{"code":"Unauthorized","message":"Request is missing a Bearer or PoP token."}}"#
    );
}

#[tokio::test]
async fn tokens_must_be_issued_for_the_vault_unexpired_and_home_tenant() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let url = env.kv("v1", "/s");
    let get = |token: String| {
        let request = env.http.get(&url).bearer_auth(token);
        async move { status_json(request.send().await.unwrap()).await }
    };
    // Made up: well-formed, right claims, never issued.
    let kv_token = env.token(KV_SCOPE).await;
    let forged = format!("{kv_token}forged");
    assert_eq!(get(forged).await.0, 401);
    // Another audience.
    let (status, body) = get(env.token(ARM_SCOPE).await).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10022"),
        "{body}"
    );
    // Another tenant.
    env.fake
        .register_client("other-tenant", "other-client", "pw");
    let r = env
        .token_response("other-tenant", "other-client", "pw", KV_SCOPE)
        .await;
    let other = status_json(r).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = get(other).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10032"),
        "{body}"
    );
    // Good, then expired.
    assert_eq!(get(kv_token.clone()).await.0, 200);
    env.clock.advance(3_599_000);
    let (status, body) = get(kv_token).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IDX10223"),
        "{body}"
    );
}

#[tokio::test]
async fn set_returns_the_secret_bundle_exactly() {
    let env = env().await;
    let token = env.token(KV_SCOPE).await;
    let r = env
        .http
        .put(env.kv("v1", "/db-password"))
        .bearer_auth(&token)
        .json(
            &json!({"value":"hunter2","contentType":"password","tags":{"rotatedBy":"rekey"},
                      "attributes":{"enabled":true,"exp":1_767_225_600,"created":1}}),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    let id = body["id"].as_str().unwrap();
    let prefix = format!("{}/secrets/db-password/", env.fake.keyvault_url("v1"));
    let version = id
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("id {id}"));
    assert!(is_kv_version(version), "{version}");
    let created = support::T0_MS / 1000;
    assert_eq!(
        body,
        json!({
            "value": "hunter2",
            "id": id,
            "contentType": "password",
            "tags": {"rotatedBy": "rekey"},
            "attributes": {"enabled": true, "exp": 1_767_225_600, "created": created,
                           "updated": created, "recoveryLevel": "Recoverable+Purgeable",
                           "recoverableDays": 90}
        })
    );
    assert_eq!(
        env.fake.effects(),
        vec![Effect::KvVersionCreated {
            vault: "v1".into(),
            name: "db-password".into(),
            version: version.into(),
            tags: BTreeMap::from([("rotatedBy".into(), "rekey".into())]),
        }]
    );
}

#[tokio::test]
async fn set_validates_its_body_and_the_name() {
    let env = env().await;
    let token = env.token(KV_SCOPE).await;
    let cases = [
        (
            "/s",
            json!({"value":"x","attributes":{"exp":"2026-01-01T00:00:00Z"}}),
        ),
        ("/s", json!({"contentType":"password"})),
        ("/bad_name", json!({"value":"x"})),
        (
            "/s",
            json!({"value":"x","tags": (0..16).map(|i| (i.to_string(), json!("v"))).collect::<serde_json::Map<_,_>>()}),
        ),
    ];
    for (path, body) in cases {
        let r = env
            .http
            .put(env.kv("v1", path))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, err) = status_json(r).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some("BadParameter")),
            "{body}"
        );
    }
    assert!(env.fake.effects().is_empty());
}

#[tokio::test]
async fn names_are_case_insensitive_and_keep_their_first_spelling() {
    let env = env().await;
    env.fake.kv_seed("v1", "My-Secret", "one");
    let token = env.token(KV_SCOPE).await;
    let r = env
        .http
        .put(env.kv("v1", "/MY-SECRET"))
        .bearer_auth(&token)
        .json(&json!({"value":"two"}))
        .send()
        .await
        .unwrap();
    let (_, body) = status_json(r).await;
    assert!(
        body["id"].as_str().unwrap().contains("/secrets/My-Secret/"),
        "{body}"
    );
    let r = env
        .http
        .get(env.kv("v1", "/my-secret"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(r).await.1["value"], "two");
    assert_eq!(env.fake.kv_versions("V1", "my-SECRET").len(), 2);
}

#[tokio::test]
async fn latest_is_read_with_and_without_a_trailing_slash() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "old");
    let latest = env.fake.kv_seed("v1", "s", "new");
    let token = env.token(KV_SCOPE).await;
    for path in ["/s", "/s/"] {
        let r = env
            .http
            .get(env.kv("v1", path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(r).await;
        assert_eq!(status, 200);
        assert_eq!(body["value"], "new", "{path}");
        assert!(body["id"].as_str().unwrap().ends_with(&latest));
    }
}

#[tokio::test]
async fn patch_answers_without_value_and_a_disabled_version_cannot_be_read() {
    let env = env().await;
    let old = env.fake.kv_seed("v1", "s", "old");
    let token = env.token(KV_SCOPE).await;
    let r = env
        .http
        .patch(env.kv("v1", &format!("/s/{old}")))
        .bearer_auth(&token)
        .json(&json!({"attributes":{"enabled":false}}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    assert!(body.get("value").is_none(), "{body}");
    assert_eq!(body["attributes"]["enabled"], false);
    let disabled = json!({"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.",
                                   "innererror":{"code":"SecretDisabled"}}});
    for path in [format!("/s/{old}"), "/s".to_owned()] {
        let r = env
            .http
            .get(env.kv("v1", &path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(status_json(r).await, (403, disabled.clone()), "{path}");
    }
    let versions = env.fake.kv_versions("v1", "s");
    assert!(!versions[0].enabled);
    assert_eq!(
        env.fake.effects(),
        vec![Effect::KvVersionUpdated {
            vault: "v1".into(),
            name: "s".into(),
            version: old,
            enabled: false
        }]
    );
}

#[tokio::test]
async fn missing_secrets_and_versions_get_the_real_404() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let token = env.token(KV_SCOPE).await;
    let bogus = "0123456789abcdef0123456789abcdef";
    for (path, what) in [
        ("/nope".to_owned(), "nope".to_owned()),
        (format!("/s/{bogus}"), format!("s/{bogus}")),
    ] {
        let r = env
            .http
            .get(env.kv("v1", &path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let message = format!(
            "A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        );
        assert_eq!(
            status_json(r).await,
            (
                404,
                json!({"error":{"code":"SecretNotFound","message":message}})
            )
        );
    }
}

#[tokio::test]
async fn a_soft_deleted_name_cannot_be_set_until_recovered_or_purged() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let token = env.token(KV_SCOPE).await;
    let vault = env.fake.keyvault_url("v1");
    let call =
        |method: reqwest::Method, url: String| env.http.request(method, url).bearer_auth(&token);
    let (status, deleted) = status_json(
        call(reqwest::Method::DELETE, env.kv("v1", "/s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["recoveryId"], format!("{vault}/deletedsecrets/s"));
    assert!(deleted.get("value").is_none());
    assert_eq!(
        status_json(
            call(reqwest::Method::GET, env.kv("v1", "/s"))
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        404
    );
    let set = || {
        call(reqwest::Method::PUT, env.kv("v1", "/s"))
            .json(&json!({"value":"y"}))
            .send()
    };
    let (status, body) = status_json(set().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "Conflict");
    assert_eq!(
        body["error"]["innererror"]["code"],
        "ObjectIsDeletedButRecoverable"
    );
    assert_eq!(
        body["error"]["message"],
        "Secret s is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
    );
    let recover = format!("{vault}/deletedsecrets/s/recover?api-version=7.5");
    assert_eq!(
        status_json(call(reqwest::Method::POST, recover).send().await.unwrap())
            .await
            .0,
        200
    );
    assert_eq!(status_json(set().await.unwrap()).await.0, 200);
    call(reqwest::Method::DELETE, env.kv("v1", "/s"))
        .send()
        .await
        .unwrap();
    let purge = format!("{vault}/deletedsecrets/s?api-version=7.5");
    assert_eq!(
        call(reqwest::Method::DELETE, purge)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(status_json(set().await.unwrap()).await.0, 200);
    assert_eq!(
        env.fake.kv_versions("v1", "s").len(),
        1,
        "purge removed every version"
    );
}

/// Follows `nextLink`s from `first`; returns every page.
async fn pages(env: &support::Env, token: &str, first: String) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut next = Some(first);
    while let Some(url) = next {
        let (status, page) =
            status_json(env.http.get(&url).bearer_auth(token).send().await.unwrap()).await;
        assert_eq!(status, 200, "{url}");
        next = page["nextLink"].as_str().map(str::to_owned);
        pages.push(page);
        assert!(pages.len() < 50, "paging does not end");
    }
    pages
}

fn ids(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["value"].as_array().unwrap().iter())
        .map(|item| {
            assert!(
                item.get("value").is_none(),
                "list items never carry a value"
            );
            item["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn versions_page_through_absolute_next_links_in_no_creation_order() {
    let env = env().await;
    let created: Vec<String> = (0..10)
        .map(|i| env.fake.kv_seed("v1", "s", &i.to_string()))
        .collect();
    env.fake.set_kv_page_size(3);
    let token = env.token(KV_SCOPE).await;
    let pages = pages(&env, &token, env.kv("v1", "/s/versions")).await;
    assert_eq!(pages.len(), 4);
    let link = pages[0]["nextLink"].as_str().unwrap();
    let base = format!("{}/secrets/s/versions?", env.fake.keyvault_url("v1"));
    assert!(link.starts_with(&base), "{link}");
    for part in ["api-version=7.5", "$skiptoken=", "maxresults=25"] {
        assert!(link.contains(part), "{link} lacks {part}");
    }
    assert!(pages[3]["nextLink"].is_null());
    let listed: Vec<String> = ids(&pages)
        .iter()
        .map(|id| id.rsplit('/').next().unwrap().to_owned())
        .collect();
    let mut sorted_listed = listed.clone();
    sorted_listed.sort();
    let mut sorted_created = created.clone();
    sorted_created.sort();
    assert_eq!(sorted_listed, sorted_created, "every version exactly once");
    assert_ne!(listed, created, "versions must not come in creation order");
}

#[tokio::test]
async fn an_empty_first_page_still_has_a_next_link() {
    let env = env().await;
    env.fake.kv_seed("v1", "a", "x");
    env.fake.kv_seed("v1", "b", "x");
    env.fake.set_kv_empty_first_page(true);
    let token = env.token(KV_SCOPE).await;
    let pages = pages(&env, &token, format!("{}&maxresults=1", env.kv("v1", ""))).await;
    assert_eq!(pages[0]["value"], json!([]));
    assert!(
        pages[0]["nextLink"]
            .as_str()
            .unwrap()
            .contains("maxresults=1")
    );
    let vault = env.fake.keyvault_url("v1");
    assert_eq!(
        ids(&pages),
        vec![format!("{vault}/secrets/a"), format!("{vault}/secrets/b")]
    );
}

#[tokio::test]
async fn maxresults_and_skiptoken_are_validated() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let token = env.token(KV_SCOPE).await;
    for query in [
        "&maxresults=26",
        "&maxresults=0",
        "&maxresults=x",
        "&$skiptoken=garbage",
    ] {
        let url = format!("{}{query}", env.kv("v1", "/s/versions"));
        let (status, body) =
            status_json(env.http.get(url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("BadParameter")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn the_client_secret_never_reaches_the_vault() {
    let env = env().await;
    let token = env.token(KV_SCOPE).await;
    env.http
        .get(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let log = env.fake.requests();
    let kv: Vec<_> = log
        .iter()
        .filter(|r| r.service == crate::fake_azure::Service::KeyVault)
        .collect();
    assert_eq!(kv.len(), 1);
    assert!(kv[0].had_bearer);
    assert_eq!(
        kv[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(kv[0].path, "/v1/secrets/s?api-version=7.5");
    assert_eq!(kv[0].status, Some(404));
    let login = &log[0];
    assert!(!login.had_bearer);
    assert!(login.body.contains("client_secret="));
    assert!(
        !log.iter()
            .skip(1)
            .any(|r| r.body.contains("client_secret") || r.path.contains(CLIENT_SECRET))
    );
}
