//! Read-only commands need no secrets: `status`, `plan`, `rotate --dry-run`, `policy check`
//! and the auditor's `journal …` commands run with an empty environment against a config
//! whose credentials and providers all read secrets from unset variables; the `journal`
//! commands find the journal through the config.

use std::path::Path;
use std::process::{Command, Output};

use super::cli::text;

/// A config whose every credential and provider secret comes from a variable that is not
/// set, and whose journal is the one the demo wrote into `state/`.
const NEEDS_ENV: &str = r#"[journal]
path = "state/journal.db"

[credentials.sp]
kind = "client_secret"
tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "535fb089-9ff3-47b6-9bfb-4f1264799865"
client_secret_env = "REKEY_TEST_UNSET_CLIENT_SECRET"

[credentials.pipeline]
kind = "static_token"
token_env = "REKEY_TEST_UNSET_TOKEN"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"
key_env = "REKEY_TEST_UNSET_VAULT_KEY"

[providers.kv]
kind = "key_vault"
vault_url = "https://contoso.vault.azure.net"
credential = "sp"

[providers.app]
kind = "app_setting"
credential = "pipeline"
subscription = "34adfa4f-cedf-4dc0-ba29-b6d1a69ab345"
resource_group = "rg"
site = "web"
setting = "API_KEY"

[providers.db]
kind = "postgres_role"
host = "db.example.com"
dbname = "app"
admin_user = "rekey_admin"
admin_password_env = "REKEY_TEST_UNSET_PG_PASSWORD"
mode = "single"
role = "app"

[secrets.demo-api-key]
rotator = "random"
stores = ["vault", "kv"]
dependents = ["app"]
verifiers = ["kv"]
grace = "1d"

[secrets.db-password]
rotator = "db"
stores = ["kv"]
verifiers = ["db"]
grace = "1d"
"#;

/// `rekey` in `dir` with no environment at all but `vars`.
fn rekey_bare(args: &[&str], dir: &Path, vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run rekey")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A demo rotation's journal in `dir/state`, and `NEEDS_ENV` in `dir/needs-env.toml`.
fn setup(dir: &Path) {
    let demo = rekey_bare(&["demo", "--dir", "state", "--grace-secs", "0"], dir, &[]);
    ok(&demo, "demo");
    std::fs::write(dir.join("needs-env.toml"), NEEDS_ENV).unwrap();
}

#[test]
fn status_plan_and_policy_check_need_no_credential_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["--config", "needs-env.toml"][..], args].concat()
    }

    // Rotating needs the variables, and says which one is missing.
    let rotate = rekey_bare(&with(&["rotate", "demo-api-key"]), dir, &[]);
    assert_eq!(rotate.status.code(), Some(1));
    assert!(
        text(&rotate.stderr).contains("needs the environment variable REKEY_TEST_UNSET_"),
        "{}",
        text(&rotate.stderr)
    );

    let status = ok(
        &rekey_bare(&with(&["status", "--json"]), dir, &[]),
        "status",
    );
    let rows: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(rows[0]["secret"], "db-password");
    assert_eq!(rows[1]["secret"], "demo-api-key");
    assert_eq!(
        rows[1]["last_ended"]["status"], "completed",
        "status read the demo's journal: {status}"
    );
    let status = ok(&rekey_bare(&with(&["status"]), dir, &[]), "status");
    assert!(status.contains("db-password: no open rotation"), "{status}");

    let plan = ok(&rekey_bare(&with(&["plan"]), dir, &[]), "plan");
    assert!(plan.contains("write        store kv"), "{plan}");
    assert!(plan.contains("verify       verifier db"), "{plan}");
    let dry = ok(
        &rekey_bare(&with(&["rotate", "db-password", "--dry-run"]), dir, &[]),
        "rotate --dry-run",
    );
    assert!(dry.contains("(plan only: nothing was changed)"), "{dry}");
    let check = ok(&rekey_bare(&with(&["policy", "check"]), dir, &[]), "check");
    assert!(check.contains(": valid;"), "{check}");
    assert!(
        !dir.join("vault.json").exists(),
        "a read-only command wrote"
    );
}

#[test]
fn journal_commands_read_the_journal_the_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    // Neither the default journal nor the default config is in `dir`: only the config
    // leads to `state/journal.db`.
    assert!(!dir.join("journal.db").exists() && !dir.join("rekey.toml").exists());

    let verify = ok(
        &rekey_bare(
            &["journal", "verify", "--config", "needs-env.toml"],
            dir,
            &[],
        ),
        "journal verify --config",
    );
    assert!(verify.starts_with("intact: "), "{verify}");
    let export = ok(
        &rekey_bare(
            &["journal", "export"],
            dir,
            &[("REKEY_CONFIG", "needs-env.toml")],
        ),
        "REKEY_CONFIG=… journal export",
    );
    assert!(export.contains("\"Requested\""), "{export}");
    let heads = ok(
        &rekey_bare(
            &["--config", "needs-env.toml", "journal", "heads"],
            dir,
            &[],
        ),
        "journal heads",
    );
    assert!(heads.contains("\"stream_id\""), "{heads}");

    // `--journal` wins over the config.
    let other = rekey_bare(
        &[
            "journal",
            "verify",
            "--config",
            "needs-env.toml",
            "--journal",
            "other.db",
        ],
        dir,
        &[],
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(text(&other.stderr).contains("other.db: no journal here"));

    // Without --config, a rekey.toml here names the journal.
    std::fs::copy(dir.join("needs-env.toml"), dir.join("rekey.toml")).unwrap();
    let verify = ok(
        &rekey_bare(&["journal", "verify"], dir, &[]),
        "journal verify with ./rekey.toml",
    );
    assert!(verify.starts_with("intact: "), "{verify}");

    // A config naming a journal that is not there says so, and which config named it.
    std::fs::write(
        dir.join("moved.toml"),
        NEEDS_ENV.replace("state/journal.db", "gone/journal.db"),
    )
    .unwrap();
    let gone = rekey_bare(&["journal", "verify", "--config", "moved.toml"], dir, &[]);
    let stderr = text(&gone.stderr);
    assert_eq!(gone.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the [journal] path of moved.toml")
            && stderr.contains("gone/journal.db: no journal here"),
        "{stderr}"
    );
    assert!(!dir.join("gone").exists(), "verify created a directory");

    // With no config at all, the journal is journal.db here, where the demo writes it.
    let state = dir.join("state");
    std::fs::remove_file(state.join("rekey.toml")).unwrap();
    let verify = ok(
        &rekey_bare(&["journal", "verify"], &state, &[]),
        "journal verify in the demo's directory",
    );
    assert!(verify.starts_with("intact: "), "{verify}");
}
