//! Values read for the hint check never leave memory: with `read_values_for_hint` on and
//! trace logging, every run's stdout and stderr (table, JSON, `--explain`) and every byte
//! of the journal are searched for each value the vaults hold, for the passwords' hints,
//! for rekey's own client secret and for every bearer token it sent.

use std::collections::BTreeMap;

use rekey::journal::{Clock as _, SystemClock};
use serde_json::Value;

use super::{READER_ID, READER_SECRET, config_text, discover, journal_bytes};
use crate::fake_azure::{App, FakeAzure, PasswordCred, SecretMeta};

/// Marks every password's first three characters (its hint).
const HINT: &str = "~Zq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_values_reach_no_journal_log_or_output() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    let now = jiff::Timestamp::from_millisecond(SystemClock.now_ms()).unwrap();
    let mut values = Vec::new();
    for n in 0..6u32 {
        let text = format!("{HINT}8Q~hygiene-{n:02}-{}", "k".repeat(24));
        let app = format!("payments-{n}");
        fake.graph_insert_app(App {
            object_id: format!("0b000000-0000-4000-8000-{n:012x}"),
            app_id: format!("0a000000-0000-4000-8000-{n:012x}"),
            principal_id: format!("0f000000-0000-4000-8000-{n:012x}"),
            display_name: app.clone(),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &format!("0c000000-0000-4000-8000-{n:012x}"),
                None,
                &text,
                now,
                now + jiff::SignedDuration::from_hours(24 * 60),
            )],
            keys: Vec::new(),
        });
        // Half hold the password (hint matches), half another value (hint mismatch).
        let value = if n % 2 == 0 {
            text.clone()
        } else {
            format!("other-secret-{n}-{}", "v".repeat(20))
        };
        fake.kv_seed_item(
            "kv1",
            &format!("{app}-client-secret"),
            &value,
            SecretMeta {
                tags: BTreeMap::new(),
                ..SecretMeta::default()
            },
        );
        values.push(text);
        values.push(value);
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("rekey.toml"),
        config_text(&fake, &["kv1"], &[], "read_values_for_hint = true"),
    )
    .unwrap();

    let mut outputs = Vec::new();
    for args in [
        &["--json"][..],
        &[][..],
        &["--explain", "payments-0"][..],
        &["--explain", "payments-1"][..],
    ] {
        let run = discover(tmp.path(), args, Some(READER_SECRET)).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        outputs.push((format!("stdout of {args:?}"), run.stdout));
        outputs.push((format!("stderr of {args:?}"), run.stderr));
    }
    // The check did run: values were read and compared.
    let doc: Value = serde_json::from_str(&outputs[0].1).unwrap();
    assert_eq!(doc["counts"]["hint_reads"], 6);
    let evidence = outputs[0].1.matches("hint-match").count();
    let vetoes = outputs[0].1.matches("hint-mismatch").count();
    assert_eq!((evidence, vetoes), (3, 3), "{}", outputs[0].1);
    let reads = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets/") && r.path.contains("-client-secret"))
        .count();
    assert_eq!(reads, 4 * 6, "one value read per item per run");
    assert!(outputs[1].1.contains("TRACE"), "trace logging was on");
    assert!(
        outputs[1].1.contains("discovery finished"),
        "rekey logged the run"
    );

    let journal = String::from_utf8_lossy(&journal_bytes(tmp.path())).into_owned();
    assert!(journal.contains("LinksFound"), "the journal was written");
    outputs.push(("the journal".into(), journal));
    let tokens: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| {
            r.authorization
                .as_deref()?
                .strip_prefix("Bearer ")
                .map(str::to_owned)
        })
        .collect();
    assert!(!tokens.is_empty());
    let mut needles: Vec<String> = values;
    needles.push(HINT.to_owned());
    needles.push(READER_SECRET.to_owned());
    needles.extend(tokens);
    for needle in &needles {
        for (what, text) in &outputs {
            assert!(
                !text.contains(needle.as_str()),
                "{needle:?} leaked into {what}"
            );
        }
    }
}
