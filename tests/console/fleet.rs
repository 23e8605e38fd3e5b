//! The Fleet page in headless Chromium against the fake Azure services: an operator
//! discovers, sees credentials by expiry with their linked copies, selects two
//! applications, reviews (one refused, as the command line reviews it) and confirms; the
//! rotation runs to its end. An application named with markup shows as text. A viewer
//! has no selection or Review, and its POST is refused.

use fantoccini::Locator;

use super::{OPERATOR_TOKEN, VIEWER_TOKEN, browser};
use crate::fake_azure::{App, FakeAzure, PasswordCred};
use crate::fleet::{Daemon, READER_ID, READER_SECRET, config_text, free_port, start_daemon};

const MARKUP_APP: &str = "<img src=x onerror=alert(1)>";

async fn start(fake: &FakeAzure, dir: &std::path::Path) -> Daemon {
    let port = free_port();
    let text = format!(
        "{}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_OPERATOR\"\nviewer_token_env = \"REKEY_TEST_VIEWER\"\n",
        config_text(
            fake,
            &["kv-alpha"],
            &[],
            "[fleet.rotation]\ngrace = \"1s\"\n"
        )
    );
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
    start_daemon(
        dir,
        "rekey.toml",
        port,
        &[
            ("REKEY_TEST_OPERATOR", OPERATOR_TOKEN),
            ("REKEY_TEST_VIEWER", VIEWER_TOKEN),
        ],
    )
    .await
}

fn seed(fake: &FakeAzure) {
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    crate::fleet::api::seed(fake);
    let now = jiff::Timestamp::now();
    fake.graph_insert_app(App {
        object_id: "0b000000-0000-4000-8000-0000000000c3".into(),
        app_id: "0a000000-0000-4000-8000-0000000000c3".into(),
        principal_id: "0f000000-0000-4000-8000-0000000000c3".into(),
        display_name: MARKUP_APP.into(),
        tags: Vec::new(),
        passwords: vec![PasswordCred::new(
            "0c000000-0000-4000-8000-0000000000c3",
            None,
            "markup8Q~hand-made",
            now - jiff::SignedDuration::from_hours(24 * 100),
            now + jiff::SignedDuration::from_hours(24 * 40),
        )],
        keys: Vec::new(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reviews_and_confirms_a_fleet_rotation() {
    let fake = FakeAzure::start().await;
    seed(&fake);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&fake, dir.path()).await;
    let b = browser().await;
    b.sign_in(&d.base, OPERATOR_TOKEN).await;
    b.client
        .goto(&format!("{}/ui/fleet", d.base))
        .await
        .unwrap();
    assert_eq!(
        b.text("#discovery").await,
        "No discovery has been journaled yet."
    );
    b.click(Locator::Id("discover")).await;
    b.wait_for(Locator::Id("credentials"), 20).await;
    // By expiry: orders and search (10 days) before the markup-named app (40 days).
    let rows = b.text("#credentials tbody").await;
    let (orders, search, markup) = (
        rows.find("orders").unwrap(),
        rows.find("search").unwrap(),
        rows.find(MARKUP_APP)
            .expect("the markup name shows as text"),
    );
    assert!(orders.max(search) < markup, "{rows}");
    assert!(rows.contains("kv-alpha/orders-client-secret"), "{rows}");
    assert!(rows.contains("HIGH"), "{rows}");
    // Markup in a name is text: no image element was made of it.
    assert!(
        b.client
            .find_all(Locator::Css("#credentials img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.client
            .find_all(Locator::Css("svg.timeline-chart circle"))
            .await
            .unwrap()
            .len(),
        3
    );
    b.screenshot("fleet").await;

    for app in [
        "0a000000-0000-4000-8000-0000000000a1",
        "0a000000-0000-4000-8000-0000000000b2",
    ] {
        b.click(Locator::Css(&format!(
            "tr[data-app='{app}'] input[type=checkbox]"
        )))
        .await;
    }
    b.click(Locator::Id("review")).await;
    let review = b
        .wait_for(Locator::Id("review-text"), 20)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        review.contains("rotate orders (0a000000-0000-4000-8000-0000000000a1)"),
        "{review}"
    );
    assert!(
        review.contains("writes kv-alpha/orders-client-secret (high)"),
        "{review}"
    );
    assert!(review.contains("refused search"), "{review}");
    assert!(
        !review.contains("img"),
        "only the selected applications: {review}"
    );
    b.screenshot("fleet-review").await;
    b.click(Locator::Id("confirm")).await;
    let link = b.wait_for(Locator::Css("#started a"), 20).await;
    assert_eq!(link.text().await.unwrap(), "started");
    b.screenshot("fleet-started").await;
    link.click().await.unwrap();
    b.wait_for(
        Locator::Css("body[data-ended='true'], #status.completed"),
        30,
    )
    .await;
    b.client.refresh().await.unwrap();
    assert_eq!(b.text("#status").await, "completed");
    assert!(b.text("main").await.contains("bulk, by console:operator"));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_has_no_fleet_actions_and_its_post_is_refused() {
    let fake = FakeAzure::start().await;
    seed(&fake);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&fake, dir.path()).await;
    let b = browser().await;
    b.sign_in(&d.base, VIEWER_TOKEN).await;
    b.client
        .goto(&format!("{}/ui/fleet", d.base))
        .await
        .unwrap();
    assert!(
        b.client
            .find_all(Locator::Css("main button"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.client
            .find_all(Locator::Css("input[type=checkbox]"))
            .await
            .unwrap()
            .is_empty()
    );
    // The form posted anyway, with the viewer's own session and CSRF token: refused.
    let csrf = b
        .client
        .find(Locator::Css("form[action='/ui/logout'] input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    for action in ["/ui/fleet/discover", "/ui/fleet/review", "/ui/fleet/rotate"] {
        b.client
            .execute(
                "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];\
                 for (const [k, v] of [['csrf', arguments[1]], ['app', '0a000000-0000-4000-8000-0000000000a1']]) {\
                   const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.append(i); }\
                 document.body.append(f); f.submit();",
                vec![action.into(), csrf.clone().into()],
            )
            .await
            .unwrap();
        let message = b
            .wait_for(Locator::Id("message"), 10)
            .await
            .text()
            .await
            .unwrap();
        assert!(
            message.contains("signed in as a viewer"),
            "{action}: {message}"
        );
    }
    b.screenshot("refused-viewer").await;
    // Nothing was discovered or started.
    b.client
        .goto(&format!("{}/ui/fleet", d.base))
        .await
        .unwrap();
    assert_eq!(
        b.text("#discovery").await,
        "No discovery has been journaled yet."
    );
    b.close().await;
}
