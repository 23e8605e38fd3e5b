//! Generated identifiers and values, shaped like the real services' so clients that parse or
//! validate them (a 32-hex version, an 88-char storage key, a uuid keyId) are exercised.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngExt as _;

/// A random (version 4 layout) uuid, lower-case and hyphenated.
pub fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A Key Vault secret version: 32 lower-case hex digits.
pub fn kv_version() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A storage account key: 64 random bytes in standard base64, 88 characters ending in `==`.
pub fn storage_key() -> String {
    let bytes: [u8; 64] = rand::random();
    STANDARD.encode(bytes)
}

/// An Entra client secret in today's format: 40 characters, the 4th–6th being `8Q~`
/// (a version marker), drawn from the characters Entra uses (which include `~ . _ -`, so a
/// client that fails to URL-encode `client_secret` is caught).
pub fn graph_secret_text() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
            .collect()
    };
    format!("{}8Q~{}", pick(3), pick(34))
}

/// `2021-09-09T19:50:29.3086381Z`: the 7-digit fraction Graph and ARM print.
pub fn azure_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.7fZ").to_string()
}

/// The clock reading `now_ms` as a timestamp.
pub fn timestamp(now_ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(now_ms).expect("clock within jiff's range")
}
