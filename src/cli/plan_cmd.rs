//! `rekey plan [SECRET]` (and `rotate --dry-run`): the ordered steps of a rotation, the
//! resources each touches and how each would be undone. Reads the config only; changes
//! nothing, opens no journal, calls no provider.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::exit;
use crate::config::Config;
use crate::saga::{Plan, RotationEvent, StepId, Trigger, apply};

/// One planned step.
#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub phase: &'static str,
    pub action: &'static str,
    pub role: String,
    pub target: String,
    /// How the step is undone if the rotation compensates.
    pub undo: Option<&'static str>,
}

/// The steps of a rotation of `plan`, in order.
pub fn steps(plan: &Plan) -> Vec<PlannedStep> {
    let requested = RotationEvent::Requested {
        rotation_id: "plan".into(),
        plan: plan.clone(),
        trigger: Trigger::Manual,
        actor: "plan".into(),
    };
    let Ok(state) = apply(None, &requested) else {
        return Vec::new();
    };
    let row = |phase, s: StepId| {
        let t = &plan.targets[usize::from(s.target)];
        PlannedStep {
            phase,
            action: s.action.as_str(),
            role: format!("{:?}", t.role).to_lowercase(),
            target: t.name.clone(),
            undo: s.action.undo().map(|u| u.as_str()),
        }
    };
    state
        .forward_steps()
        .into_iter()
        .map(|s| row("forward", s))
        .chain(
            state
                .retire_steps()
                .into_iter()
                .map(|s| row("after grace", s)),
        )
        .collect()
}

/// Prints the plans of `secret` (or of every secret).
pub fn run(config: &Path, secret: Option<&str>, json: bool) -> Result<u8> {
    let config = Config::load(config)?;
    let plans: Vec<&Plan> = match secret {
        Some(s) => vec![config.plan(s)?],
        None => config.secrets.values().collect(),
    };
    if json {
        let out: Vec<_> = plans
            .iter()
            .map(|p| serde_json::json!({ "secret": p.secret, "grace_ms": p.grace_ms, "attempts_max": p.attempts_max, "steps": steps(p) }))
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(exit::OK);
    }
    for p in plans {
        println!(
            "{}: up to {} attempts per forward step; on failure, applied steps are undone newest first",
            p.secret, p.attempts_max
        );
        let mut waited = false;
        for (i, s) in steps(p).iter().enumerate() {
            if s.phase != "forward" && !waited {
                println!(
                    "      wait out the grace period ({} s); the old credential stays valid",
                    p.grace_ms / 1000
                );
                waited = true;
            }
            let undo = s.undo.map_or(String::new(), |u| format!("   (undo: {u})"));
            println!(
                "  {:>2}. {:<12} {} {}{undo}",
                i + 1,
                s.action,
                s.role,
                s.target
            );
        }
    }
    println!("(plan only: nothing was changed)");
    Ok(exit::OK)
}
