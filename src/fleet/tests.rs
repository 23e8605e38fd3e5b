//! Golden tests of the matcher over fixture inventories (each fixture's doc says what it
//! shows), rendered with `--explain`'s text; and a property: the result does not depend on
//! the order the inventory was listed in. Update the goldens with `UPDATE_EXPECT=1`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use expect_test::{Expect, expect};

use super::explain::explain;
use super::matching::{Confidence, HintKey, Hints, hint_candidates, match_inventory};
use super::model::{
    AppCredential, CredentialKind, Inventory, ItemKind, Origin, Thumbprint, Unreachable,
    UnreachableKind, VaultItem,
};
use super::rules::{Exclusions, Rules};

/// 2025-07-01T00:00:00Z.
const END: i64 = 1_751_328_000_000;
/// 2025-01-01T00:00:00Z.
const START: i64 = 1_735_689_600_000;
const HOUR: i64 = 3_600_000;

fn guid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Application `n` (object id `guid(n)`, client id `guid(n + 0x100)`).
fn password(app: &str, n: u32, key: u32) -> AppCredential {
    AppCredential {
        tenant: "contoso".into(),
        origin: Origin::Application,
        object_id: guid(n),
        app_id: guid(n + 0x100),
        app_name: app.into(),
        key_id: guid(0x10000 + key),
        kind: CredentialKind::Password,
        display_name: None,
        start_ms: Some(START),
        end_ms: Some(END),
        hint: Some(format!("h{key:02}")),
        thumbprint: None,
    }
}

fn secret(vault: &str, name: &str, tags: &[(&str, &str)]) -> VaultItem {
    VaultItem {
        tenant: "contoso".into(),
        vault: vault.into(),
        name: name.into(),
        kind: ItemKind::Secret,
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        content_type: None,
        enabled: true,
        exp_ms: None,
        created_ms: None,
        x5t: None,
        managed: false,
    }
}

fn inventory(credentials: Vec<AppCredential>, items: Vec<VaultItem>) -> Inventory {
    Inventory {
        credentials,
        items,
        unreachable: Vec::new(),
        vaults: Vec::new(),
    }
}

fn check(inv: &Inventory, hints: &Hints, expect: Expect) {
    let m = match_inventory(inv, &Rules::default(), hints);
    expect.assert_eq(&explain(&m, |_| true));
}

fn hint(key: &AppCredential, vault: &str, item: &str, matched: bool) -> (HintKey, bool) {
    (
        HintKey {
            key_id: key.key_id.clone(),
            vault: vault.into(),
            item: item.to_ascii_lowercase(),
        },
        matched,
    )
}

/// Azure's rotation samples tag the secret with `CredentialId` (the key id) and
/// `ProviderAddress` (the app's object id): definitive, HIGH at once. The app's other
/// password is not in any vault.
#[test]
fn azure_sample_tags_link_definitively() {
    let a = password("orders-api", 1, 1);
    let b = password("orders-api", 1, 2);
    let inv = inventory(
        vec![a.clone(), b],
        vec![secret(
            "kv-prod",
            "orders",
            &[
                ("CredentialId", &a.key_id),
                ("ProviderAddress", &a.object_id),
            ],
        )],
    );
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
            orders-api [00000000-0000-4000-8000-000000000101] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
              kv-prod/orders score 150 (high) -> high linked: tag-key-id(CredentialId), tag-app-id(ProviderAddress)
              verdict: high, ready: every copy (1) is high or more
            orders-api [00000000-0000-4000-8000-000000000101] application password key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
              kv-prod/orders score 50 (medium) -> none vetoed: tag-app-id(ProviderAddress); vetoed by tag-other-key(CredentialId)
              verdict: none, not ready: not in any scanned vault
        "#]],
    );
}

