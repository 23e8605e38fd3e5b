//! Entra ID application passwords (Microsoft Graph) as a rotator and a verifier.
//!
//! The source generates the value (`addPassword` returns `secretText` once), so a password
//! whose response was lost can never be used: reconcile finds it by its `displayName`
//! (which carries the step's idempotency key) and reports it as an orphan, which the runner
//! removes before creating another. Only passwords rekey created for this secret
//! (`displayName` starting `rekey:<secret>:`) are ever retired: passwords made by hand stay,
//! unless the plan names them (`retire`: a fleet rotation retires exactly the key ids
//! discovery identified with HIGH confidence as the ones its vault items held).
//! Verification is a client-credentials token request with the new password, retried for a
//! bounded time while Entra propagates it.

use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use super::credential::{client_credentials, token_url};
use super::http::{Authed, Body, Op, join};
use crate::provider::{
    BoxFuture, Created, Found, ProviderError, Reconciled, Reply, Rotator, SecretValue, Step,
    Verifier,
};

/// One application registration's passwords.
#[derive(Debug)]
pub struct AppPasswords {
    pub api: Authed,
    /// Graph with its version, e.g. `https://graph.microsoft.com/v1.0`.
    pub graph: Url,
    /// The application's object id.
    pub object_id: String,
    /// The application's client id (for verification).
    pub app_id: String,
    pub tenant: String,
    pub authority: Url,
    /// New passwords expire this long after creation.
    pub validity_days: i64,
    /// The scope verification asks a token for.
    pub verify_scope: String,
    /// How long verification keeps trying while a new password propagates.
    pub propagation_ms_max: u64,
    /// The key ids to retire, fixed in the plan (a fleet rotation; possibly none);
    /// `None`: the passwords rekey made for the secret before.
    pub retire: Option<Vec<String>>,
}

/// The `displayName` prefix of every password rekey creates for `secret`.
pub fn display_prefix(secret: &str) -> String {
    format!("rekey:{secret}:")
}

impl AppPasswords {
    fn resource(&self) -> String {
        format!("application {}", self.object_id)
    }

    fn op<'a>(action: &'a str, resource: &'a str) -> Op<'a> {
        Op {
            service: "Microsoft Graph",
            action,
            resource,
            grant: "Application.ReadWrite.OwnedBy (and make rekey an owner of the application)",
        }
    }

