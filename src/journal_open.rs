//! Opening "the configured journal": the SQLite file of `[journal] path`, or the PostgreSQL
//! database of `[journal] url` (TLS `verify_full` unless the config allows plain for a
//! loopback host or a Unix socket; the password from the variable `password_env` names).
//! Every command opens the journal through here, so each works on either engine.
//!
//! Read-only opens create, migrate and write nothing. On PostgreSQL they need no private
//! copy either: the server gives every read a consistent snapshot while nodes write.

use std::sync::Arc;

use rekey_journal::{AnyJournal, Clock, DEFAULT_PG_SCHEMA, PgTls, PostgresJournal, SqliteJournal};

use crate::config::{JournalConfig, PgJournalConfig, PostgresTls};

/// Why the configured journal could not be opened. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The variable `[journal] password_env` names is not set.
    #[error(
        "[journal] password_env names {var}, which is not set: export the password of the journal's user ({url}) in it; nothing was opened"
    )]
    MissingPassword { var: String, url: String },
    /// The URL, or the TLS settings, cannot be used.
    #[error("[journal] {0}; nothing was opened")]
    Setup(String),
    /// The server's certificate was not accepted (or the server offers no TLS).
    #[error(
        "{0}; check that the server has TLS on and that its certificate names the URL's host and chains to a trusted root ([journal] tls_ca_file adds one); tls = \"disable\" is allowed for loopback addresses and Unix sockets only"
    )]
    Tls(rekey_journal::Error),
    #[error(transparent)]
    Journal(#[from] rekey_journal::Error),
}

impl Error {
    /// True when the journal simply does not exist yet (a read-only open found nothing).
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            Error::Journal(
                rekey_journal::Error::NoJournal { .. }
                    | rekey_journal::Error::NoPostgresJournal { .. }
            )
        )
    }
}

/// Opens the journal for reading and writing, creating it if there is none. A SQLite
/// journal is stamped by `clock`; a PostgreSQL one by the database clock, which every node
/// shares.
///
/// # Errors
/// [`Error::MissingPassword`] and [`Error::Setup`] before anything is touched; journal
/// errors after.
pub fn open(
    config: &JournalConfig,
    clock: Arc<dyn Clock>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AnyJournal, Error> {
    Ok(match config {
        JournalConfig::Sqlite { path } => SqliteJournal::open_with_clock(path, clock)?.into(),
        JournalConfig::Postgres(pg) => {
            let (connection, tls) = prepare(pg, env)?;
            PostgresJournal::open_tls(connection, DEFAULT_PG_SCHEMA, tls)
                .map_err(explain)?
                .into()
        }
    })
}

/// Opens an existing journal for reading only: nothing is created or written.
///
/// # Errors
/// As [`open`]; a journal that does not exist is an error for which
/// [`Error::is_missing`] holds.
pub fn open_read_only(
    config: &JournalConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AnyJournal, Error> {
    Ok(match config {
        JournalConfig::Sqlite { path } => SqliteJournal::open_read_only(path)?.into(),
        JournalConfig::Postgres(pg) => {
            let (connection, tls) = prepare(pg, env)?;
            PostgresJournal::open_read_only(connection, DEFAULT_PG_SCHEMA, tls)
                .map_err(explain)?
                .into()
        }
    })
}

/// The connection settings and TLS of a PostgreSQL journal: the URL, the password from its
/// variable, the CA file read. Touches no database.
fn prepare(
    pg: &PgJournalConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(rekey_journal::PostgresConfig, PgTls), Error> {
    let mut connection = pg.connection().map_err(Error::Setup)?;
    if let Some(var) = &pg.password_env {
        let password =
            env(var)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::MissingPassword {
                    var: var.clone(),
                    url: pg.describe(),
                })?;
        connection.password(password);
    }
    let tls = match pg.tls {
        PostgresTls::Disable => PgTls::Disable,
        PostgresTls::VerifyFull => {
            crate::providers::postgres::tls_verify_full(pg.tls_ca_file.as_deref())
                .map_err(Error::Setup)?
        }
    };
    Ok((connection, tls))
}

/// A journal error, with what to do when it is a failed TLS handshake.
fn explain(e: rekey_journal::Error) -> Error {
    match &e {
        rekey_journal::Error::Postgres { cause, .. }
            if cause
                .to_string()
                .starts_with("error performing TLS handshake") =>
        {
            Error::Tls(e)
        }
        _ => Error::Journal(e),
    }
}
