//! A token from an OAuth 2.0 token endpoint as the rotated value (for services whose API
//! keys are short-lived access tokens, refreshed on a schedule). Fetching a token changes
//! nothing at the source, so there is nothing to reconcile, retire or discard: the token
//! simply expires.

use url::Url;

use super::credential::client_credentials;
use super::http::Http;
use crate::provider::{Applied, BoxFuture, Call, Provider, ProviderError, Reconciled, SecretValue};
use crate::saga::Action;

/// Client credentials against one token endpoint.
#[derive(Debug)]
pub struct OAuthToken {
    pub http: Http,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub scope: String,
}

impl Provider for OAuthToken {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            match call.step.action {
                Action::Capture | Action::RetireOld => Ok(Applied::default()),
                Action::Create => {
                    let token = client_credentials(
                        &self.http,
                        &self.token_url,
                        &self.client_id,
                        &self.client_secret,
                        &self.scope,
                    )
                    .await?;
                    Ok(Applied {
                        id: Some(format!("token-expiring-{}", token.expires_at_ms)),
                        value: Some(token.token),
                    })
                }
                _ => Err(ProviderError::unsupported(
                    call,
                    "an OAuth token rotator",
                    "perform",
                    "",
                )),
            }
        })
    }

    fn compensate<'a>(
        &'a self,
        _call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        // A token cannot be revoked here; it expires on its own.
        Box::pin(async { Ok(Applied::default()) })
    }

    fn reconcile<'a>(
        &'a self,
        _call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>> {
        Box::pin(async { Ok(Reconciled::NotApplied) })
    }

    fn read_value<'a>(
        &'a self,
        _version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::permanent(
                "a token endpoint keeps no copy of its tokens",
            ))
        })
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
