//! What every self-test needs: a fake on a manual clock, a plain reqwest client, a registered
//! client and tokens obtained the way a real client gets them (through the token endpoint).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rekey_journal::ManualClock;
use serde_json::Value;

use crate::fake_azure::FakeAzure;

/// The fake clock's start: 2025-06-15T14:40:00Z.
pub const T0_MS: i64 = 1_750_000_000_000;
pub const CLIENT_ID: &str = "0a1b2c3d-0000-4000-8000-000000000001";
/// Has the characters (`~ . +`) a client must URL-encode in a form.
pub const CLIENT_SECRET: &str = "s3cr~et.value+with/odd=chars";
pub const KV_SCOPE: &str = "https://vault.azure.net/.default";
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
pub const SUB: &str = "00000000-aaaa-4bbb-8ccc-000000000001";

/// A started fake, its clock and an HTTP client.
pub struct Env {
    pub fake: FakeAzure,
    pub clock: ManualClock,
    pub http: reqwest::Client,
}

/// A fake on a manual clock at [`T0_MS`], with [`CLIENT_ID`] registered in the home tenant.
pub async fn env() -> Env {
    let clock = ManualClock::new(T0_MS);
    let fake = FakeAzure::start_with_clock(Arc::new(clock.clone())).await;
    fake.register_client(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET);
    Env {
        fake,
        clock,
        http: client(),
    }
}

/// A reqwest client that never goes through a proxy (loopback only).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

impl Env {
    /// The token endpoint of `tenant`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.fake.authority_url())
    }

    /// Posts a client-credentials request; returns the raw response.
    pub async fn token_response(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &str,
        scope: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.token_url(tenant))
            .form(&[
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .expect("token request")
    }

    /// A token for `scope` for [`CLIENT_ID`], via the token endpoint.
    pub async fn token(&self, scope: &str) -> String {
        let response = self
            .token_response(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET, scope)
            .await;
        assert_eq!(response.status(), 200, "token request failed");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// `{vault}/secrets{path}?api-version=7.5`.
    pub fn kv(&self, vault: &str, path: &str) -> String {
        format!(
            "{}/secrets{path}?api-version=7.5",
            self.fake.keyvault_url(vault)
        )
    }

    /// A site's settings URL under ARM (`tail` is `/list` for the list action or empty).
    pub fn settings_url(&self, site: &str, slot: Option<&str>, tail: &str) -> String {
        let slot = slot.map(|s| format!("/slots/{s}")).unwrap_or_default();
        format!(
            "{}/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Web/sites/{site}{slot}/config/appsettings{tail}?api-version=2024-04-01",
            self.fake.arm_url()
        )
    }

    /// A storage account action URL under ARM.
    pub fn storage_url(&self, account: &str, action: &str) -> String {
        format!(
            "{}/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Storage/storageAccounts/{account}/{action}?api-version=2025-06-01",
            self.fake.arm_url()
        )
    }
}

/// Status and JSON body of a response (`Value::Null` for an empty body).
pub async fn status_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("response body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

/// The claims of an access token (asserting its header says `alg: none`).
pub fn claims(token: &str) -> Value {
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let payload = parts.next().expect("payload");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "none");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Whether `s` is 32 lower-case hex digits (a Key Vault version).
pub fn is_kv_version(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
