//! Azure: Key Vault secrets, App Service settings, Entra application passwords, storage
//! account keys, and the tokens to call them. All over `reqwest`, with every endpoint base
//! URL configurable (sovereign clouds, tests). Bearer tokens go only over HTTPS, or plain
//! HTTP to a loopback address.

pub mod appservice;
pub mod azure_cli;
pub mod budget;
pub mod certificate;
pub mod chain;
pub mod credential;
pub mod graph;
pub mod http;
pub mod keyvault;
pub mod oauth;
pub mod storage;

use url::Url;

use crate::provider::ProviderError;

/// Base URLs of the Azure services rekey calls.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Entra ID authority, e.g. `https://login.microsoftonline.com`.
    pub authority: Url,
    /// Azure Resource Manager, e.g. `https://management.azure.com`.
    pub arm: Url,
    /// Microsoft Graph with its version, e.g. `https://graph.microsoft.com/v1.0`.
    pub graph: Url,
}

impl Default for Endpoints {
    /// The public Azure cloud.
    fn default() -> Self {
        let url = |s: &str| Url::parse(s).unwrap_or_else(|_| unreachable!("constant URL {s}"));
        Self {
            authority: url("https://login.microsoftonline.com"),
            arm: url("https://management.azure.com"),
            graph: url("https://graph.microsoft.com/v1.0"),
        }
    }
}

/// True when `url` may carry a bearer token or a client secret: HTTPS anywhere, plain
/// HTTP only to this machine.
pub fn may_carry_credentials(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

/// Refuses to send credentials to `url` unless [`may_carry_credentials`].
///
/// # Errors
/// A permanent [`ProviderError`] naming the URL's origin.
pub fn guard_credentials(url: &Url) -> Result<(), ProviderError> {
    if may_carry_credentials(url) {
        Ok(())
    } else {
        Err(ProviderError::permanent(format!(
            "refusing to send credentials to {}://{}: use https (plain http is allowed only to 127.0.0.1, ::1 or localhost)",
            url.scheme(),
            url.host_str().unwrap_or("(no host)")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_over_https_or_to_loopback() {
        let ok = [
            "https://myvault.vault.azure.net/secrets/x",
            "http://127.0.0.1:8080/v",
            "http://127.9.9.9/v",
            "http://[::1]:9/v",
            "http://localhost:1/v",
        ];
        let refused = [
            "http://myvault.vault.azure.net/secrets/x",
            "http://10.0.0.5/v",
            "http://192.168.1.1/v",
            "http://[::2]/v",
            "ftp://127.0.0.1/v",
            "http://localhost.evil.example/v",
        ];
        for u in ok {
            assert!(may_carry_credentials(&Url::parse(u).unwrap()), "{u}");
        }
        for u in refused {
            let err = guard_credentials(&Url::parse(u).unwrap()).unwrap_err();
            assert!(err.message.contains("refusing to send credentials"), "{u}");
        }
    }
}
