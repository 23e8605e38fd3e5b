//! The real-process crash test (DESIGN.md §6, last paragraph): the `rekey` binary, not the
//! library, rotates secrets through the fake Azure servers (Key Vault, App Service settings,
//! the token endpoint) and the local components (a local vault file, an env file), and is
//! SIGKILLed at random moments, sometimes while faults make responses go missing; `rekey
//! resume` then finishes every rotation.
//!
//! The test runs rounds. Each round queues a few faults on the fakes (lost responses,
//! throttling, 5xx, slow answers, and in three rounds in eight a permanent refusal that makes
//! a rotation compensate); faults on write routes that no request took stay queued for later
//! rounds. Then, for one to three secrets, it starts `rekey rotate S --wait` and kills it
//! within 400 ms (half the time aimed at the window where its forward steps run, measured as
//! the test goes), and mostly also kills, within 1.5 s, a `rekey resume --wait` or a second
//! `rekey rotate S --wait` (which joins the open rotation). So the rotations of several
//! secrets are open at once, each at its own point. Then `rekey resume --wait --json` must
//! finish them all, and `checks` proves, from the journal and the fakes' effect logs and
//! state: one terminal event per rotation, no effect twice, the old version disabled exactly
//! once and not before the grace period ended, every target holding the vault's latest value
//! (the old one after a compensation), unrelated settings untouched, `journal verify` clean;
//! and at the end, no secret value in the journal or in anything rekey printed. The summary
//! line counts the kills that hit a step in flight.
//!
//! `REKEY_CRASH_KILLS=N` asks for at least N kills (default 100); `REKEY_CRASH_SEED=S`
//! replays the choices of a run (faults, secrets, kill delays; the timing of the processes
//! themselves is the machine's); `REKEY_CRASH_VERBOSE=1` prints what happened in every
//! round, as a failed round reports it.

mod checks;
pub mod child;
pub mod journal;
pub mod world;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use rekey::journal::{Clock, SystemClock};

use crate::fake_azure::{Fault, Route};
use checks::Audit;
use child::Rekey;
use journal::RotationLog;
use world::{Planned, SECRET_ENV, SPECS, World};

const KILLS_ENV: &str = "REKEY_CRASH_KILLS";
const SEED_ENV: &str = "REKEY_CRASH_SEED";
/// Set to print every round's events, not only those of failed rounds.
const VERBOSE_ENV: &str = "REKEY_CRASH_VERBOSE";
const KILLS_DEFAULT: u64 = 100;
/// A `rotate --wait` is killed this long after it starts, at most (exclusive, ms).
const ROTATE_KILL_MS: u64 = 400;
/// Half the rotate kills aim at the forward steps: from just before the request (whose
/// delay after the spawn is measured as the test goes) to this long after it.
const FORWARD_WINDOW_MS: u64 = 60;
/// The spawn-to-request delay assumed before any was measured.
const STARTUP_GUESS_MS: i64 = 80;
/// The latest this many measured delays make the estimate (their median).
const STARTUP_SAMPLES: usize = 15;
/// A second command (a `resume --wait`, or a `rotate --wait` that joins the open rotation)
/// is killed this long after it starts, at most: beyond the lease a killed runner leaves
/// (1 s, or the call's 1 s timeout and half a lease during a call), so some kills land
/// after the takeover.
const AGAIN_KILL_MS: u64 = 1_500;
/// The round's last resume must be done by then (grace periods, backoffs, leases).
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed last resume, another is tried once this long after (leases are 1 s).
const RETRY_FINISH_AFTER: Duration = Duration::from_millis(1_500);

/// A small seeded PRNG (SplitMix64): every choice the test makes replays from the seed.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// A fault planned for `times` requests to `route`.
fn fault(route: Route, fault: Fault) -> Planned {
    Planned {
        route,
        fault,
        times: 1,
    }
}

/// The round's faults: up to two transient ones (lost responses on every kind of write,
/// throttling, 5xx, slow answers), and in three rounds in eight a permanent refusal that a
/// forward step meets, so that its rotation compensates: a Key Vault read (capture,
/// verification, or a value read back after a restart), or a settings listing after a lost
/// settings write (the update's retry). Reads pass before the refusal, so it can reach a
/// later step than the first.
fn draw_faults(rng: &mut SplitMix) -> Vec<Planned> {
    let lost = Fault::ApplyThenDropResponse;
    let throttle = Fault::Throttle {
        retry_after_secs: 1,
    };
    let slow = Fault::Delay { ms: 150 };
    let menu = [
        fault(Route::KvSet, lost),
        fault(Route::AppSettingsPut, lost),
        fault(Route::KvUpdate, lost),
        fault(Route::KvSet, throttle),
        fault(Route::AppSettingsPut, throttle),
        fault(Route::KvGet, Fault::Status { code: 503 }),
        fault(Route::KvVersions, Fault::Status { code: 500 }),
        fault(Route::Token, throttle),
        fault(Route::KvSet, slow),
        fault(Route::AppSettingsPut, slow),
    ];
    let mut faults: Vec<Planned> = (0..rng.below(3))
        .map(|_| menu[rng.below(menu.len() as u64) as usize])
        .collect();
    let refused = match rng.below(8) {
        0 | 1 => Some((Route::KvGet, rng.below(4))),
        2 => {
            faults.push(fault(Route::AppSettingsPut, lost));
            Some((Route::AppSettingsList, 1 + rng.below(3)))
        }
        _ => None,
    };
    if let Some((route, passes)) = refused {
        let pass = Fault::Delay { ms: 0 };
        faults.push(Planned {
            times: passes as u32,
            ..fault(route, pass)
        });
        faults.push(fault(route, Fault::Status { code: 403 }));
    }
    faults
}