    /// The application's password credentials (never with their text).
    async fn passwords(&self) -> Result<Vec<Value>, ProviderError> {
        let mut url = join(
            &self.graph,
            &format!("/applications/{}", self.object_id),
            None,
        )?;
        url.query_pairs_mut()
            .append_pair("$select", "id,appId,passwordCredentials");
        let resource = self.resource();
        let resp = self
            .api
            .call(
                reqwest::Method::GET,
                &url,
                Body::Empty,
                Self::op("read passwords", &resource),
            )
            .await?;
        Ok(resp.body["passwordCredentials"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn add(
        &self,
        display_name: &str,
        now_ms: i64,
    ) -> Result<(String, SecretValue), ProviderError> {
        let url = join(
            &self.graph,
            &format!("/applications/{}/addPassword", self.object_id),
            None,
        )?;
        let end = jiff::Timestamp::from_millisecond(now_ms + self.validity_days * 86_400_000)
            .map_err(|e| ProviderError::permanent(format!("bad password expiry: {e}")))?;
        let body = json!({"passwordCredential": {"displayName": display_name, "endDateTime": end.to_string()}});
        let resource = self.resource();
        let resp = self
            .api
            .call(
                reqwest::Method::POST,
                &url,
                Body::Json(&body),
                Self::op("add a password", &resource),
            )
            .await?;
        let key_id = resp.body["keyId"].as_str();
        let text = resp.body["secretText"].as_str();
        match (key_id, text) {
            (Some(k), Some(t)) if !t.is_empty() => Ok((k.to_owned(), SecretValue::new(t))),
            // Created but unusable: reconcile will find it by name and remove it.
            _ => Err(ProviderError::transient(format!(
                "Microsoft Graph added a password to {resource} but returned no keyId or secretText"
            ))),
        }
    }

    /// Removes a password; one already gone counts as removed.
    async fn remove(&self, key_id: &str) -> Result<(), ProviderError> {
        let url = join(
            &self.graph,
            &format!("/applications/{}/removePassword", self.object_id),
            None,
        )?;
        let body = json!({ "keyId": key_id });
        let resp = self
            .api
            .send(reqwest::Method::POST, &url, Body::Json(&body))
            .await?;
        if resp.ok() {
            return Ok(());
        }
        let gone = resp.status == 404
            || (resp.status == 400
                && super::http::error_text(&resp.body).contains("No password credential found"));
        if gone
            && self
                .find(|p| p["keyId"].as_str() == Some(key_id))
                .await?
                .is_none()
        {
            return Ok(());
        }
        let resource = format!("password {key_id} of {}", self.resource());
        Err(super::http::classify(
            Self::op("remove a password", &resource),
            &resp,
        ))
    }

    async fn find(&self, pred: impl Fn(&Value) -> bool) -> Result<Option<Value>, ProviderError> {
        Ok(self.passwords().await?.into_iter().find(|p| pred(p)))
    }

    /// Proves `secret` authenticates as the application, retrying while it propagates.
    async fn verify_password(&self, secret: &SecretValue) -> Result<(), ProviderError> {
        let url = token_url(&self.authority, &self.tenant)?;
        let mut waited_ms = 0;
        let mut pause_ms = 500;
        loop {
            match client_credentials(
                &self.api.http,
                &url,
                &self.app_id,
                secret,
                &self.verify_scope,
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(e) if waited_ms >= self.propagation_ms_max => {
                    // Still failing after the propagation window: let the runner decide.
                    return Err(ProviderError {
                        message: format!(
                            "the new password of {} does not authenticate after {} s: {}",
                            self.resource(),
                            waited_ms / 1000,
                            e.message
                        ),
                        ..e
                    });
                }
                // A new password is often rejected for a while (invalid_client): keep asking.
                Err(e) => {
                    let pause = pause_ms.max(e.retry_after_ms.map_or(0, |ms| ms.max(0) as u64));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    waited_ms += pause;
                    pause_ms = (pause_ms * 2).min(10_000);
                }
            }
        }
    }
}

/// Removal is idempotent (a password already gone counts as removed), so only a create is
/// ever found by reconciling. Entra never shows a password's text again, so nothing is
/// ever revealed.
impl Rotator for AppPasswords {
    /// The passwords rekey made for this secret before, or exactly the key ids the plan
    /// names; retired after the grace period.
    /// The passwords in use are named by Graph (or by the plan), never by a value.
    fn uses_stored_value(&self) -> bool {
        false
    }

    fn capture<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            if let Some(retire) = &self.retire {
                let mut ids: Vec<String> = retire.iter().map(|k| k.to_ascii_lowercase()).collect();
                ids.sort();
                ids.dedup();
                return Ok((!ids.is_empty()).then(|| ids.join(",")));
            }
            let prefix = display_prefix(step.secret);
            let mut ids: Vec<String> = self
                .passwords()
                .await?
                .iter()
                .filter(|p| {
                    p["displayName"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .filter_map(|p| p["keyId"].as_str().map(str::to_owned))
                .collect();
            ids.sort();
            Ok((!ids.is_empty()).then(|| ids.join(",")))
        })
    }

    fn create<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(async move {
            let now = self.api.http.clock().now_ms();
            let name = format!("{}{}", display_prefix(step.secret), step.key);
            let (id, value) = self.add(&name, now).await?;
            Ok(Created { id, value })
        })
    }

    fn retire_old<'a>(&'a self, _: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async move {
            for key_id in captured.into_iter().flat_map(|c| c.split(',')) {
                self.remove(key_id).await?;
            }
            Ok(())
        })
    }

