//! The scanner over HTTP: what it asks (`$select`, `$top=999`, `nextLink`s followed
//! verbatim), what it makes of the answers, and how it lives with throttling, failing
//! pages, firewalled vaults and tenants it cannot log in to.

use std::collections::BTreeMap;
use std::sync::Arc;

use rekey::fleet::matching::HintCandidate;
use rekey::fleet::model::{CredentialKind, ItemKind, Origin, Thumbprint, UnreachableKind};
use rekey::journal::{Clock as _, SystemClock};
use rekey::providers::azure::http::Http;

use super::{READER_SECRET, SUB, fake, http, scanner, tenant, url};
use crate::fake_azure::{
    App, FakeAzure, Fault, KeyCred, KvCert, PasswordCred, Route, SecretMeta, Service,
    ServicePrincipal,
};

fn guid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn app(n: u32, secret: &str) -> App {
    App {
        object_id: guid(n),
        app_id: guid(0x100 + n),
        principal_id: guid(0x200 + n),
        display_name: format!("svc-{n}"),
        tags: Vec::new(),
        passwords: vec![PasswordCred::new(
            &guid(0x1000 + n),
            Some("prod"),
            secret,
            ts("2025-01-01T00:00:00Z"),
            ts("2025-07-01T00:00:00Z"),
        )],
        keys: Vec::new(),
    }
}

fn graph_requests(fake: &FakeAzure) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.service == Service::Graph)
        .map(|r| r.path)
        .collect()
}

