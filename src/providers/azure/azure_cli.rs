//! Tokens from the Azure CLI (`az account get-access-token`), for people who signed in
//! with `az login` on their own machine. The CLI runs as a program (never through a
//! shell), with a timeout; its token never appears in what rekey logs or reports.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::credential::AccessToken;
use crate::provider::{ProviderError, SecretValue};

/// How long `az` may take before the attempt is abandoned.
pub const AZ_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Stderr excerpt kept in error messages (the CLI's own words, which carry no token).
const STDERR_EXCERPT_CHARS: usize = 300;

/// How to run the Azure CLI.
#[derive(Debug, Clone)]
pub struct AzureCli {
    /// The program: `az` found on `PATH` unless configured.
    pub program: PathBuf,
    /// Ask for a token of this tenant (`--tenant`); the CLI's default tenant otherwise.
    pub tenant: Option<String>,
    pub timeout_ms: u64,
}

impl AzureCli {
    /// A token for `resource` (`https://vault.azure.net`), expiring as the CLI says.
    ///
    /// # Errors
    /// Permanent when the CLI is missing, not signed in, or refuses the tenant;
    /// transient when it does not answer in time.
    pub async fn token(&self, resource: &str, now_ms: i64) -> Result<AccessToken, ProviderError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args([
                "account",
                "get-access-token",
                "--output",
                "json",
                "--resource",
            ])
            .arg(resource)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(tenant) = &self.tenant {
            command.arg("--tenant").arg(tenant);
        }
        let program = self.program.display().to_string();
        let run = tokio::time::timeout(Duration::from_millis(self.timeout_ms), command.output());
        let output = match run.await {
            Err(_) => {
                return Err(ProviderError::transient(format!(
                    "Azure CLI credential: `{program} account get-access-token` did not answer within {} ms; check that `az` works in a terminal",
                    self.timeout_ms
                )));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProviderError::permanent(format!(
                    "Azure CLI credential: `{program}` was not found; install the Azure CLI or choose another credential kind"
                )));
            }
            Ok(Err(e)) => {
                return Err(ProviderError::permanent(format!(
                    "Azure CLI credential: cannot run `{program}`: {e}"
                )));
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            return Err(self.refusal(&String::from_utf8_lossy(&output.stderr)));
        }
        parse(&output.stdout, now_ms)
    }

    /// The CLI's refusal in words an operator can act on.
    fn refusal(&self, stderr: &str) -> ProviderError {
        let lower = stderr.to_ascii_lowercase();
        let tenant = self.tenant.as_deref().unwrap_or("its default tenant");
        let hint = if lower.contains("az login") || lower.contains("not logged in") {
            format!("the Azure CLI is not signed in for {tenant}: run `az login`")
        } else if lower.contains("tenant") {
            format!(
                "the Azure CLI cannot get a token for tenant {tenant}: run `az login --tenant {tenant}`"
            )
        } else {
            "the Azure CLI refused to give a token".to_owned()
        };
        let excerpt: String = stderr
            .trim()
            .chars()
            .filter(|c| !c.is_control() || *c == ' ')
            .take(STDERR_EXCERPT_CHARS)
            .collect();
        ProviderError::permanent(format!("Azure CLI credential: {hint} (az said: {excerpt})"))
    }
}

/// Reads `az account get-access-token` output: `accessToken` and `expires_on` (Unix
/// seconds, CLI 2.54 and later) or else `expiresOn` (local time, older CLIs).
fn parse(stdout: &[u8], now_ms: i64) -> Result<AccessToken, ProviderError> {
    let bad = |why: &str| {
        ProviderError::permanent(format!(
            "Azure CLI credential: unexpected output of `az account get-access-token` ({why})"
        ))
    };
    let body: Value = serde_json::from_slice(stdout).map_err(|_| bad("not JSON"))?;
    let token = body["accessToken"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no accessToken"))?;
    let expires_at_ms = match &body["expires_on"] {
        Value::Number(n) => n.as_i64().map(|s| s.saturating_mul(1000)),
        Value::String(s) => s.trim().parse::<i64>().ok().map(|s| s.saturating_mul(1000)),
        _ => body["expiresOn"].as_str().and_then(local_time_ms),
    };
    let expires_at_ms = expires_at_ms.ok_or_else(|| bad("no expiry"))?;
    if expires_at_ms <= now_ms {
        return Err(bad("the token has expired already"));
    }
    Ok(AccessToken {
        token: SecretValue::new(token),
        expires_at_ms,
    })
}

/// `2026-12-01 16:00:00.000000` in the machine's time zone, as Unix ms.
fn local_time_ms(text: &str) -> Option<i64> {
    let civil = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S%.f", text.trim())
        .or_else(|_| jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text.trim()))
        .ok()?;
    let zoned = civil.to_zoned(jiff::tz::TimeZone::system()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_either_expiry_and_refuses_what_is_not_a_token() {
        let new = br#"{"accessToken":"t","expires_on":1800000000,"tokenType":"Bearer"}"#;
        assert_eq!(parse(new, 0).unwrap().expires_at_ms, 1_800_000_000_000);
        let text = br#"{"accessToken":"t","expires_on":"1800000000"}"#;
        assert_eq!(parse(text, 0).unwrap().expires_at_ms, 1_800_000_000_000);
        let old = br#"{"accessToken":"t","expiresOn":"2030-01-01 00:00:00.000000"}"#;
        assert!(parse(old, 0).unwrap().expires_at_ms > 1_800_000_000_000);
        for bad in [
            &b"not json"[..],
            br#"{"expires_on":1800000000}"#,
            br#"{"accessToken":"t"}"#,
        ] {
            assert!(parse(bad, 0).is_err());
        }
        let stale = br#"{"accessToken":"t","expires_on":10}"#;
        assert!(
            parse(stale, 20_000)
                .unwrap_err()
                .message
                .contains("expired")
        );
    }
}
