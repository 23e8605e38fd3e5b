//! A TOML config with Azure providers pointing at the fakes: `Config::parse` and
//! `build_providers` or `resolver` (with an injected environment) make the providers, and
//! rotations run through them; a rotation resumed under a changed config finds its
//! targets by address, and needs only the credential they name.

use std::path::Path;
use std::sync::Arc;

use rekey::config::{Config, Error};
use rekey::journal::{Clock, MemoryJournal, SqliteJournal};
use rekey::providers::azure::graph::display_prefix;
use rekey::runner::{Options, Progress, Runner};
use rekey::saga::{Action, Phase};

use super::{
    APP_ID, APP_OBJECT_ID, CLIENT_ID, CLIENT_SECRET, Env, Perform, RG, SITE, SUB, Step, VAULT,
    drive, drive_to_end, events, request,
};
use crate::fake_azure::{FakeAzure, Fault, Route};

const SECRET_VAR: &str = "REKEY_TEST_AZURE_SP_SECRET";

fn config_text(env: &Env) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"
timeout = "5s"

[credentials.x]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_VAR}"

[providers.random]
kind = "random"

[providers.vault]
kind = "key_vault"
vault_url = "{vault}"
credential = "x"
verify_challenge_resource = false

[providers.web]
kind = "app_setting"
credential = "x"
subscription = "{SUB}"
resource_group = "{RG}"
site = "{SITE}"
setting = "PAYMENTS_API_KEY"

[providers.entra]
kind = "entra_password"
credential = "x"
tenant = "{tenant}"
object_id = "{APP_OBJECT_ID}"
app_id = "{APP_ID}"
propagation = "5s"

[secrets.payments-api]
rotator = "random"
stores = ["vault"]
dependents = ["web"]
verifiers = ["vault"]
grace = "1h"

[secrets.app-secret]
rotator = "entra"
stores = ["vault"]
verifiers = ["entra"]
grace = "1h"
"#,
        authority = env.fake.authority_url(),
        arm = env.fake.arm_url(),
        graph = env.fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vault = env.fake.keyvault_url(VAULT),
    )
}

fn parse(env: &Env, dir: &Path) -> Config {
    Config::parse(&dir.join("rekey.toml"), &config_text(env)).expect("valid config")
}

/// The config's providers rotate both secrets to completion: the API key lands in the
/// vault and the app setting (others untouched), the Entra password is created, stored,
/// verified, and the previous rekey password retired.
#[tokio::test]
async fn configured_azure_providers_rotate() {
    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    env.fake.kv_seed(VAULT, "payments-api", "old-api-key");
    env.fake.site_seed(
        SUB,
        RG,
        SITE,
        None,
        &[("PAYMENTS_API_KEY", "old-api-key"), ("DB_HOST", "db")],
    );
    env.seed_app();
    let (old_password, _) = env.fake.app_add_password(
        APP_OBJECT_ID,
        &format!("{}previous:create:0:0", display_prefix("app-secret")),
    );

    let config = parse(&env, tmp.path());
    let env_lookup = |var: &str| (var == SECRET_VAR).then(|| CLIENT_SECRET.to_owned());
    let providers = config
        .build_providers(env.clock.clone(), &env_lookup)
        .expect("providers");
    let mut names: Vec<&String> = providers.names().collect();
    names.sort();
    assert_eq!(names, ["entra", "random", "vault", "web"]);

    let clock: Arc<dyn Clock> = env.clock.clone();
    let journal = Arc::new(
        SqliteJournal::open_with_clock(tmp.path().join("journal.db"), clock.clone())
            .expect("journal"),
    );
    let runner = Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("config-test", 1),
    );
    for (secret, id) in [
        ("payments-api", "0197a000-0000-7000-8000-0000000000c1"),
        ("app-secret", "0197a000-0000-7000-8000-0000000000c2"),
    ] {
        request(&runner, config.plan(secret).unwrap().clone(), id).await;
        assert_eq!(
            drive_to_end(&runner, env.manual(), id).await,
            Phase::Completed,
            "{secret}"
        );
    }

    let api_versions = env.fake.kv_versions(VAULT, "payments-api");
    assert_eq!(api_versions.len(), 2);
    let settings = env.fake.app_settings(SITE, None);
    assert_eq!(settings["PAYMENTS_API_KEY"], api_versions[1].value);
    assert_eq!(settings["DB_HOST"], "db");

    let passwords = env.fake.app_passwords(APP_OBJECT_ID);
    assert_eq!(passwords.len(), 1, "the previous password was retired");
    assert_ne!(passwords[0].key_id, old_password);
    assert_eq!(
        env.fake
            .kv_versions(VAULT, "app-secret")
            .last()
            .map(|v| &v.value),
        Some(&passwords[0].secret_text)
    );
    assert!(runner.open_rotations().await.unwrap().is_empty());
}

