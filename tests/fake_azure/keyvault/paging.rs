//! Key Vault list paging: `maxresults` (1–25, default 25), an opaque `$skiptoken`, and an
//! absolute `nextLink` that carries `api-version`, `$skiptoken` and `maxresults` and must be
//! followed unchanged.
//!
//! The fake makes paging hard to get wrong silently: a page-size knob forces many pages, an
//! optional empty first page (with a `nextLink`) catches clients that stop on an empty page,
//! and a `$skiptoken` the fake did not issue is a 400.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::super::http::Incoming;
use super::super::state::Knobs;

const MAX_RESULTS: usize = 25;

/// Where a listing request starts and how many items it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Index of the first item.
    offset: usize,
    /// The `maxresults` in effect (echoed into `nextLink`).
    maxresults: usize,
    /// Whether this is the first request of a listing (no `$skiptoken`).
    first: bool,
}

/// Reads `maxresults` and `$skiptoken`; `Err` is the 400 message.
pub fn parse(incoming: &Incoming) -> Result<PageRequest, String> {
    let maxresults = match incoming.query_one("maxresults") {
        None => MAX_RESULTS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_RESULTS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "Invalid value for maxresults: '{raw}'. It must be an integer between 1 \
                     and {MAX_RESULTS}."
                ));
            }
        },
    };
    let (offset, first) = match incoming.query_one("$skiptoken") {
        None => (0, true),
        Some(token) => (decode_token(token).ok_or("Invalid skip token.")?, false),
    };
    Ok(PageRequest {
        offset,
        maxresults,
        first,
    })
}

/// The `SecretListResult` page of `items` for `request`; `link_base` is the absolute URL of
/// the listing (without query), `api_version` the one the request used.
pub fn page(
    items: Vec<Value>,
    request: PageRequest,
    knobs: &Knobs,
    link_base: &str,
    api_version: &str,
) -> Value {
    let link = |offset: usize| {
        json!(format!(
            "{link_base}?api-version={api_version}&$skiptoken={}&maxresults={}",
            encode_token(offset),
            request.maxresults
        ))
    };
    if request.first && knobs.kv_empty_first_page {
        return json!({ "value": [], "nextLink": link(0) });
    }
    let size = request.maxresults.min(knobs.kv_page_size.max(1));
    let start = request.offset.min(items.len());
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        link(end)
    } else {
        Value::Null
    };
    let value: Vec<Value> = items.into_iter().skip(start).take(end - start).collect();
    json!({ "value": value, "nextLink": next })
}

/// Opaque to clients, like the real `eyJOZXh0TWFya2Vy…` tokens.
fn encode_token(offset: usize) -> String {
    let marker = json!({ "NextMarker": format!("2!{offset}!fake"), "TargetLocation": 0 });
    URL_SAFE_NO_PAD.encode(marker.to_string())
}

fn decode_token(token: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let marker: Value = serde_json::from_slice(&raw).ok()?;
    let next = marker.get("NextMarker")?.as_str()?;
    let mut parts = next.split('!');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("2"), Some(offset), Some("fake"), None) => offset.parse().ok(),
        _ => None,
    }
}
