//! A per-vault request budget: Key Vault serves 2,000 transactions per 10 s per vault and
//! answers 429 beyond that, so every request to a vault first takes a slot here. Callers
//! queue (first come, first served) instead of failing, and a 429 slows everyone down.
//!
//! Why pacing (a token bucket holding one token, i.e. GCRA) and not a window of `limit`
//! grants or a deep bucket: the service counts *arrivals* in a trailing window, and what
//! arrives is what was granted shifted by a delay that varies (connection setup, a slow
//! token refresh, a busy front end). Grants handed out in bursts of `limit` at each
//! window's start arrive as overlapping bursts whenever that delay varies, and a deep
//! bucket lets twice `limit` through in one window (a full bucket, then its refill).
//! Grants spaced `window / limit` apart never put more than `limit` in any window, and
//! their arrivals stay under the service's limit unless the delay varies by more than the
//! safety margin's worth of spacing (0.5 s for Key Vault's default). Bulk rotation is
//! throughput-bound, so it loses nothing by not bursting; a lone request never waits.
//!
//! Callers queue on a fair (first come, first served) tokio mutex; only the head of the
//! queue sleeps, until its slot. A grant is therefore O(1) work and memory, with no retry
//! loop and no thundering herd while thousands of rotations wait. Slots follow a schedule
//! (the previous slot plus one spacing), so timer lateness does not add up; a caller late
//! by more than a spacing (the process stalled, or the budget sat idle) takes its slot
//! when it comes, so a stall is never followed by a burst. A 429 pauses the queue until
//! the service's `Retry-After` and halves the rate (additive recovery on successes).
//!
//! Waiting uses tokio's timer, so tests can pause time; the std mutex is never held across
//! an `.await`. Owns only timing: it knows nothing of HTTP or of what a request does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

/// Key Vault's documented limit: transactions per window per vault.
pub const KEY_VAULT_LIMIT: u32 = 2_000;
/// Key Vault's window.
pub const KEY_VAULT_WINDOW_MS: u64 = 10_000;
/// The share of a service limit rekey uses by default (95%). Paced requests only need the
/// margin to absorb jitter between grant and arrival: 5% of Key Vault's 2,000 is 100
/// requests, half a second of spacing. A wider margin would cost bulk rotation as much
/// time (90% means 11% slower) for jitter that loopback and Azure's front end do not have;
/// the vault's other clients are covered by the 429 adaptation, not by the margin.
pub const SAFETY_PERCENT: u32 = 95;
/// The default budget: 1,900 requests per 10 s per vault.
pub const DEFAULT_REQUESTS_PER_10S: u32 = KEY_VAULT_LIMIT / 100 * SAFETY_PERCENT;
/// Successes needed to grow the effective limit by one request per window. From half
/// the limit back to all of it takes `limit / 2 * 10` successes: a few windows.
pub const SUCCESSES_PER_STEP: u32 = 10;
/// Longest `Retry-After` honoured here (a larger one still reaches the runner through the
/// provider error; the budget only has to stop the other callers meanwhile).
pub const RETRY_AFTER_MS_MAX: u64 = 3_600_000;

/// A limiter shared by every request to one vault: at most `limit` grants in any window,
/// evenly spaced.
#[derive(Debug)]
pub struct RequestBudget {
    limit: u32,
    window: Duration,
    state: Mutex<Pace>,
    /// The waiting callers, in order; the holder is the next to be granted.
    queue: tokio::sync::Mutex<()>,
    /// True while the rate is below `limit`, so `on_success` need not lock at full rate.
    reduced: AtomicBool,
}

#[derive(Debug)]
struct Pace {
    /// The next slot on the schedule: the previous grant's slot plus one spacing.
    next: Option<Instant>,
    /// Grants allowed per window now, in 1/`SUCCESSES_PER_STEP` of a request.
    allowed_steps: u64,
    /// No grant before this (the last `Retry-After`).
    blocked_until: Option<Instant>,
    /// When the rate was last cut: one cut per window, however many in-flight requests
    /// report the same overload.
    last_cut: Option<Instant>,
}

