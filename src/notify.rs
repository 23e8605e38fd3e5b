//! Notifications: operators hear about a rotation that completed, one that compensated, a
//! step stuck in retries, and a rotation or an expiry coming up, on Microsoft Teams, Slack
//! or a generic JSON webhook.
//!
//! The journal is the outbox. A notice that is due is a `NoticeDue` event in its own stream
//! `notice:<channel>:<dedup key>`, and every delivery attempt is journaled after it
//! (`NoticeFailed` with its retry time, then `NoticeDelivered`), so a crash never loses an
//! alert: the next process finds the stream still `due` and posts it. The stream id is
//! deterministic, so creating a notice twice (a retried call, [`Notifier::catch_up`] after a
//! crash) is harmless: the second append at sequence 0 conflicts and is ignored.
//!
//! Delivery is **at least once**: a process that dies between a successful POST and its
//! `NoticeDelivered` event posts the notice again at the next start. Generic webhook
//! receivers can drop duplicates by `notice_id`, which is the same for every attempt.
//!
//! Webhook URLs authorize posting, so they are secrets: read from the environment, sent only
//! over https (or plain http to loopback), and never written to the journal, to logs, to
//! error messages or to `Debug` output. Notice texts carry only names, ids and messages that
//! are already journaled, never secret values.
//!
//! Wiring: at start, [`Notifier::catch_up`] then [`Notifier::deliver_due`]; after a
//! rotation ends, [`Notifier::rotation_ended`]; when one waits for a retry,
//! [`Notifier::steps_stuck`]; the schedule check calls [`Notifier::upcoming`]; after
//! creating notices and whenever the time `deliver_due` returned comes, `deliver_due` again.
//! Delivery makes HTTP calls (up to [`DELIVERY_TIMEOUT_MS`] each), so run it in its own task.
//!
//! Owns: the notification config types, channel URL resolution, notice streams and their
//! events, message bodies, delivery with backoff. Never touches: rotation streams (it only
//! reads them), providers, the saga.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rekey_journal::{Append, Clock, Event, NewEvent, STREAM_ID_BYTES_MAX, StreamFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};
use url::Url;

use crate::providers::azure::http::parse_retry_after;
use crate::providers::azure::may_carry_credentials;
use crate::retry::RetryPolicy;
use crate::runner::{RunnerJournal, lock};
use crate::saga::{ErrorClass, Rotation, RotationEvent, StepStatus};
use crate::text::quoted;

/// Every notice stream id starts with this.
pub const STREAM_PREFIX: &str = "notice:";
/// Stream status of a notice not yet delivered.
pub const DUE: &str = "due";
/// Stream status of a delivered notice.
pub const DELIVERED: &str = "delivered";
/// Longest channel name accepted (it is part of every notice stream id).
pub const CHANNEL_NAME_BYTES_MAX: usize = 32;
/// Longest reason kept in a notice; longer ones are cut (events stay small).
pub const REASON_CHARS_MAX: usize = 1_000;
/// Most characters of a refusing receiver's response kept in a `NoticeFailed` message.
pub const RESPONSE_CHARS_MAX: usize = 200;
/// One POST may take this long before it counts as failed.
pub const DELIVERY_TIMEOUT_MS: u64 = 10_000;
/// Most POSTs made by one [`Notifier::deliver_due`]; the rest wait for the next call.
pub const DELIVER_BATCH_MAX: usize = 100;

/// True for notice streams (as opposed to rotation and lock streams).
pub fn is_notice_stream(stream_id: &str) -> bool {
    stream_id.starts_with(STREAM_PREFIX)
}

