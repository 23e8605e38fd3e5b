//! rekey's integration tests: one binary, one module per concern.

mod azure;
mod cli;
mod crash;
mod daemon;
mod fake_azure;
mod fake_azure_selftest;
mod fleet;
mod notify;
mod postgres;
mod runner;
mod simulation;
mod telemetry;
