//! Per-vault service limits, opt-in: Key Vault's throttling (at most `limit` requests in
//! any trailing window, the rest answered 429 without being done) and a fixed latency.
//!
//! Time: the window is measured on the fake's clock ([`super::super::state::Shared::now_ms`]),
//! like everything else the fake dates; with the default `SystemClock` that is real time,
//! and with a `ManualClock` the window moves only when the test moves the clock. Latency is
//! waited on tokio's timer, like `Fault::Delay`.
//!
//! As the contract says, refused requests do not count against the window. Every request
//! to a limited vault counts, the unauthenticated challenge probe included.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::super::state::Shared;

/// One vault's throttling window.
#[derive(Debug)]
struct RateLimit {
    limit: u32,
    window_ms: i64,
    /// Arrival times (fake clock, ms) of the requests served within the window, oldest
    /// first.
    served: VecDeque<i64>,
    /// How many requests were refused with 429.
    throttled: u64,
}

/// The limits of every vault that has any, by lower-cased vault name.
#[derive(Debug, Default)]
pub(crate) struct VaultLimits {
    rates: HashMap<String, RateLimit>,
    latency_ms: HashMap<String, u64>,
}

impl VaultLimits {
    pub(crate) fn set_rate(&mut self, vault: &str, limit: u32, window_ms: u64) {
        self.rates.insert(
            vault.to_ascii_lowercase(),
            RateLimit {
                limit,
                window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
                served: VecDeque::new(),
                throttled: 0,
            },
        );
    }

    pub(crate) fn set_latency(&mut self, vault: &str, ms: u64) {
        self.latency_ms.insert(vault.to_ascii_lowercase(), ms);
    }

    pub(crate) fn throttled(&self, vault: &str) -> u64 {
        self.rates
            .get(&vault.to_ascii_lowercase())
            .map_or(0, |r| r.throttled)
    }

    /// Counts a request arriving at `now_ms`, or refuses it: `Some(retry_after_secs)`, the
    /// whole seconds (rounded up) until the oldest counted request leaves the window.
    fn admit(&mut self, vault: &str, now_ms: i64) -> Option<u64> {
        let rate = self.rates.get_mut(vault)?;
        // A request counts in the window `(now - window, now]`.
        while rate
            .served
            .front()
            .is_some_and(|&t| t + rate.window_ms <= now_ms)
        {
            rate.served.pop_front();
        }
        if rate.served.len() < rate.limit as usize {
            rate.served.push_back(now_ms);
            return None;
        }
        rate.throttled += 1;
        let oldest = rate.served.front().copied().unwrap_or(now_ms);
        let wait_ms = (oldest + rate.window_ms - now_ms).max(1);
        Some(u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000))
    }
}

/// Waits out `vault`'s latency, then counts the request against its rate limit: `None` to
/// serve it, or the `Retry-After` seconds of the 429 that refuses it.
pub(crate) async fn admit(shared: &Shared, vault: &str) -> Option<u64> {
    let latency = shared.lock().kv_limits.latency_ms.get(vault).copied();
    if let Some(ms) = latency.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let now_ms = shared.now_ms();
    shared.lock().kv_limits.admit(vault, now_ms)
}
