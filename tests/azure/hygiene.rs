//! Secret hygiene: the flows of `flows` run again with every log line captured, then logs,
//! the journal's payloads and every provider error the runner journaled are searched for
//! each secret value the flows produced or held and for each bearer token rekey sent.

use std::io;
use std::sync::{Arc, Mutex};

use tracing::instrument::WithSubscriber as _;

use super::flows::{self, FlowRun, Verdict};
use super::{CLIENT_SECRET, failure_messages, payloads};

/// A `tracing` writer into memory.
#[derive(Debug, Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where `needle` shows up among `(what, text)` haystacks.
fn leaks(needle: &str, haystacks: &[(String, String)]) -> Vec<String> {
    haystacks
        .iter()
        .filter(|(_, text)| text.contains(needle))
        .map(|(what, _)| what.clone())
        .collect()
}

/// No secret value (vault values, Entra password texts, storage keys, rekey's own client
/// secret) and no bearer token appears in the logs (all levels), the journal, or any
/// provider error message, across the seed-001 flows (completed and compensated), the Entra
/// flow with an orphan, and a storage key rotation.
#[tokio::test]
async fn no_secret_or_token_in_logs_journal_or_errors() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let runs: Vec<FlowRun> = async {
        vec![
            flows::seed_001(Verdict::Accept).await,
            flows::seed_001(Verdict::Reject).await,
            flows::entra().await,
            flows::storage().await,
        ]
    }
    .with_subscriber(subscriber)
    .await;

    let log_text = logs.text();
    for run in &runs {
        assert!(
            log_text.contains(&run.rotation_id),
            "rotation {} left no log line: logs were not captured",
            run.rotation_id
        );
    }
    let mut haystacks = vec![("logs".to_owned(), log_text)];
    let mut failures = 0;
    for run in &runs {
        for p in payloads(&*run.journal).await {
            haystacks.push((format!("journal of {}", run.rotation_id), p));
        }
        for m in failure_messages(&*run.journal).await {
            haystacks.push((format!("journaled failure in {}", run.rotation_id), m));
        }
        for m in run.errors.messages() {
            failures += 1;
            haystacks.push((format!("provider error in {}", run.rotation_id), m));
        }
    }
    assert!(
        failures >= 2,
        "the flows were expected to meet provider errors"
    );

    let mut problems = Vec::new();
    for run in &runs {
        let tokens = run.env.bearer_tokens();
        assert!(!tokens.is_empty(), "no bearer token was captured");
        let values = run.values.iter().map(|v| ("secret value", v.as_str()));
        let tokens = tokens.iter().map(|t| ("bearer token", t.as_str()));
        let own = std::iter::once(("rekey's client secret", CLIENT_SECRET));
        for (kind, needle) in values.chain(tokens).chain(own) {
            assert!(needle.len() >= 16, "{kind} too short to search for");
            for place in leaks(needle, &haystacks) {
                problems.push(format!(
                    "a {kind} of {} appears in the {place}",
                    run.rotation_id
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