/// Applications in pages, a service principal, vaults from config and from ARM (paged),
/// secrets and certificates: everything is read, each `nextLink` followed as sent.
#[tokio::test]
async fn the_scanner_reads_apps_principals_vaults_and_items() {
    let (fake, clock) = fake().await;
    for n in 1..=5 {
        fake.graph_insert_app(app(n, &format!("p{n}x-secret")));
    }
    let mut cert_app = app(6, "zzz-secret");
    cert_app.keys.push(KeyCred {
        key_id: guid(0x2006),
        display_name: None,
        // Some upload paths store the 40 hex characters; Graph echoes them in base64.
        custom_key_identifier: hex::encode_upper([6u8; 20]).into_bytes(),
        start: ts("2025-01-01T00:00:00Z"),
        end: ts("2026-01-01T00:00:00Z"),
    });
    fake.graph_insert_app(cert_app);
    fake.graph_insert_principal(ServicePrincipal {
        object_id: guid(9),
        app_id: guid(0x109),
        display_name: "legacy".into(),
        principal_type: "Application".into(),
        passwords: vec![PasswordCred::new(
            &guid(0x1009),
            None,
            "sp-secret",
            ts("2025-01-01T00:00:00Z"),
            ts("2025-09-01T00:00:00Z"),
        )],
        keys: Vec::new(),
    });
    fake.set_graph_page_size(2);
    fake.set_arm_page_size(1);
    fake.set_kv_page_size(1);
    fake.arm_vault_seed(SUB, "rg", "kv-arm1");
    fake.arm_vault_seed(SUB, "rg", "kv-arm2");
    fake.kv_seed_item(
        "kv-arm1",
        "svc-1-client-secret",
        "p1x-secret",
        SecretMeta {
            tags: BTreeMap::from([("CredentialId".into(), guid(0x1001))]),
            content_type: Some("client-secret".into()),
            exp: Some(1_751_328_000),
            enabled: true,
        },
    );
    fake.kv_seed_item(
        "kv-arm2",
        "svc-2-secret",
        "p2x-secret",
        SecretMeta::default(),
    );
    fake.kv_seed("kv-conf", "unrelated", "x");
    fake.kv_seed_certificate(
        "kv-conf",
        KvCert {
            name: "svc-6-cert".into(),
            thumbprint: [6; 20],
            tags: BTreeMap::new(),
            enabled: true,
            nbf: None,
            exp: None,
            created: 1_750_000_000,
            updated: 1_750_000_000,
        },
    );
    let http = http(&clock);
    let mut t = tenant(&fake, &http, "contoso", READER_SECRET);
    t.subscriptions = vec![SUB.to_owned()];
    t.vaults = vec![
        url(&fake.keyvault_url("kv-conf")),
        // Also listed by ARM: read once.
        url(&format!("{}/", fake.keyvault_url("kv-arm1"))),
    ];
    let scan = scanner(&fake, http, vec![t]).scan().await;
    let inv = &scan.inventory;
    assert!(inv.unreachable.is_empty(), "{:?}", inv.unreachable);

    let mut creds: Vec<(String, Origin, CredentialKind)> = inv
        .credentials
        .iter()
        .map(|c| (c.app_name.clone(), c.origin, c.kind))
        .collect();
    creds.sort();
    assert_eq!(creds.len(), 8, "{creds:?}");
    assert!(creds.contains(&(
        "legacy".into(),
        Origin::ServicePrincipal,
        CredentialKind::Password
    )));
    let cert = inv
        .credentials
        .iter()
        .find(|c| c.kind == CredentialKind::Certificate)
        .unwrap();
    assert_eq!(cert.thumbprint, Some(Thumbprint([6; 20])));
    let pw = inv
        .credentials
        .iter()
        .find(|c| c.app_name == "svc-1")
        .unwrap();
    assert_eq!(pw.key_id, guid(0x1001));
    assert_eq!(pw.end_ms, Some(1_751_328_000_000));

    let mut vaults: Vec<&str> = inv.vaults.iter().map(|(_, v)| v.as_str()).collect();
    vaults.sort();
    assert_eq!(vaults, ["kv-arm1", "kv-arm2", "kv-conf"]);
    let mut items: Vec<(String, String, ItemKind, bool)> = inv
        .items
        .iter()
        .map(|i| (i.vault.clone(), i.name.clone(), i.kind, i.managed))
        .collect();
    items.sort();
    assert_eq!(
        items,
        [
            (
                "kv-arm1".into(),
                "svc-1-client-secret".into(),
                ItemKind::Secret,
                false
            ),
            (
                "kv-arm2".into(),
                "svc-2-secret".into(),
                ItemKind::Secret,
                false
            ),
            (
                "kv-conf".into(),
                "svc-6-cert".into(),
                ItemKind::Secret,
                true
            ),
            (
                "kv-conf".into(),
                "svc-6-cert".into(),
                ItemKind::Certificate,
                false
            ),
            (
                "kv-conf".into(),
                "unrelated".into(),
                ItemKind::Secret,
                false
            ),
        ]
    );
    let tagged = inv
        .items
        .iter()
        .find(|i| i.name == "svc-1-client-secret")
        .unwrap();
    assert_eq!(tagged.tags["CredentialId"], guid(0x1001));
    assert_eq!(tagged.exp_ms, Some(1_751_328_000_000));
    assert_eq!(tagged.created_ms, Some(super::T0_MS));
    assert_eq!(
        inv.items
            .iter()
            .find(|i| i.kind == ItemKind::Certificate)
            .unwrap()
            .x5t,
        Some(Thumbprint([6; 20]))
    );

    // Graph: the contract's query, 999 a page, then nextLinks as sent (3 + 1 pages).
    let graph = graph_requests(&fake);
    assert_eq!(graph.len(), 4, "{graph:#?}");
    assert_eq!(
        graph[0],
        "/v1.0/applications?$select=id,appId,displayName,passwordCredentials,keyCredentials,tags&$top=999"
    );
    assert!(graph[1].contains("$skiptoken=") && graph[1].contains("$top=999"));
    assert!(graph.iter().any(|p| p.starts_with(
        "/v1.0/servicePrincipals?$select=id,appId,displayName,servicePrincipalType,passwordCredentials,keyCredentials&$top=999"
    )));
    // ARM: two pages of one vault.
    let arm: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::Arm)
        .map(|r| r.path)
        .collect();
    assert_eq!(arm.len(), 2, "{arm:#?}");
    assert!(arm[0].ends_with("/providers/Microsoft.KeyVault/vaults?api-version=2024-11-01"));
    // Key Vault: listings only, never a value read.
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.service == Service::KeyVault)
            .all(|r| r.method == "GET"
                && (r.path.contains("/secrets?") || r.path.contains("/certificates?"))),
    );
    assert!(fake.effects().is_empty(), "read only");
}

