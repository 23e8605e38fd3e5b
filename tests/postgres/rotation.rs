//! Rotations through the runner against the real server: single mode from a config file,
//! alternating mode through two rotations with grants and ownership surviving, and lost
//! `Create` responses reconciled without leaving a usable password behind.

use std::sync::Arc;

use rekey::config::Config;
use rekey::provider::SecretValue;
use rekey::runner::Progress;
use rekey::saga::{Action, Phase, RotationEvent, StepId, Wait};

use super::harness::{
    Fault, Rig, Spy, alternating, call, clock, json_value, password, provider, roles_of, single,
    username,
};
use super::server::Fixture;

fn in_grace(p: &Progress) -> bool {
    matches!(
        p,
        Progress::Waiting {
            reason: Wait::Grace,
            ..
        }
    )
}

/// Single mode, built from a config file as `rekey` builds it: the new password logs in,
/// the old one stops at once (single mode has no overlap), and the rotation completes.
#[tokio::test]
async fn single_mode_rotates_end_to_end_from_the_config() {
    let f = Fixture::new("single_e2e").await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[journal]
path = "journal.db"

[providers.pg]
kind = "postgres_role"
host = "127.0.0.1"
port = {port}
dbname = "{db}"
admin_user = "{admin}"
admin_password_env = "PG_ADMIN_PASSWORD"
mode = "single"
role = "{app}"
tls = "disable"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[secrets.app-db]
rotator = "pg"
stores = ["vault"]
verifiers = ["pg"]
grace = "1h"
"#,
        port = f.port,
        db = f.db,
        admin = f.admin,
        app = f.app,
    );
    let config = Config::parse(&dir.path().join("rekey.toml"), &text).unwrap();
    let (clock, shared) = clock();
    let admin_password = f.admin_password.clone();
    let env = move |var: &str| (var == "PG_ADMIN_PASSWORD").then(|| admin_password.clone());
    let providers = config.build_providers(shared, &env).unwrap();
    let plan = config.plan("app-db").unwrap().clone();
    let rig = Rig::with(clock, providers, plan, &dir.path().join("vault.json"), dir);

    assert!(f.can_login(&f.app, &f.app_password).await);
    let id = rig.start().await;
    let progress = rig.drive(&id).await;
    assert!(in_grace(&progress), "{progress:?}");
    let new = rig.stored(&id).await;
    assert_eq!(new.expose().len(), 48, "24 random bytes, hex encoded");
    assert!(f.can_login(&f.app, new.expose()).await);
    assert!(
        !f.can_login(&f.app, &f.app_password).await,
        "single mode replaces the password: the old one stops working at once"
    );
    assert_eq!(
        rig.outcome(&id, StepId::new(Action::Capture, 0)).await,
        Some(f.app.clone())
    );
    assert_eq!(
        rig.outcome(&id, StepId::new(Action::Create, 0)).await,
        Some(f.app.clone())
    );

    assert_eq!(
        rig.after_grace(&id).await,
        Progress::Finished(Phase::Completed)
    );
    assert!(f.can_login(&f.app, new.expose()).await);
}

