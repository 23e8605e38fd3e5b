//! A service principal's certificate, used instead of a client secret: rekey signs a
//! short-lived JWT (RFC 7523 client assertion) with the private key, and the identity
//! platform checks it against the certificate uploaded to the app registration, found by
//! the SHA-1 thumbprint in the `x5t` header.
//!
//! OpenSSL does the parsing and signing: native-tls already links it on Linux, so it adds
//! no new native dependency.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;
use serde_json::json;

use crate::provider::ProviderError;

/// How long a signed assertion is valid: the identity platform accepts up to 10 minutes.
pub const ASSERTION_LIFETIME_S: i64 = 600;

/// The `client_assertion_type` of a JWT bearer client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why a certificate file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read certificate file {path}: {cause}")]
    Read { path: String, cause: String },
    #[error(
        "certificate file {path} holds no {what}; it must hold the PEM private key and the PEM certificate of the app registration"
    )]
    Missing { path: String, what: &'static str },
    #[error("certificate file {path}: {cause}")]
    Invalid { path: String, cause: String },
}

/// A private key and the thumbprint of its certificate. The key is never printed.
pub struct ClientCertificate {
    key: PKey<Private>,
    /// base64url of the SHA-1 digest of the certificate's DER encoding.
    x5t: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t", &self.x5t)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ClientCertificate {
    /// Reads a PEM file holding an RSA private key (PKCS#8 or PKCS#1) and its certificate.
    ///
    /// # Errors
    /// [`CertificateError`] naming the file and what is wrong with it.
    pub fn from_pem_file(path: &Path) -> Result<Self, CertificateError> {
        let shown = path.display().to_string();
        // Through the safe reader: a FIFO or a device at the path is refused, not waited on.
        let pem = crate::atomic_file::read(path, true)
            .map_err(|e| e.to_string())
            .and_then(|pem| pem.ok_or_else(|| "no such file".to_owned()))
            .map_err(|cause| CertificateError::Read {
                path: shown.clone(),
                cause,
            })?;
        Self::from_pem(&pem, &shown)
    }

    /// As [`Self::from_pem_file`], from bytes; `path` only names them in errors.
    ///
    /// # Errors
    /// [`CertificateError`].
    pub fn from_pem(pem: &[u8], path: &str) -> Result<Self, CertificateError> {
        let text = String::from_utf8_lossy(pem);
        let invalid = |cause: String| CertificateError::Invalid {
            path: path.to_owned(),
            cause,
        };
        if !text.contains("PRIVATE KEY-----") {
            return Err(CertificateError::Missing {
                path: path.to_owned(),
                what: "private key",
            });
        }
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(CertificateError::Missing {
                path: path.to_owned(),
                what: "certificate",
            });
        }
        // OpenSSL's own messages never quote key material.
        let key = PKey::private_key_from_pem(pem)
            .map_err(|e| invalid(format!("the private key cannot be read: {e}")))?;
        let cert = X509::from_pem(pem)
            .map_err(|e| invalid(format!("the certificate cannot be read: {e}")))?;
        if key.rsa().is_err() {
            return Err(invalid(
                "the private key is not an RSA key (the identity platform signs RS256)".into(),
            ));
        }
        let public = cert
            .public_key()
            .map_err(|e| invalid(format!("the certificate has no public key: {e}")))?;
        if !key.public_eq(&public) {
            return Err(invalid(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let der = cert
            .to_der()
            .map_err(|e| invalid(format!("the certificate cannot be encoded: {e}")))?;
        let digest = openssl::hash::hash(MessageDigest::sha1(), &der)
            .map_err(|e| invalid(format!("cannot take the thumbprint: {e}")))?;
        Ok(Self {
            key,
            x5t: URL_SAFE_NO_PAD.encode(digest),
        })
    }

    /// The certificate's thumbprint as sent in `x5t`.
    pub fn thumbprint(&self) -> &str {
        &self.x5t
    }

    /// A signed client assertion for `client_id` at the token endpoint `audience`, valid
    /// from `now_ms` for [`ASSERTION_LIFETIME_S`]; `jti` makes it single-use.
    ///
    /// # Errors
    /// Permanent, when OpenSSL cannot sign.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now_ms: i64,
        jti: &str,
    ) -> Result<String, ProviderError> {
        let now = now_ms.div_euclid(1000);
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t});
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let fail = |e: openssl::error::ErrorStack| {
            ProviderError::permanent(format!(
                "cannot sign the client assertion for client {client_id}: {e}"
            ))
        };
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key).map_err(fail)?;
        signer.update(signing_input.as_bytes()).map_err(fail)?;
        let signature = signer.sign_to_vec().map_err(fail)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;
    use openssl::sign::Verifier;
    use openssl::x509::X509NameBuilder;

    fn self_signed(bits: u32) -> (PKey<Private>, X509) {
        let key = PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "rekey-test").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (key, b.build())
    }

    fn pem(key: &PKey<Private>, cert: &X509) -> Vec<u8> {
        let mut out = key.private_key_to_pem_pkcs8().unwrap();
        out.extend(cert.to_pem().unwrap());
        out
    }

    #[test]
    fn assertion_is_an_rs256_jwt_with_thumbprint_and_claims() {
        let (key, cert) = self_signed(2048);
        let c = ClientCertificate::from_pem(&pem(&key, &cert), "t.pem").unwrap();
        let jwt = c
            .assertion(
                "app-1",
                "https://login/t/oauth2/v2.0/token",
                1_700_000_000_500,
                "j1",
            )
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let thumb = openssl::hash::hash(MessageDigest::sha1(), &cert.to_der().unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(thumb));
        assert_eq!(claims["aud"], "https://login/t/oauth2/v2.0/token");
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["jti"], "j1");
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_600);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public = cert.public_key().unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &public).unwrap();
        v.update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(v.verify(&signature).unwrap());
    }

    #[test]
    fn unusable_files_are_refused_with_the_reason() {
        let (key, cert) = self_signed(2048);
        let (other, _) = self_signed(2048);
        let only_key = key.private_key_to_pem_pkcs8().unwrap();
        let err = ClientCertificate::from_pem(&only_key, "k.pem").unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        let only_cert = cert.to_pem().unwrap();
        let err = ClientCertificate::from_pem(&only_cert, "c.pem").unwrap_err();
        assert!(err.to_string().contains("holds no private key"), "{err}");
        let mismatched = pem(&other, &cert);
        let err = ClientCertificate::from_pem(&mismatched, "m.pem").unwrap_err();
        assert!(
            err.to_string()
                .contains("private key does not belong to the certificate"),
            "{err}"
        );
        let err =
            ClientCertificate::from_pem_file(Path::new("/nonexistent/rekey.pem")).unwrap_err();
        assert!(err.to_string().contains("cannot read certificate file"));
        let debug = format!(
            "{:?}",
            ClientCertificate::from_pem(&pem(&key, &cert), "x").unwrap()
        );
        assert!(debug.contains("[redacted]") && !debug.contains("PRIVATE"));
    }
}
