//! ARM: app settings (list, replace-all PUT, slots) and storage keys, with ARM's errors.

use base64::Engine as _;
use reqwest::header::CONTENT_LENGTH;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::support::{ARM_SCOPE, KV_SCOPE, SUB, env, status_json};
use crate::fake_azure::{Effect, FakeAzure, Route};

fn seed_site(fake: &FakeAzure) {
    fake.site_seed(SUB, "rg1", "web1", None, &[("A", "1"), ("B", "2")]);
}

#[tokio::test]
async fn list_returns_the_string_dictionary_exactly() {
    let env = env().await;
    seed_site(&env.fake);
    let token = env.token(ARM_SCOPE).await;
    let r = env
        .http
        .post(env.settings_url("web1", None, "/list"))
        .bearer_auth(&token)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Web/sites/web1/config/appsettings"
    );
    assert_eq!(
        status_json(r).await,
        (
            200,
            json!({"id": id, "name": "appsettings", "type": "Microsoft.Web/sites/config", "kind": "app",
                     "properties": {"A": "1", "B": "2"}})
        )
    );
    let logged = env.fake.requests().pop().unwrap();
    assert_eq!(
        logged.headers.get("content-length").map(String::as_str),
        Some("0")
    );
}

/// reqwest sends no `Content-Length` for a body-less POST, not even with `.body("")`: a
/// client must set `Content-Length: 0` itself. Raw TCP here, to be independent of reqwest.
#[tokio::test]
async fn a_post_without_content_length_is_refused() {
    let env = env().await;
    seed_site(&env.fake);
    let token = env.token(ARM_SCOPE).await;
    let url = reqwest::Url::parse(&env.settings_url("web1", None, "/list")).unwrap();
    let mut stream = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let request = format!(
        "POST {}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        url.path(),
        url.query().unwrap()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 411"), "{response}");
}

#[tokio::test]
async fn put_replaces_every_setting() {
    let env = env().await;
    seed_site(&env.fake);
    let token = env.token(ARM_SCOPE).await;
    let r = env
        .http
        .put(env.settings_url("web1", None, ""))
        .bearer_auth(&token)
        .json(&json!({"properties": {"B": "2", "C": "3"}}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["properties"], json!({"B": "2", "C": "3"}));
    let expected = [("B", "2"), ("C", "3")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    assert_eq!(env.fake.app_settings("web1", None), expected);
    assert_eq!(
        env.fake.effects(),
        vec![Effect::AppSettingsReplaced {
            site: "web1".into(),
            slot: None,
            keys_changed: vec!["A".into(), "C".into()]
        }]
    );
}

#[tokio::test]
async fn slots_have_their_own_settings() {
    let env = env().await;
    seed_site(&env.fake);
    env.fake
        .site_seed(SUB, "rg1", "web1", Some("staging"), &[("S", "x")]);
    let token = env.token(ARM_SCOPE).await;
    let r = env
        .http
        .post(env.settings_url("web1", Some("staging"), "/list"))
        .bearer_auth(&token)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["properties"], json!({"S": "x"}));
    assert_eq!(body["type"], "Microsoft.Web/sites/slots/config");
    assert!(
        body["id"]
            .as_str()
            .unwrap()
            .ends_with("/sites/web1/slots/staging/config/appsettings")
    );
    let r = env
        .http
        .put(env.settings_url("web1", Some("staging"), ""))
        .bearer_auth(&token)
        .json(&json!({"properties": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(env.fake.app_settings("web1", Some("staging")).is_empty());
    assert_eq!(
        env.fake.app_settings("web1", None).len(),
        2,
        "the site is untouched"
    );
}

#[tokio::test]
async fn arm_paths_are_case_insensitive() {
    let env = env().await;
    seed_site(&env.fake);
    let token = env.token(ARM_SCOPE).await;
    let url = format!(
        "{}/SUBSCRIPTIONS/{SUB}/resourcegroups/RG1/providers/microsoft.web/Sites/WEB1/config/AppSettings/list?api-version=2025-03-01",
        env.fake.arm_url()
    );
    let r = env
        .http
        .post(url)
        .bearer_auth(&token)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_json(r).await.1["properties"],
        json!({"A": "1", "B": "2"})
    );
}

#[tokio::test]
async fn arm_errors_have_arm_codes() {
    let env = env().await;
    seed_site(&env.fake);
    let token = env.token(ARM_SCOPE).await;
    let list = |url: String, token: Option<String>| {
        let mut request = env.http.post(url).header(CONTENT_LENGTH, 0);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move { request.send().await.unwrap() }
    };
    // No token: 401 with ARM's challenge.
    let r = list(env.settings_url("web1", None, "/list"), None).await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with(&format!(
        "Bearer authorization_uri=\"{}/{}\"",
        env.fake.authority_url(),
        FakeAzure::TENANT
    )));
    assert!(challenge.contains("error=\"invalid_token\""));
    assert_eq!(
        status_json(r).await.1["error"]["code"],
        "AuthenticationFailed"
    );
    let code = |v: Value| v["error"]["code"].as_str().unwrap().to_owned();
    // A Key Vault token.
    let r = list(
        env.settings_url("web1", None, "/list"),
        Some(env.token(KV_SCOPE).await),
    )
    .await;
    let (status, body) = status_json(r).await;
    assert_eq!(
        (status, code(body)),
        (401, "InvalidAuthenticationTokenAudience".into())
    );
    // Unknown site, unknown group, missing api-version.
    let (status, body) =
        status_json(list(env.settings_url("nope", None, "/list"), Some(token.clone())).await).await;
    assert_eq!(
        (status, code(body.clone())),
        (404, "ResourceNotFound".into())
    );
    assert!(body["error"]["message"].as_str().unwrap().starts_with(
        "The Resource 'Microsoft.Web/sites/nope' under resource group 'rg1' was not found."
    ));
    let other_group = env
        .settings_url("web1", None, "/list")
        .replace("/rg1/", "/rg2/");
    let (status, body) = status_json(list(other_group, Some(token.clone())).await).await;
    assert_eq!((status, code(body)), (404, "ResourceGroupNotFound".into()));
    let no_version = env
        .settings_url("web1", None, "/list")
        .replace("?api-version=2024-04-01", "");
    let (status, body) = status_json(list(no_version, Some(token.clone())).await).await;
    assert_eq!(
        (status, code(body)),
        (400, "MissingApiVersionParameter".into())
    );
    // Denied.
    env.fake.deny(Route::AppSettingsList);
    let (status, body) =
        status_json(list(env.settings_url("web1", None, "/list"), Some(token)).await).await;
    assert_eq!(
        (status, code(body.clone())),
        (403, "AuthorizationFailed".into())
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'Microsoft.Web/sites/config/list/action'")
    );
}

#[tokio::test]
async fn storage_list_keys_has_two_88_char_keys() {
    let env = env().await;
    env.fake.storage_seed(SUB, "rg1", "acct1");
    let token = env.token(ARM_SCOPE).await;
    let r = env
        .http
        .post(env.storage_url("acct1", "listKeys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for (key, name) in keys.iter().zip(["key1", "key2"]) {
        let mut fields: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["creationTime", "keyName", "permissions", "value"]);
        assert_eq!(key["keyName"], name);
        assert_eq!(key["permissions"], "Full");
        let value = key["value"].as_str().unwrap();
        assert_eq!(value.len(), 88);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .unwrap()
                .len(),
            64
        );
        assert_eq!(env.fake.storage_keys("acct1")[name], value);
    }
    let r = env
        .http
        .post(format!(
            "{}&$expand=kerb",
            env.storage_url("acct1", "listKeys")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(r).await.1["keys"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn regenerate_replaces_one_key_and_returns_both() {
    let env = env().await;
    env.fake.storage_seed(SUB, "rg1", "acct1");
    let before = env.fake.storage_keys("acct1");
    let token = env.token(ARM_SCOPE).await;
    let regenerate = |name: &str| {
        env.http
            .post(env.storage_url("acct1", "regenerateKey"))
            .bearer_auth(&token)
            .json(&json!({"keyName": name}))
            .send()
    };
    let (status, body) = status_json(regenerate("key2").await.unwrap()).await;
    assert_eq!(status, 200);
    let after = env.fake.storage_keys("acct1");
    assert_eq!(after["key1"], before["key1"]);
    assert_ne!(after["key2"], before["key2"]);
    assert_eq!(
        body["keys"][0]["value"].as_str(),
        Some(after["key1"].as_str())
    );
    assert_eq!(
        body["keys"][1]["value"].as_str(),
        Some(after["key2"].as_str())
    );
    assert_eq!(
        env.fake.effects(),
        vec![Effect::StorageKeyRegenerated {
            account: "acct1".into(),
            key_name: "key2".into()
        }]
    );
    let (status, body) = status_json(regenerate("key3").await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(body["error"]["code"].is_string());
    assert_eq!(env.fake.effects().len(), 1);
}
