//! rekey's integration tests: one binary, one module per concern.

mod cli;
mod simulation;
