//! Graph: addPassword / removePassword / reading passwordCredentials, and Graph's errors.

use jiff::ToSpan as _;
use serde_json::{Value, json};

use super::support::{GRAPH_SCOPE, env, status_json};
use crate::fake_azure::{Effect, Route};

const OBJECT_ID: &str = "11111111-0000-4000-8000-000000000001";
const APP_ID: &str = "22222222-0000-4000-8000-000000000002";

async fn add_password(
    env: &super::support::Env,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let url = format!("{}/{path}/addPassword", env.fake.graph_url());
    status_json(
        env.http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn add_password_returns_the_secret_once_with_hint_and_two_year_end() {
    let env = env().await;
    env.fake.app_seed(OBJECT_ID, APP_ID);
    let token = env.token(GRAPH_SCOPE).await;
    let body = json!({"passwordCredential": {"displayName": "rotated-2025-06"}});
    let (status, cred) =
        add_password(&env, &token, &format!("applications/{OBJECT_ID}"), body).await;
    assert_eq!(status, 200);
    let secret = cred["secretText"].as_str().unwrap();
    assert!((16..=64).contains(&secret.len()));
    assert_eq!(cred["hint"].as_str().unwrap(), &secret[..3]);
    assert_eq!(cred["displayName"], "rotated-2025-06");
    assert!(cred["customKeyIdentifier"].is_null());
    let key_id = cred["keyId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(key_id).is_ok());
    let start: jiff::Timestamp = cred["startDateTime"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = cred["endDateTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(start.as_millisecond(), super::support::T0_MS);
    let two_years = start
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(2.years())
        .unwrap()
        .timestamp();
    assert_eq!(end, two_years);
    let stored = env.fake.app_passwords(OBJECT_ID);
    assert_eq!(
        (stored[0].key_id.as_str(), stored[0].secret_text.as_str()),
        (key_id, secret)
    );
    assert_eq!(
        env.fake.effects(),
        vec![Effect::GraphPasswordAdded {
            object_id: OBJECT_ID.into(),
            key_id: key_id.into(),
            display_name: Some("rotated-2025-06".into())
        }]
    );
}

#[tokio::test]
async fn reading_the_application_never_shows_secret_text() {
    let env = env().await;
    env.fake.app_seed(OBJECT_ID, APP_ID);
    let token = env.token(GRAPH_SCOPE).await;
    // Through the appId addressing form, with no body at all.
    let url = format!(
        "{}/applications(appId='{APP_ID}')/addPassword",
        env.fake.graph_url()
    );
    let (status, added) =
        status_json(env.http.post(url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(added["displayName"].is_null());
    for path in [
        format!("applications/{OBJECT_ID}"),
        format!("applications(appId='{APP_ID}')"),
    ] {
        let url = format!(
            "{}/{path}?$select=id,appId,passwordCredentials",
            env.fake.graph_url()
        );
        let (status, app) =
            status_json(env.http.get(url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(app["id"], OBJECT_ID);
        assert_eq!(app["appId"], APP_ID);
        assert!(
            app.get("displayName").is_none(),
            "$select narrows the object"
        );
        let creds = app["passwordCredentials"].as_array().unwrap();
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0]["keyId"], added["keyId"]);
        assert_eq!(creds[0]["hint"], added["hint"]);
        assert!(creds[0]["secretText"].is_null(), "{app}");
    }
}

#[tokio::test]
async fn remove_password_is_204_then_404_with_camel_case_inner_error() {
    let env = env().await;
    env.fake.app_seed(OBJECT_ID, APP_ID);
    let (key_id, _) = env.fake.app_add_password(OBJECT_ID, "seeded");
    let token = env.token(GRAPH_SCOPE).await;
    let url = format!(
        "{}/applications/{OBJECT_ID}/removePassword",
        env.fake.graph_url()
    );
    let remove = || {
        env.http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"keyId": key_id}))
            .send()
    };
    let r = remove().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
    assert!(env.fake.app_passwords(OBJECT_ID).is_empty());
    let (status, body) = status_json(remove().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    let inner = body["error"]["innerError"].as_object().unwrap();
    assert!(body["error"].get("innererror").is_none());
    for key in ["date", "request-id", "client-request-id"] {
        assert!(inner[key].is_string(), "{key} in {body}");
    }
    assert_eq!(
        env.fake.effects(),
        vec![Effect::GraphPasswordRemoved {
            object_id: OBJECT_ID.into(),
            key_id
        }]
    );
}

#[tokio::test]
async fn graph_refuses_denied_callers_unknown_apps_and_foreign_tokens() {
    let env = env().await;
    env.fake.app_seed(OBJECT_ID, APP_ID);
    let token = env.token(GRAPH_SCOPE).await;
    let unknown = "33333333-0000-4000-8000-000000000003";
    let (status, body) =
        add_password(&env, &token, &format!("applications/{unknown}"), json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    let kv_token = env.token(super::support::KV_SCOPE).await;
    let (status, body) = add_password(
        &env,
        &kv_token,
        &format!("applications/{OBJECT_ID}"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    env.fake.deny(Route::GraphAddPassword);
    let (status, body) = add_password(
        &env,
        &token,
        &format!("applications/{OBJECT_ID}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
    assert_eq!(
        body["error"]["message"],
        "Insufficient privileges to complete the operation."
    );
    assert!(body["error"]["innerError"]["request-id"].is_string());
    assert!(env.fake.app_passwords(OBJECT_ID).is_empty());
    assert!(env.fake.effects().is_empty());
}

/// The tenant's default app management policy shows its password lifetime limit, and
/// `addPassword` refuses a password that would outlive it (changing nothing).
#[tokio::test]
async fn the_password_lifetime_policy_is_shown_and_enforced() {
    let env = env().await;
    env.fake.app_seed(OBJECT_ID, APP_ID);
    let token = env.token(GRAPH_SCOPE).await;
    let policy = |token: String| {
        let url = format!(
            "{}/policies/defaultAppManagementPolicy",
            env.fake.graph_url()
        );
        let http = env.http.clone();
        async move { status_json(http.get(url).bearer_auth(token).send().await.unwrap()).await }
    };
    let (status, off) = policy(token.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(off["isEnabled"], false);
    assert_eq!(
        off["applicationRestrictions"]["passwordCredentials"],
        json!([])
    );

    env.fake.set_password_lifetime_days(Some(30));
    let (_, on) = policy(token.clone()).await;
    assert_eq!(on["isEnabled"], true);
    assert_eq!(
        on["applicationRestrictions"]["passwordCredentials"][0]["restrictionType"],
        "passwordLifetime"
    );
    assert_eq!(
        on["applicationRestrictions"]["passwordCredentials"][0]["maxLifetime"],
        "P30D"
    );
    let path = format!("applications/{OBJECT_ID}");
    // The default end (two years) is too long; 30 days is allowed.
    let (status, refused) = add_password(&env, &token, &path, json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "Request_BadRequest");
    assert!(env.fake.effects().is_empty());
    let end = jiff::Timestamp::from_millisecond(super::support::T0_MS + 30 * 86_400_000).unwrap();
    let body = json!({"passwordCredential": {"endDateTime": end.to_string()}});
    let (status, _) = add_password(&env, &token, &path, body).await;
    assert_eq!(status, 200);
    // Without a token, nothing is shown.
    let (status, _) = policy(String::new()).await;
    assert_eq!(status, 401);
}
