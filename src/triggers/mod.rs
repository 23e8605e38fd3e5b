//! What starts rotations: schedules and Key Vault events.

pub mod eventgrid;
pub mod schedule;
