//! Faults: per-route queues (in order, after authentication), service-specific bodies,
//! `Retry-After`, delays, and a response dropped after its effect.

use std::time::Duration;

use serde_json::json;

use super::support::{ARM_SCOPE, GRAPH_SCOPE, KV_SCOPE, SUB, env, status_json};
use crate::fake_azure::{Effect, Fault, Route, Service};

#[tokio::test]
async fn faults_are_taken_in_order_and_only_by_authenticated_requests() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    env.fake
        .inject(Route::KvGet, Fault::Status { code: 503 }, 2);
    env.fake.inject(
        Route::KvGet,
        Fault::Throttle {
            retry_after_secs: 7,
        },
        1,
    );
    // The challenge leg (no token) does not use a fault up.
    assert_eq!(
        env.http
            .get(env.kv("v1", "/s"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let token = env.token(KV_SCOPE).await;
    let get = || env.http.get(env.kv("v1", "/s")).bearer_auth(&token).send();
    let service_unavailable = json!({"error":{"code":"ServiceUnavailable","message":"The service is temporarily unavailable."}});
    assert_eq!(
        status_json(get().await.unwrap()).await,
        (503, service_unavailable.clone())
    );
    assert_eq!(
        status_json(get().await.unwrap()).await,
        (503, service_unavailable)
    );
    let r = get().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "7");
    let (status, body) = status_json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("Throttled"))
    );
    assert_eq!(get().await.unwrap().status(), 200);
}

#[tokio::test]
async fn each_service_throttles_with_its_own_body() {
    let env = env().await;
    env.fake.site_seed(SUB, "rg1", "web1", None, &[]);
    env.fake
        .app_seed("11111111-0000-4000-8000-000000000001", "app");
    let arm = env.token(ARM_SCOPE).await;
    let graph = env.token(GRAPH_SCOPE).await;
    for route in [
        Route::AppSettingsList,
        Route::GraphGetApplication,
        Route::Token,
    ] {
        env.fake.inject(
            route,
            Fault::Throttle {
                retry_after_secs: 3,
            },
            1,
        );
    }
    let list = env
        .http
        .post(env.settings_url("web1", None, "/list"))
        .header("content-length", "0");
    let r = list.bearer_auth(&arm).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(
        status_json(r).await.1["error"]["code"],
        "SubscriptionRequestsThrottled"
    );
    let graph_url = format!(
        "{}/applications/11111111-0000-4000-8000-000000000001",
        env.fake.graph_url()
    );
    let r = env
        .http
        .get(graph_url)
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "3");
    let (status, body) = status_json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("TooManyRequests"))
    );
    assert!(body["error"]["innerError"].is_object());
    let r = env
        .token_response(
            crate::fake_azure::FakeAzure::TENANT,
            super::support::CLIENT_ID,
            super::support::CLIENT_SECRET,
            GRAPH_SCOPE,
        )
        .await;
    assert_eq!(r.headers()["retry-after"], "3");
    let (status, body) = status_json(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("temporarily_unavailable"))
    );
}

#[tokio::test]
async fn a_delay_holds_the_response_back() {
    let env = env().await;
    env.fake.kv_seed("v1", "s", "x");
    let token = env.token(KV_SCOPE).await;
    env.fake.inject(Route::KvGet, Fault::Delay { ms: 300 }, 1);
    let started = tokio::time::Instant::now();
    let r = env
        .http
        .get(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = env
        .http
        .get(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "one delay only");
}

#[tokio::test]
async fn a_dropped_response_still_applies_the_effect_and_reqwest_sees_an_error() {
    let env = env().await;
    let token = env.token(KV_SCOPE).await;
    env.fake
        .inject(Route::KvSet, Fault::ApplyThenDropResponse, 1);
    let result = env
        .http
        .put(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .json(&json!({"value":"new"}))
        .send()
        .await;
    let error = result.expect_err("the client must not get a response");
    assert!(
        error.is_request() && !error.is_timeout() && error.status().is_none(),
        "{error:?}"
    );
    assert_eq!(
        env.fake.kv_versions("v1", "s").len(),
        1,
        "the write happened"
    );
    assert!(matches!(
        env.fake.effects().as_slice(),
        [Effect::KvVersionCreated { .. }]
    ));
    let logged = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::KeyVault)
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 1, "reqwest did not retry on its own");
    assert_eq!(logged[0].status, None, "no response was sent");
    // The server keeps serving: a retry now creates a second version (the duplicate a client
    // must avoid by reconciling first).
    let r = env
        .http
        .put(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .json(&json!({"value":"new"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(env.fake.kv_versions("v1", "s").len(), 2);
}

#[tokio::test]
async fn a_dropped_graph_response_leaves_a_password_the_client_never_saw() {
    let env = env().await;
    let object_id = "11111111-0000-4000-8000-000000000001";
    env.fake.app_seed(object_id, "app");
    let token = env.token(GRAPH_SCOPE).await;
    env.fake
        .inject(Route::GraphAddPassword, Fault::ApplyThenDropResponse, 1);
    let url = format!(
        "{}/applications/{object_id}/addPassword",
        env.fake.graph_url()
    );
    let result = env
        .http
        .post(url)
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await;
    assert!(result.is_err());
    assert_eq!(env.fake.app_passwords(object_id).len(), 1);
}

#[tokio::test]
async fn denied_key_vault_operations_get_the_access_policy_403() {
    let env = env().await;
    let token = env.token(KV_SCOPE).await;
    env.fake.deny(Route::KvSet);
    let r = env
        .http
        .put(env.kv("v1", "/s"))
        .bearer_auth(&token)
        .json(&json!({"value":"x"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByPolicy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("does not have secrets set permission on key vault 'v1;"),
        "{message}"
    );
    assert!(
        message.contains(&format!("appid={}", super::support::CLIENT_ID)),
        "{message}"
    );
    assert!(env.fake.kv_versions("v1", "s").is_empty());
}
