//! Access tokens: unsigned JWTs (RFC 7519 §6, `alg: none`) carrying the claims Azure's
//! resource servers look at.
//!
//! Real tokens are signed; the fake does not sign, but its resource servers accept only tokens
//! its own token endpoints issued (see `bearer`), so a client cannot get away with a token it
//! made up, reused from another fake, or obtained for another audience. The claims follow a
//! v1 app-only token (`iss` = `https://sts.windows.net/{tid}/`, `appid`, `idtyp: app`), the
//! kind Key Vault, ARM and Graph receive for client-credentials and managed-identity callers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The claims of a fake access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The resource the token is for, e.g. `https://vault.azure.net`.
    pub aud: String,
    /// `https://sts.windows.net/{tid}/`.
    pub iss: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// The client (application) id that asked for the token.
    pub appid: String,
    /// The object id of the caller's service principal.
    pub oid: String,
    /// Same as `oid` for app-only tokens.
    pub sub: String,
    /// The tenant that issued the token.
    pub tid: String,
    /// Always `app`: the fake issues app-only tokens.
    pub idtyp: String,
    /// A unique token id, so two tokens issued in the same second differ.
    pub uti: String,
    /// Token version, `1.0`.
    pub ver: String,
}

impl Claims {
    /// App-only claims for `appid`/`oid` in `tid`, valid from `now_s` for `lifetime_s`.
    pub fn app_only(
        aud: &str,
        tid: &str,
        appid: &str,
        oid: &str,
        now_s: i64,
        lifetime_s: i64,
    ) -> Self {
        Self {
            aud: aud.to_owned(),
            iss: issuer(tid),
            iat: now_s,
            nbf: now_s,
            exp: now_s + lifetime_s,
            appid: appid.to_owned(),
            oid: oid.to_owned(),
            sub: oid.to_owned(),
            tid: tid.to_owned(),
            idtyp: "app".to_owned(),
            uti: super::ids::random_uuid(),
            ver: "1.0".to_owned(),
        }
    }
}

/// The `iss` of a v1 token from tenant `tid`.
pub fn issuer(tid: &str) -> String {
    format!("https://sts.windows.net/{tid}/")
}

const HEADER: &str = r#"{"typ":"JWT","alg":"none"}"#;

/// `base64url(header).base64url(claims).` — the empty third part is the (absent) signature.
pub fn encode(claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// Why a bearer token could not even be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Not three dot-separated parts.
    NotThreeParts,
    /// A part is not base64url, or not the JSON expected.
    BadPart,
}

/// Reads the claims of a token shaped like the ones [`encode`] makes.
pub fn decode(token: &str) -> Result<Claims, Malformed> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, _signature] = parts.as_slice() else {
        return Err(Malformed::NotThreeParts);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Malformed::BadPart)?;
    serde_json::from_slice::<serde_json::Value>(&header).map_err(|_| Malformed::BadPart)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Malformed::BadPart)?;
    serde_json::from_slice(&payload).map_err(|_| Malformed::BadPart)
}