/// Two secrets of one app tagged only by its client id: each fits both of the app's
/// passwords equally, so all four pairs are ambiguous (capped at LOW; retiring needs the
/// right key id) and neither password may rotate.
#[test]
fn two_secrets_of_one_app_tagged_by_app_id_are_ambiguous() {
    let a = password("billing", 2, 1);
    let b = password("billing", 2, 2);
    let inv = inventory(
        vec![a.clone(), b],
        vec![
            secret("kv-prod", "blue", &[("AppId", &a.app_id)]),
            secret("kv-prod", "green", &[("AppId", &a.app_id)]),
        ],
    );
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        billing [00000000-0000-4000-8000-000000000102] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/blue score 50 (medium) -> ambiguous ambiguous: tag-app-id(AppId)
          kv-prod/green score 50 (medium) -> ambiguous ambiguous: tag-app-id(AppId)
          verdict: ambiguous, not ready: ambiguous: kv-prod/blue fits key 00000000-0000-4000-8000-000000010002 equally well; retiring needs the right keyId
        billing [00000000-0000-4000-8000-000000000102] application password key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          kv-prod/blue score 50 (medium) -> ambiguous ambiguous: tag-app-id(AppId)
          kv-prod/green score 50 (medium) -> ambiguous ambiguous: tag-app-id(AppId)
          verdict: ambiguous, not ready: ambiguous: kv-prod/blue fits key 00000000-0000-4000-8000-000000010001 equally well; retiring needs the right keyId
    "#]],
    );
}

/// A three-character hint collides often in a large tenant. `billing` and
/// `billing-reports` both reach `billing-reports-client-secret` by name, and both
/// passwords' hints match its value: the app the name is a template for wins and the other
/// loses it. A hint with only a name around it (`billing-notes`) stays below HIGH.
#[test]
fn a_hint_collision_on_an_unrelated_app_does_not_steal_the_item() {
    let reports = password("billing-reports", 3, 1);
    let billing = password("billing", 4, 2);
    let mut item = secret("kv-prod", "billing-reports-client-secret", &[]);
    item.exp_ms = Some(END - 2 * HOUR);
    let other = secret("kv-prod", "billing-notes", &[]);
    let hints: Hints = [
        hint(&reports, "kv-prod", "billing-reports-client-secret", true),
        hint(&billing, "kv-prod", "billing-reports-client-secret", true),
        hint(&billing, "kv-prod", "billing-notes", true),
    ]
    .into_iter()
    .collect();
    let inv = inventory(vec![reports, billing], vec![item, other]);
    check(
        &inv,
        &hints,
        expect![[r#"
        billing-reports [00000000-0000-4000-8000-000000000103] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/billing-reports-client-secret score 80 (high) -> high linked: hint-match, name-template({app}-client-secret), exp-near-end
          verdict: high, ready: every copy (1) is high or more
        billing [00000000-0000-4000-8000-000000000104] application password key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          kv-prod/billing-notes score 55 (medium) -> medium linked: hint-match, name-contains-app
          kv-prod/billing-reports-client-secret score 70 (medium) -> none lost to key 00000000-0000-4000-8000-000000010001: hint-match, name-contains-app, exp-near-end
          verdict: medium, not ready: copy kv-prod/billing-notes is only medium; every copy must be high or more (no partial coverage)
    "#]],
    );
}

/// A certificate credential whose `customKeyIdentifier` Graph echoes as base64 of the hex
/// thumbprint, and the vault's certificate whose `x5t` is base64url of the 20 bytes: the
/// same thumbprint, definitive. The app's older certificate has another thumbprint, so
/// the same item is vetoed for it.
#[test]
fn a_certificate_matches_by_thumbprint_across_hex_and_base64url() {
    let raw: [u8; 20] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let graph_form = STANDARD.encode(hex::encode_upper(raw));
    let vault_form = URL_SAFE_NO_PAD.encode(raw);
    let mut current = password("gateway", 5, 1);
    current.kind = CredentialKind::Certificate;
    current.hint = None;
    current.thumbprint = Thumbprint::parse(&graph_form);
    let mut old = current.clone();
    old.key_id = super::model::id_key(&guid(0x10002));
    old.thumbprint = Thumbprint::parse(&STANDARD.encode([9u8; 20]));
    let mut cert = secret("kv-prod", "gateway-tls", &[]);
    cert.kind = ItemKind::Certificate;
    cert.x5t = Thumbprint::parse(&vault_form);
    // The secret backing the certificate is listed too; the certificate stands for it.
    let mut backing = secret("kv-prod", "gateway-tls", &[]);
    backing.managed = true;
    backing.content_type = Some("application/x-pkcs12".into());
    let inv = inventory(vec![current, old], vec![cert, backing]);
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        gateway [00000000-0000-4000-8000-000000000105] application certificate key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/gateway-tls score 115 (high) -> high linked: x5t, name-contains-app
          verdict: high, ready: every copy (1) is high or more
        gateway [00000000-0000-4000-8000-000000000105] application certificate key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          kv-prod/gateway-tls score 15 (low) -> none vetoed: name-contains-app; vetoed by x5t-mismatch
          verdict: none, not ready: not in any scanned vault
    "#]],
    );
}

/// A vault that answered 403 (firewall) is unreachable, never empty: the credential linked
/// HIGH elsewhere may also have a copy there, so it is not ready; the one found nowhere is
/// "not in any scanned vault", with the unread vault listed.
#[test]
fn an_unreachable_vault_leaves_coverage_unknown() {
    let a = password("payroll", 6, 1);
    let b = password("hr-portal", 7, 2);
    let mut inv = inventory(
        vec![a.clone(), b],
        vec![secret(
            "kv-prod",
            "payroll-client-secret",
            &[("rekey-app-id", &a.app_id), ("rekey-key-id", &a.key_id)],
        )],
    );
    inv.unreachable.push(Unreachable {
        kind: UnreachableKind::Vault,
        tenant: "contoso".into(),
        name: "kv-dr".into(),
        reason: "HTTP 403 Forbidden/ForbiddenByFirewall: Client address is not authorized".into(),
    });
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        payroll [00000000-0000-4000-8000-000000000106] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/payroll-client-secret score 125 (high) -> high linked: rekey-tags, name-template({app}-client-secret)
          verdict: high, not ready: vault kv-dr could not be read; a copy may live there
        hr-portal [00000000-0000-4000-8000-000000000107] application password key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          (no item scored)
          verdict: none, not ready: not in any scanned vault
        unreachable vault kv-dr (tenant contoso): HTTP 403 Forbidden/ForbiddenByFirewall: Client address is not authorized
    "#]],
    );
}

