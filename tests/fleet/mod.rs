//! Fleet discovery against the fake Azure services, over real HTTP on 127.0.0.1 only.
//!
//! - `inventory`: the scanner (Graph, ARM, Key Vault listings; paging, throttling, retries,
//!   unreachable vaults and tenants; hint reads).
//!
//! This file holds what they share: a fake with a registered reader, a scanner over it.

mod inventory;

use std::sync::Arc;

use rekey::fleet::inventory::{Scanner, Tenant};
use rekey::journal::{Clock, ManualClock};
use rekey::provider::SecretValue;
use rekey::providers::azure::credential::{Source, TokenCache};
use rekey::providers::azure::http::Http;
use rekey::retry::RetryPolicy;
use url::Url;

use crate::fake_azure::FakeAzure;

/// The manual clock's start: 2025-06-15T14:40:00Z.
pub const T0_MS: i64 = 1_750_000_000_000;
/// The service principal discovery reads as.
pub const READER_ID: &str = "5e7c0000-0000-4000-8000-0000000f1ee7";
pub const READER_SECRET: &str = "fleet~reader.secret+1=";
pub const SUB: &str = "00000000-aaaa-4bbb-8ccc-00000000f1ee";

pub fn url(s: &str) -> Url {
    Url::parse(s).expect("URL")
}

/// A fake (manual clock at [`T0_MS`]) with [`READER_ID`] registered.
pub async fn fake() -> (FakeAzure, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let fake = FakeAzure::start_with_clock(Arc::new(clock.clone())).await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    (fake, clock)
}

/// A tenant read with `secret` as [`READER_ID`]'s client secret.
pub fn tenant(fake: &FakeAzure, http: &Http, name: &str, secret: &str) -> Tenant {
    Tenant {
        name: name.to_owned(),
        credential: Arc::new(TokenCache::new(
            http.clone(),
            Source::ClientSecret {
                authority: url(&fake.authority_url()),
                tenant: FakeAzure::TENANT.to_owned(),
                client_id: READER_ID.to_owned(),
                secret: SecretValue::new(secret),
            },
        )),
        subscriptions: Vec::new(),
        vaults: Vec::new(),
        service_principals: true,
    }
}

/// A scanner of `tenants` over the fake: loopback vaults, fast retries.
pub fn scanner(fake: &FakeAzure, http: Http, tenants: Vec<Tenant>) -> Scanner {
    let mut s = Scanner::new(http, url(&fake.graph_url()), url(&fake.arm_url()), tenants);
    s.verify_challenge_resource = false;
    s.retry = RetryPolicy {
        initial_ms: 10,
        max_ms: 200,
        multiplier: 2.0,
    };
    s
}

/// rekey's HTTP client on `clock`.
pub fn http(clock: &ManualClock) -> Http {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Http::new(5_000, clock).expect("HTTP client")
}
