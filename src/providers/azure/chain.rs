//! The `default` credential: environment → workload identity → managed identity → Azure
//! CLI, the order Azure users know from their SDKs. The first link that hands out a token
//! is kept for the life of the process, and the log says which one it was; when none
//! works, the error lists why each did not.

use std::sync::Mutex;
use std::time::Duration;

use tracing::info;
use url::Url;

use super::credential::{Credential, TokenCache};
use crate::provider::{BoxFuture, ProviderError, SecretValue};
use crate::saga::ErrorClass;

/// How long a managed identity endpoint may take to accept a connection before the
/// chain moves on (on a laptop nothing listens there).
pub const PROBE_TIMEOUT_MS: u64 = 1_000;

/// One way the chain may get tokens.
#[derive(Debug)]
pub struct Link {
    /// What the log and errors call it: "environment", "workload identity", …
    pub label: &'static str,
    pub state: LinkState,
}

/// Whether a link can be tried.
#[derive(Debug)]
pub enum LinkState {
    /// Its settings are missing; the reason names them.
    Unavailable(String),
    /// Ready; `probe` is an address that must accept a connection first (IMDS).
    Ready {
        cache: Box<TokenCache>,
        probe: Option<Url>,
    },
}

/// The `default` credential.
#[derive(Debug)]
pub struct Chain {
    /// The configured credential's name, for the log and errors.
    name: String,
    links: Vec<Link>,
    chosen: Mutex<Option<usize>>,
}

impl Chain {
    /// A chain over `links`, tried in order.
    pub fn new(name: impl Into<String>, links: Vec<Link>) -> Self {
        Self {
            name: name.into(),
            links,
            chosen: Mutex::new(None),
        }
    }

    /// The label of the link in use, once one has handed out a token.
    pub fn chosen(&self) -> Option<&'static str> {
        let chosen = *self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        chosen.map(|i| self.links[i].label)
    }

    async fn first_token(&self, scope: &str) -> Result<SecretValue, ProviderError> {
        let mut reasons = Vec::new();
        for (i, link) in self.links.iter().enumerate() {
            let (cache, probe) = match &link.state {
                LinkState::Unavailable(why) => {
                    reasons.push(format!("{}: {why}", link.label));
                    continue;
                }
                LinkState::Ready { cache, probe } => (cache, probe),
            };
            if let Some(url) = probe
                && let Err(why) = reachable(url).await
            {
                reasons.push(format!("{}: {why}", link.label));
                continue;
            }
            match cache.token(scope).await {
                Ok(token) => {
                    *self.chosen.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                    info!(
                        credential = self.name,
                        using = link.label,
                        "Azure credential chosen"
                    );
                    return Ok(token);
                }
                // A link that is set up but failing for a while is not skipped: moving
                // on would pick another identity because of a network blip.
                Err(e) if e.class != ErrorClass::Permanent => return Err(e),
                Err(e) => reasons.push(format!("{}: {}", link.label, e.message)),
            }
        }
        Err(ProviderError::permanent(format!(
            "credential {}: no Azure credential in the default chain worked ({}); set one up, or name a specific kind in [credentials.{}]",
            self.name,
            reasons.join("; "),
            self.name
        )))
    }
}

impl Credential for Chain {
    fn token<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            let chosen = *self.chosen.lock().unwrap_or_else(|p| p.into_inner());
            match chosen.map(|i| &self.links[i].state) {
                Some(LinkState::Ready { cache, .. }) => cache.token(scope).await,
                _ => self.first_token(scope).await,
            }
        })
    }
}

/// Whether something accepts connections at `url`'s host and port.
async fn reachable(url: &Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("nothing answers at {host}:{port} ({e})")),
        Err(_) => Err(format!(
            "nothing answered at {host}:{port} within {PROBE_TIMEOUT_MS} ms"
        )),
    }
}
