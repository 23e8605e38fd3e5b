//! Requests the fake Azure services received, counted per service (Key Vault per vault):
//! what the fleet benchmarks set against the bound their request budgets allow.

use std::collections::BTreeMap;

use crate::fake_azure::{FakeAzure, Service};

/// Requests sent per service (Key Vault per vault) since `from`, an index into the fake's
/// request log.
pub fn per_service(fake: &FakeAzure, from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in &fake.requests()[from..] {
        let key = match r.service {
            Service::KeyVault => {
                let vault = r
                    .path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("");
                format!("keyvault {vault}")
            }
            other => format!("{other:?}").to_lowercase(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}
