//! Deterministic simulation of the rotation saga and runner (DESIGN.md §6: I1–I3, I5, I6).
//!
//! Each seed builds a small world of fake providers (`world`), requests rotations, and
//! drives them through runners whose futures the harness polls by hand (`harness`): a crash
//! drops a runner's futures at whatever await point they reached, a new runner resumes over
//! the same journal (`journal` adds a crash point before and after every append). Faults,
//! crash points, interleavings and time all come from the seed, so every seed replays
//! exactly. `checks` holds the invariants.
//!
//! `cargo test -- simulation` runs the default seeds; `REKEY_SIM_SEEDS=N` runs seeds 0..N;
//! `REKEY_SIM_SEED=S` runs seed S alone (and is what a failure tells you to run).
//!
//! Three tests: the simulation itself; the same with a runner sometimes asked to drive a
//! rotation it is driving already; and proof that the harness fails when the runner skips
//! reconciliation (a planted bug).

mod checks;
mod harness;
mod journal;
mod world;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use checks::{Invariant, Violation};
use harness::{Coverage, RunConfig, RunOutcome, Scenario};

/// Seeds `cargo test` runs by default (about 45 s in a debug build).
const DEFAULT_SEEDS: u64 = 2_000;
/// Seeds the reentrant-drive variant runs by default.
const REENTRANT_SEEDS: u64 = 300;
/// Seeds the planted bug gets to show itself.
const PLANTED_SEEDS: u64 = 200;
/// Every this many seeds, I3: the scenario runs calm with and without crashes.
const SAME_OUTCOME_EVERY: u64 = 5;
/// Every this many seeds, the seed runs twice and must do exactly the same.
const REPLAY_EVERY: u64 = 50;
/// Every this many seeds, the runner's logs are captured and scanned for values (I5).
const LOGS_EVERY: u64 = 20;
/// Failing seeds reported in full.
const REPORTS_MAX: usize = 5;
/// From this many seeds on, every path in [`Coverage`] must have been taken.
const COVERAGE_MIN_SEEDS: usize = 500;

#[derive(Debug)]
struct SeedResult {
    seed: u64,
    rotations: usize,
    violations: Vec<Violation>,
    traces: String,
    coverage: Coverage,
}

impl SeedResult {
    fn new(seed: u64, run: RunOutcome) -> Self {
        Self {
            seed,
            rotations: run.rotations,
            violations: run.violations,
            traces: run.traces,
            coverage: run.coverage,
        }
    }

    fn absorb(&mut self, variant: &str, run: RunOutcome) {
        for mut v in run.violations {
            v.detail = format!("({variant}) {}", v.detail);
            self.violations.push(v);
        }
        self.traces.push_str(&run.traces);
    }

    fn report(&self, test: &str) -> String {
        let mut out = format!(
            "{test}: seed {} failed with {} violation(s)\n  replay: REKEY_SIM_SEED={} cargo test -- {test}\n",
            self.seed,
            self.violations.len(),
            self.seed
        );
        for v in &self.violations {
            let _ = writeln!(out, "  - {v}");
        }
        out.push_str(&self.traces);
        out
    }
}

fn seeds_from_env(default: u64) -> Range<u64> {
    let var = |name: &str| {
        let text = std::env::var(name).ok()?;
        let n = text.trim().parse::<u64>();
        Some(n.unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")))
    };
    match var("REKEY_SIM_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..var("REKEY_SIM_SEEDS").unwrap_or(default),
    }
}

/// Runs one seed; a panic becomes a violation of that seed.
fn run_seed(seed: u64, simulate: fn(u64) -> SeedResult) -> SeedResult {
    catch_unwind(AssertUnwindSafe(|| simulate(seed))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        let mut violations = vec![Violation::new(
            Invariant::Runner,
            None,
            format!("panicked: {message}"),
        )];
        violations.extend(checks::scan_for_values("a panic message", &message, &[]));
        SeedResult {
            seed,
            rotations: 0,
            violations,
            traces: String::new(),
            coverage: Coverage::default(),
        }
    })
}

/// The seed under faults and crashes; every few seeds also I3 (calm, with and without
/// crashes) and a replay that must do exactly the same.
fn simulate(seed: u64) -> SeedResult {
    let sc = Scenario::generate(seed);
    let config = RunConfig {
        capture_logs: seed.is_multiple_of(LOGS_EVERY),
        ..RunConfig::full(&sc)
    };
    let main = harness::run(&sc, config);
    let fingerprint = main.fingerprint;
    let mut result = SeedResult::new(seed, main);
    if seed.is_multiple_of(SAME_OUTCOME_EVERY) {
        let crashing = harness::run(&sc, RunConfig::calm(&sc, true));
        let calm = harness::run(&sc, RunConfig::calm(&sc, false));
        let expected = sc.expected_calm_phases();
        if calm.phases != expected {
            result.violations.push(Violation::new(
                Invariant::SameOutcome,
                None,
                format!(
                    "without faults or crashes the rotations ended {:?}; expected {expected:?}",
                    calm.phases
                ),
            ));
        }
        if crashing.phases != calm.phases {
            result.violations.push(Violation::new(
                Invariant::SameOutcome,
                None,
                format!(
                    "with crashes the rotations ended {:?}; without, {:?}",
                    crashing.phases, calm.phases
                ),
            ));
        }
        result.absorb("calm, crashes", crashing);
        result.absorb("calm, no crashes", calm);
    }
    if seed.is_multiple_of(REPLAY_EVERY) {
        let again = harness::run(&sc, RunConfig::full(&sc));
        if again.fingerprint != fingerprint {
            result.violations.push(Violation::new(
                Invariant::Determinism,
                None,
                "a second run of the seed journaled or did something else",
            ));
        }
    }
    result
}