impl RequestBudget {
    /// At most `limit` grants in any `window_ms` (both at least 1).
    pub fn new(limit: u32, window_ms: u64) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            window: Duration::from_millis(window_ms.max(1)),
            state: Mutex::new(Pace {
                next: None,
                allowed_steps: u64::from(limit) * u64::from(SUCCESSES_PER_STEP),
                blocked_until: None,
                last_cut: None,
            }),
            queue: tokio::sync::Mutex::new(()),
            reduced: AtomicBool::new(false),
        }
    }

    /// Key Vault's default: [`DEFAULT_REQUESTS_PER_10S`] per 10 s.
    pub fn key_vault() -> Self {
        Self::new(DEFAULT_REQUESTS_PER_10S, KEY_VAULT_WINDOW_MS)
    }

    /// The configured limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Grants per window allowed now: `limit`, or less after a 429.
    pub fn effective_limit(&self) -> u32 {
        self.allowed(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Pace> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allowed(&self, p: &Pace) -> u32 {
        let whole = p.allowed_steps / u64::from(SUCCESSES_PER_STEP);
        u32::try_from(whole)
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit)
    }

    /// Waits for this request's slot, then counts it as sent. Callers are served in the
    /// order they asked; a dropped future gives its place up.
    pub async fn acquire(&self) {
        let _turn = self.queue.lock().await;
        loop {
            let now = Instant::now();
            match self.grant(now) {
                None => return,
                Some(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// Grants a slot at `now` (`None`), or says when to ask again. Slots are at least
    /// `window / allowed` apart, so no half-open window holds more than `allowed` of them.
    fn grant(&self, now: Instant) -> Option<Instant> {
        let mut p = self.lock();
        let spacing = self.window / self.allowed(&p);
        let due = [p.next, p.blocked_until].into_iter().flatten().max();
        let slot = match due {
            Some(due) if now < due => return Some(due),
            // On time, give or take the timer's lateness: keep to the schedule.
            Some(due) if now - due <= spacing => due,
            // Idle or stalled: start afresh, no catching up.
            _ => now,
        };
        p.next = Some(slot + spacing);
        None
    }

    /// The service answered 429: no request before `retry_after_ms` from now, and the rate
    /// is halved (once per window). The waiting callers stay in their order.
    pub fn on_throttled(&self, retry_after_ms: u64) {
        let now = Instant::now();
        let until = now + Duration::from_millis(retry_after_ms.min(RETRY_AFTER_MS_MAX));
        {
            let mut p = self.lock();
            p.blocked_until = Some(p.blocked_until.map_or(until, |b| b.max(until)));
            if p.last_cut.is_none_or(|cut| now >= cut + self.window) {
                p.last_cut = Some(now);
                p.allowed_steps = (p.allowed_steps / 2).max(u64::from(SUCCESSES_PER_STEP));
                self.reduced.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A request was answered without throttling: the rate creeps back up.
    pub fn on_success(&self) {
        if !self.reduced.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.lock();
        let full = u64::from(self.limit) * u64::from(SUCCESSES_PER_STEP);
        p.allowed_steps = (p.allowed_steps + 1).min(full);
        if p.allowed_steps == full {
            self.reduced.store(false, Ordering::Relaxed);
        }
    }
}

/// One shared budget per vault, so every provider of a vault draws from the same window.
#[derive(Debug)]
pub struct VaultBudgets {
    limit: u32,
    window_ms: u64,
    budgets: Mutex<HashMap<String, Arc<RequestBudget>>>,
}

impl Default for VaultBudgets {
    /// Key Vault's default budget for each vault.
    fn default() -> Self {
        Self::new(DEFAULT_REQUESTS_PER_10S, KEY_VAULT_WINDOW_MS)
    }
}

impl VaultBudgets {
    /// Budgets of `limit` requests per `window_ms` for vaults not given their own limit.
    pub fn new(limit: u32, window_ms: u64) -> Self {
        Self {
            limit,
            window_ms,
            budgets: Mutex::default(),
        }
    }

    /// The budget of the vault at `vault` (host, port and path, case-insensitive: a real
    /// vault is its host, a loopback test vault a path below a shared host).
    pub fn budget(&self, vault: &Url) -> Arc<RequestBudget> {
        self.budget_with_limit(vault, None)
    }

    /// The same, created with `limit` per window if this is the vault's first provider.
    /// The caller passes the smallest limit configured for the vault (`config::build`).
    pub fn budget_with_limit(&self, vault: &Url, limit: Option<u32>) -> Arc<RequestBudget> {
        self.budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vault_key(vault))
            .or_insert_with(|| {
                Arc::new(RequestBudget::new(
                    limit.unwrap_or(self.limit),
                    self.window_ms,
                ))
            })
            .clone()
    }
}

/// `host:port/path`, lower-cased, without a trailing slash.
pub fn vault_key(vault: &Url) -> String {
    format!(
        "{}:{}{}",
        vault.host_str().unwrap_or(""),
        vault.port_or_known_default().unwrap_or(0),
        vault.path().trim_end_matches('/')
    )
    .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns `n` acquirers at once; returns their grant times, in grant order.
    async fn grants(budget: &Arc<RequestBudget>, n: usize) -> Vec<Instant> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let b = budget.clone();
            tasks.spawn(async move {
                b.acquire().await;
                Instant::now()
            });
        }
        let mut times = tasks.join_all().await;
        times.sort();
        times
    }

    /// Most grants in any half-open window `(t - window, t]`.
    fn most_in_a_window(times: &[Instant], window: Duration) -> usize {
        (0..times.len())
            .map(|end| {
                times[..=end]
                    .iter()
                    .filter(|&&t| t + window > times[end])
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window_and_evenly_spaced() {
        let budget = Arc::new(RequestBudget::new(10, 1_000));
        let start = Instant::now();
        let times = grants(&budget, 55).await;
        assert_eq!(times.len(), 55);
        assert_eq!(most_in_a_window(&times, Duration::from_secs(1)), 10);
        let offsets: Vec<Duration> = times.iter().map(|t| *t - start).collect();
        let expected: Vec<Duration> = (0..55).map(|k| Duration::from_millis(100 * k)).collect();
        assert_eq!(
            offsets, expected,
            "one every 100 ms, from the first at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_its_slot_and_does_not_burst_after_idling() {
        let budget = Arc::new(RequestBudget::new(4, 1_000));
        budget.acquire().await;
        let waiter = {
            let b = budget.clone();
            tokio::spawn(async move { b.acquire().await })
        };
        tokio::time::advance(Duration::from_millis(249)).await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the next slot is 250 ms on");
        tokio::time::advance(Duration::from_millis(1)).await;
        waiter.await.unwrap();
        // After a quiet spell a request goes at once, and the next one a spacing later:
        // idle time is not saved up for a burst.
        tokio::time::advance(Duration::from_secs(5)).await;
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(Instant::now(), start);
        budget.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn timer_lateness_keeps_the_schedule_and_a_stall_brings_no_burst() {
        let budget = RequestBudget::new(10, 1_000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(budget.grant(at(0)), None);
        assert_eq!(budget.grant(at(50)), Some(at(100)));
        // Woken 30 ms late: the slot is still 100, the next one 200.
        assert_eq!(budget.grant(at(130)), None);
        assert_eq!(budget.grant(at(199)), Some(at(200)));
        assert_eq!(budget.grant(at(200)), None);
        // Stalled for 250 ms: the slots missed meanwhile are gone, not caught up at once.
        assert_eq!(budget.grant(at(550)), None);
        assert_eq!(budget.grant(at(550)), Some(at(650)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pushes_back_everyone_even_those_already_queued() {
        let budget = Arc::new(RequestBudget::new(4, 1_000));
        let start = Instant::now();
        budget.acquire().await;
        // Four more are queued for 250, 500, 750 and 1,000 ms when the vault says "retry
        // after 5 s".
        let queued: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                tokio::spawn(async move {
                    b.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        budget.on_throttled(5_000);
        assert_eq!(budget.effective_limit(), 2, "the rate is halved");
        // Another 429 in the same window does not halve again, nor shorten the pause.
        budget.on_throttled(0);
        assert_eq!(budget.effective_limit(), 2);
        let mut times = Vec::new();
        for q in queued {
            times.push(q.await.unwrap() - start);
        }
        times.sort();
        let ms = Duration::from_millis;
        assert_eq!(
            times,
            [ms(5_000), ms(5_500), ms(6_000), ms(6_500)],
            "two a second, after the pause"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn successes_bring_the_rate_back_slowly() {
        let budget = RequestBudget::new(100, 1_000);
        budget.on_throttled(0);
        assert_eq!(budget.effective_limit(), 50);
        for _ in 0..SUCCESSES_PER_STEP - 1 {
            budget.on_success();
        }
        assert_eq!(budget.effective_limit(), 50);
        budget.on_success();
        assert_eq!(budget.effective_limit(), 51);
        for _ in 0..100 * SUCCESSES_PER_STEP {
            budget.on_success();
        }
        assert_eq!(budget.effective_limit(), 100, "never above the limit");
        // A second 429 a window later halves again, down to at least one a window.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            budget.on_throttled(0);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(budget.effective_limit(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reduced_rate_still_keeps_every_window_under_it() {
        let budget = Arc::new(RequestBudget::new(20, 1_000));
        budget.on_throttled(0);
        let times = grants(&budget, 40).await;
        assert_eq!(most_in_a_window(&times, Duration::from_secs(1)), 10);
    }

    #[test]
    fn one_budget_per_vault_whatever_the_case() {
        let budgets = VaultBudgets::default();
        let url = |s: &str| Url::parse(s).unwrap();
        let a = budgets.budget(&url("https://MyVault.vault.azure.net"));
        let a2 = budgets.budget_with_limit(&url("https://myvault.vault.azure.net/"), Some(5));
        let b = budgets.budget(&url("https://other.vault.azure.net"));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(a.limit(), DEFAULT_REQUESTS_PER_10S);
        assert_eq!((a.limit(), a.window_ms()), (1_900, 10_000));
        // Loopback test vaults share a host and differ by path.
        let kv1 = budgets.budget(&url("http://127.0.0.1:9/kv1"));
        let kv2 = budgets.budget_with_limit(&url("http://127.0.0.1:9/kv2"), Some(7));
        assert!(!Arc::ptr_eq(&kv1, &kv2));
        assert_eq!(kv2.limit(), 7);
    }
}
