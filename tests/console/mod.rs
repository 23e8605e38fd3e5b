//! The web console (`/ui`) in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver) against `rekey run` on 127.0.0.1 with local providers, plus
//! the refusals checked over plain HTTP.
//!
//! - `browser`: sign in, see a secret's status, rotate and follow the timeline live to
//!   its terminal event, filter the history; a viewer has no Rotate button;
//! - `access`: no page without a session, the viewer's POST and a POST without the CSRF
//!   token are refused, the API's roles, the security headers.
//!
//! Each browser test starts its own ChromeDriver on a free loopback port, in its own
//! process group (ended with the browser it started when the test ends, passing or not),
//! and a browser with a fresh profile under a temporary directory. Without Chromium or
//! ChromeDriver the tests fail saying how to install them: they are never skipped.
//! Screenshots of each page are saved under `target/console-screenshots/`.

pub mod access;
mod browser;
mod figures;
mod fleet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::fleet::{Daemon, client, free_port, start_daemon};

pub const OPERATOR_TOKEN: &str = "console-operator-token-5d1e";
pub const VIEWER_TOKEN: &str = "console-viewer-token-8a2b";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `rekey run` over local providers: secrets `s0` and `s1`, each rotated into a local
/// vault with a grace period of `grace`; operator and viewer tokens set.
pub async fn daemon(dir: &Path, grace: &str) -> Daemon {
    daemon_verified_by(dir, grace, r#"["true"]"#).await
}

/// As [`daemon`], the new values checked by the command `verifier` (a TOML array).
pub async fn daemon_verified_by(dir: &Path, grace: &str, verifier: &str) -> Daemon {
    let port = free_port();
    let mut text = crate::daemon::config_text(2, grace, verifier);
    text.push_str(&format!(
        "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_OPERATOR\"\nviewer_token_env = \"REKEY_TEST_VIEWER\"\n"
    ));
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

/// A ChromeDriver and the headless Chromium it drives, for one test.
pub struct Browser {
    pub client: Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver runs in its own process group, with the browser it started: end both.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY-free: a plain signal to a process group this test created.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.driver.wait();
    }
}

/// Fails (never skips) when the browser or its driver is missing.
fn tools() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: the console's browser tests need Chromium and ChromeDriver; run .ci/run (it installs them: apt-get install chromium chromium-driver)"
        );
    }
}

/// A fresh headless Chromium through a ChromeDriver of its own.
pub async fn browser() -> Browser {
    tools();
    let port = free_port();
    let mut command = std::process::Command::new(CHROMEDRIVER);
    command
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut driver = command.spawn().expect("start chromedriver");
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if client()
            .get(format!("{base}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("chromedriver exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !up {
        let _ = driver.kill();
        panic!("chromedriver never answered on {base}");
    }
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let started = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&base)
        .await;
    let client = match started {
        Ok(c) => c,
        Err(e) => {
            let _ = driver.kill();
            panic!("chromium did not start through chromedriver: {e}");
        }
    };
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

impl Browser {
    /// Signs in at `base` with `token`, landing on the Secrets page.
    pub async fn sign_in(&self, base: &str, token: &str) {
        let c = &self.client;
        c.goto(&format!("{base}/ui/secrets")).await.unwrap();
        // No session: sent to the sign-in form.
        assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
        let field = c.find(Locator::Id("token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.click(Locator::Id("sign-in")).await;
        self.wait_for(Locator::Id("secrets"), 10).await;
    }

    /// Clicks the element `locator` finds.
    pub async fn click(&self, locator: Locator<'_>) {
        self.client
            .find(locator)
            .await
            .unwrap_or_else(|e| panic!("{locator:?}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits at most `seconds` for the element `locator` finds, and gives it.
    pub async fn wait_for(&self, locator: Locator<'_>, seconds: u64) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(seconds))
            .for_element(locator)
            .await
            .unwrap_or_else(|e| panic!("waiting for {locator:?}: {e}"))
    }

    /// The text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Saves a screenshot of the page as `target/console-screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `target/console-screenshots/`.
pub fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots")
}
