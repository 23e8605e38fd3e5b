//! Providers: one module per external system, each implementing
//! [`crate::provider::Provider`]. `local` holds the embedded default that needs no cloud.

pub mod azure;
pub mod local;
pub mod postgres;

pub mod versions;