/// Why notifications cannot be configured, created or delivered. A failed POST is not an
/// error: it is journaled as `NoticeFailed` and retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "notification channel {} must be 1 to {CHANNEL_NAME_BYTES_MAX} characters of A-Z a-z 0-9 - _; rename it in [notifications]",
        quoted(.channel)
    )]
    ChannelName { channel: String },
    #[error(
        "notification channel {channel}: environment variable {} is not set; set it to the channel's webhook URL (rekey reads it from the environment because the URL itself authorizes posting)",
        quoted(.var)
    )]
    UrlUnset { channel: String, var: String },
    #[error(
        "notification channel {channel}: environment variable {var} does not hold an absolute URL ({detail}); the value is not shown because it authorizes posting"
    )]
    UrlInvalid {
        channel: String,
        var: String,
        detail: String,
    },
    #[error(
        "notification channel {channel}: the URL in {var} is a {scheme} URL to a host other than this machine; webhook URLs authorize posting, so rekey sends them only over https (plain http only to 127.0.0.1, ::1 or localhost)"
    )]
    UrlInsecure {
        channel: String,
        var: String,
        scheme: String,
    },
    #[error(transparent)]
    Journal(#[from] rekey_journal::Error),
    #[error(
        "stream {stream}: event {seq} cannot be decoded ({detail}); the journal was written by another program or edited"
    )]
    Decode {
        stream: String,
        seq: u64,
        detail: String,
    },
}

/// The chat or webhook flavour of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Microsoft Teams incoming webhook (Workflows): an Adaptive Card message.
    Teams,
    /// A Slack incoming webhook: `text` plus `blocks`.
    Slack,
    /// Any HTTP receiver: the stable JSON object of [`body`].
    Webhook,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Completed,
    Compensated,
    Stuck,
    Upcoming,
    /// What the daemon's unattended fleet run did or will do about a discovered
    /// credential: rotating it, refusing it (and why), an expiry with no vault link, a
    /// rotation coming up.
    Fleet,
}

impl NoticeKind {
    /// Every kind: what a channel hears when its config has no `on`.
    pub fn all() -> Vec<NoticeKind> {
        vec![
            NoticeKind::Completed,
            NoticeKind::Compensated,
            NoticeKind::Stuck,
            NoticeKind::Upcoming,
            NoticeKind::Fleet,
        ]
    }

    /// The name used in configs, bodies and dedup keys.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Completed => "completed",
            NoticeKind::Compensated => "compensated",
            NoticeKind::Stuck => "stuck",
            NoticeKind::Upcoming => "upcoming",
            NoticeKind::Fleet => "fleet",
        }
    }
}

/// One `[notifications.<name>]` table of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    pub kind: ChannelKind,
    /// The environment variable holding the webhook URL (the URL is a secret: it
    /// authorizes posting, so it is never in the config file).
    pub url_env: String,
    /// The notice kinds this channel hears; all of them when absent.
    #[serde(default = "NoticeKind::all")]
    pub on: Vec<NoticeKind>,
}

/// A configured channel with its URL resolved. Its `Debug` never shows the URL.
#[derive(Clone)]
pub struct Channel {
    name: String,
    kind: ChannelKind,
    url: Url,
    on: Vec<NoticeKind>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"<redacted>")
            .field("on", &self.on)
            .finish()
    }
}

impl Channel {
    /// The channel's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its flavour.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// True when the channel hears notices of `kind`.
    pub fn wants(&self, kind: NoticeKind) -> bool {
        self.on.contains(&kind)
    }
}

/// Resolves every configured channel's URL through `env_lookup` (the process environment
/// in production), in name order.
///
/// # Errors
/// [`Error::ChannelName`], [`Error::UrlUnset`], [`Error::UrlInvalid`], [`Error::UrlInsecure`];
/// none of them shows the URL.
pub fn channels(
    configs: &BTreeMap<String, NotificationConfig>,
    env_lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Channel>, Error> {
    configs
        .iter()
        .map(|(name, config)| {
            let valid_name = !name.is_empty()
                && name.len() <= CHANNEL_NAME_BYTES_MAX
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(Error::ChannelName {
                    channel: name.clone(),
                });
            }
            let var = &config.url_env;
            let value = env_lookup(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Error::UrlUnset {
                    channel: name.clone(),
                    var: var.clone(),
                })?;
            // url::ParseError names the problem, never the input.
            let url = Url::parse(value.trim()).map_err(|e| Error::UrlInvalid {
                channel: name.clone(),
                var: var.clone(),
                detail: e.to_string(),
            })?;
            if !may_carry_credentials(&url) {
                return Err(Error::UrlInsecure {
                    channel: name.clone(),
                    var: var.clone(),
                    scheme: url.scheme().to_owned(),
                });
            }
            Ok(Channel {
                name: name.clone(),
                kind: config.kind,
                url,
                on: config.on.clone(),
            })
        })
        .collect()
}