/// A Graph page that answers 500 is asked again; discovery completes.
#[tokio::test]
async fn a_graph_page_that_fails_then_recovers_is_retried() {
    let (fake, clock) = fake().await;
    fake.graph_insert_app(app(1, "abc-secret"));
    fake.graph_insert_app(app(2, "def-secret"));
    fake.set_graph_page_size(1);
    fake.inject(Route::GraphListApplications, Fault::Status { code: 500 }, 2);
    let http = http(&clock);
    let t = tenant(&fake, &http, "contoso", READER_SECRET);
    let scan = scanner(&fake, http, vec![t]).scan().await;
    assert!(
        scan.inventory.unreachable.is_empty(),
        "{:?}",
        scan.inventory.unreachable
    );
    assert_eq!(scan.inventory.credentials.len(), 2);
    let statuses: Vec<Option<u16>> = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/applications"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200), Some(200)]);
}

/// Graph's keyCredentials throttle: rekey's per-tenant budget paces the listings under it
/// (no 429); with a budget above the service's limit, each 429 waits its `Retry-After`
/// and the listing still completes.
#[tokio::test]
async fn graph_throttling_is_paced_by_the_budget_and_429s_are_waited_out() {
    let fake = FakeAzure::start_with_clock(Arc::new(SystemClock)).await;
    fake.register_client(FakeAzure::TENANT, super::READER_ID, READER_SECRET);
    for n in 1..=4 {
        fake.graph_insert_app(app(n, "abc-secret"));
    }
    fake.set_graph_page_size(1);
    fake.set_graph_key_credentials_rate_limit(2, 1_000);
    fake.graph_insert_app(app(5, "abc-secret"));
    let http = Http::new(5_000, Arc::new(SystemClock)).unwrap();

    // The service allows 2 a second; the budget keeps a margin, as its 95% share does.
    let mut paced = scanner(
        &fake,
        http.clone(),
        vec![tenant(&fake, &http, "t", READER_SECRET)],
    );
    paced.graph_limit = 2;
    paced.graph_window_ms = 1_200;
    let t0 = SystemClock.now_ms();
    let scan = paced.scan().await;
    assert_eq!(scan.inventory.credentials.len(), 5);
    assert_eq!(
        fake.graph_throttled_count(),
        0,
        "the budget kept under the limit"
    );
    // 5 application pages + 1 principal page, 600 ms apart: at least 3 s.
    assert!(SystemClock.now_ms() - t0 >= 3_000);

    let mut eager = scanner(
        &fake,
        http.clone(),
        vec![tenant(&fake, &http, "t", READER_SECRET)],
    );
    eager.graph_limit = 100;
    eager.graph_window_ms = 1_000;
    let scan = eager.scan().await;
    assert!(
        scan.inventory.unreachable.is_empty(),
        "{:?}",
        scan.inventory.unreachable
    );
    assert_eq!(scan.inventory.credentials.len(), 5);
    assert!(fake.graph_throttled_count() > 0, "the service refused some");
}

/// A firewalled vault, a vault whose certificates are denied, a subscription rekey may not
/// read and a tenant whose credential is wrong are reported with their reasons; the rest
/// is read.
#[tokio::test]
async fn what_cannot_be_read_is_reported_and_the_rest_goes_on() {
    let (fake, clock) = fake().await;
    fake.graph_insert_app(app(1, "abc-secret"));
    fake.kv_seed("kv-open", "a", "x");
    fake.kv_seed("kv-locked", "b", "y");
    fake.kv_set_firewall("kv-locked", true);
    let http = http(&clock);
    let mut good = tenant(&fake, &http, "contoso", READER_SECRET);
    good.vaults = vec![
        url(&fake.keyvault_url("kv-open")),
        url(&fake.keyvault_url("kv-locked")),
    ];
    good.subscriptions = vec![SUB.to_owned()];
    fake.arm_vault_seed(SUB, "rg", "kv-open");
    fake.deny(Route::ArmListVaults);
    let mut bad = tenant(&fake, &http, "fabrikam", "not-the-secret");
    bad.vaults = vec![url(&fake.keyvault_url("kv-open"))];
    let scan = scanner(&fake, http, vec![good, bad]).scan().await;
    let inv = &scan.inventory;
    let lost: Vec<(UnreachableKind, &str, &str)> = inv
        .unreachable
        .iter()
        .map(|u| (u.kind, u.tenant.as_str(), u.name.as_str()))
        .collect();
    assert_eq!(
        lost,
        [
            (UnreachableKind::Tenant, "fabrikam", "fabrikam"),
            (UnreachableKind::Subscription, "contoso", SUB),
            (UnreachableKind::Vault, "contoso", "kv-locked"),
        ]
    );
    let reason = |k| &inv.unreachable.iter().find(|u| u.kind == k).unwrap().reason;
    assert!(
        reason(UnreachableKind::Vault).contains("ForbiddenByFirewall"),
        "{}",
        reason(UnreachableKind::Vault)
    );
    assert!(
        reason(UnreachableKind::Subscription).contains("HTTP 403"),
        "{}",
        reason(UnreachableKind::Subscription)
    );
    assert!(
        reason(UnreachableKind::Tenant).contains("invalid_client"),
        "{}",
        reason(UnreachableKind::Tenant)
    );
    assert!(!reason(UnreachableKind::Tenant).contains("not-the-secret"));
    assert_eq!(inv.credentials.len(), 1);
    assert_eq!(inv.vaults, [("contoso".to_owned(), "kv-open".to_owned())]);
    assert_eq!(inv.items.len(), 1);

    // A vault that lists its secrets but denies its certificates keeps its secrets.
    fake.kv_set_firewall("kv-locked", false);
    fake.allow(Route::ArmListVaults);
    fake.deny(Route::KvListCertificates);
    let http = super::http(&clock);
    let mut t = tenant(&fake, &http, "contoso", READER_SECRET);
    t.vaults = vec![url(&fake.keyvault_url("kv-locked"))];
    let scan = scanner(&fake, http, vec![t]).scan().await;
    assert_eq!(scan.inventory.items.len(), 1);
    assert_eq!(
        scan.inventory.unreachable[0].kind,
        UnreachableKind::VaultCertificates
    );
    assert!(
        scan.inventory.unreachable[0]
            .reason
            .contains("certificates list permission")
    );
}

