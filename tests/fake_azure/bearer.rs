//! Bearer-token checks shared by the resource servers (Key Vault, ARM, Graph). Each service
//! turns a [`Rejected`] into its own 401 (header and body differ per service).

use super::http::Incoming;
use super::jwt::{self, Claims};
use super::state::Shared;

/// Why a request's bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// No `Authorization: Bearer` header (the first leg of Key Vault's challenge flow).
    Missing,
    /// Not a JWT at all.
    Malformed,
    /// A well-formed token this fake never issued ("signature validation failed").
    NotIssued,
    /// Past its `exp` by the fake's clock.
    Expired { exp: i64 },
    /// Issued for another resource.
    WrongAudience { found: String },
    /// Issued by another tenant than the fake's home tenant.
    WrongTenant { found: String },
}

/// Checks the request's bearer token: issued by this fake, unexpired, for one of `audiences`,
/// from the home tenant.
pub(crate) fn check(
    shared: &Shared,
    incoming: &Incoming,
    audiences: &[&str],
) -> Result<Claims, Rejected> {
    let token = incoming
        .header("authorization")
        .and_then(|a| {
            let (scheme, token) = a.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(Rejected::Missing)?;
    let claims = jwt::decode(token).map_err(|_| Rejected::Malformed)?;
    if !shared.lock().tokens.contains(token) {
        return Err(Rejected::NotIssued);
    }
    if claims.exp <= shared.now_s() {
        return Err(Rejected::Expired { exp: claims.exp });
    }
    if !audiences.contains(&claims.aud.as_str()) {
        return Err(Rejected::WrongAudience { found: claims.aud });
    }
    if claims.tid != shared.tenant {
        return Err(Rejected::WrongTenant { found: claims.tid });
    }
    Ok(claims)
}
