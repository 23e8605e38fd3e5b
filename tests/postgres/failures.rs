//! Failures that must explain themselves without leaking anything: a wrong admin password,
//! TLS checked against the configured root, and a scan of the journal, the logs and the
//! error messages of several rotations for every password involved.

use rekey::config::Config;
use rekey::provider::{Roles, SecretValue};
use rekey::providers::local::LocalVault;
use rekey::providers::postgres::Tls;
use rekey::runner::Progress;
use rekey::saga::{Action, ErrorClass, Phase, RotationEvent};

use super::harness::{
    ADMIN_ENV, Fault, Logs, RefusingStore, Rig, Spy, alternating, call, clock, json_value,
    password, provider, roles_of, single,
};
use super::server::{Fixture, TLS_ONLY_USER, server};

/// A wrong admin password is refused for good, with a message naming the server, the
/// user and what to check, and never the password tried.
#[tokio::test]
async fn a_wrong_admin_password_is_a_clear_permanent_error() {
    let f = Fixture::new("bad_admin").await;
    let (clock, shared) = clock();
    let wrong = "not-the-admin-password-4f1c9a";
    let mut pg = provider(&f, alternating(&f), shared);
    pg.admin_password = SecretValue::new(wrong);
    let pg = roles_of(pg);

    let e = call(&pg, Action::Capture, "r", None, None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    for part in [
        format!("127.0.0.1:{}", f.port),
        f.admin.clone(),
        f.db.clone(),
        ADMIN_ENV.to_owned(),
        "pg_hba.conf".to_owned(),
        "password authentication failed".to_owned(),
    ] {
        assert!(e.message.contains(&part), "{:?} lacks {part:?}", e.message);
    }
    assert!(!e.message.contains(wrong), "{}", e.message);

    // Through the runner: the rotation gives up at once, changes nothing, says why.
    let rig = Rig::new("bad-admin", clock, pg, None);
    let id = rig.start().await;
    assert_eq!(rig.drive(&id).await, Progress::Finished(Phase::Compensated));
    let failed: Vec<String> = rig
        .events(&id)
        .into_iter()
        .filter_map(|e| match e {
            RotationEvent::StepFailed { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        failed
            .iter()
            .any(|m| m.contains(&f.admin) && m.contains(ADMIN_ENV)),
        "{failed:?}"
    );
    assert!(failed.iter().all(|m| !m.contains(wrong)));
    assert!(f.can_login(&f.blue, &f.blue_password).await);
    assert!(f.can_login(&f.green, &f.green_password).await);
}

/// TLS from the config: the server's certificate is checked against `tls_ca_file` and the
/// host name, for the admin connection (which the server accepts over TLS only) and for
/// verification; without the right root the connection is refused with what to check.
#[tokio::test]
async fn tls_is_verified_against_the_configured_root() {
    let f = Fixture::new("tls").await;
    assert_eq!(f.admin, TLS_ONLY_USER);
    let dir = tempfile::tempdir().unwrap();
    let config = |ca: &str| {
        format!(
            r#"[journal]
path = "journal.db"

[providers.pg]
kind = "postgres_role"
host = "localhost"
port = {port}
dbname = "{db}"
admin_user = "{admin}"
admin_password_env = "PG_ADMIN_PASSWORD"
mode = "single"
role = "{app}"
verify_host = "127.0.0.1"
{ca}
"#,
            port = f.port,
            db = f.db,
            admin = f.admin,
            app = f.app,
        )
    };
    let build = |text: String| {
        let (_, shared) = clock();
        let env = |var: &str| (var == "PG_ADMIN_PASSWORD").then(|| f.admin_password.clone());
        Config::parse(&dir.path().join("rekey.toml"), &text)
            .unwrap()
            .build_providers(shared, &env)
            .unwrap()
            .roles("pg")
            .unwrap()
            .clone()
    };
    let ca = format!("tls_ca_file = {:?}", server().ca_file);
    let pg = build(config(&ca));
    assert_eq!(
        call(&pg, Action::Capture, "r", None, None).await.unwrap(),
        Some(f.app.clone())
    );
    let current = SecretValue::new(f.app_password.clone());
    call(&pg, Action::Verify, "r", Some(&current), None)
        .await
        .unwrap();

    // The system's roots do not include this run's CA.
    let pg = build(config(""));
    let e = call(&pg, Action::Capture, "r", None, None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    for part in ["TLS", "tls_ca_file", "localhost:"] {
        assert!(e.message.contains(part), "{:?} lacks {part:?}", e.message);
    }

    // Without TLS this admin is refused by the server: the first connection used TLS.
    let (_, shared) = clock();
    let mut plain = provider(&f, single(&f), shared);
    plain.tls = Tls::Disable;
    let e = call(&roles_of(plain), Action::Capture, "r", None, None)
        .await
        .unwrap_err();
    assert!(e.message.contains("refused the login"), "{}", e.message);
}

/// No password rekey made, no password of the fixture, and no SCRAM verifier appears in
/// the journal, the tracing output (down to TRACE) or an error message, across a completed
/// rotation with a lost response, a compensated one, and failed verifications.
#[tokio::test]
async fn no_password_reaches_the_journal_the_logs_or_an_error() {
    let f = Fixture::new("scan").await;
    let logs = Logs::default();
    let _guard = logs.capture();

    // A completed rotation whose first Create response was lost.
    let (clock1, shared1) = clock();
    let spy1 = Spy::new(Fault::LoseFirstCreate);
    let pg1 = spy1.wrap(provider(&f, alternating(&f), shared1.clone()));
    let rig1 = Rig::new("scan-1", clock1, pg1, None);
    let r1 = rig1.start().await;
    rig1.drive(&r1).await;
    assert_eq!(
        rig1.after_grace(&r1).await,
        Progress::Finished(Phase::Completed)
    );

    // A rotation whose store refuses the new value: the new role's password is discarded.
    let (clock2, shared2) = clock();
    let spy2 = Spy::new(Fault::None);
    let pg2 = spy2.wrap(provider(&f, alternating(&f), shared2.clone()));
    let refuse: fn(LocalVault) -> Roles = RefusingStore::wrap;
    let rig2 = Rig::new("scan-2", clock2, pg2, Some(refuse));
    let r2 = rig2.start().await;
    assert_eq!(
        rig2.drive(&r2).await,
        Progress::Finished(Phase::Compensated)
    );
    let in_use = rig1.stored(&r1).await;
    assert!(
        f.can_login(&f.green, &password(&in_use)).await,
        "compensation leaves the role in use alone"
    );
    assert!(
        !f.can_login(&f.blue, &password(&spy2.made()[0])).await,
        "the discarded password does not work"
    );

    // Verifications that fail: the value tried must not be echoed.
    let wrong = SecretValue::new("wrong-password-value-8d2e");
    let pg = roles_of(provider(&f, alternating(&f), shared1.clone()));
    let wrong_json = json_value(&f.green, wrong.expose());
    let e1 = call(&pg, Action::Verify, &r1, Some(&wrong_json), None)
        .await
        .unwrap_err();
    let pg_single = roles_of(provider(&f, single(&f), shared1));
    let e2 = call(&pg_single, Action::Verify, "r", Some(&wrong), None)
        .await
        .unwrap_err();
    for e in [&e1, &e2] {
        assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
        assert!(
            e.message.contains("new password does not work"),
            "{}",
            e.message
        );
    }

    let mut secrets: Vec<String> = spy1
        .made()
        .into_iter()
        .chain(spy2.made())
        .map(|v| password(&v))
        .collect();
    assert_eq!(secrets.len(), 3, "lost, used, discarded");
    secrets.extend([
        wrong.expose().to_owned(),
        f.admin_password.clone(),
        f.blue_password.clone(),
        f.green_password.clone(),
    ]);
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for (name, rig) in [("journal 1", &rig1), ("journal 2", &rig2)] {
        for e in rig.journal.all_events() {
            haystacks.push((format!("{name} {} #{}", e.kind, e.global_seq), e.payload));
        }
    }
    haystacks.push(("tracing output".into(), logs.text()));
    haystacks.push(("verify error (alternating)".into(), e1.message.clone()));
    haystacks.push(("verify error (single)".into(), e2.message.clone()));
    for (name, text) in &haystacks {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a password appears in the {name}"
            );
        }
        assert!(
            !text.contains("SCRAM-SHA-256$"),
            "a verifier appears in the {name}"
        );
    }
    // The capture really saw the provider and the runner at work.
    let text = logs.text();
    for expected in [
        "role password set",
        "new password verified",
        "step succeeded",
    ] {
        assert!(text.contains(expected), "tracing output lacks {expected:?}");
    }
}
