//! Retry delays. The one module that uses the `backoff` crate (unmaintained, see
//! `deny.toml`): it computes exponential delays; the runner journals the resulting
//! next-attempt time, so backoff survives restarts. Jitter comes from the caller's
//! injected randomness, never from here, so simulations replay exactly.

use backoff::backoff::Backoff;

use crate::saga::ErrorClass;

/// Retry timing for provider calls.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// Key Vault's documented throttling backoff: 1, 2, 4, 8, 16 s, then capped.
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 300_000,
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` after attempt `attempt` failed with `class`.
    /// `jitter` in `[0, 1)` spreads retries by up to a quarter of the delay. A
    /// `Retry-After` from the target is a floor: never retry sooner than asked.
    pub fn delay_ms(
        &self,
        attempt: u32,
        class: ErrorClass,
        retry_after_ms: Option<i64>,
        jitter: f64,
    ) -> i64 {
        let mut b = backoff::ExponentialBackoff {
            current_interval: std::time::Duration::from_millis(self.initial_ms),
            initial_interval: std::time::Duration::from_millis(self.initial_ms),
            randomization_factor: 0.0,
            multiplier: self.multiplier,
            max_interval: std::time::Duration::from_millis(self.max_ms),
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        let mut delay = std::time::Duration::from_millis(self.initial_ms);
        for _ in 0..attempt.clamp(1, 64) {
            delay = b.next_backoff().unwrap_or(delay);
        }
        let base = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let base = if class == ErrorClass::Permanent {
            // Only steps that may never give up retry a permanent error: wait the longest.
            self.max_ms as i64
        } else {
            base
        };
        let jittered = base + (base as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as i64;
        jittered.max(retry_after_ms.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_respect_retry_after() {
        let p = RetryPolicy::default();
        let d: Vec<i64> = (1..=5)
            .map(|a| p.delay_ms(a, ErrorClass::Transient, None, 0.0))
            .collect();
        assert_eq!(d, vec![1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(p.delay_ms(40, ErrorClass::Transient, None, 0.0), 300_000);
        assert_eq!(
            p.delay_ms(1, ErrorClass::RateLimited, Some(30_000), 0.0),
            30_000
        );
        assert_eq!(p.delay_ms(1, ErrorClass::Transient, None, 0.999), 1_249);
    }
}