/// The seed under faults and crashes, with a runner sometimes asked to drive a rotation
/// it is driving already.
fn simulate_reentrant(seed: u64) -> SeedResult {
    let sc = Scenario::generate(seed);
    let config = RunConfig {
        reentrant_drives: true,
        ..RunConfig::full(&sc)
    };
    SeedResult::new(seed, harness::run(&sc, config))
}

/// Runs `seeds`, prints the failures and one summary line, and fails the test if any seed
/// violated an invariant. Returns the coverage of the seeds.
fn run_seeds(test: &str, seeds: Range<u64>, simulate: fn(u64) -> SeedResult) -> (usize, Coverage) {
    let (mut count, mut rotations, mut violations) = (0, 0, 0);
    let mut coverage = Coverage::default();
    let mut failed = Vec::new();
    for seed in seeds {
        let result = run_seed(seed, simulate);
        count += 1;
        rotations += result.rotations;
        violations += result.violations.len();
        coverage.add(&result.coverage);
        if !result.violations.is_empty() {
            failed.push(result);
        }
    }
    for result in failed.iter().take(REPORTS_MAX) {
        eprintln!("{}", result.report(test));
    }
    if failed.len() > REPORTS_MAX {
        let rest: Vec<u64> = failed[REPORTS_MAX..].iter().map(|r| r.seed).collect();
        eprintln!("{test}: further failing seeds: {rest:?}");
    }
    let mut tally: BTreeMap<Invariant, (usize, u64)> = BTreeMap::new();
    for r in &failed {
        for v in &r.violations {
            tally.entry(v.invariant).or_insert((0, r.seed)).0 += 1;
        }
    }
    for (invariant, (n, seed)) in tally {
        eprintln!("{test}: {n} × [{invariant}], first at seed {seed}");
    }
    let name = if test == MAIN_TEST {
        "simulation".to_owned()
    } else {
        format!("simulation ({test})")
    };
    println!("{name}: {count} seeds, {rotations} rotations, {violations} violations");
    assert!(
        failed.is_empty(),
        "{} of {count} seeds violated an invariant; replay one with REKEY_SIM_SEED=<seed> cargo test -- {test}",
        failed.len()
    );
    (count, coverage)
}

const MAIN_TEST: &str = "simulation_of_rotations_under_crashes_and_faults";

#[test]
fn simulation_of_rotations_under_crashes_and_faults() {
    let (count, coverage) = run_seeds(MAIN_TEST, seeds_from_env(DEFAULT_SEEDS), simulate);
    let missing = coverage.missing();
    assert!(
        count < COVERAGE_MIN_SEEDS || missing.is_empty(),
        "{count} seeds never exercised: {missing:?} ({coverage:?})"
    );
}

/// A daemon may ask its runner to drive a rotation that it is driving already (a timer
/// wake-up racing a manual resume). Both drives hold the same owner's lease, so only the
/// journal's sequence check separates them, and that comes after a provider call.
#[test]
fn simulation_of_reentrant_drives() {
    let test = "simulation_of_reentrant_drives";
    let (count, coverage) = run_seeds(test, seeds_from_env(REENTRANT_SEEDS), simulate_reentrant);
    assert!(
        count < COVERAGE_MIN_SEEDS.min(REENTRANT_SEEDS as usize) || coverage.reentrant_drives > 0,
        "{count} seeds never drove a rotation twice at once"
    );
}

/// The harness can fail: with reconciliation skipped (every in-doubt step assumed not
/// applied), a lost response makes the runner repeat an effect, which I2 must catch on a
/// seed that is clean without the planted bug.
#[test]
fn simulation_catches_planted_bug() {
    for seed in 0..PLANTED_SEEDS {
        let sc = Scenario::generate(seed);
        let planted = RunConfig {
            planted_bug: true,
            ..RunConfig::full(&sc)
        };
        let planted = harness::run(&sc, planted);
        let Some(caught) = planted
            .violations
            .iter()
            .find(|v| v.invariant == Invariant::Effects)
        else {
            continue;
        };
        let clean = harness::run(&sc, RunConfig::full(&sc));
        if clean
            .violations
            .iter()
            .all(|v| v.invariant != Invariant::Effects)
        {
            println!(
                "simulation (planted bug: reconcile skipped): seed {seed} caught it: {caught}"
            );
            return;
        }
    }
    panic!("the planted bug (reconcile skipped) went unnoticed for {PLANTED_SEEDS} seeds");
}
