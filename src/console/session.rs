//! The console's sessions: a table in memory, keyed by the SHA-256 of a random id from
//! the operating system's generator. The id travels only in the session cookie; a
//! session ends after [`IDLE_MS`] unused, [`ABSOLUTE_MS`] after sign-in, at sign-out, and
//! when the daemon stops.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::TryRng;
use sha2::{Digest, Sha256};

use crate::daemon::api::Role;

/// A session unused this long ends.
pub const IDLE_MS: i64 = 30 * 60 * 1000;
/// A session ends this long after sign-in, however used.
pub const ABSOLUTE_MS: i64 = 12 * 60 * 60 * 1000;
/// Sessions held at once; signing in beyond it ends the oldest.
pub const SESSIONS_MAX: usize = 10_000;
/// The session cookie's name.
pub const COOKIE: &str = "rekey_session";

/// A signed-in browser.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub role: Role,
    /// The token each state-changing form must carry.
    pub csrf: String,
    pub created_ms: i64,
    pub last_ms: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("created_ms", &self.created_ms)
            .field("last_ms", &self.last_ms)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed ({0}); cannot make a session id")]
pub struct NoRandom(String);

/// Every session of one server.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// 32 bytes from the operating system's generator, hex encoded.
fn random_hex() -> Result<String, NoRandom> {
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| NoRandom(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session of `role` at `now_ms`: its id (for the cookie only) and itself.
    ///
    /// # Errors
    /// The generator failed.
    pub fn start(&self, role: Role, now_ms: i64) -> Result<(String, Session), NoRandom> {
        let id = random_hex()?;
        let session = Session {
            role,
            csrf: random_hex()?,
            created_ms: now_ms,
            last_ms: now_ms,
        };
        let mut table = self.table.lock().expect("sessions");
        table.retain(|_, s| live(s, now_ms));
        if table.len() >= SESSIONS_MAX
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| *k)
        {
            table.remove(&oldest);
        }
        table.insert(key(&id), session.clone());
        Ok((id, session))
    }

    /// The live session `id` names at `now_ms`, marked used; `None` when unknown or ended
    /// (an ended one is forgotten).
    pub fn touch(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut table = self.table.lock().expect("sessions");
        let k = key(id);
        let session = table.get_mut(&k)?;
        if !live(session, now_ms) {
            table.remove(&k);
            return None;
        }
        session.last_ms = now_ms;
        Some(session.clone())
    }

    /// Ends session `id` (sign-out).
    pub fn end(&self, id: &str) {
        self.table.lock().expect("sessions").remove(&key(id));
    }
}

fn live(s: &Session, now_ms: i64) -> bool {
    now_ms - s.last_ms < IDLE_MS && now_ms - s.created_ms < ABSOLUTE_MS
}

/// The `Set-Cookie` value carrying session `id`.
pub fn cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ABSOLUTE_MS / 1000,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session id in a request's `Cookie` headers.
pub fn from_cookies<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_old_and_at_sign_out() {
        let sessions = Sessions::default();
        let (id, s) = sessions.start(Role::Viewer, 0).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.csrf);
        assert_eq!(sessions.touch(&id, IDLE_MS - 1).unwrap().role, Role::Viewer);
        // Used just now: not idle, and it ends at the absolute limit all the same.
        let mut t = IDLE_MS - 1;
        while t + IDLE_MS / 2 < ABSOLUTE_MS {
            t += IDLE_MS / 2;
            assert!(sessions.touch(&id, t).is_some(), "{t}");
        }
        assert!(sessions.touch(&id, ABSOLUTE_MS).is_none());
        let (id, _) = sessions.start(Role::Operator, 0).unwrap();
        assert!(sessions.touch(&id, IDLE_MS).is_none(), "idle");
        let (id, _) = sessions.start(Role::Operator, 0).unwrap();
        sessions.end(&id);
        assert!(sessions.touch(&id, 1).is_none(), "signed out");
        assert!(sessions.touch("not-a-session", 1).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_console() {
        let c = cookie("abc", false);
        assert_eq!(
            c,
            "rekey_session=abc; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        assert!(cookie("abc", true).ends_with("; Secure"));
        assert_eq!(
            from_cookies(["a=1; rekey_session=xyz ; b=2"].into_iter()),
            Some("xyz")
        );
        assert_eq!(from_cookies(["rekey_session="].into_iter()), None);
    }
}