/// A client secret variable that is not set is a `MissingEnv` error naming it.
#[tokio::test]
async fn missing_client_secret_variable_is_named() {
    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = parse(&env, tmp.path());
    let err = config
        .build_providers(env.clock.clone(), &|_| None)
        .expect_err("the secret variable is unset");
    match &err {
        Error::MissingEnv { var, .. } => assert_eq!(var, SECRET_VAR),
        other => panic!("expected MissingEnv, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(SECRET_VAR), "{message}");
    assert!(message.contains("credential x"), "{message}");
    // An empty variable counts as unset.
    assert!(matches!(
        config.build_providers(env.clock.clone(), &|_| Some(String::new())),
        Err(Error::MissingEnv { .. })
    ));
}

/// Two secrets consumed by one site (two `app_setting` providers, one setting each) rotating
/// at the same time: App Service replaces the whole map on every PUT, so both
/// read-merge-writes must be serialized, or one rotation's new value is silently lost.
/// The first PUT is held back 300 ms so the second read happens before it lands.
#[tokio::test]
async fn two_settings_of_one_site_updated_at_once_both_land() {
    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    env.fake.site_seed(
        SUB,
        RG,
        SITE,
        None,
        &[("KEY_A", "old-a"), ("KEY_B", "old-b"), ("DB_HOST", "db")],
    );
    let setting = |name: &str, key: &str| {
        format!(
            r#"
[providers.{name}]
kind = "app_setting"
credential = "x"
subscription = "{SUB}"
resource_group = "{RG}"
site = "{SITE}"
setting = "{key}"
"#
        )
    };
    let text = format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"

[credentials.x]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_VAR}"
{a}{b}"#,
        authority = env.fake.authority_url(),
        arm = env.fake.arm_url(),
        tenant = FakeAzure::TENANT,
        a = setting("web-a", "KEY_A"),
        b = setting("web-b", "KEY_B"),
    );
    let config = Config::parse(&tmp.path().join("rekey.toml"), &text).expect("valid config");
    let env_lookup = |var: &str| (var == SECRET_VAR).then(|| CLIENT_SECRET.to_owned());
    let providers = config
        .build_providers(env.clock.clone(), &env_lookup)
        .expect("providers");
    env.fake
        .inject(Route::AppSettingsPut, Fault::Delay { ms: 300 }, 1);
    let a = Step::new("secret-a", Action::Update).value("new-a");
    let b = Step::new("secret-b", Action::Update).value("new-b");
    let (call_a, call_b) = (a.call(), b.call());
    let (ra, rb) = tokio::join!(
        providers.roles("web-a").unwrap().apply(&call_a),
        providers.roles("web-b").unwrap().apply(&call_b)
    );
    ra.unwrap();
    rb.unwrap();
    let settings = env.fake.app_settings(SITE, None);
    assert_eq!(
        (settings["KEY_A"].as_str(), settings["KEY_B"].as_str()),
        ("new-a", "new-b"),
        "one rotation's setting was overwritten by the other's stale map"
    );
    assert_eq!(settings["DB_HOST"], "db");
}

