//! IMDS and the App Service identity endpoint: their headers, string expiries, v1 resources.

use serde_json::Value;

use super::support::{claims, env, status_json};
use crate::fake_azure::FakeAzure;

#[tokio::test]
async fn imds_needs_the_metadata_header_and_answers_in_strings() {
    let env = env().await;
    let url = format!(
        "{}?api-version=2018-02-01&resource=https://vault.azure.net",
        env.fake.imds_url()
    );
    let (status, body) = status_json(env.http.get(&url).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request_102"))
    );
    assert_eq!(
        body["error_description"],
        "Required metadata header not specified"
    );
    let (status, body) = status_json(
        env.http
            .get(&url)
            .header("Metadata", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for key in [
        "access_token",
        "refresh_token",
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(body[key].is_string(), "{key} must be a string: {body}");
    }
    assert_eq!(body["expires_in"], "3599");
    assert_eq!(
        body["expires_on"],
        (super::support::T0_MS / 1000 + 3599).to_string()
    );
    assert_eq!(body["resource"], "https://vault.azure.net");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims(token)["appid"],
        env.fake.managed_identity_client_id().as_str()
    );
    // The token opens the vault (404: the secret does not exist, but the caller got in).
    env.fake.kv_seed("v1", "s", "x");
    let r = env
        .http
        .get(env.kv("v1", "/s"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn imds_takes_a_v1_resource_and_known_identities_only() {
    let env = env().await;
    let get = |query: String| {
        let request = env
            .http
            .get(format!("{}?{query}", env.fake.imds_url()))
            .header("Metadata", "true");
        async move { status_json(request.send().await.unwrap()).await }
    };
    let (status, body) =
        get("api-version=2018-02-01&resource=https://vault.azure.net/.default".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_resource"))
    );
    let (status, _) = get("resource=https://vault.azure.net".into()).await;
    assert_eq!(status, 400, "api-version is required");
    let (status, body) =
        get("api-version=2018-02-01&resource=https://vault.azure.net&client_id=unknown".into())
            .await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    env.fake.register_managed_identity("user-assigned-1");
    let (status, body) = get(
        "api-version=2018-02-01&resource=https://management.azure.com/&client_id=user-assigned-1"
            .into(),
    )
    .await;
    assert_eq!(status, 200);
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["appid"].as_str(), claims["aud"].as_str()),
        (
            Some("user-assigned-1"),
            Some("https://management.azure.com/")
        )
    );
}

#[tokio::test]
async fn the_app_service_endpoint_needs_its_header_and_answers_expires_on_as_a_string() {
    let env = env().await;
    let (endpoint, header) = env.fake.identity_endpoint();
    let url = format!("{endpoint}?resource=https://vault.azure.net&api-version=2019-08-01");
    for value in [None, Some("wrong")] {
        let mut request = env.http.get(&url);
        if let Some(v) = value {
            request = request.header("X-IDENTITY-HEADER", v);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{value:?}");
    }
    let (status, body) = status_json(
        env.http
            .get(&url)
            .header("X-IDENTITY-HEADER", &header)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["expires_on"],
        Value::String((super::support::T0_MS / 1000 + 3599).to_string())
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["client_id"],
        env.fake.managed_identity_client_id().as_str()
    );
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["tid"],
        FakeAzure::TENANT
    );
}