/// What a notice says: the payload of `NoticeDue`. Names, ids and journaled messages only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    /// The channel it goes to.
    pub channel: String,
    pub secret: String,
    pub rotation_id: Option<String>,
    /// `completed`/`compensated` for ended rotations, `stuck`, or what is upcoming
    /// (`rotation`, `expiry`).
    pub outcome: Option<String>,
    /// Why: the compensation reason, or the stuck step, its attempt and its last error.
    pub reason: Option<String>,
    /// When it happened, or for upcoming notices when it is due (Unix ms).
    pub at_ms: i64,
}

/// Events of a notice stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum NoticeEvent {
    /// The notice exists and must be delivered; always the stream's first event.
    Due(Notice),
    /// The receiver accepted it (2xx) at attempt `attempts`.
    Delivered { attempts: u32 },
    /// Attempt `attempt` failed; the next is not before `retry_at_ms`.
    Failed {
        attempt: u32,
        message: String,
        retry_at_ms: i64,
    },
}

impl NoticeEvent {
    /// The journal event type.
    pub fn kind(&self) -> &'static str {
        match self {
            NoticeEvent::Due(_) => "NoticeDue",
            NoticeEvent::Delivered { .. } => "NoticeDelivered",
            NoticeEvent::Failed { .. } => "NoticeFailed",
        }
    }

    fn to_new(&self) -> NewEvent {
        NewEvent::new(self.kind(), serde_json::to_value(self).unwrap_or_default())
    }
}

/// The stream id (and `notice_id`) of the notice with `dedup_key` on `channel`. Characters
/// a stream id cannot hold become `_`; a key too long for a stream id is replaced by its
/// SHA-256, so the id stays deterministic.
pub fn notice_id(channel: &str, dedup_key: &str) -> String {
    let clean: String = dedup_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let id = format!("{STREAM_PREFIX}{channel}:{clean}");
    if id.len() <= STREAM_ID_BYTES_MAX {
        id
    } else {
        let digest = openssl::sha::sha256(dedup_key.as_bytes());
        format!("{STREAM_PREFIX}{channel}:sha256:{}", hex::encode(digest))
    }
}

/// A notice stream folded: its notice and where delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outbox {
    notice: Notice,
    seq: u64,
    failures: u32,
    retry_at_ms: Option<i64>,
    delivered: bool,
}

fn decode<T: serde::de::DeserializeOwned>(e: &Event) -> Result<T, Error> {
    serde_json::from_str(&e.payload).map_err(|err| Error::Decode {
        stream: e.stream_id.clone(),
        seq: e.stream_seq,
        detail: err.to_string(),
    })
}

