//! Request and response helpers common to the fake services.
//!
//! Every service routes by hand (one fallback handler each) rather than with axum's router:
//! Azure paths are case-insensitive in places (ARM), use OData key syntax
//! (`applications(appId='…')`), and distinguish a trailing slash (`/secrets/{name}/`), none of
//! which axum's matcher expresses faithfully.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A request read in full: what the handlers dispatch on.
#[derive(Debug)]
pub struct Incoming {
    pub method: Method,
    /// Path segments, percent-decoded (the leading empty segment dropped; a trailing slash
    /// leaves a trailing empty segment).
    pub segments: Vec<String>,
    /// Query pairs, decoded, in order (duplicates kept: Key Vault rejects them).
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Incoming {
    /// Reads `req` to the end (bodies here are small).
    pub async fn read(req: Request) -> Self {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 4 << 20)
            .await
            .unwrap_or_default();
        let path = parts.uri.path();
        let segments = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .map(percent_decode)
            .collect();
        let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self {
            method: parts.method,
            segments,
            query,
            headers: parts.headers,
            body,
        }
    }

    /// Every value of query parameter `name` (case-sensitive, as Azure's are).
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of query parameter `name`, if present (the first if repeated).
    pub fn query_one(&self, name: &str) -> Option<&str> {
        self.query_all(name).into_iter().next()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a JSON value; `None` when it is empty or not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Decodes `%XX` escapes (paths only: `+` stays a plus).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON response with the `application/json; charset=utf-8` content type Azure sends.
pub fn json(status: StatusCode, body: &Value) -> Response {
    json_typed(status, body, "application/json; charset=utf-8")
}

/// A JSON response with a specific content type (Graph adds OData parameters).
pub fn json_typed(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response with no body (e.g. Graph's 204, Key Vault's purge).
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Adds header `name: value` to `response`.
pub fn with_header(mut response: Response, name: &'static str, value: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// The status for `code`, or 500 if `code` is not a valid status.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A handler's answer: the response, and whether to sever the connection instead of
/// sending it (`Fault::ApplyThenDropResponse`, after the operation took effect).
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    pub sever: bool,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Self {
            response,
            sever: false,
        }
    }
}
