//! The rotation saga: its events ([`event`]) and its pure state machine ([`state`]).
//!
//! Architecture invariant: nothing in this module performs I/O, reads a clock or draws a
//! random number. The runner owns all of that.

pub mod address;
mod decode;
pub mod event;
pub mod state;

pub use address::{Address, CommandDigest};
pub use event::{Action, ErrorClass, Plan, Role, RotationEvent, StepId, TargetRef, Trigger};
pub use state::{
    Command, Failure, Nondeterminism, Phase, Rotation, StepStatus, Wait, apply, decide, fold,
};

#[cfg(test)]
mod tests;