fn fold(events: &[Event]) -> Result<Option<Outbox>, Error> {
    let mut outbox: Option<Outbox> = None;
    for e in events {
        match (decode(e)?, outbox.as_mut()) {
            (NoticeEvent::Due(notice), None) => {
                outbox = Some(Outbox {
                    notice,
                    seq: e.stream_seq,
                    failures: 0,
                    retry_at_ms: None,
                    delivered: false,
                });
            }
            (NoticeEvent::Failed { retry_at_ms, .. }, Some(o)) => {
                o.failures += 1;
                o.retry_at_ms = Some(retry_at_ms);
            }
            (NoticeEvent::Delivered { .. }, Some(o)) => o.delivered = true,
            (event, _) => {
                return Err(Error::Decode {
                    stream: e.stream_id.clone(),
                    seq: e.stream_seq,
                    detail: format!("{} does not fit here", event.kind()),
                });
            }
        }
        if let Some(o) = outbox.as_mut() {
            o.seq = e.stream_seq;
        }
    }
    Ok(outbox)
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn headline(n: &Notice) -> String {
    let what = n.outcome.as_deref().unwrap_or("event");
    match n.kind {
        NoticeKind::Completed => format!("rekey: rotation of {} completed", n.secret),
        NoticeKind::Compensated => format!(
            "rekey: rotation of {} failed and was rolled back (compensated)",
            n.secret
        ),
        NoticeKind::Stuck => format!("rekey: rotation of {} is stuck retrying a step", n.secret),
        NoticeKind::Upcoming => {
            let at = jiff::Timestamp::from_millisecond(n.at_ms)
                .map_or_else(|_| format!("{} ms", n.at_ms), |t| t.to_string());
            format!("rekey: {what} of {} due at {at}", n.secret)
        }
        NoticeKind::Fleet => format!("rekey fleet: {}: {what}", n.secret),
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters (`<!channel>` pings
/// everyone), so every journaled text is escaped.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The JSON a channel of `kind` receives for notice `notice_id`.
///
/// The generic webhook body is stable: `{"notice_id", "kind", "secret", "rotation_id",
/// "outcome", "reason", "at_ms"}`, absent values as `null`; `notice_id` is the same for
/// every attempt, so receivers can drop duplicates by it.
pub fn body(kind: ChannelKind, notice_id: &str, n: &Notice) -> Value {
    let title = headline(n);
    match kind {
        ChannelKind::Webhook => json!({
            "notice_id": notice_id,
            "kind": n.kind.as_str(),
            "secret": n.secret,
            "rotation_id": n.rotation_id,
            "outcome": n.outcome,
            "reason": n.reason,
            "at_ms": n.at_ms,
        }),
        ChannelKind::Teams => {
            let mut blocks = vec![json!({
                "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true,
            })];
            if let Some(reason) = &n.reason {
                blocks.push(json!({"type": "TextBlock", "text": reason, "wrap": true}));
            }
            let mut facts = vec![json!({"title": "Secret", "value": n.secret})];
            if let Some(id) = &n.rotation_id {
                facts.push(json!({"title": "Rotation", "value": id}));
            }
            facts.push(json!({"title": "Notice", "value": notice_id}));
            blocks.push(json!({"type": "FactSet", "facts": facts}));
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {"type": "AdaptiveCard", "version": "1.4", "body": blocks},
                }],
            })
        }
        ChannelKind::Slack => {
            let title = slack_escape(&title);
            let reason = n.reason.as_deref().map(slack_escape);
            let text = match &reason {
                Some(r) => format!("{title}: {r}"),
                None => title.clone(),
            };
            let section = match &reason {
                Some(r) => format!("*{title}*\n{r}"),
                None => format!("*{title}*"),
            };
            let mut context = format!("secret `{}`", slack_escape(&n.secret));
            if let Some(id) = &n.rotation_id {
                context.push_str(&format!(" · rotation `{}`", slack_escape(id)));
            }
            context.push_str(&format!(" · notice `{notice_id}`"));
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": section}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
                ],
            })
        }
    }
}

/// Creates and delivers notices through the journal. Cheap to share behind an `Arc`.
pub struct Notifier<J> {
    journal: Arc<J>,
    channels: Vec<Channel>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
}