/// A `client_certificate` credential names its file relative to the config; a file that
/// is missing, or holds no private key, is refused at build time with the credential and
/// the reason named.
#[tokio::test]
async fn client_certificate_files_are_checked_when_providers_are_built() {
    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&env).replace(
        &format!(
            "kind = \"client_secret\"\ntenant = \"{}\"",
            FakeAzure::TENANT
        ),
        &format!(
            "kind = \"client_certificate\"\ncertificate_file = \"sp.pem\"\ntenant = \"{}\"",
            FakeAzure::TENANT
        ),
    );
    let text = text.replace(&format!("client_secret_env = \"{SECRET_VAR}\"\n"), "");
    assert!(text.contains("client_certificate"), "template changed");
    let config = Config::parse(&tmp.path().join("rekey.toml"), &text).unwrap();
    let build = || config.build_providers(env.clock.clone(), &|_| None);
    let missing = build().expect_err("no certificate file yet").to_string();
    assert!(missing.contains("credential x"), "{missing}");
    assert!(
        missing.contains("cannot read certificate file") && missing.contains("sp.pem"),
        "{missing}"
    );
    std::fs::write(
        tmp.path().join("sp.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let no_key = build().expect_err("no private key").to_string();
    assert!(no_key.contains("holds no private key"), "{no_key}");
}

/// The config text with credential `x` renamed `y`: every provider now reaches Azure
/// through `y`, and nothing defines `x`.
fn without_credential_x(env: &Env) -> String {
    config_text(env)
        .replace("[credentials.x]", "[credentials.y]")
        .replace("credential = \"x\"", "credential = \"y\"")
}

/// The config text with credential `x` as it was, but the vault and the app setting entries
/// renamed or gone: the rotation's targets are found by their addresses.
fn entries_renamed(env: &Env) -> String {
    config_text(env)
        .replace("[providers.vault]", "[providers.kv-main]")
        .replace("stores = [\"vault\"]", "stores = [\"kv-main\"]")
        .replace("verifiers = [\"vault\"]", "verifiers = [\"kv-main\"]")
        .replace(
            &format!(
                "[providers.web]\nkind = \"app_setting\"\ncredential = \"x\"\nsubscription = \"{SUB}\"\nresource_group = \"{RG}\"\nsite = \"{SITE}\"\nsetting = \"PAYMENTS_API_KEY\"\n"
            ),
            "",
        )
        .replace("dependents = [\"web\"]\n", "")
}

/// A runner over `journal` whose providers the config `text` finds.
fn runner_over(
    env: &Env,
    dir: &Path,
    text: &str,
    journal: Arc<MemoryJournal>,
) -> Runner<MemoryJournal> {
    let config = Config::parse(&dir.join("rekey.toml"), text).expect("valid config");
    let lookup = |var: &str| (var == SECRET_VAR).then(|| CLIENT_SECRET.to_owned());
    let resolver = config
        .resolver(env.clock.clone(), Arc::new(lookup))
        .expect("providers");
    Runner::new(
        journal,
        Arc::new(resolver),
        env.clock.clone(),
        Options::new(format!("runner-{}", uuid::Uuid::now_v7()), 1),
    )
}

/// A rotation waits out its grace period while its config changes. Once the credential its
/// targets name is gone, it stops before calling anything, naming the credential and what
/// to do; with the credential back, it resumes by its targets' addresses although the
/// entries it started with were renamed or removed, and completes.
#[tokio::test]
async fn a_rotation_needs_the_credential_its_targets_name_not_its_entries() {
    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    env.fake.kv_seed(VAULT, "payments-api", "old-api-key");
    env.fake.site_seed(
        SUB,
        RG,
        SITE,
        None,
        &[("PAYMENTS_API_KEY", "old-api-key"), ("DB_HOST", "db")],
    );
    let journal = Arc::new(MemoryJournal::new(env.clock.clone()));
    let id = "0197a000-0000-7000-8000-0000000000c7";
    let first = runner_over(&env, tmp.path(), &config_text(&env), journal.clone());
    let plan = parse(&env, tmp.path())
        .plan("payments-api")
        .unwrap()
        .clone();
    request(&first, plan, id).await;
    let waiting = drive(&first, env.manual(), id, true).await;
    assert!(matches!(waiting, Progress::Waiting { .. }), "{waiting:?}");
    env.manual().advance(2 * 3_600_000);

    let events_before = events(&*journal, id).await.len();
    let second = runner_over(
        &env,
        tmp.path(),
        &without_credential_x(&env),
        journal.clone(),
    );
    let err = second
        .drive(id)
        .await
        .expect_err("the credential is gone")
        .to_string();
    for says in [
        &format!("rotation {id}"),
        "target \"vault\" (key_vault",
        "secret payments-api",
        "credential \"x\"",
        "rekey.toml does not define",
        "add [credentials.x] back",
        "resume",
    ] {
        assert!(err.contains(says), "{says:?} missing from: {err}");
    }
    assert_eq!(
        events(&*journal, id).await.len(),
        events_before,
        "nothing journaled"
    );
    assert_eq!(
        env.fake
            .kv_versions(VAULT, "payments-api")
            .iter()
            .filter(|v| v.enabled)
            .count(),
        2
    );

    let third = runner_over(&env, tmp.path(), &entries_renamed(&env), journal.clone());
    assert_eq!(
        drive_to_end(&third, env.manual(), id).await,
        Phase::Completed
    );
    let versions = env.fake.kv_versions(VAULT, "payments-api");
    let enabled: Vec<&str> = versions
        .iter()
        .filter(|v| v.enabled)
        .map(|v| v.value.as_str())
        .collect();
    assert_eq!(enabled.len(), 1, "the old version was disabled (I8)");
    assert_eq!(
        env.fake.app_settings(SITE, None)["PAYMENTS_API_KEY"],
        enabled[0]
    );
}

/// Two rekey processes on one journal (two resolvers, two journal handles, two lease
/// owners) update two different settings of one site at the same moment. Each reads the
/// whole map and PUTs it back; the fake answers each read late, after it was made, so
/// without a lock both would read the map before either wrote it and the second PUT
/// would undo the first. The journal lease on the site's stream serializes them across
/// processes: both new values survive, and the settings nobody rotated are untouched.
#[tokio::test]
async fn two_processes_on_one_journal_keep_each_others_settings_of_one_site() {
    use rekey::provider::Cast;
    use rekey::providers::azure::appservice::JournalSiteLeases;
    use rekey::resolve::Resolve;
    use rekey::saga::{Role, TargetRef};

    let env = Env::start().await;
    let tmp = tempfile::tempdir().unwrap();
    env.fake.site_seed(
        SUB,
        RG,
        SITE,
        None,
        &[
            ("PAYMENTS_API_KEY", "old-api-key"),
            ("DB_PASSWORD", "old-db-password"),
            ("DB_HOST", "db"),
        ],
    );
    let text = format!(
        "{}\n[providers.web-db]\nkind = \"app_setting\"\ncredential = \"x\"\nsubscription = \"{SUB}\"\nresource_group = \"{RG}\"\nsite = \"{SITE}\"\nsetting = \"DB_PASSWORD\"\n",
        config_text(&env)
    );
    let config = Config::parse(&tmp.path().join("rekey.toml"), &text).expect("valid config");
    let journal_path = tmp.path().join("journal.db");
    let lookup = |var: &str| (var == SECRET_VAR).then(|| CLIENT_SECRET.to_owned());
    let node = |owner: &str, provider: &str| {
        let resolver = config
            .resolver(env.clock.clone(), Arc::new(lookup))
            .expect("providers");
        let journal =
            SqliteJournal::open_with_clock(&journal_path, env.clock.clone()).expect("journal");
        resolver.share_site_leases(Arc::new(JournalSiteLeases::new(Arc::new(journal), owner)));
        match resolver.resolve(&TargetRef::new(Role::Dependent, provider)) {
            Ok(Cast::Dependent(d)) => d,
            _ => panic!("{provider} is no dependent"),
        }
    };
    let (a, b) = (node("node-a", "web"), node("node-b", "web-db"));
    env.fake.hold_response(Route::AppSettingsList, 300, 2);

    let step_a = Step::new("payments-api", Action::Update).value("new-api-key");
    let step_b = Step::new("db", Action::Update).value("new-db-password");
    let (call_a, call_b) = (step_a.call(), step_b.call());
    let (ra, rb) = tokio::join!(
        a.update(call_a.step, call_a.value.unwrap()),
        b.update(call_b.step, call_b.value.unwrap()),
    );
    ra.expect("node a's update");
    rb.expect("node b's update");

    let settings = env.fake.app_settings(SITE, None);
    assert_eq!(
        settings.get("PAYMENTS_API_KEY").map(String::as_str),
        Some("new-api-key"),
        "{:?}",
        settings.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        settings.get("DB_PASSWORD").map(String::as_str),
        Some("new-db-password"),
        "node b's setting was lost"
    );
    assert_eq!(settings.get("DB_HOST").map(String::as_str), Some("db"));
}
