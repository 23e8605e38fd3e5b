//! The console's and the API's refusals, over plain HTTP: no page without a session, no
//! state change without an operator's session and its CSRF token, the API's roles, and
//! the security headers on every console response.

use reqwest::StatusCode;
use reqwest::redirect::Policy;

use super::{OPERATOR_TOKEN, VIEWER_TOKEN, daemon};
use crate::fleet::Daemon;

/// A client that keeps redirects visible and never uses a proxy.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`: the session cookie (`name=value`) and its CSRF token.
pub async fn session(d: &Daemon, token: &str) -> (String, String) {
    let r = http()
        .post(format!("{}/ui/login", d.base))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "loopback without TLS: no Secure ({set})"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = http()
        .get(format!("{}/ui/secrets", d.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with the CSRF token")
        .to_owned();
    (cookie, csrf)
}

async fn rotations(d: &Daemon) -> usize {
    let doc: serde_json::Value = http()
        .get(format!("{}/v1/history", d.base))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["rotations"].as_array().unwrap().len()
}

async fn rotate(d: &Daemon, cookie: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
    let r = http()
        .post(format!("{}/ui/secrets/s0/rotate", d.base))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_an_operator_session_and_its_csrf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;

    // No session: every page sends to the sign-in form; a wrong token gets none.
    for path in ["/ui", "/ui/secrets", "/ui/history", "/ui/rotations/x"] {
        let r = http()
            .get(format!("{}{path}", d.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()["location"], "/ui/login", "{path}");
    }
    let r = http()
        .post(format!("{}/ui/login", d.base))
        .form(&[("token", "not-a-token-of-this-daemon")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("That token is not an operator")
    );
    // Behind a proxy that says the browser spoke HTTPS, the cookie is Secure.
    let r = http()
        .post(format!("{}/ui/login", d.base))
        .header("x-forwarded-proto", "https")
        .form(&[("token", VIEWER_TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure"),
        "{:?}",
        r.headers()["set-cookie"]
    );
    let status = rotate(&d, "rekey_session=forged", &[]).await.0;
    assert_eq!(status, StatusCode::SEE_OTHER, "no session, no action");

    // An operator's session without its CSRF token, or with another: refused, nothing
    // started.
    let (cookie, csrf) = session(&d, OPERATOR_TOKEN).await;
    let (status, body) = rotate(&d, &cookie, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("CSRF token is missing or is not this session"),
        "{body}"
    );
    let (other_cookie, other_csrf) = session(&d, OPERATOR_TOKEN).await;
    assert_ne!(other_csrf, csrf);
    let (status, _) = rotate(&d, &cookie, &[("csrf", &other_csrf)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(rotations(&d).await, 0);

    // A viewer's session with its own token: refused all the same.
    let (viewer_cookie, viewer_csrf) = session(&d, VIEWER_TOKEN).await;
    let (status, body) = rotate(&d, &viewer_cookie, &[("csrf", &viewer_csrf)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("signed in as a viewer"), "{body}");
    assert_eq!(rotations(&d).await, 0);

    // Bad input is named, and starts nothing.
    let r = http()
        .post(format!("{}/ui/secrets/nope/rotate", d.base))
        .header("cookie", &other_cookie)
        .form(&[("csrf", &other_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("No secret named &#34;nope&#34; is configured, so nothing was started; configured: s0, s1."),
        "{body}"
    );
    let r = http()
        .post(format!("{}/ui/fleet/review", d.base))
        .header("cookie", &other_cookie)
        .form(&[("csrf", &other_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("No application was selected")
    );
    assert_eq!(rotations(&d).await, 0);

    // With it: started, and the browser is sent to the rotation's page.
    let r = http()
        .post(format!("{}/ui/secrets/s0/rotate", d.base))
        .header("cookie", &other_cookie)
        .form(&[("csrf", &other_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/rotations/")
    );
    assert_eq!(rotations(&d).await, 1);

    // Signed out: the cookie is worth nothing.
    let r = http()
        .post(format!("{}/ui/logout", d.base))
        .header("cookie", &cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = http()
        .get(format!("{}/ui/secrets", d.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_may_read_the_api_and_only_operators_may_post() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let get = |token: &'static str| {
        http()
            .get(format!("{}/v1/secrets", d.base))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get(VIEWER_TOKEN).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get(OPERATOR_TOKEN).await.unwrap().status(), StatusCode::OK);
    let r = http()
        .post(format!("{}/v1/secrets/s0/rotate", d.base))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("viewer role, which may only read"),
        "{body}"
    );
    assert_eq!(rotations(&d).await, 0);
    let r = http()
        .post(format!("{}/v1/secrets/s0/rotate", d.base))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http()
        .post(format!("{}/v1/secrets/s0/rotate", d.base))
        .bearer_auth("wrong-token-0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_responses_carry_a_strict_policy_and_embedded_assets() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let (cookie, _) = session(&d, VIEWER_TOKEN).await;
    for (path, kind) in [
        ("/ui/login", "text/html; charset=utf-8"),
        ("/ui/secrets", "text/html; charset=utf-8"),
        ("/ui/history", "text/html; charset=utf-8"),
        ("/ui/assets/console.css", "text/css; charset=utf-8"),
        ("/ui/assets/console.js", "text/javascript; charset=utf-8"),
    ] {
        let r = http()
            .get(format!("{}{path}", d.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], kind, "{path}");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let body = r.text().await.unwrap();
        if kind.starts_with("text/html") {
            // No inline script or style for the policy to block.
            assert!(
                !body.contains("<script>") && !body.contains("style="),
                "{path}"
            );
            assert!(!body.contains("<style"), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heads_download_is_the_journal_heads_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), "0s").await;
    let r = http()
        .post(format!("{}/v1/secrets/s1/rotate", d.base))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (cookie, _) = session(&d, VIEWER_TOKEN).await;
    let r = http()
        .get(format!("{}/ui/journal/heads", d.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"rekey-heads.jsonl\""
    );
    let body = r.text().await.unwrap();
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for head in &lines {
        assert!(
            head["stream_id"].is_string() && head["seq"].is_u64() && head["hash"].is_string(),
            "{head}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|h| h["stream_id"].as_str().unwrap().starts_with("lock:"))
    );
}
