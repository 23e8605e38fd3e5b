//! `[journal]`: where the journal lives. A SQLite file on this machine (`path`), or a
//! schema in a PostgreSQL database shared by several nodes (`url`), reached over TLS with
//! full verification unless the server is on this machine, its password read from an
//! environment variable the config names (never from the file).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::PostgresTls;
use crate::text::quoted;

/// `[journal]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    path: Option<PathBuf>,
    url: Option<Spanned<String>>,
    password_env: Option<String>,
    tls: Option<PostgresTls>,
    tls_ca_file: Option<PathBuf>,
}

/// The validated `[journal]`: which engine, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalConfig {
    /// A SQLite file (absolute, or resolved beside the config).
    Sqlite { path: PathBuf },
    /// A PostgreSQL database.
    Postgres(PgJournalConfig),
}

/// A journal in PostgreSQL, as `[journal] url` and its companions name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgJournalConfig {
    /// The URL as written; it holds no password (refused at parse).
    pub url: String,
    /// The variable holding the password of the URL's user, if the server asks for one.
    pub password_env: Option<String>,
    pub tls: PostgresTls,
    /// A PEM root to trust besides the system's (absolute, or resolved beside the config).
    pub tls_ca_file: Option<PathBuf>,
}

impl PgJournalConfig {
    /// The connection settings of the URL (checked at parse, so this cannot fail then).
    ///
    /// # Errors
    /// Why the URL is not a PostgreSQL URL.
    pub fn connection(&self) -> Result<tokio_postgres::Config, String> {
        let mut c: tokio_postgres::Config = self.url.parse().map_err(|e| {
            format!("url is not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE")
        })?;
        if c.get_application_name().is_none() {
            c.application_name("rekey");
        }
        Ok(c)
    }

    /// The URL, for messages (it holds no password).
    pub fn describe(&self) -> String {
        self.url.clone()
    }
}

impl JournalConfig {
    /// The SQLite file, if the journal is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            JournalConfig::Sqlite { path } => Some(path),
            JournalConfig::Postgres(_) => None,
        }
    }

    /// Where the journal is, for messages: the file, or the URL (which holds no password).
    pub fn describe(&self) -> String {
        match self {
            JournalConfig::Sqlite { path } => path.display().to_string(),
            JournalConfig::Postgres(pg) => pg.describe(),
        }
    }
}

/// A journal named on the command line (`journal copy --from/--to`): a `postgres://` URL,
/// checked as `[journal] url` is with the given companions, or else a SQLite file.
///
/// # Errors
/// What is wrong, as for `[journal]`, the keys named as flags.
pub fn from_argument(
    text: &str,
    password_env: Option<&str>,
    tls: Option<PostgresTls>,
    tls_ca_file: Option<&Path>,
) -> Result<JournalConfig, String> {
    let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    let raw = RawJournal {
        path: (!is_url).then(|| PathBuf::from(text)),
        url: is_url.then(|| Spanned::new(0..text.len(), text.to_owned())),
        password_env: password_env.map(str::to_owned),
        tls,
        tls_ca_file: tls_ca_file.map(Path::to_owned),
    };
    validate(&raw, &|p: &Path| p.to_owned()).map_err(|(_, message)| {
        message
            .replace("[journal] url", "a postgres:// journal")
            .replace("[journal] ", "--")
            .replace("password_env", "password-env")
            .replace("tls_ca_file", "tls-ca-file")
    })
}

