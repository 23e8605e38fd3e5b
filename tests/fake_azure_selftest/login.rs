//! The authority: v2 client credentials, discovery, and Graph passwords as client secrets.

use serde_json::json;

use super::support::{CLIENT_ID, CLIENT_SECRET, GRAPH_SCOPE, KV_SCOPE, claims, env, status_json};
use crate::fake_azure::{FakeAzure, Route};

#[tokio::test]
async fn client_credentials_return_a_numeric_expiry_and_a_token_for_the_scope() {
    let env = env().await;
    let r = env
        .token_response(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET, KV_SCOPE)
        .await;
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], json!(3599));
    assert_eq!(body["ext_expires_in"], json!(3599));
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://vault.azure.net");
    assert_eq!(claims["tid"], FakeAzure::TENANT);
    assert_eq!(claims["appid"], CLIENT_ID);
    assert_eq!(claims["exp"], json!(super::support::T0_MS / 1000 + 3599));
}

#[tokio::test]
async fn bad_secrets_scopes_and_clients_get_aadsts_errors() {
    let env = env().await;
    let cases = [
        (
            CLIENT_ID,
            "wrong",
            KV_SCOPE,
            401,
            "invalid_client",
            7_000_215,
        ),
        (
            CLIENT_ID,
            CLIENT_SECRET,
            "https://vault.azure.net",
            400,
            "invalid_scope",
            1_002_012,
        ),
        (
            CLIENT_ID,
            CLIENT_SECRET,
            "https://example.com/.default",
            400,
            "invalid_resource",
            500_011,
        ),
        (
            "unknown-client",
            CLIENT_SECRET,
            KV_SCOPE,
            400,
            "unauthorized_client",
            700_016,
        ),
    ];
    for (client, secret, scope, want_status, want_error, want_code) in cases {
        let (status, body) = status_json(
            env.token_response(FakeAzure::TENANT, client, secret, scope)
                .await,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{body}"
        );
        assert_eq!(body["error_codes"], json!([want_code]));
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!("AADSTS{want_code}: ")),
            "{description}"
        );
        for key in ["timestamp", "trace_id", "correlation_id"] {
            assert!(body[key].is_string(), "{key}");
        }
    }
    let (status, body) = status_json(
        env.token_response("no-such-tenant", CLIENT_ID, CLIENT_SECRET, KV_SCOPE)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_tenant"))
    );
    let r = env
        .http
        .post(env.token_url(FakeAzure::TENANT))
        .form(&[("client_id", CLIENT_ID)])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([900_144]))
    );
}

#[tokio::test]
async fn a_graph_password_authenticates_only_after_propagation_and_until_removed() {
    let env = env().await;
    let (object_id, app_id) = (
        "44444444-0000-4000-8000-000000000004",
        "55555555-0000-4000-8000-000000000005",
    );
    env.fake.app_seed(object_id, app_id);
    env.fake.set_propagation_delay_ms(30_000);
    let graph = env.token(GRAPH_SCOPE).await;
    let url = format!(
        "{}/applications/{object_id}/addPassword",
        env.fake.graph_url()
    );
    let (_, added) = status_json(
        env.http
            .post(url)
            .bearer_auth(&graph)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let secret = added["secretText"].as_str().unwrap();
    let login = || env.token_response(FakeAzure::TENANT, app_id, secret, KV_SCOPE);
    let (status, body) = status_json(login().await).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (401, json!([7_000_215])),
        "not yet propagated"
    );
    env.clock.advance(30_000);
    let (status, body) = status_json(login().await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["appid"],
        app_id
    );
    let url = format!(
        "{}/applications/{object_id}/removePassword",
        env.fake.graph_url()
    );
    let r = env
        .http
        .post(url)
        .bearer_auth(&graph)
        .json(&json!({"keyId": added["keyId"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        status_json(login().await).await.0,
        401,
        "a removed password no longer works"
    );
}

#[tokio::test]
async fn an_expired_graph_password_is_reported_as_expired() {
    let env = env().await;
    let (object_id, app_id) = (
        "66666666-0000-4000-8000-000000000006",
        "77777777-0000-4000-8000-000000000007",
    );
    env.fake.app_seed(object_id, app_id);
    let graph = env.token(GRAPH_SCOPE).await;
    let url = format!(
        "{}/applications/{object_id}/addPassword",
        env.fake.graph_url()
    );
    let body = json!({"passwordCredential": {"endDateTime": "2025-06-16T00:00:00Z"}});
    let (_, added) = status_json(
        env.http
            .post(url)
            .bearer_auth(&graph)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let secret = added["secretText"].as_str().unwrap();
    env.clock.advance(86_400_000);
    let (status, body) = status_json(
        env.token_response(FakeAzure::TENANT, app_id, secret, KV_SCOPE)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (401, json!([7_000_222]))
    );
}

#[tokio::test]
async fn discovery_points_back_at_the_fake() {
    let env = env().await;
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        env.fake.authority_url(),
        FakeAzure::TENANT
    );
    let (status, doc) = status_json(env.http.get(url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["token_endpoint"].as_str().unwrap(),
        env.token_url(FakeAzure::TENANT)
    );
    assert_eq!(
        doc["issuer"],
        format!("{}/{}/v2.0", env.fake.authority_url(), FakeAzure::TENANT)
    );
    let jwks = doc["jwks_uri"].as_str().unwrap().to_owned();
    assert_eq!(env.http.get(jwks).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_denied_token_route_reports_a_disabled_application() {
    let env = env().await;
    env.fake.deny(Route::Token);
    let (status, body) = status_json(
        env.token_response(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET, KV_SCOPE)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    assert_eq!(body["error_codes"], json!([7_000_112]));
    env.fake.allow(Route::Token);
    assert_eq!(
        env.token_response(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET, KV_SCOPE)
            .await
            .status(),
        200
    );
}
