//! `rekey run`: the daemon in the foreground, with its HTTP listener, until SIGTERM or
//! SIGINT (twice to exit at once).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::exit;
use super::rotation_cmd::Env;
use crate::daemon::metrics::Metrics;
use crate::daemon::{Daemon, Settings, api, history_api, serve};
use crate::provider::SecretValue;
use crate::triggers::eventgrid::{self, WebhookConfig};

/// `rekey run`.
pub async fn run(config: &Path) -> Result<u8> {
    // Everything the daemon needs from the environment is checked before the journal opens.
    let loaded = crate::config::Config::load(config)?;
    let settings = &loaded.daemon;
    let channels = crate::notify::channels(&loaded.notifications, &|var| std::env::var(var).ok())?;
    let tokens = from_env(
        "api_token_env",
        settings.api_token_env.as_deref(),
        "export a long random token in it",
    )?;
    let viewer_tokens = from_env(
        "viewer_token_env",
        settings.viewer_token_env.as_deref(),
        "export a long random token in it for read-only console and API access",
    )?;
    let webhook_secret = from_env(
        "webhook_secret_env",
        settings.webhook_secret_env.as_deref(),
        "export the shared secret Event Grid sends (?code=... or the x-rekey-webhook-secret header)",
    )?;
    let webhook_tokens = from_env(
        "webhook_token_env",
        settings.webhook_token_env.as_deref(),
        "export the bearer token Event Grid sends",
    )?;
    let metrics = Arc::new(Metrics::new());
    // Progress streams look for new events as soon as the runner journals one.
    let appends = history_api::Appends::default();
    let observers = crate::runner::Observers(vec![metrics.clone(), Arc::new(appends.clone())]);
    let env = Env::open_observed(config, Some(Arc::new(observers)))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another rekey running? set [daemon] listen to a free address",
                settings.listen
            )
        })?;
    if !settings.listen.ip().is_loopback() {
        tracing::warn!(listen = %settings.listen, "the API listens beyond this machine");
    }
    let (daemon, handle) = Daemon::new(
        env.runner.clone(),
        env.journal.clone(),
        Arc::new(env.config.clone()),
        env.clock.clone(),
        Settings {
            max_concurrent: settings.max_concurrent_rotations,
            notice_before_ms: i64::from(settings.notice_days_before) * 86_400_000,
            // A rotation a dead runner left is free once its lease lapsed: look about as often.
            rescan_ms: env.config.lease_ttl_ms.clamp(1_000, 30_000),
        },
    );
    let leadership = Arc::new(crate::daemon::leader::Leadership::new(
        crate::daemon::leader::node_id(settings.node_id.as_deref()),
        settings.leader_ttl_ms,
    ));
    let node = leadership.node().to_owned();
    let daemon = daemon.with_leadership(leadership);
    let daemon = if channels.is_empty() {
        daemon
    } else {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client for notifications")?;
        daemon.with_notifier(Arc::new(crate::notify::Notifier::new(
            env.journal.clone(),
            channels,
            http,
            env.clock.clone(),
        )))
    };
    let mut state = daemon.api_state(tokens.into_iter().collect());
    state.metrics = Some(metrics);
    state.viewer_tokens = Arc::new(viewer_tokens.into_iter().collect());
    let streams = history_api::Streams::new(history_api::StreamLimits::default());
    let mut app = api::router_with(state, streams.waking_on(&appends));
    if webhook_secret.is_some() || webhook_tokens.is_some() {
        let config = WebhookConfig {
            secret: webhook_secret,
            bearer_tokens: webhook_tokens
                .iter()
                .map(|t| t.expose().to_owned())
                .collect(),
            ..WebhookConfig::default()
        };
        app = app.merge(eventgrid::router(config, daemon.webhook_sink())?);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = settings.http;
    let server = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        serve::serve(listener, app, limits, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
        .await
    });
    let signals = handle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => signals.signal(),
                _ = int.recv() => signals.signal(),
            }
        }
    });
    eprintln!(
        "rekey: daemon {node} serving http://{} (journal {}); SIGTERM or Ctrl-C to stop",
        env.config.daemon.listen,
        env.config.journal.describe()
    );
    let summary = daemon.run().await?;
    let _ = stop_tx.send(true);
    if !summary.immediate {
        let _ = server.await;
    }
    eprintln!(
        "rekey: daemon stopped{}: {} completed, {} compensated, {} left open for the next start or `rekey resume`",
        if summary.immediate { " at once" } else { "" },
        summary.completed,
        summary.compensated,
        summary.left_open
    );
    Ok(exit::OK)
}

/// The value of the variable `[daemon] key` names, if it names one.
fn from_env(key: &str, var: Option<&str>, what_to_do: &str) -> Result<Option<SecretValue>> {
    let Some(var) = var else {
        return Ok(None);
    };
    let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let value = value
        .with_context(|| format!("[daemon] {key} names {var}, which is not set: {what_to_do}"))?;
    let value = SecretValue::new(value.trim());
    api::check_token(key, var, &value)?;
    Ok(Some(value))
}
