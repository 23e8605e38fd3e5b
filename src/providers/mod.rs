//! Providers: one module per external system, each implementing the role traits of
//! [`crate::provider`] it plays (rotator, store, dependent, verifier) and no others.
//! `local` holds the embedded default that needs no cloud.

pub mod azure;
pub mod local;
pub mod postgres;

pub mod versions;