/// The hint check reads each candidate item once, keeps whether it starts with each hint,
/// and reads nothing else.
#[tokio::test]
async fn hint_reads_keep_only_the_comparison() {
    let (fake, clock) = fake().await;
    fake.kv_seed("kv", "orders-client-secret", "Ab3-the-orders-secret");
    fake.kv_seed("kv", "other", "zzz");
    let http = http(&clock);
    let mut t = tenant(&fake, &http, "contoso", READER_SECRET);
    t.vaults = vec![url(&fake.keyvault_url("kv"))];
    let s = scanner(&fake, http, vec![t]);
    let scan = s.scan().await;
    let candidates = [HintCandidate {
        tenant: "contoso".into(),
        vault: "kv".into(),
        item: "orders-client-secret".into(),
        hints: vec![("k1".into(), "Ab3".into()), ("k2".into(), "Ab4".into())],
    }];
    let hints = s.read_hints(&scan, &candidates).await;
    let got: Vec<(&str, bool)> = hints.iter().map(|(k, v)| (k.key_id.as_str(), *v)).collect();
    assert_eq!(got, [("k1", true), ("k2", false)]);
    let reads: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::KeyVault && r.path.contains("/secrets/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert!(reads[0].contains("/secrets/orders-client-secret"));
}

/// Excluded vaults and subscriptions are not read at all: no request reaches them.
#[tokio::test]
async fn excluded_vaults_and_subscriptions_are_not_read() {
    let (fake, clock) = fake().await;
    fake.kv_seed("kv-keep", "a", "x");
    fake.kv_seed("kv-sandbox-1", "b", "y");
    let other_sub = "00000000-aaaa-4bbb-8ccc-0000000000e5";
    fake.arm_vault_seed(SUB, "rg", "kv-sandbox-1");
    fake.arm_vault_seed(other_sub, "rg", "kv-keep");
    let http = http(&clock);
    let mut t = tenant(&fake, &http, "contoso", READER_SECRET);
    t.vaults = vec![url(&fake.keyvault_url("kv-keep"))];
    t.subscriptions = vec![SUB.to_owned(), other_sub.to_owned()];
    let mut s = scanner(&fake, http, vec![t]);
    s.exclusions.vaults = vec!["kv-sandbox-*".into()];
    s.exclusions.subscriptions = vec![other_sub.to_owned()];
    let scan = s.scan().await;
    assert_eq!(
        scan.inventory.vaults,
        [("contoso".to_owned(), "kv-keep".to_owned())]
    );
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(
        !paths.iter().any(|p| p.contains("kv-sandbox")),
        "{paths:#?}"
    );
    assert!(!paths.iter().any(|p| p.contains(other_sub)), "{paths:#?}");
    assert!(
        paths.iter().any(|p| p.contains(SUB)),
        "the other subscription is listed"
    );
}