/// The item is tagged with the app's client id and named by a template (75), but its value
/// was read and does not start with the password's hint: the veto overrides the tag.
#[test]
fn a_hint_mismatch_overrides_a_tag() {
    let a = password("search", 8, 1);
    let inv = inventory(
        vec![a.clone()],
        vec![secret(
            "kv-prod",
            "search-client-secret",
            &[("AppId", &a.app_id)],
        )],
    );
    let hints: Hints = [hint(&a, "kv-prod", "search-client-secret", false)]
        .into_iter()
        .collect();
    check(
        &inv,
        &hints,
        expect![[r#"
        search [00000000-0000-4000-8000-000000000108] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/search-client-secret score 75 (medium) -> none vetoed: tag-app-id(AppId), name-template({app}-client-secret); vetoed by hint-mismatch
          verdict: none, not ready: not in any scanned vault
    "#]],
    );
}

/// The weaker signals add up: a template name, a client-id sibling, expiry and creation
/// near the credential's, a fitting content type and a shared environment make MEDIUM
/// (no identity signal: never HIGH); the sibling itself holds no credential. The same
/// credential also has a copy named only like the app (LOW), so it is not ready.
#[test]
fn weak_signals_add_up_but_never_to_high_without_identity() {
    let a = password("Inventory Prod", 9, 1);
    let mut main = secret("kv-prod", "inventory-prod-client-secret", &[]);
    main.exp_ms = Some(END + HOUR);
    main.created_ms = Some(START + 60_000);
    main.content_type = Some("client-secret".into());
    let sibling = secret("kv-prod", "inventory-prod-client-id", &[]);
    let copy = secret("kv-shared", "old-inventory-prod", &[]);
    let inv = inventory(vec![a], vec![main, sibling, copy]);
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        Inventory Prod [00000000-0000-4000-8000-000000000109] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/inventory-prod-client-secret score 80 (medium) -> medium linked: name-template({app}-client-secret), client-id-sibling(inventory-prod-client-id), exp-near-end, created-near-start, content-type(client-secret), environment(prod)
          kv-shared/old-inventory-prod score 20 (low) -> low linked: name-contains-app, environment(prod)
          verdict: low, not ready: copy kv-shared/old-inventory-prod is only low; every copy must be high or more (no partial coverage)
    "#]],
    );
}

/// A secret whose content type names the other kind of credential does not hold this
/// one: the certificate is not linked to the client secret named for its app (nor the
/// password to the PKCS#12 bundle), unless a definitive tag says so.
#[test]
fn a_content_type_of_the_other_kind_keeps_an_item_out() {
    let pw = password("portal", 16, 1);
    let mut cert = password("portal", 16, 2);
    cert.kind = CredentialKind::Certificate;
    cert.hint = None;
    let mut secret_item = secret("kv-prod", "portal-client-secret", &[]);
    secret_item.content_type = Some("client-secret".into());
    let mut pfx = secret("kv-prod", "portal-cert", &[]);
    pfx.content_type = Some("application/x-pkcs12".into());
    let mut tagged = secret("kv-prod", "portal-bundle", &[("CredentialId", &pw.key_id)]);
    tagged.content_type = Some("application/x-pem-file".into());
    let inv = inventory(vec![pw, cert], vec![secret_item, pfx, tagged]);
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        portal [00000000-0000-4000-8000-000000000110] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/portal-bundle score 115 (high) -> high linked: tag-key-id(CredentialId), name-contains-app
          kv-prod/portal-client-secret score 30 (low) -> low linked: name-template({app}-client-secret), content-type(client-secret)
          verdict: low, not ready: copy kv-prod/portal-client-secret is only low; every copy must be high or more (no partial coverage)
        portal [00000000-0000-4000-8000-000000000110] application certificate key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          kv-prod/portal-bundle score 20 (low) -> none vetoed: name-contains-app, content-type(application/x-pem-file); vetoed by tag-other-key(CredentialId)
          kv-prod/portal-cert score 30 (low) -> low linked: name-template({app}-cert), content-type(application/x-pkcs12)
          verdict: low, not ready: copy kv-prod/portal-cert is only low; every copy must be high or more (no partial coverage)
    "#]],
    );
}