/// Validates `[journal]`; `resolve` makes a path absolute beside the config. Errors carry
/// the span of the key at fault, when known. Reads no environment variable and no file.
pub(super) fn validate(
    raw: &RawJournal,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<JournalConfig, (Option<std::ops::Range<usize>>, String)> {
    let pg_keys = [
        ("password_env", raw.password_env.is_some()),
        ("tls", raw.tls.is_some()),
        ("tls_ca_file", raw.tls_ca_file.is_some()),
    ];
    let url = match (&raw.path, &raw.url) {
        (Some(_), Some(url)) => {
            return Err((
                Some(url.span()),
                "[journal] has both path and url; keep path for a SQLite file on this machine, or url for a PostgreSQL database, not both (`rekey journal copy` moves a journal from one to the other)".into(),
            ));
        }
        (None, None) => {
            return Err((
                None,
                "[journal] needs path = \"journal.db\" (a SQLite file) or url = \"postgres://USER@HOST:PORT/DATABASE\"".into(),
            ));
        }
        (Some(path), None) => {
            if let Some((key, _)) = pg_keys.iter().find(|(_, set)| *set) {
                return Err((
                    None,
                    format!(
                        "[journal] {key} applies to url (PostgreSQL) only; remove it, the journal is the SQLite file path"
                    ),
                ));
            }
            return Ok(JournalConfig::Sqlite {
                path: resolve(path),
            });
        }
        (None, Some(url)) => url,
    };
    let here = Some(url.span());
    let text = url.get_ref();
    let fail = |message: String| Err((here.clone(), message));
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        // Not quoted back: a connection string may hold a password.
        return fail(
            "[journal] url must be a URL starting postgres:// or postgresql://, e.g. \"postgres://rekey@db.example.com:5432/rekey\"".into(),
        );
    }
    let parsed: tokio_postgres::Config = match text.parse() {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "[journal] url is not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE"
            ));
        }
    };
    if parsed.get_password().is_some() {
        return fail(
            "[journal] url holds a password; remove it from the URL (postgres://USER@HOST/DATABASE) and put it in an environment variable named by password_env = \"REKEY_JOURNAL_PASSWORD\" (the password never goes in the file)".into(),
        );
    }
    if has_param(text, "sslmode") {
        return fail(
            "[journal] url sets sslmode; remove it: rekey sets transport security with [journal] tls (\"verify_full\" by default, \"disable\" for loopback and Unix sockets)".into(),
        );
    }
    if parsed.get_user().is_none_or(str::is_empty) {
        return fail(
            "[journal] url names no user; write postgres://USER@HOST:PORT/DATABASE".into(),
        );
    }
    let hosts: Vec<String> = parsed
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    if hosts.is_empty() {
        return fail(
            "[journal] url names no host; write postgres://USER@HOST:PORT/DATABASE (a Unix socket: postgres://USER@%2Frun%2Fpostgresql/DATABASE)".into(),
        );
    }
    if let Some(var) = &raw.password_env
        && (var.is_empty() || var.contains(['=', '\0']))
    {
        return fail(format!(
            "[journal] password_env = {} must name an environment variable (the password itself never goes in the file)",
            quoted(var)
        ));
    }
    let tls = raw.tls.unwrap_or_default();
    if tls == PostgresTls::Disable {
        if let Some(remote) = hosts.iter().find(|h| !rekey_journal::is_local_host(h)) {
            return fail(format!(
                "[journal] tls = \"disable\" is allowed only for loopback addresses and Unix sockets, and the url's host {} is neither; remove tls to use TLS (add tls_ca_file for a private CA)",
                quoted(remote)
            ));
        }
        if raw.tls_ca_file.is_some() {
            return fail(
                "[journal] tls_ca_file has no effect with tls = \"disable\"; remove one of them"
                    .into(),
            );
        }
    }
    Ok(JournalConfig::Postgres(PgJournalConfig {
        url: text.clone(),
        password_env: raw.password_env.clone(),
        tls,
        tls_ca_file: raw.tls_ca_file.as_deref().map(resolve),
    }))
}