impl<J> std::fmt::Debug for Notifier<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<J: RunnerJournal> Notifier<J> {
    /// A notifier over `journal`, posting to `channels` with `http`; retries back off as
    /// [`RetryPolicy::default`] (1 s doubling to 5 min, never giving up).
    pub fn new(
        journal: Arc<J>,
        channels: Vec<Channel>,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            journal,
            channels,
            http,
            clock,
            retry: RetryPolicy::default(),
        }
    }

    /// The same notifier with another retry timing.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Journals the notice that rotation `rotation_id` of `secret` ended, completed or
    /// compensated with `reason`, for every channel that hears it. Returns how many notices
    /// were created (0 when they existed already).
    ///
    /// # Errors
    /// Journal errors.
    pub async fn rotation_ended(
        &self,
        rotation_id: &str,
        secret: &str,
        completed: bool,
        reason: Option<&str>,
    ) -> Result<usize, Error> {
        let at_ms = self.clock.now_ms();
        self.ended(rotation_id, secret, completed, reason, at_ms)
            .await
    }

    /// Journals the notice that `step` of rotation `rotation_id` failed at `attempt` with
    /// `message` (already journaled, free of secret values) and is being retried.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn step_stuck(
        &self,
        rotation_id: &str,
        secret: &str,
        step: &str,
        attempt: u32,
        message: &str,
    ) -> Result<usize, Error> {
        let notice = Notice {
            kind: NoticeKind::Stuck,
            channel: String::new(),
            secret: secret.to_owned(),
            rotation_id: Some(rotation_id.to_owned()),
            outcome: Some("stuck".to_owned()),
            reason: Some(format!("step {step}, attempt {attempt}: {message}")),
            at_ms: self.clock.now_ms(),
        };
        self.announce(&format!("{rotation_id}:stuck:{step}:{attempt}"), notice)
            .await
    }

    /// Journals a stuck notice for every step of `state` in doubt after a failure whose
    /// attempt [`worth_noticing`] with `attempts_min`: the daemon calls it when a rotation
    /// waits for a retry. Returns how many notices were created.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn steps_stuck(&self, state: &Rotation, attempts_min: u32) -> Result<usize, Error> {
        let mut created = 0;
        for (step, status) in &state.steps {
            if let StepStatus::InDoubt {
                attempt,
                failure: Some(failure),
            } = status
                && worth_noticing(*attempt, attempts_min)
            {
                let step = step.to_string();
                created += self
                    .step_stuck(
                        &state.id,
                        &state.plan.secret,
                        &step,
                        *attempt,
                        &failure.message,
                    )
                    .await?;
            }
        }
        Ok(created)
    }

    /// Journals the notice that `what` (`rotation` or `expiry`) of `secret` is due at
    /// `due_ms`; one notice per secret, `what` and due time, however often it is called.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn upcoming(&self, secret: &str, what: &str, due_ms: i64) -> Result<usize, Error> {
        let notice = Notice {
            kind: NoticeKind::Upcoming,
            channel: String::new(),
            secret: secret.to_owned(),
            rotation_id: None,
            outcome: Some(what.to_owned()),
            reason: None,
            at_ms: due_ms,
        };
        self.announce(&format!("{secret}:upcoming:{what}:{due_ms}"), notice)
            .await
    }

    /// Journals a fleet notice about `credential` (its app and key id): `outcome` (what
    /// happened or will), `reason`, `at_ms` (when it is due or expires). One notice per
    /// `dedup` key, however many discovery runs find the same thing.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn fleet(
        &self,
        dedup: &str,
        credential: &str,
        outcome: &str,
        reason: Option<&str>,
        rotation_id: Option<&str>,
        at_ms: i64,
    ) -> Result<usize, Error> {
        let notice = Notice {
            kind: NoticeKind::Fleet,
            channel: String::new(),
            secret: credential.to_owned(),
            rotation_id: rotation_id.map(str::to_owned),
            outcome: Some(outcome.to_owned()),
            reason: reason.map(|r| cut(r, REASON_CHARS_MAX)),
            at_ms,
        };
        self.announce(&format!("fleet:{dedup}"), notice).await
    }

    /// Makes sure every rotation that ended (completed or compensated) at or after
    /// `since_ms` has its notices: a crash between a rotation's end and its
    /// [`Notifier::rotation_ended`] loses nothing. Call it at start. Returns how many
    /// notices were created.
    ///
    /// # Errors
    /// Journal and decode errors.
    pub async fn catch_up(&self, since_ms: i64) -> Result<usize, Error> {
        let mut created = 0;
        for (status, completed) in [("completed", true), ("compensated", false)] {
            let kind = ended_kind(completed);
            let hearing: Vec<&Channel> = self.channels.iter().filter(|c| c.wants(kind)).collect();
            if hearing.is_empty() {
                continue;
            }
            let filter = StreamFilter {
                status: Some(status.to_owned()),
                ..StreamFilter::default()
            };
            for info in self.journal.streams(&filter).await? {
                let rotation_id = &info.stream_id;
                if info.updated_at_ms < since_ms
                    || lock::is_lock_stream(rotation_id)
                    || is_notice_stream(rotation_id)
                {
                    continue;
                }
                let key = format!("{rotation_id}:{}", kind.as_str());
                let mut missing = false;
                for c in &hearing {
                    missing |= self
                        .journal
                        .stream_info(&notice_id(&c.name, &key))
                        .await?
                        .is_none();
                }
                if !missing {
                    continue;
                }
                let (secret, reason) = self
                    .ended_rotation(rotation_id, info.subject.as_deref())
                    .await?;
                created += self
                    .ended(
                        rotation_id,
                        &secret,
                        completed,
                        reason.as_deref(),
                        info.updated_at_ms,
                    )
                    .await?;
            }
        }
        if created > 0 {
            info!(created, since_ms, "created notices missed by a crash");
        }
        Ok(created)
    }

    /// POSTs every due notice whose retry time has come (at most [`DELIVER_BATCH_MAX`]),
    /// journaling `NoticeDelivered` on 2xx and `NoticeFailed` with the next attempt time
    /// otherwise. Returns the earliest time a notice is due again, if any (call again then).
    ///
    /// At least once: a crash between a POST and its event posts the notice again.
    ///
    /// # Errors
    /// Journal and decode errors; a failed POST is journaled, not returned.
    pub async fn deliver_due(&self) -> Result<Option<i64>, Error> {
        let now = self.clock.now_ms();
        let filter = StreamFilter {
            status: Some(DUE.to_owned()),
            ..StreamFilter::default()
        };
        let mut next: Option<i64> = None;
        let mut earliest = |at: i64| next = Some(next.map_or(at, |n| n.min(at)));
        let mut posted = 0;
        for info in self.journal.streams(&filter).await? {
            if !is_notice_stream(&info.stream_id) {
                continue;
            }
            let Some(outbox) = fold(&self.journal.read_stream(&info.stream_id).await?)? else {
                continue;
            };
            if outbox.delivered {
                continue;
            }
            if let Some(at) = outbox.retry_at_ms.filter(|at| *at > now) {
                earliest(at);
                continue;
            }
            let Some(channel) = self
                .channels
                .iter()
                .find(|c| c.name == outbox.notice.channel)
            else {
                warn!(
                    notice = info.stream_id,
                    channel = outbox.notice.channel,
                    "a due notice's channel is no longer configured; it waits until the channel is configured again"
                );
                continue;
            };
            if posted == DELIVER_BATCH_MAX {
                earliest(now);
                break;
            }
            posted += 1;
            if let Some(at) = self.deliver(channel, &info.stream_id, &outbox).await? {
                earliest(at);
            }
        }
        Ok(next)
    }

    async fn ended(
        &self,
        rotation_id: &str,
        secret: &str,
        completed: bool,
        reason: Option<&str>,
        at_ms: i64,
    ) -> Result<usize, Error> {
        let kind = ended_kind(completed);
        let notice = Notice {
            kind,
            channel: String::new(),
            secret: secret.to_owned(),
            rotation_id: Some(rotation_id.to_owned()),
            outcome: Some(kind.as_str().to_owned()),
            reason: reason.map(str::to_owned),
            at_ms,
        };
        self.announce(&format!("{rotation_id}:{}", kind.as_str()), notice)
            .await
    }

    /// Journals `notice` as due on every channel that hears its kind.
    async fn announce(&self, dedup_key: &str, mut notice: Notice) -> Result<usize, Error> {
        notice.reason = notice.reason.map(|r| cut(&r, REASON_CHARS_MAX));
        let mut created = 0;
        for channel in self.channels.iter().filter(|c| c.wants(notice.kind)) {
            let id = notice_id(&channel.name, dedup_key);
            if self.journal.stream_info(&id).await?.is_some() {
                continue;
            }
            notice.channel.clone_from(&channel.name);
            // No subject: per-secret views list a secret's streams as its rotations.
            let append =
                Append::new(&id, 0, vec![NoticeEvent::Due(notice.clone()).to_new()]).status(DUE);
            match self.journal.append(append).await {
                Ok(_) => {
                    created += 1;
                    info!(notice = id, kind = notice.kind.as_str(), "notice due");
                }
                // Another caller created it first: the same notice.
                Err(rekey_journal::Error::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(created)
    }

    /// The secret and compensation reason of an ended rotation, from its stream.
    async fn ended_rotation(
        &self,
        rotation_id: &str,
        subject: Option<&str>,
    ) -> Result<(String, Option<String>), Error> {
        let mut secret = subject.map(str::to_owned);
        let mut reason = None;
        for e in self.journal.read_stream(rotation_id).await? {
            match decode(&e)? {
                RotationEvent::Requested { plan, .. } if secret.is_none() => {
                    secret = Some(plan.secret);
                }
                RotationEvent::CompensationStarted { reason: r } => reason = Some(r),
                _ => {}
            }
        }
        Ok((secret.unwrap_or_default(), reason))
    }

    /// One POST of `outbox` to `channel` and its journaled outcome; the next attempt time
    /// when it failed.
    async fn deliver(
        &self,
        channel: &Channel,
        stream_id: &str,
        outbox: &Outbox,
    ) -> Result<Option<i64>, Error> {
        let attempt = outbox.failures + 1;
        let sent = self
            .http
            .post(channel.url.clone())
            .timeout(Duration::from_millis(DELIVERY_TIMEOUT_MS))
            .json(&body(channel.kind, stream_id, &outbox.notice))
            .send()
            .await;
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(self.refused(resp).await),
            // Without the URL: its path authorizes posting.
            Err(e) => Some((ErrorClass::Transient, sent_error(e), None)),
        };
        let (event, status, retry_at) = match failure {
            None => (
                NoticeEvent::Delivered { attempts: attempt },
                DELIVERED,
                None,
            ),
            Some((class, message, retry_after_ms)) => {
                let retry_at_ms =
                    self.clock.now_ms() + self.retry.delay_ms(attempt, class, retry_after_ms, 0.0);
                warn!(
                    notice = stream_id,
                    channel = channel.name,
                    attempt,
                    retry_at_ms,
                    error = message,
                    "notice delivery failed; retrying later"
                );
                let event = NoticeEvent::Failed {
                    attempt,
                    message,
                    retry_at_ms,
                };
                (event, DUE, Some(retry_at_ms))
            }
        };
        let append = Append::new(stream_id, outbox.seq, vec![event.to_new()]).status(status);
        match self.journal.append(append).await {
            Ok(_) => {}
            // Another deliverer journaled an outcome first; the next call reads it.
            Err(rekey_journal::Error::Conflict { .. }) => return Ok(retry_at),
            Err(e) => return Err(e.into()),
        }
        if retry_at.is_none() {
            info!(
                notice = stream_id,
                channel = channel.name,
                attempt,
                "notice delivered"
            );
        }
        Ok(retry_at)
    }

    /// Classifies a non-2xx response: 429 waits for `Retry-After`, 408 and 5xx are
    /// transient, anything else waits the longest delay (a fixed config may cure it).
    async fn refused(&self, resp: reqwest::Response) -> (ErrorClass, String, Option<i64>) {
        let status = resp.status();
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now_ms()));
        let class = match status.as_u16() {
            429 => ErrorClass::RateLimited,
            408 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        // Only the start of the answer is kept, so only the start is read.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while bytes.len() < RESPONSE_CHARS_MAX * 4 {
            match resp.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let text = cut(String::from_utf8_lossy(&bytes).trim(), RESPONSE_CHARS_MAX);
        let message = if text.is_empty() {
            format!("the receiver answered HTTP {status}")
        } else {
            format!("the receiver answered HTTP {status}: {text}")
        };
        (class, message, retry_after_ms)
    }
}

