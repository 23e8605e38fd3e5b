//! The request log: every request any fake service received, so tests can prove where
//! credentials went (a bearer token must reach only the resource it was issued for, a client
//! secret only the token endpoint).

use std::collections::BTreeMap;

use super::http::Incoming;

/// Which fake service received a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    KeyVault,
    Arm,
    Graph,
    Login,
    Imds,
    AppServiceIdentity,
}

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub service: Service,
    pub method: String,
    /// Path and query exactly as sent (not decoded).
    pub path: String,
    /// Whether an `Authorization: Bearer …` header was present.
    pub had_bearer: bool,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<String>,
    /// Every header, names lower-cased (the last value when repeated).
    pub headers: BTreeMap<String, String>,
    /// The request body as text (lossy): lets tests check where a secret was sent.
    pub body: String,
    /// The status sent back; `None` while in flight or when the response was dropped.
    pub status: Option<u16>,
}

impl RequestLog {
    /// The log entry for a request to `service`.
    pub(crate) fn new(service: Service, path_and_query: &str, incoming: &Incoming) -> Self {
        let headers: BTreeMap<String, String> = incoming
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let authorization = headers.get("authorization").cloned();
        let had_bearer = authorization
            .as_deref()
            .and_then(|a| a.get(..7))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "));
        Self {
            service,
            method: incoming.method.to_string(),
            path: path_and_query.to_owned(),
            had_bearer,
            authorization,
            headers,
            body: String::from_utf8_lossy(&incoming.body).into_owned(),
            status: None,
        }
    }
}
