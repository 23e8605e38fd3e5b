//! Every bad-input path of `rekey discover` explains itself and changes nothing: a
//! malformed `[fleet]`, an unknown tenant credential, an unset secret variable and bad
//! arguments stop before the journal is opened or any request is sent; a vault that 403s
//! is reported (exit 4) and nothing in Azure changes; a Graph page that fails once is
//! asked again and the run completes.

use rekey::journal::{Clock as _, SystemClock};
use serde_json::Value;

use super::{READER_ID, READER_SECRET, SECRET_VAR, config_text, discover, journal_bytes};
use crate::fake_azure::{App, FakeAzure, Fault, PasswordCred, Route, SecretMeta};

async fn fake() -> FakeAzure {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    let now = jiff::Timestamp::from_millisecond(SystemClock.now_ms()).unwrap();
    for n in 0..3u32 {
        let key = format!("0c000000-0000-4000-8000-{n:012x}");
        fake.graph_insert_app(App {
            object_id: format!("0b000000-0000-4000-8000-{n:012x}"),
            app_id: format!("0a000000-0000-4000-8000-{n:012x}"),
            principal_id: format!("0f000000-0000-4000-8000-{n:012x}"),
            display_name: format!("orders-{n}"),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &key,
                None,
                &format!("abc{n}-secret"),
                now,
                now + jiff::SignedDuration::from_hours(24 * 40),
            )],
            keys: Vec::new(),
        });
        fake.kv_seed_item(
            "kv1",
            &format!("orders-{n}-client-secret"),
            "v",
            SecretMeta {
                tags: [("CredentialId".to_owned(), key)].into(),
                ..SecretMeta::default()
            },
        );
    }
    fake
}

fn write(dir: &std::path::Path, text: &str) {
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
}