/// The test's state across rounds.
struct Crash {
    seed: u64,
    rng: SplitMix,
    world: World,
    rekey: Rekey,
    audit: Audit,
    kills: u64,
    /// Kills that hit a step in flight (started, outcome not yet journaled).
    mid_step: u64,
    rounds: u64,
    /// Measured delays from spawning `rotate` to its rotation's `Requested`.
    startup_ms: Vec<i64>,
    /// What happened in each round that broke a rule.
    failed_rounds: Vec<String>,
}

/// One round's context and what happened in it, by time since its start.
struct Round {
    ctx: String,
    origin_ms: i64,
    trace: Vec<String>,
    /// When each kill struck.
    kills_ms: Vec<i64>,
    /// When `rotate` was started, by secret.
    rotate_ms: BTreeMap<&'static str, i64>,
}

impl Round {
    fn note(&mut self, what: String) {
        let at = SystemClock.now_ms() - self.origin_ms;
        self.trace.push(format!("+{at} ms {what}"));
    }
}

impl Crash {
    fn new(seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let (world, first) = World::start(&mut rng);
        let rekey = Rekey {
            config: world.config.clone(),
            secret_env: (SECRET_ENV.to_owned(), world.client_secret.clone()),
            env: Vec::new(),
            transcript: Vec::new(),
        };
        Crash {
            seed,
            rng,
            world,
            rekey,
            audit: Audit::new(first),
            kills: 0,
            mid_step: 0,
            rounds: 0,
            startup_ms: Vec::new(),
            failed_rounds: Vec::new(),
        }
    }

    /// One round: faults; rotations of one to three secrets, killed at random, and mostly
    /// a second command killed too; the resume that finishes them; the checks. Returns
    /// false when no resume could finish them: the rotations are then in an unknown state,
    /// and later rounds would only echo it.
    fn round(&mut self) -> bool {
        let mut round = Round {
            ctx: format!("seed {} round {}", self.seed, self.rounds),
            origin_ms: SystemClock.now_ms(),
            trace: Vec::new(),
            kills_ms: Vec::new(),
            rotate_ms: BTreeMap::new(),
        };
        self.rounds += 1;
        let before = self.audit.violations.len();
        let faults = draw_faults(&mut self.rng);
        self.world.inject(&faults);
        let planned: Vec<String> = faults
            .iter()
            .map(|f| format!("{:?} {:?} x{}", f.route, f.fault, f.times))
            .collect();
        round.note(format!("new faults [{}]", planned.join(", ")));
        self.kill_rotations(&mut round);
        // A failed resume is a violation; once the leases it met have expired, a second one
        // shows whether the journal is still fit to go on with.
        let mut finished = self.finish(&mut round);
        if !finished {
            std::thread::sleep(RETRY_FINISH_AFTER);
            finished = self.finish(&mut round);
        }
        for route in [Route::KvGet, Route::KvVersions, Route::AppSettingsList] {
            let queued = faults.iter().filter(|f| f.route == route).map(|f| f.times);
            self.world.drain_reads(route, queued.sum());
        }
        let rotations = self.audit.round(&round.ctx, &self.world, &mut self.rekey);
        self.learn(&round, &rotations);
        self.report(&round, &rotations, self.audit.violations.len() > before);
        finished
    }

    /// Runs `resume --wait --json`, which must end every open rotation.
    fn finish(&mut self, round: &mut Round) -> bool {
        round.note("resume --wait --json".into());
        let finish = self
            .rekey
            .spawn(&["resume", "--wait", "--json"])
            .wait_for(FINISH_TIMEOUT);
        round.note(format!("resume ended: {}", finish.status));
        self.rekey.record(&finish);
        self.audit.finished(&round.ctx, &finish)
    }