    fn discard<'a>(
        &'a self,
        _: Step<'a>,
        created: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            if let Some(key_id) = created {
                self.remove(key_id).await?;
            }
            Ok(None)
        })
    }

    fn discard_lost<'a>(&'a self, _: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async move {
            if let Some(key_id) = created {
                self.remove(key_id).await?;
            }
            Ok(())
        })
    }

    fn reconcile_create<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Reconciled> {
        Box::pin(async move {
            let name = format!("{}{}", display_prefix(step.secret), step.key);
            Ok(
                match self
                    .find(|p| p["displayName"].as_str() == Some(name.as_str()))
                    .await?
                {
                    // Its text was only in the lost response: unusable, must be removed.
                    Some(p) => Reconciled::AppliedUnusable {
                        orphan_id: p["keyId"].as_str().unwrap_or_default().to_owned(),
                    },
                    None => Reconciled::NotApplied,
                },
            )
        })
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

/// As a verifier: a client-credentials token request with the new password.
impl Verifier for AppPasswords {
    fn verify<'a>(&'a self, _: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(self.verify_password(new))
    }
}

/// As a rotator: reads the application (its client id and password metadata; Graph never
/// returns a password's text) with the credential's Graph token, and checks its client id
/// is the configured `app_id`. As a verifier: asks the tenant's OpenID discovery document
/// (no credentials), since verification signs in there with the new password.
impl crate::probe::Probe for AppPasswords {
    fn probe<'a>(
        &'a self,
        secret: &'a str,
        role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let probed = async {
                let resource = self.resource();
                if role == crate::saga::Role::Verifier {
                    let base = self.authority.as_str().trim_end_matches('/');
                    let url = format!(
                        "{base}/{}/v2.0/.well-known/openid-configuration",
                        self.tenant
                    );
                    let url = Url::parse(&url).map_err(|e| {
                        ProviderError::permanent(format!(
                            "authority {} and tenant {} make no URL: {e}",
                            self.authority, self.tenant
                        ))
                    })?;
                    let resp = self
                        .api
                        .http
                        .send(reqwest::Method::GET, &url, None, &[], Body::Empty)
                        .await?;
                    return if resp.ok() {
                        Ok(format!(
                            "tenant {} answers at {base}; verification signs in there as {} with the new password",
                            self.tenant, self.app_id
                        ))
                    } else {
                        Err(ProviderError::permanent(format!(
                            "tenant {} is unknown at {base} (HTTP {}: {}); check tenant in the config",
                            self.tenant,
                            resp.status,
                            super::http::error_text(&resp.body)
                        )))
                    };
                }
                self.api
                    .credential
                    .token(&self.api.scope)
                    .await
                    .map_err(|e| {
                        ProviderError::permanent(format!(
                            "cannot get a token for {} to read {resource}: {}",
                            self.api.scope, e.message
                        ))
                    })?;
                let mut url = join(
                    &self.graph,
                    &format!("/applications/{}", self.object_id),
                    None,
                )?;
                url.query_pairs_mut()
                    .append_pair("$select", "id,appId,passwordCredentials");
                let resp = self
                    .api
                    .call(
                        reqwest::Method::GET,
                        &url,
                        Body::Empty,
                        Self::op("read the application", &resource),
                    )
                    .await?;
                let app_id = resp.body["appId"].as_str().unwrap_or_default();
                if !app_id.eq_ignore_ascii_case(&self.app_id) {
                    return Err(ProviderError::permanent(format!(
                        "{resource} has client id {app_id:?}, not the app_id {} the config names; fix object_id or app_id",
                        self.app_id
                    )));
                }
                let prefix = display_prefix(secret);
                let ours = resp.body["passwordCredentials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        p["displayName"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&prefix))
                    })
                    .count();
                Ok(format!(
                    "{resource} (client id {app_id}) read; {ours} password(s) rekey made for {secret}"
                ))
            };
            probed.await.into()
        })
    }
}
