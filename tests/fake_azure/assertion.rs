//! Client assertions (RFC 7523), as the identity platform checks them: an RS256 JWT whose
//! `x5t` header names, by SHA-1 thumbprint, a certificate registered on the app; signed by
//! that certificate's key; `aud` the token endpoint; `iss` and `sub` the client id; inside
//! its validity window (five minutes of clock skew allowed).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::sign::Verifier;
use openssl::x509::X509;
use serde_json::Value;

/// The only `client_assertion_type`.
pub const TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on `nbf` and `exp`.
const SKEW_S: i64 = 300;

/// Why an assertion was refused: an AADSTS code and its message.
pub struct Rejected {
    pub code: u32,
    pub message: String,
}

fn rejected(code: u32, message: impl Into<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
    }
}

/// Checks `jwt` for `client_id` against the registered `certificates` (DER) at `now_s`.
pub fn check(
    jwt: &str,
    client_id: &str,
    audience: &str,
    certificates: &[Vec<u8>],
    now_s: i64,
) -> Result<(), Rejected> {
    let malformed = || rejected(50_027, "JWT token is invalid or malformed.");
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(malformed());
    };
    let decode = |part: &str| -> Result<Value, Rejected> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
        serde_json::from_slice(&bytes).map_err(|_| malformed())
    };
    let (head, body) = (decode(header)?, decode(claims)?);
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| malformed())?;
    if head["alg"] != "RS256" {
        return Err(rejected(
            700_027,
            "Client assertion must be signed with RS256 and carry an x5t header.",
        ));
    }
    let x5t = head["x5t"].as_str().ok_or_else(malformed)?;
    let certificate = certificates
        .iter()
        .filter_map(|der| X509::from_der(der).ok())
        .find(|c| {
            c.digest(MessageDigest::sha1())
                .is_ok_and(|d| URL_SAFE_NO_PAD.encode(d) == x5t)
        })
        .ok_or_else(|| {
            rejected(
                700_027,
                format!(
                    "The certificate with identifier used to sign the client assertion is not \
                     registered on application. [Reason - The key was not found., Thumbprint of \
                     key used by client: '{x5t}']"
                ),
            )
        })?;
    let verified = certificate.public_key().ok().is_some_and(|key| {
        Verifier::new(MessageDigest::sha256(), &key)
            .and_then(|mut v| {
                v.update(format!("{header}.{claims}").as_bytes())?;
                v.verify(&signature)
            })
            .unwrap_or(false)
    });
    if !verified {
        return Err(rejected(
            700_027,
            "Client assertion failed signature validation.",
        ));
    }
    if body["aud"] != audience {
        return Err(rejected(
            700_027,
            format!("Client assertion contains an invalid audience; expected {audience}."),
        ));
    }
    if body["iss"] != client_id || body["sub"] != client_id {
        return Err(rejected(
            700_023,
            "Client assertion issuer and subject must be the client id.",
        ));
    }
    if body["jti"].as_str().is_none_or(str::is_empty) {
        return Err(malformed());
    }
    let (Some(nbf), Some(exp)) = (body["nbf"].as_i64(), body["exp"].as_i64()) else {
        return Err(malformed());
    };
    if nbf > now_s + SKEW_S || exp <= now_s - SKEW_S {
        return Err(rejected(
            700_024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

/// The audience Entra requires of a federated token.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Whether the JWT's header names a certificate thumbprint (a certificate assertion).
pub fn has_x5t(jwt: &str) -> bool {
    jwt.split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|h| h["x5t"].is_string())
}

/// Checks a federated token (workload identity) against the client's registered
/// (issuer, subject) pairs: claims only. Entra would also verify the signature with the
/// issuer's published keys, which a fake cannot fetch; tests sign nothing.
pub fn check_federated(
    jwt: &str,
    federated: &[(String, String)],
    now_s: i64,
) -> Result<(), Rejected> {
    let malformed = || rejected(50_027, "JWT token is invalid or malformed.");
    let claims = jwt.split('.').nth(1).ok_or_else(malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(claims).map_err(|_| malformed())?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if body["aud"] != FEDERATED_AUDIENCE {
        return Err(rejected(
            700_212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                body["aud"]
            ),
        ));
    }
    let (iss, sub) = (body["iss"].as_str(), body["sub"].as_str());
    if !federated
        .iter()
        .any(|(i, s)| Some(i.as_str()) == iss && Some(s.as_str()) == sub)
    {
        return Err(rejected(
            70_021,
            "No matching federated identity record found for presented assertion.",
        ));
    }
    match body["exp"].as_i64() {
        Some(exp) if exp > now_s => Ok(()),
        _ => Err(rejected(
            700_024,
            "Client assertion is not within its valid time range.",
        )),
    }
}
