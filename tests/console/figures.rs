//! Figures for the console over a large journal, printed (run with `--nocapture`), never
//! asserted on time: the History page over 1,000 ended rotations, its weight (HTML, CSS,
//! JS bytes) and the browser's own navigation and paint timings read through WebDriver.

use std::sync::Arc;

use fantoccini::Locator;
use rekey::journal::{Clock as _, ManualClock, SqliteJournal, SystemClock};

use super::{OPERATOR_TOKEN, browser, daemon};

#[path = "../../benches/support/history_journal.rs"]
mod history_journal;

const ROTATIONS: i64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_page_over_a_thousand_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let clock = ManualClock::new(history_journal::T0);
        let journal =
            SqliteJournal::open_with_clock(tmp.path().join("journal.db"), Arc::new(clock.clone()))
                .unwrap();
        history_journal::write(&journal, &clock, ROTATIONS).await;
    }
    let d = daemon(tmp.path(), "0s").await;
    let b = browser().await;
    b.sign_in(&d.base, OPERATOR_TOKEN).await;
    let asked = SystemClock.now_ms();
    b.client
        .goto(&format!("{}/ui/history", d.base))
        .await
        .unwrap();
    let loaded = SystemClock.now_ms() - asked;
    assert_eq!(b.text("#count").await, "Rotations 1–50 of 1000.");
    assert_eq!(
        b.client
            .find_all(Locator::Css("#history tbody tr"))
            .await
            .unwrap()
            .len(),
        50
    );
    let timing = b
        .client
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];\
             const paint = name => (performance.getEntriesByType('paint').find(e => e.name === name) || {}).startTime;\
             return { response_start: n.responseStart, response_end: n.responseEnd,\
                      dom_content_loaded: n.domContentLoadedEventEnd, load: n.loadEventEnd,\
                      first_paint: paint('first-paint'), first_contentful_paint: paint('first-contentful-paint'),\
                      html_bytes: n.decodedBodySize };",
            vec![],
        )
        .await
        .unwrap();
    b.screenshot("history-1000").await;

    // The last page, through the page links.
    b.client
        .goto(&format!("{}/ui/history?page=20", d.base))
        .await
        .unwrap();
    assert_eq!(b.text("#count").await, "Rotations 951–1000 of 1000.");
    assert!(
        b.client
            .find_all(Locator::Css("a[rel=next]"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.client
            .find_all(Locator::Css("a[rel=prev]"))
            .await
            .unwrap()
            .len(),
        1
    );

    // The weight, as a browser without a cache fetches it.
    let (cookie, _) = super::access::session(&d, OPERATOR_TOKEN).await;
    let http = crate::fleet::client();
    let mut weights = Vec::new();
    for path in [
        "/ui/history",
        "/ui/assets/console.css",
        "/ui/assets/console.js",
    ] {
        let started = SystemClock.now_ms();
        let body = http
            .get(format!("{}{path}", d.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        weights.push((path, body.len(), SystemClock.now_ms() - started));
    }
    let total: usize = weights.iter().map(|w| w.1).sum();
    println!("console History page over {ROTATIONS} rotations (50 rows a page):");
    for (path, bytes, took) in &weights {
        println!("  {path}: {bytes} bytes, served in {took} ms");
    }
    println!("  total page weight: {total} bytes (HTML + CSS + JS, uncompressed)");
    println!("  WebDriver navigation (goto until load): {loaded} ms");
    println!("  browser timing (ms from navigation start): {timing}");
    b.close().await;
}