/// Alternating mode, two rotations: each switches roles; the previously used role keeps
/// its password through the grace period and loses it at retirement; objects one role
/// created (as the group role) stay usable by the other.
#[tokio::test]
async fn alternating_mode_switches_roles_and_grants_survive() {
    let f = Fixture::new("alt_two").await;
    let (clock, shared) = clock();
    let pg = roles_of(provider(&f, alternating(&f), shared));
    let rig = Rig::new("alt", clock, pg, None);

    // Before rekey: the app uses blue, whose objects belong to the group role.
    let blue = f.login(&f.blue, &f.blue_password).await;
    blue.batch_execute(&format!(
        "SET ROLE {owner}; CREATE TABLE app.items (id int PRIMARY KEY); INSERT INTO app.items VALUES (1); RESET ROLE",
        owner = f.owner
    ))
    .await
    .unwrap();
    drop(blue);

    // Rotation 1: blue in use, green gets the new password.
    let r1 = rig.start().await;
    let progress = rig.drive(&r1).await;
    assert!(in_grace(&progress), "{progress:?}");
    assert_eq!(
        rig.outcome(&r1, StepId::new(Action::Capture, 0)).await,
        Some(f.blue.clone())
    );
    assert_eq!(
        rig.outcome(&r1, StepId::new(Action::Create, 0)).await,
        Some(f.green.clone())
    );
    let stored = rig.stored(&r1).await;
    assert_eq!(
        username(&stored),
        f.green,
        "the value names the role to log in as"
    );
    let green_new = password(&stored);
    assert!(f.can_login(&f.green, &green_new).await);
    assert!(!f.can_login(&f.green, &f.green_password).await);
    assert!(
        f.can_login(&f.blue, &f.blue_password).await,
        "the old role keeps working during the grace period"
    );
    assert_eq!(
        rig.after_grace(&r1).await,
        Progress::Finished(Phase::Completed)
    );
    assert!(
        !f.can_login(&f.blue, &f.blue_password).await,
        "retirement ends the old role's password"
    );

    // Green uses, changes and even alters what blue created, through the group role.
    let green = f.login(&f.green, &green_new).await;
    green
        .batch_execute(
            "INSERT INTO app.items VALUES (2); ALTER TABLE app.items ADD COLUMN note text",
        )
        .await
        .unwrap();
    let n: i64 = green
        .query_one("SELECT count(*) FROM app.items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    drop(green);

    // Rotation 2: green in use, blue gets the new password.
    let r2 = rig.start().await;
    let progress = rig.drive(&r2).await;
    assert!(in_grace(&progress), "{progress:?}");
    assert_eq!(
        rig.outcome(&r2, StepId::new(Action::Capture, 0)).await,
        Some(f.green.clone())
    );
    assert_eq!(
        rig.outcome(&r2, StepId::new(Action::Create, 0)).await,
        Some(f.blue.clone())
    );
    let stored = rig.stored(&r2).await;
    assert_eq!(username(&stored), f.blue);
    let blue_new = password(&stored);
    assert!(f.can_login(&f.green, &green_new).await, "grace");
    assert_eq!(
        rig.after_grace(&r2).await,
        Progress::Finished(Phase::Completed)
    );
    assert!(!f.can_login(&f.green, &green_new).await);

    let blue = f.login(&f.blue, &blue_new).await;
    let row = blue
        .query_one(
            "SELECT (SELECT count(*) FROM app.items), \
             (SELECT tableowner::text FROM pg_tables WHERE schemaname = 'app' AND tablename = 'items')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2, "blue sees what green inserted");
    assert_eq!(
        row.get::<_, String>(1),
        f.owner,
        "the group role still owns the table"
    );
    blue.batch_execute("UPDATE app.items SET note = 'by blue'")
        .await
        .unwrap();
}

/// Single mode: the first `Create` takes effect but its response is lost. Reconciling finds
/// it by its marker, replaces the lost password with one nobody knows, creates again, and
/// the rotation completes with a password that works.
#[tokio::test]
async fn a_lost_create_response_is_reconciled_and_the_rotation_completes() {
    let f = Fixture::new("lost_single").await;
    let (clock, shared) = clock();
    let spy = Spy::new(Fault::LoseFirstCreate);
    let rig = Rig::new(
        "lost-single",
        clock,
        spy.wrap(provider(&f, single(&f), shared)),
        None,
    );

    let id = rig.start().await;
    assert!(in_grace(&rig.drive(&id).await));
    let made = spy.made();
    assert_eq!(made.len(), 2, "one lost, one used");
    let (lost, used) = (&made[0], &made[1]);
    assert_eq!(&rig.stored(&id).await, used);
    assert!(
        !f.can_login(&f.app, lost.expose()).await,
        "the lost password is dead"
    );
    assert!(f.can_login(&f.app, used.expose()).await);

    let create = StepId::new(Action::Create, 0);
    let events = rig.events(&id);
    assert!(
        events.contains(&RotationEvent::StepNotApplied {
            step: create,
            orphan_discarded: Some(f.app.clone()),
        }),
        "{events:#?}"
    );
    assert_eq!(
        rig.after_grace(&id).await,
        Progress::Finished(Phase::Completed)
    );
}

/// Alternating mode: the first `Create` on the idle role takes effect but its response is
/// lost, and every later `Create` is refused, so the rotation compensates. The lost
/// password must not work (the orphan was discarded), and the role in use is untouched.
#[tokio::test]
async fn a_lost_create_response_leaves_no_usable_password_when_the_rotation_gives_up() {
    let f = Fixture::new("lost_alt").await;
    let (clock, shared) = clock();
    let spy = Spy::new(Fault::LoseFirstCreateThenRefuse);
    let pg = spy.wrap(provider(&f, alternating(&f), shared));
    let rig = Rig::new("lost-alt", clock, pg, None);

    let id = rig.start().await;
    assert_eq!(rig.drive(&id).await, Progress::Finished(Phase::Compensated));
    let made = spy.made();
    assert_eq!(made.len(), 1);
    assert!(
        !f.can_login(&f.green, &password(&made[0])).await,
        "the lost password on the idle role must not work"
    );
    assert!(!f.can_login(&f.green, &f.green_password).await);
    assert!(
        f.can_login(&f.blue, &f.blue_password).await,
        "the role in use is untouched"
    );
    let events = rig.events(&id);
    assert!(
        events.contains(&RotationEvent::StepNotApplied {
            step: StepId::new(Action::Create, 0),
            orphan_discarded: Some(f.green.clone()),
        }),
        "{events:#?}"
    );

    // The next rotation still starts from blue: the discarded role was never handed out.
    let pg = roles_of(provider(&f, alternating(&f), Arc::new(rig.clock.clone())));
    let next = call(&pg, Action::Capture, "next", None, None).await;
    assert_eq!(next.unwrap(), Some(f.blue.clone()));
}

/// The role in use is the one the stores name, when they name one: before rekey's first
/// rotation the application may use either role.
#[tokio::test]
async fn the_role_in_use_is_the_one_the_stores_name() {
    let f = Fixture::new("capture_store").await;
    let (_, shared) = clock();
    let pg = roles_of(provider(&f, alternating(&f), shared));
    let capture = |value: Option<SecretValue>| {
        let pg = &pg;
        async move {
            call(pg, Action::Capture, "r", value.as_ref(), None)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        capture(None).await,
        Some(f.blue.clone()),
        "no value, no marker: the first role"
    );
    let green = json_value(&f.green, &f.green_password);
    assert_eq!(capture(Some(green)).await, Some(f.green.clone()));
    let stranger = json_value("postgres", "x");
    assert_eq!(
        capture(Some(stranger)).await,
        Some(f.blue.clone()),
        "not a configured role"
    );
    let not_json = SecretValue::new("just-a-password");
    assert_eq!(capture(Some(not_json)).await, Some(f.blue.clone()));
}

/// Single mode cannot keep the old password alive, and undoing a `Create` can set it back
/// only when given it; without it the role keeps the new password, and the outcome says so.
#[tokio::test]
async fn single_mode_undo_restores_the_old_password_only_when_given_it() {
    let f = Fixture::new("single_undo").await;
    let (_, shared) = clock();
    let pg = roles_of(provider(&f, single(&f), shared));
    let old = SecretValue::new(f.app_password.clone());

    let role = call(&pg, Action::Create, "r1", None, None).await.unwrap();
    assert_eq!(role, Some(f.app.clone()));
    assert!(!f.can_login(&f.app, &f.app_password).await);
    let kept = call(&pg, Action::Discard, "r1", None, role.as_deref()).await;
    assert_eq!(kept.unwrap().as_deref(), Some("new-password-kept"));
    assert!(!f.can_login(&f.app, &f.app_password).await);

    let restored = call(&pg, Action::Discard, "r1", Some(&old), role.as_deref()).await;
    assert_eq!(restored.unwrap(), Some(f.app.clone()));
    assert!(f.can_login(&f.app, &f.app_password).await);
}