/// True when a step failing at `attempt` deserves a stuck notice: at `attempts_min`, then
/// each time the attempts double (3, 6, 12, ...), so a step that never gives up (a
/// retirement) is reported ever more rarely instead of at every retry.
pub fn worth_noticing(attempt: u32, attempts_min: u32) -> bool {
    let first = attempts_min.max(1);
    attempt >= first && attempt.is_multiple_of(first) && (attempt / first).is_power_of_two()
}

fn ended_kind(completed: bool) -> NoticeKind {
    if completed {
        NoticeKind::Completed
    } else {
        NoticeKind::Compensated
    }
}

/// A transport error as text without the URL, with its causes (which name no URL).
fn sent_error(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        format!("no answer within {DELIVERY_TIMEOUT_MS} ms")
    } else if e.is_connect() {
        "cannot connect to the receiver".to_owned()
    } else {
        "sending failed".to_owned()
    };
    let e = e.without_url();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    if causes.is_empty() {
        format!("{what}: {e}")
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: ChannelKind, var: &str) -> NotificationConfig {
        NotificationConfig {
            kind,
            url_env: var.into(),
            on: NoticeKind::all(),
        }
    }

    #[test]
    fn config_defaults_to_every_kind_and_refuses_unknown_fields() {
        let c: NotificationConfig = toml::from_str("kind = \"slack\"\nurl_env = \"X\"").unwrap();
        assert_eq!(c.on, NoticeKind::all());
        let c: NotificationConfig =
            toml::from_str("kind = \"teams\"\nurl_env = \"X\"\non = [\"stuck\"]").unwrap();
        assert_eq!(c.on, vec![NoticeKind::Stuck]);
        let err = toml::from_str::<NotificationConfig>("kind = \"webhook\"\nurl = \"X\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn notice_ids_are_deterministic_valid_stream_ids() {
        assert_eq!(
            notice_id("ops", "r1:stuck:create#0/g1:3"),
            "notice:ops:r1:stuck:create_0/g1:3"
        );
        let long = format!("{}:upcoming:rotation:1", "s".repeat(100));
        let id = notice_id("ops", &long);
        assert_eq!(id, notice_id("ops", &long));
        assert!(id.starts_with("notice:ops:sha256:"), "{id}");
        assert!(id.len() <= STREAM_ID_BYTES_MAX);
        assert_ne!(id, notice_id("ops", &format!("{long}2")));
    }

    #[test]
    fn channel_names_and_urls_are_checked_without_showing_the_url() {
        let env = |v: &str| match v {
            "GOOD" => Some("https://hooks.example/T/B/tok3n".to_owned()),
            "PLAIN" => Some("http://hooks.example/T/B/tok3n".to_owned()),
            "BROKEN" => Some("hooks.example/tok3n".to_owned()),
            _ => None,
        };
        let one = |name: &str, c| BTreeMap::from([(name.to_owned(), c)]);
        let ok = channels(&one("ops", config(ChannelKind::Slack, "GOOD")), &env).unwrap();
        assert!(!format!("{ok:?}").contains("tok3n"));
        for (name, var) in [("bad name", "GOOD"), ("ops", "PLAIN"), ("ops", "BROKEN")] {
            let err = channels(&one(name, config(ChannelKind::Webhook, var)), &env).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("tok3n") && !text.contains("hooks.example"),
                "{text}"
            );
        }
    }

    #[test]
    fn folding_tracks_failures_and_delivery_and_refuses_strays() {
        let event = |seq, e: NoticeEvent| Event {
            global_seq: seq,
            stream_id: "notice:ops:r:completed".into(),
            stream_seq: seq,
            kind: e.kind().into(),
            schema_version: 1,
            recorded_at_ms: 0,
            payload: serde_json::to_string(&e).unwrap(),
            prev_hash: rekey_journal::Digest32::GENESIS,
            hash: rekey_journal::Digest32::GENESIS,
        };
        let due = NoticeEvent::Due(Notice {
            kind: NoticeKind::Completed,
            channel: "ops".into(),
            secret: "s".into(),
            rotation_id: Some("r".into()),
            outcome: Some("completed".into()),
            reason: None,
            at_ms: 5,
        });
        let failed = NoticeEvent::Failed {
            attempt: 1,
            message: "503".into(),
            retry_at_ms: 99,
        };
        let o = fold(&[event(1, due.clone()), event(2, failed.clone())])
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.seq, o.failures, o.retry_at_ms, o.delivered),
            (2, 1, Some(99), false)
        );
        let delivered = NoticeEvent::Delivered { attempts: 2 };
        let o = fold(&[event(1, due.clone()), event(2, failed), event(3, delivered)])
            .unwrap()
            .unwrap();
        assert!(o.delivered);
        assert!(fold(&[event(1, due.clone()), event(2, due)]).is_err());
    }

    #[test]
    fn slack_texts_cannot_ping_or_link() {
        let n = Notice {
            kind: NoticeKind::Compensated,
            channel: "ops".into(),
            secret: "s".into(),
            rotation_id: None,
            outcome: Some("compensated".into()),
            reason: Some("<!channel> & <https://x|y>".into()),
            at_ms: 0,
        };
        let text = body(ChannelKind::Slack, "notice:ops:x", &n).to_string();
        assert!(
            !text.contains("<!channel>") && !text.contains("<https"),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt; &amp;"), "{text}");
    }

    #[test]
    fn stuck_steps_are_reported_ever_more_rarely() {
        let noticed: Vec<u32> = (1..=50).filter(|a| worth_noticing(*a, 3)).collect();
        assert_eq!(noticed, vec![3, 6, 12, 24, 48]);
        assert_eq!(
            (1..=5)
                .filter(|a| worth_noticing(*a, 0))
                .collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("ab", 2), "ab");
    }
}
