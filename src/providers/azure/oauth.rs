//! A token from an OAuth 2.0 token endpoint as the rotated value (for services whose API
//! keys are short-lived access tokens, refreshed on a schedule). Fetching a token changes
//! nothing at the source, so there is nothing to reconcile, retire or discard: the token
//! simply expires.

use url::Url;

use super::credential::client_credentials;
use super::http::Http;
use crate::provider::{BoxFuture, Created, Found, Reconciled, Reply, Rotator, SecretValue, Step};

/// Client credentials against one token endpoint.
#[derive(Debug)]
pub struct OAuthToken {
    pub http: Http,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub scope: String,
}

/// A token cannot be revoked here and fetching one changes nothing at the source: there
/// is nothing to capture, retire, discard or reconcile; the token simply expires.
impl Rotator for OAuthToken {
    fn capture<'a>(&'a self, _: Step<'a>, _: Option<&'a SecretValue>) -> Reply<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    fn create<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(async move {
            let token = client_credentials(
                &self.http,
                &self.token_url,
                &self.client_id,
                &self.client_secret,
                &self.scope,
            )
            .await?;
            Ok(Created {
                id: format!("token-expiring-{}", token.expires_at_ms),
                value: token.token,
            })
        })
    }

    fn retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn discard<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    fn discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn reconcile_create<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Reconciled> {
        Box::pin(async { Ok(Reconciled::NotApplied) })
    }

    fn reconcile_retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_discard<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// Asks the token endpoint for a token, as a rotation's `create` does; a token changes
/// nothing at the source and this one is dropped unseen.
impl crate::probe::Probe for OAuthToken {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let token = client_credentials(
                &self.http,
                &self.token_url,
                &self.client_id,
                &self.client_secret,
                &self.scope,
            )
            .await;
            token
                .map(|_| {
                    format!(
                        "{} issued a token for {} to client {} (not shown)",
                        self.token_url, self.scope, self.client_id
                    )
                })
                .into()
        })
    }
}