    /// Rotates one to three secrets, in random order, each killed at random; after each,
    /// mostly a second command, killed too.
    fn kill_rotations(&mut self, round: &mut Round) {
        let mut order: Vec<usize> = (0..SPECS.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        order.truncate(1 + self.rng.below(SPECS.len() as u64) as usize);
        for i in order {
            let secret = SPECS[i].name;
            round.rotate_ms.insert(secret, SystemClock.now_ms());
            let delay = self.rotate_delay();
            self.run_and_kill(round, &["rotate", secret, "--wait"], delay);
            // Then, as an operator might: resume, or ask again, which joins the open
            // rotation (and would start another if none is open: resume then).
            let again: &[&str] = match self.rng.below(4) {
                2 if self.world.rotation_open(secret) => &["rotate", secret, "--wait"],
                0..=2 => &["resume", "--wait"],
                _ => continue,
            };
            let delay = self.rng.below(AGAIN_KILL_MS);
            self.run_and_kill(round, again, delay);
        }
    }

    /// Keeps what happened in a round that broke a rule, for the failure message (or
    /// prints it, when asked to).
    fn report(&mut self, round: &Round, rotations: &[RotationLog], failed: bool) {
        if !failed && std::env::var_os(VERBOSE_ENV).is_none() {
            return;
        }
        let mut what = format!("{} was:\n  {}", round.ctx, round.trace.join("\n  "));
        for r in rotations {
            what.push('\n');
            what.push_str(&r.timeline(round.origin_ms));
        }
        if failed {
            self.failed_rounds.push(what);
        } else {
            println!("{what}");
        }
    }

    /// How long to let a `rotate` run: half the time anywhere below [`ROTATE_KILL_MS`],
    /// half the time in the window of its forward steps.
    fn rotate_delay(&mut self) -> u64 {
        if self.rng.below(2) == 0 {
            return self.rng.below(ROTATE_KILL_MS);
        }
        let mut measured = self.startup_ms.clone();
        measured.sort_unstable();
        let startup = measured.get(measured.len() / 2).copied();
        let from = u64::try_from(startup.unwrap_or(STARTUP_GUESS_MS) - 10).unwrap_or(0);
        (from + self.rng.below(FORWARD_WINDOW_MS)).min(ROTATE_KILL_MS - 1)
    }

    /// Learns from the round's rotations how long `rotate` takes to request one, and
    /// counts the kills that hit a step in flight.
    fn learn(&mut self, round: &Round, rotations: &[RotationLog]) {
        for r in rotations {
            let spawned = round.rotate_ms.get(r.secret());
            if let (Some(spawned), Some(requested)) = (spawned, r.requested_at_ms()) {
                self.startup_ms.push(requested - spawned);
            }
        }
        let excess = self.startup_ms.len().saturating_sub(STARTUP_SAMPLES);
        self.startup_ms.drain(..excess);
        let in_flight = |t: &&i64| rotations.iter().any(|r| r.in_flight_at(**t));
        self.mid_step += round.kills_ms.iter().filter(in_flight).count() as u64;
    }

    /// Starts `args` and SIGKILLs it after `delay_ms`.
    fn run_and_kill(&mut self, round: &mut Round, args: &[&str], delay_ms: u64) {
        round.note(args.join(" "));
        let ended = self
            .rekey
            .spawn(args)
            .kill_after(Duration::from_millis(delay_ms));
        if ended.killed {
            round.kills_ms.push(SystemClock.now_ms());
            round.note(format!("killed ({delay_ms} ms)"));
        } else {
            round.note(format!("exited before the kill ({delay_ms} ms)"));
        }
        self.kills += u64::from(ended.killed);
        self.audit.killable(&round.ctx, &ended);
        self.rekey.record(&ended);
    }
}

#[test]
fn sigkill_anywhere_then_resume_finishes_every_rotation_once() {
    let kills_wanted = env_u64(KILLS_ENV).unwrap_or(KILLS_DEFAULT);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| RandomState::new().build_hasher().finish());
    println!("crash: seed {seed} (replay with {SEED_ENV}={seed}), at least {kills_wanted} kills");
    let started = SystemClock.now_ms();
    let mut crash = Crash::new(seed);
    while crash.kills < kills_wanted && crash.round() {}
    crash.audit.no_leaks(&crash.world, &crash.rekey);
    let Crash {
        audit,
        kills,
        mid_step,
        rounds,
        failed_rounds,
        ..
    } = crash;
    let secs = (SystemClock.now_ms() - started) as f64 / 1000.0;
    println!(
        "crash: {kills} kills, {} rotations, {} completed, {} compensated, {} violations \
         ({mid_step} kills mid-step, {rounds} rounds, {secs:.0} s, seed {seed})",
        audit.rotations(),
        audit.completed,
        audit.compensated,
        audit.violations.len(),
    );
    assert!(
        audit.violations.is_empty(),
        "{} violations (replay with {SEED_ENV}={seed}):\n{}\n\n{}",
        audit.violations.len(),
        audit.violations.join("\n"),
        failed_rounds.join("\n")
    );
    assert!(kills >= kills_wanted, "only {kills} kills");
    assert!(
        mid_step * 20 >= kills,
        "only {mid_step} of {kills} kills hit a step in flight: the kill window misses the work"
    );
}
