//! Fleet discovery (read only): find every Entra app credential, find the Key Vault items
//! that hold it, and say how sure each link is (DESIGN §7).
//!
//! - [`config`]: the `[fleet]` section and its validation;
//! - [`model`]: the inventory's types and identifier normalisation;
//! - [`rules`]: name templates, tag keys, exclusions, globs;
//! - [`matching`]: the pure matcher, its signal table, pruning and verdicts;
//! - [`inventory`]: Graph, ARM and Key Vault listings over HTTP, budgets, retries,
//!   unreachable tenants and vaults, the opt-in hint reads;
//! - [`discover`]: one run, from config to matched inventory;
//! - [`journal`]: the run's `discovery:<run id>` stream, in bounded chunks;
//! - [`report`]: the `--json` document and the table's rows;
//! - [`explain`]: the `--explain` text;
//! - [`plan`]: fleet rotation plans (pure): eligibility, refusals, one plan per app;
//! - [`rotate`]: one fleet rotation run's discovery and plans (CLI and API);
//! - [`progress`]: each rotation's step and end, as `rotate --fleet` shows them.
//!
//! **Architecture invariant:** matching is pure (no I/O, no clock); the inventory is
//! gathered elsewhere and hint checks reach it as booleans, never as values.

pub mod config;
pub mod discover;
pub mod explain;
pub mod inventory;
pub mod journal;
pub mod matching;
pub mod model;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rotate;
pub mod rules;

#[cfg(test)]
mod tests;