/// Nothing was read and no journal was created.
fn untouched(fake: &FakeAzure, dir: &std::path::Path) {
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert!(journal_bytes(dir).is_empty(), "no journal");
    assert!(fake.effects().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_fleet_section_is_refused_with_its_line_before_anything_is_read() {
    let fake = fake().await;
    let tmp = tempfile::tempdir().unwrap();
    let good = config_text(&fake, &["kv1"], &[], "");
    let cases: &[(&str, &str, &str)] = &[
        (
            "verify_challenge_resource = false",
            "verify_challenge_resource = false\ndays_before_expiry = 0",
            ":18:22: [fleet] days_before_expiry = 0 must be 1 to 365 (30 is the default)",
        ),
        (
            "credential = \"reader\"",
            "credential = \"auditor\"",
            ": [fleet.tenants.contoso] credential \"auditor\" is not defined; define [credentials.auditor] or use one of: reader",
        ),
        (
            "verify_challenge_resource = false",
            "verify_challenge_resource = false\nmin_confidence = \"low\"",
            "[fleet] min_confidence = \"low\": low, none and ambiguous links never rotate",
        ),
        (
            "verify_challenge_resource = false",
            "verify_challenge_resource = false\nname_templates = [\"secret\"]",
            "names no app; include {app} or {app_id}",
        ),
        (
            "verify_challenge_resource = false",
            "verify_challenge_resource = false\nscan_everything = true",
            "unknown field `scan_everything`",
        ),
    ];
    for (from, to, want) in cases {
        let text = good.replacen(from, to, 1);
        assert_ne!(text, good, "{want}");
        write(tmp.path(), &text);
        let run = discover(tmp.path(), &[], Some(READER_SECRET)).await;
        assert_eq!(run.code, 1, "{want}: {}", run.stderr);
        assert!(run.stderr.contains("rekey.toml:"), "{}", run.stderr);
        assert!(run.stderr.contains(want), "{want:?} not in {}", run.stderr);
        assert!(run.stdout.is_empty());
        untouched(&fake, tmp.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_secret_and_bad_arguments_change_nothing() {
    let fake = fake().await;
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &config_text(&fake, &["kv1"], &[], ""));
    let run = discover(tmp.path(), &[], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "credential reader needs the environment variable {SECRET_VAR}, which is not set"
        )),
        "{}",
        run.stderr
    );
    untouched(&fake, tmp.path());

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--tenant", "fabrikam"],
            1,
            "no tenant named \"fabrikam\" in [fleet.tenants]",
        ),
        (&["--tenant", "fabrikam"], 1, "configured tenants: contoso"),
        (
            &["--min-confidence", "low"],
            1,
            "--min-confidence \"low\": low, none and ambiguous links never rotate",
        ),
        (
            &["--expiring-within", "soon"],
            1,
            "--expiring-within \"soon\" is not a duration",
        ),
        (
            &["--json", "--explain", "orders-1"],
            2,
            "cannot be used with",
        ),
        (&["--since", "1d"], 2, "unexpected argument '--since'"),
    ];
    for (args, code, want) in cases {
        let run = discover(tmp.path(), args, Some(READER_SECRET)).await;
        assert_eq!(run.code, *code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{want:?} not in {}", run.stderr);
        untouched(&fake, tmp.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_403s_is_reported_and_nothing_changes() {
    let fake = fake().await;
    fake.kv_seed("kv-locked", "orders-9-client-secret", "x");
    fake.kv_set_firewall("kv-locked", true);
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        &config_text(&fake, &["kv1", "kv-locked"], &[], ""),
    );
    let run = discover(tmp.path(), &["--json"], Some(READER_SECRET)).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        !run.stderr.lines().any(|l| l.starts_with("rekey: ")),
        "no failure: {}",
        run.stderr
    );
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let u = &doc["unreachable"][0];
    assert_eq!(
        (u["kind"].as_str(), u["name"].as_str()),
        (Some("vault"), Some("kv-locked"))
    );
    let reason = u["reason"].as_str().unwrap();
    assert!(
        reason.contains("Key Vault denied `list` on secrets of")
            && reason.contains(
                "HTTP 403: Forbidden/ForbiddenByFirewall: Client address is not authorized"
            ),
        "{reason}"
    );
    // kv1 was read: its links are there, HIGH, yet nothing is ready.
    let links = doc["links"].as_array().unwrap();
    assert_eq!(
        links.iter().filter(|l| l["confidence"] == "high").count(),
        3
    );
    assert!(links.iter().all(|l| l["ready"] == false));
    assert!(
        links[0]["reason"]
            .as_str()
            .unwrap()
            .contains("vault kv-locked could not be read")
    );
    assert!(fake.effects().is_empty(), "read only");
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.method == "GET" || r.method == "POST" && r.path.contains("/oauth2/")),
        "only reads and token requests"
    );
    // The table says it too.
    let run = discover(tmp.path(), &[], Some(READER_SECRET)).await;
    assert_eq!(run.code, 4);
    assert!(
        run.stdout
            .contains("unreachable vault kv-locked (tenant contoso): Key Vault denied")
    );
    assert!(
        run.stdout
            .contains("partial: what could not be read may hold copies")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_page_that_500s_then_recovers_completes() {
    let fake = fake().await;
    fake.set_graph_page_size(1);
    fake.inject(Route::GraphListApplications, Fault::Status { code: 500 }, 1);
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &config_text(&fake, &["kv1"], &[], ""));
    let run = discover(tmp.path(), &["--json"], Some(READER_SECRET)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["partial"], false);
    assert!(doc["unreachable"].as_array().unwrap().is_empty());
    assert_eq!(doc["counts"]["credentials"], 3);
    assert_eq!(doc["counts"]["high"], 3);
    assert_eq!(doc["counts"]["ready"], 3, "every copy HIGH, nothing unread");
    let statuses: Vec<Option<u16>> = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/applications"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(200), Some(200), Some(200)]);

    // An app that is not there is named in the error.
    let run = discover(tmp.path(), &["--explain", "payments"], Some(READER_SECRET)).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no app \"payments\" among the 3 credentials discovered in tenants contoso"),
        "{}",
        run.stderr
    );
}
