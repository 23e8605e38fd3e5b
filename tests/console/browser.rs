//! The console in headless Chromium: what an operator and a viewer see and do.

use std::time::Duration;

use fantoccini::Locator;

use super::{OPERATOR_TOKEN, VIEWER_TOKEN, browser, daemon, daemon_verified_by};

/// An operator signs in, sees `s0` never rotated, rotates it from the console, and its
/// timeline fills in live (through the page's progress stream) to `Completed`; the
/// Secrets page then shows the completed rotation and the History page finds it by its
/// filters, journaled with the console's actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rotates_from_the_console_and_follows_it_live() {
    let tmp = tempfile::tempdir().unwrap();
    // A slow verifier and the grace period keep the rotation open while the page loads,
    // so its end arrives over the stream.
    let d = daemon_verified_by(tmp.path(), "2s", r#"["sh", "-c", "sleep 2"]"#).await;
    let b = browser().await;
    b.sign_in(&d.base, OPERATOR_TOKEN).await;
    assert_eq!(b.text("#role").await, "Signed in as operator");
    let row = b.text("#secrets tr[data-secret='s0']").await;
    assert!(row.contains("never rotated"), "{row}");
    assert!(row.contains("none"), "no open rotation: {row}");
    b.screenshot("secrets-operator").await;

    b.click(Locator::Css("tr[data-secret='s0'] button")).await;
    b.wait_for(Locator::Id("events"), 10).await;
    let path = b.client.current_url().await.unwrap().path().to_owned();
    assert!(path.starts_with("/ui/rotations/"), "{path}");
    // As rendered by the server: open, not yet ended, a step attempt still running (the
    // verifier's; reloaded until it is seen, within the verifier's two seconds).
    let mut running = Vec::new();
    for _ in 0..40 {
        running = b
            .client
            .find_all(Locator::Css("#steps tr[data-running]"))
            .await
            .unwrap();
        if !running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.client.refresh().await.unwrap();
    }
    assert_eq!(running.len(), 1, "the page should load while a step runs");
    let first = b.text("#status").await;
    assert!(
        ["forward", "grace"].contains(&first.as_str()),
        "the rotation should still be open when its page loads: {first}"
    );
    let rendered: usize = b
        .client
        .find(Locator::Id("events"))
        .await
        .unwrap()
        .attr("data-last-seq")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    b.wait_for(Locator::Css("body[data-ended='true']"), 20)
        .await;
    assert_eq!(b.text("#status").await, "completed");
    let timeline = b.text("#events").await;
    assert!(timeline.contains("GraceScheduled"), "{timeline}");
    assert!(
        timeline
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("Completed"),
        "{timeline}"
    );
    let items = b
        .client
        .find_all(Locator::Css("#events li"))
        .await
        .unwrap()
        .len();
    assert!(
        items > rendered,
        "events were appended live ({rendered} rendered, {items} now)"
    );
    assert_eq!(b.text("#live").await, "This rotation has ended.");
    // The steps after the grace period arrived live too, each with its outcome.
    let steps = b.text("#steps").await;
    assert!(
        steps.contains("retire_old#0") && !steps.contains("running"),
        "{steps}"
    );
    assert!(b.text("#grace").await.contains("UTC"));
    b.screenshot("rotation-live").await;
    // Reloaded, the server renders the whole timeline with each step's outcome.
    b.client.refresh().await.unwrap();
    assert_eq!(b.text("#status").await, "completed");
    let steps = b.text("#steps").await;
    assert!(
        steps.contains("succeeded") && !steps.contains("running"),
        "{steps}"
    );
    assert!(b.text("#grace").await.contains("UTC"));
    b.screenshot("rotation").await;

    b.client
        .goto(&format!("{}/ui/secrets", d.base))
        .await
        .unwrap();
    let row = b.text("#secrets tr[data-secret='s0']").await;
    assert!(row.contains("completed"), "{row}");

    // History, filtered through its form.
    b.client
        .goto(&format!("{}/ui/history", d.base))
        .await
        .unwrap();
    let form = b.client.form(Locator::Id("filters")).await.unwrap();
    form.set_by_name("secret", "s*").await.unwrap();
    b.client
        .find(Locator::Id("f-status"))
        .await
        .unwrap()
        .select_by_value("completed")
        .await
        .unwrap();
    b.click(Locator::Id("apply")).await;
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_url(
            &url::Url::parse(&format!(
                "{}/ui/history?since=&until=&secret=s*&app=&tenant=&status=completed&trigger=",
                d.base
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(b.text("#count").await, "Rotations 1–1 of 1.");
    let rows = b.text("#history tbody").await;
    assert!(
        rows.contains("s0") && rows.contains("console:operator") && rows.contains("manual"),
        "{rows}"
    );
    b.screenshot("history").await;
    b.client
        .goto(&format!("{}/ui/history?status=compensated", d.base))
        .await
        .unwrap();
    assert_eq!(b.text("#count").await, "No rotation matches.");
    b.client
        .goto(&format!("{}/ui/history?since=yesterday", d.base))
        .await
        .unwrap();
    let message = b.text("#message").await;
    assert!(
        message.contains("since \"yesterday\": not an RFC 3339 time"),
        "{message}"
    );
    b.close().await;
}

/// A viewer sees the status but no Rotate button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_status_without_rotate_buttons() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let b = browser().await;
    b.sign_in(&d.base, VIEWER_TOKEN).await;
    assert_eq!(b.text("#role").await, "Signed in as viewer");
    let row = b.text("#secrets tr[data-secret='s1']").await;
    assert!(row.contains("never rotated"), "{row}");
    let buttons = b
        .client
        .find_all(Locator::Css("#secrets button"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "a viewer has no Rotate button");
    b.screenshot("secrets-viewer").await;
    // Signing out ends the session: the pages send to the sign-in form again.
    b.click(Locator::Css("form[action='/ui/logout'] button"))
        .await;
    b.wait_for(Locator::Id("token"), 10).await;
    b.screenshot("login").await;
    b.client
        .goto(&format!("{}/ui/history", d.base))
        .await
        .unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/login")
    );
    b.close().await;
}

/// The Journal page says the chains hold, offers the heads, and names the broken link
/// once an event was edited behind rekey's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_page_verifies_the_chains_and_names_a_broken_link() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let http = crate::fleet::client();
    let r = http
        .post(format!("{}/v1/secrets/s0/rotate", d.base))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut ended = false;
    for _ in 0..200 {
        let doc: serde_json::Value = http
            .get(format!("{}/v1/history?status=completed", d.base))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if doc["rotations"].as_array().is_some_and(|r| r.len() == 1) {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "the rotation should complete");

    let b = browser().await;
    b.sign_in(&d.base, VIEWER_TOKEN).await;
    b.client
        .goto(&format!("{}/ui/journal", d.base))
        .await
        .unwrap();
    let verdict = b.text("#verdict").await;
    assert!(verdict.starts_with("intact"), "{verdict}");
    b.screenshot("journal").await;
    let href = b
        .client
        .find(Locator::Id("heads"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(href, "/ui/journal/heads");

    let db = tmp.path().join("journal.db");
    let stream: String = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TRIGGER events_append_only_update;
             UPDATE events SET payload = replace(payload, '\"attempt\":1', '\"attempt\":7')
             WHERE stream_seq = 2 AND stream_id NOT LIKE 'lock:%' AND stream_id NOT LIKE 'schedule:%';",
        )
        .unwrap();
        conn.query_row(
            "SELECT stream_id FROM events WHERE stream_seq = 2 AND payload LIKE '%\"attempt\":7%'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    b.client.refresh().await.unwrap();
    let verdict = b.text("#verdict").await;
    assert!(
        verdict.starts_with("broken") && verdict.contains(&format!("stream {stream} sequence 2")),
        "{verdict}"
    );
    b.screenshot("journal-broken").await;
    b.close().await;
}

/// Keyboard only: the token field has the focus, Enter signs in, Tab reaches the first
/// Rotate button past the skip link and the navigation, Enter presses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_usable_from_the_keyboard() {
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let b = browser().await;
    b.client
        .goto(&format!("{}/ui/login", d.base))
        .await
        .unwrap();
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("token"));
    focused
        .send_keys(&format!("{OPERATOR_TOKEN}{ENTER}"))
        .await
        .unwrap();
    b.wait_for(Locator::Id("secrets"), 10).await;
    // Skip link, five pages, Sign out, then the first Rotate button.
    let mut reached = None;
    for _ in 0..12 {
        let active = b.client.active_element().await.unwrap();
        active.send_keys(TAB).await.unwrap();
        let now = b.client.active_element().await.unwrap();
        if now.attr("aria-label").await.unwrap().as_deref() == Some("Rotate s0") {
            reached = Some(now);
            break;
        }
    }
    let button = reached.expect("Tab should reach the Rotate button");
    button.send_keys(ENTER).await.unwrap();
    b.wait_for(Locator::Id("events"), 10).await;
    assert!(b.text("h1").await.contains("Rotation of s0"));
    b.close().await;
}