/// Whether the query of URL `text` sets `name`.
fn has_param(text: &str, name: &str) -> bool {
    text.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(journal: &str) -> Result<JournalConfig, String> {
        let text = format!("[journal]\n{journal}\n");
        match crate::config::Config::parse(Path::new("/etc/rekey/rekey.toml"), &text) {
            Ok(c) => Ok(c.journal),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn a_url_gets_verify_full_and_its_companions() {
        let j = parse(
            "url = \"postgres://rekey@db.example.com:5433/rekey\"\npassword_env = \"PGPW\"\ntls_ca_file = \"ca.pem\"",
        )
        .unwrap();
        assert_eq!(
            j,
            JournalConfig::Postgres(PgJournalConfig {
                url: "postgres://rekey@db.example.com:5433/rekey".into(),
                password_env: Some("PGPW".into()),
                tls: PostgresTls::VerifyFull,
                tls_ca_file: Some(PathBuf::from("/etc/rekey/ca.pem")),
            })
        );
        let parsed = match &j {
            JournalConfig::Postgres(pg) => pg.connection().unwrap(),
            JournalConfig::Sqlite { .. } => unreachable!(),
        };
        assert_eq!(parsed.get_user(), Some("rekey"));
        assert_eq!(parsed.get_ports(), [5433]);
        assert_eq!(parsed.get_application_name(), Some("rekey"));
        assert_eq!(
            parse("path = \"journal.db\"").unwrap(),
            JournalConfig::Sqlite {
                path: "/etc/rekey/journal.db".into()
            }
        );
    }

    #[test]
    fn plain_connections_are_for_loopback_and_sockets_only() {
        for url in [
            "postgres://rekey@127.0.0.1/rekey",
            "postgres://rekey@[::1]:5432/rekey",
            "postgresql://rekey@localhost/rekey",
            "postgres://rekey@%2Frun%2Fpostgresql/rekey",
        ] {
            let j = parse(&format!("url = \"{url}\"\ntls = \"disable\"")).unwrap();
            assert!(
                matches!(
                    j,
                    JournalConfig::Postgres(PgJournalConfig {
                        tls: PostgresTls::Disable,
                        ..
                    })
                ),
                "{url}"
            );
        }
        let e = parse("url = \"postgres://rekey@10.1.2.3/rekey\"\ntls = \"disable\"").unwrap_err();
        assert!(e.contains("the url's host \"10.1.2.3\" is neither"), "{e}");
        let e = parse("url = \"postgres://rekey@127.0.0.1/rekey\"\ntls = \"disable\"\ntls_ca_file = \"ca.pem\"")
            .unwrap_err();
        assert!(e.contains("tls_ca_file has no effect"), "{e}");
    }

    #[test]
    fn bad_journal_tables_say_what_to_write() {
        for (journal, want) in [
            (
                "url = \"postgres://rekey:s3cret-pw@db/rekey\"",
                "url holds a password",
            ),
            (
                "url = \"postgres://rekey@db/rekey?password=s3cret-pw\"",
                "url holds a password",
            ),
            (
                "url = \"postgres://rekey@db/rekey?sslmode=disable\"",
                "url sets sslmode",
            ),
            (
                "url = \"postgres://db.example.com/rekey\"",
                "url names no user",
            ),
            (
                "url = \"host=db user=rekey password=s3cret-pw\"",
                "must be a URL starting postgres://",
            ),
            (
                "url = \"postgres://rekey@db:notaport/rekey\"",
                "is not a PostgreSQL URL",
            ),
            (
                "url = \"postgres://rekey@db/rekey\"\npassword_env = \"\"",
                "must name an environment variable",
            ),
            (
                "path = \"j.db\"\nurl = \"postgres://rekey@db/rekey\"",
                "has both path and url",
            ),
            (
                "path = \"j.db\"\npassword_env = \"PGPW\"",
                "password_env applies to url",
            ),
            ("tls = \"disable\"", "needs path = \"journal.db\""),
        ] {
            let e = parse(journal).unwrap_err();
            assert!(e.contains(want), "{journal}: {e}");
            assert!(e.starts_with("/etc/rekey/rekey.toml:"), "{e}");
            assert!(!e.contains("s3cret-pw"), "never echoed: {e}");
        }
    }
}