/// A key tag naming another key of the same app vetoes; rekey's own tags are definitive; a
/// service principal's credential is reported but not rotated.
#[test]
fn other_key_tags_veto_and_service_principals_are_reported_only() {
    let a = password("ledger", 10, 1);
    let b = password("ledger", 10, 2);
    let mut sp = password("ledger", 11, 3);
    sp.origin = Origin::ServicePrincipal;
    sp.app_id = a.app_id.clone();
    let inv = inventory(
        vec![a.clone(), b.clone(), sp.clone()],
        vec![
            secret(
                "kv-prod",
                "ledger-client-secret",
                &[("rekey-app-id", &a.app_id), ("rekey-key-id", &a.key_id)],
            ),
            secret("kv-prod", "ledger-secret", &[("KeyId", &b.key_id)]),
            secret("kv-prod", "ledger-sp", &[("CredentialId", &sp.key_id)]),
        ],
    );
    check(
        &inv,
        &Hints::new(),
        expect![[r#"
        ledger [00000000-0000-4000-8000-00000000010a] application password key 00000000-0000-4000-8000-000000010001 ends 2025-07-01
          kv-prod/ledger-client-secret score 125 (high) -> high linked: rekey-tags, name-template({app}-client-secret)
          kv-prod/ledger-secret score 25 (low) -> none vetoed: name-template({app}-secret); vetoed by tag-other-key(KeyId)
          kv-prod/ledger-sp score 15 (low) -> none vetoed: name-contains-app; vetoed by tag-other-key(CredentialId)
          verdict: high, ready: every copy (1) is high or more
        ledger [00000000-0000-4000-8000-00000000010a] application password key 00000000-0000-4000-8000-000000010002 ends 2025-07-01
          kv-prod/ledger-client-secret score 75 (medium) -> none vetoed: tag-app-id(rekey-app-id), name-template({app}-client-secret); vetoed by tag-other-key(rekey-key-id)
          kv-prod/ledger-secret score 125 (high) -> high linked: tag-key-id(KeyId), name-template({app}-secret)
          kv-prod/ledger-sp score 15 (low) -> none vetoed: name-contains-app; vetoed by tag-other-key(CredentialId)
          verdict: high, ready: every copy (1) is high or more
        ledger [00000000-0000-4000-8000-00000000010a] service_principal password key 00000000-0000-4000-8000-000000010003 ends 2025-07-01
          kv-prod/ledger-client-secret score 75 (medium) -> none vetoed: tag-app-id(rekey-app-id), name-template({app}-client-secret); vetoed by tag-other-key(rekey-key-id)
          kv-prod/ledger-secret score 25 (low) -> none vetoed: name-template({app}-secret); vetoed by tag-other-key(KeyId)
          kv-prod/ledger-sp score 115 (high) -> high linked: tag-key-id(CredentialId), name-contains-app
          verdict: high, not ready: a service principal's credential: reported, rotated only when configured
    "#]],
    );
}

/// Hint checks are offered only for items that already score for a password with a
/// hint: not for items no signal reaches, and each item once with every hint to compare.
#[test]
fn hint_reads_are_limited_to_scoring_pairs() {
    let a = password("orders", 12, 1);
    let b = password("orders", 12, 2);
    let c = password("unrelated", 13, 3);
    let inv = inventory(
        vec![a, b, c],
        vec![
            secret("kv-prod", "orders-client-secret", &[]),
            secret("kv-prod", "something-else", &[]),
        ],
    );
    let got: Vec<(String, Vec<String>)> = hint_candidates(&inv, &Rules::default())
        .into_iter()
        .map(|h| (h.item, h.hints.into_iter().map(|(k, _)| k).collect()))
        .collect();
    assert_eq!(
        got,
        [(
            "orders-client-secret".to_owned(),
            vec![guid(0x10001), guid(0x10002)]
        )]
    );
}

/// Exclusions drop credentials by app id or name and items by name, vault or the
/// `rekey-exclude` tag.
#[test]
fn exclusions_leave_out_what_they_name() {
    let inv = inventory(
        vec![password("test-app", 14, 1), password("orders", 15, 2)],
        vec![
            secret("kv-prod", "orders-client-secret", &[("rekey-exclude", "")]),
            secret("kv-prod", "orders-secret", &[]),
            secret("kv-sandbox", "orders-password", &[]),
            secret("kv-prod", "tmp-orders", &[]),
        ],
    );
    let ex = Exclusions {
        app_names: vec!["test-*".into()],
        secret_names: vec!["tmp-*".into()],
        vaults: vec!["*-sandbox".into()],
        ..Exclusions::default()
    };
    let (kept, dropped_c, dropped_i) = ex.apply(inv);
    assert_eq!((dropped_c, dropped_i), (1, 3));
    assert_eq!(kept.credentials[0].app_name, "orders");
    assert_eq!(kept.items[0].name, "orders-secret");
}

#[test]
fn the_signal_table_is_indexed_by_signal() {
    for (k, s) in super::matching::SIGNALS.iter().enumerate() {
        assert_eq!(s.signal as usize, k, "{}", s.code);
        assert_eq!(s.signal.spec().code, s.code);
    }
    assert!(Confidence::High.meets(Confidence::Medium));
    assert!(!Confidence::Ambiguous.meets(Confidence::Low));
    assert!(!Confidence::None.meets(Confidence::None));
}

mod order {
    //! The matcher sorts its inputs: any permutation of the same inventory gives the same
    //! result.

    use proptest::prelude::*;

    use super::*;

    /// A small deterministic generator, so a failing case reproduces from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    const APPS: &[&str] = &["orders", "billing", "billing-reports", "search", "ledger"];
    const ENDINGS: &[&str] = &["-client-secret", "-secret", "-client-id", "", "-old"];

    /// An inventory with colliding names, shared tags, ties, vetoes and hint checks.
    fn generate(seed: u64) -> (Inventory, Hints) {
        let mut rng = Rng(seed | 1);
        let mut credentials = Vec::new();
        for (n, app) in APPS.iter().enumerate() {
            for k in 0..1 + rng.below(3) {
                let mut c = password(app, n as u32, (n * 10 + k) as u32);
                c.end_ms = Some(END + (rng.below(3) as i64) * 20 * HOUR);
                if rng.below(4) == 0 {
                    c.kind = CredentialKind::Certificate;
                    c.hint = None;
                    c.thumbprint = Some(Thumbprint([rng.below(3) as u8; 20]));
                }
                credentials.push(c);
            }
        }
        let mut items = Vec::new();
        let mut hints = Hints::new();
        for k in 0..12 {
            let app = APPS[rng.below(APPS.len())];
            let name = format!("{app}{}{}", ENDINGS[rng.below(ENDINGS.len())], k % 3);
            let vault = ["kv-a", "kv-b"][rng.below(2)];
            let mut item = secret(vault, &name, &[]);
            let owner = &credentials[rng.below(credentials.len())];
            match rng.below(5) {
                0 => {
                    item.tags.insert("AppId".into(), owner.app_id.clone());
                }
                1 => {
                    item.tags
                        .insert("CredentialId".into(), owner.key_id.clone());
                }
                2 => {
                    item.kind = ItemKind::Certificate;
                    item.x5t = Some(Thumbprint([rng.below(3) as u8; 20]));
                }
                _ => {}
            }
            item.exp_ms = Some(END + (rng.below(3) as i64) * 20 * HOUR);
            for c in &credentials {
                if rng.below(3) == 0 {
                    hints.insert(
                        HintKey {
                            key_id: c.key_id.clone(),
                            vault: vault.into(),
                            item: name.to_ascii_lowercase(),
                        },
                        rng.below(2) == 0,
                    );
                }
            }
            items.push(item);
        }
        (inventory(credentials, items), hints)
    }

    proptest! {
        #[test]
        fn the_result_does_not_depend_on_input_order(seed in any::<u64>(), shuffle in any::<u64>()) {
            let (inv, hints) = generate(seed);
            let rules = Rules::default();
            let want = match_inventory(&inv, &rules, &hints);
            let mut shuffled = inv.clone();
            let mut rng = Rng(shuffle | 1);
            rng.shuffle(&mut shuffled.credentials);
            rng.shuffle(&mut shuffled.items);
            let got = match_inventory(&shuffled, &rules, &hints);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(
                hint_candidates(&shuffled, &rules),
                hint_candidates(&inv, &rules)
            );
            // Each item is a copy of at most one credential, unless tied (ambiguous).
            let mut holders: BTreeMap<usize, Vec<Confidence>> = BTreeMap::new();
            for p in got.pairs.iter().filter(|p| p.is_copy()) {
                holders.entry(p.item).or_default().push(p.confidence);
            }
            for held in holders.values() {
                prop_assert!(held.len() == 1 || held.iter().all(|c| *c == Confidence::Ambiguous));
            }
        }
    }
}
