//! PostgreSQL login roles as a rotator and a verifier.
//!
//! Two modes:
//!
//! - **single**: one login role; `Create` sets its password. The old password stops working
//!   at that moment, so single mode has no overlap window: consumers still holding the old
//!   value fail until they get the new one. Use it where that is acceptable.
//! - **alternating**: two login roles (say `app_blue`, `app_green`) that are members of one
//!   group role holding every privilege and owning every object. Consumers use one role
//!   while the other is idle. `Create` sets a new password on the idle role and hands it
//!   out; after the grace period `RetireOld` gives the previously used role a random
//!   password nobody knows. Grants and ownership live on the group role, so they survive
//!   every switch.
//!
//! In alternating mode the value handed out is `{"username": ..., "password": ...}`
//! ([`ValueFormat::Json`]), since the role changes at every rotation.
//!
//! **Markers.** Each password rekey sets goes in one transaction with a comment on the role
//! (`COMMENT ON ROLE`) that names the step's idempotency key: `rekey issued <key> at <time>`
//! for a password handed out, `rekey retired <key> at <time>` for one replaced by a random
//! value nobody knows. The database itself therefore answers whether an in-doubt step
//! happened (its key is on the role), and which role is in use (the newest `issued`) when
//! the stores do not say: the value they hold names the role consumers use, and wins. This
//! needs no superuser (the `CREATEROLE` that `ALTER ROLE ... PASSWORD` needs also allows
//! the comment) and nothing outside the database. rekey owns the comments of the roles it
//! rotates.
//!
//! **Values.** Passwords are random bytes from the operating system's CSPRNG, hex encoded.
//! They never leave this process in clear: like psql's `\password`, rekey sends the
//! SCRAM-SHA-256 verifier computed here (which cannot be used to log in), and sends it as a
//! bind parameter, so no statement text that a client or server log records holds it
//! (servers logging bind parameters or an error's context can still record the verifier).
//! Error texts are scrubbed of both the password and the verifier. PostgreSQL keeps only
//! the verifier, so a password can never be read back: a lost response leaves an unusable
//! password, which `reconcile` finds by its marker and `DiscardLost` replaces with a random
//! one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::TryRng;
use rekey_journal::Clock;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::provider::{
    BoxFuture, Created, Found, ProviderError, Reconciled, Reply, Rotator, SecretValue, Step,
    Verifier,
};
use crate::saga::Action;

/// How long to wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one verification login (connect and `SELECT 1`).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one whole provider call: a hung server is a transient error, never a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Server-side bounds for admin sessions, so a lock held on `pg_authid` cannot stall a
/// step forever. Not sent on verification logins: poolers such as PgBouncer refuse
/// startup options they do not know.
const SESSION_OPTIONS: &str = "-c lock_timeout=10s -c statement_timeout=20s";

/// Logins tried by verification before it fails.
pub const VERIFY_ATTEMPTS: u32 = 5;
/// Wait before the second verification login, doubled for each next one (5 logins span
/// about 4 s: enough for a replica behind `verify_host` to catch up).
pub const VERIFY_BACKOFF_MS: u64 = 250;

/// Sets the password and the marker of the role named by the transaction-local settings
/// that [`PostgresRole::set_password`] fills in; the text never varies.
const SET_PASSWORD: &str = "DO $rekey$ BEGIN \
    EXECUTE format('ALTER ROLE %I PASSWORD %L', \
        current_setting('rekey.role'), current_setting('rekey.verifier')); \
    EXECUTE format('COMMENT ON ROLE %I IS %L', \
        current_setting('rekey.role'), current_setting('rekey.marker')); \
    END $rekey$";

/// A text bind parameter that debug-prints as `[redacted]` (tokio-postgres logs bind
/// parameters at debug level).
struct Hidden<'a>(&'a str);

impl fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl ToSql for Hidden<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Which roles rekey rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One login role whose password is replaced (no overlap window).
    Single { role: String },
    /// Two login roles in one group role; `roles[0]` is presumed in use before rekey has
    /// marked either.
    Alternating { roles: [String; 2] },
}

/// How the value handed out (and kept in the stores) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// The password alone: enough when the role never changes (single mode).
    Password,
    /// `{"username": "...", "password": "..."}`: alternating mode hands out a different role
    /// each time, so the value must name it.
    Json,
}

/// The JSON form of a value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Credentials<'a> {
    username: std::borrow::Cow<'a, str>,
    password: std::borrow::Cow<'a, str>,
}

/// Transport security of connections (shared with the PostgreSQL journal).
pub use rekey_journal::{PgTls as Tls, is_local_host};

/// TLS with full verification; `ca_file` (PEM) adds a private root, read through the safe
/// reader (a FIFO or a device is refused, not waited on).
///
/// # Errors
/// A description of what could not be read or built, naming the file.
pub fn tls_verify_full(ca_file: Option<&Path>) -> Result<Tls, String> {
    let Some(path) = ca_file else {
        return Tls::verify_full(None);
    };
    let pem = crate::atomic_file::read(path, true)
        .map_err(|e| e.to_string())
        .and_then(|pem| pem.ok_or_else(|| "no such file".to_owned()))
        .map_err(|e| format!("cannot read tls_ca_file {}: {e}", path.display()))?;
    Tls::verify_full(Some((&path.display().to_string(), &pem)))
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A PostgreSQL role rotator and verifier. See the module documentation.
#[derive(Debug)]
pub struct PostgresRole {
    /// The server rekey administers roles on.
    pub admin: Endpoint,
    /// Where verification logs in (a pooler or replica in front of the server, say).
    pub verify: Endpoint,
    pub dbname: String,
    pub admin_user: String,
    pub admin_password: SecretValue,
    /// The variable the admin password came from, named in errors.
    pub admin_password_env: String,
    pub mode: Mode,
    /// Random bytes per password (hex encoded, so twice as many characters).
    pub password_bytes: usize,
    pub value_format: ValueFormat,
    pub tls: Tls,
    /// Stamps markers; injected so tests control time.
    pub clock: Arc<dyn Clock>,
    /// Logins tried before verification fails (a replica may lag behind the primary).
    pub verify_attempts: u32,
    /// Wait before the second login, doubled for each next one.
    pub verify_backoff_ms: u64,
}

/// What a marker says happened to a role's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkState {
    /// Set to a value rekey handed out.
    Issued,
    /// Set to a random value nobody knows.
    Retired,
    /// Set back to the value it had before a rotation (single mode compensation).
    Restored,
}

impl MarkState {
    fn as_str(self) -> &'static str {
        match self {
            MarkState::Issued => "issued",
            MarkState::Retired => "retired",
            MarkState::Restored => "restored",
        }
    }
}

/// A parsed role comment written by rekey.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    state: MarkState,
    key: String,
    at: jiff::Timestamp,
}

impl Marker {
    fn parse(comment: &str) -> Option<Self> {
        let mut words = comment.strip_prefix("rekey ")?.split_whitespace();
        let state = match words.next()? {
            "issued" => MarkState::Issued,
            "retired" => MarkState::Retired,
            "restored" => MarkState::Restored,
            _ => return None,
        };
        let key = words.next()?.to_owned();
        if words.next()? != "at" {
            return None;
        }
        let at = words.next()?.parse().ok()?;
        Some(Self { state, key, at })
    }

    fn render(state: MarkState, key: &str, at_ms: i64) -> String {
        let at = jiff::Timestamp::from_millisecond(at_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        format!("rekey {} {key} at {at}", state.as_str())
    }

    fn is(&self, state: MarkState, key: &str) -> bool {
        self.state == state && self.key == key
    }
}

/// One role as the catalog shows it.
#[derive(Debug, Clone)]
struct RoleRow {
    name: String,
    can_login: bool,
    superuser: bool,
    marker: Option<Marker>,
}

/// Quotes an identifier as PostgreSQL's `quote_ident` does, always: the name is used exactly
/// as configured (case included).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Removes every secret from a message (defence in depth: servers quote statements back).
fn scrub(mut message: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if message.contains(s) {
            message = message.replace(s, "[redacted]");
        }
    }
    message
}

/// An error and its causes, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace('\n', " ")
}

/// SQLSTATEs after which the same call may succeed later.
fn is_transient_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || c.starts_with("53") // insufficient resources (too many connections)
        || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INVALID_PASSWORD
            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    )
}

/// Who is connecting and why, for error messages.
struct Login<'a> {
    endpoint: &'a Endpoint,
    user: &'a str,
    password: &'a str,
    /// What the caller should check when the password is refused.
    on_refused: &'a str,
    /// Startup options, if any.
    options: Option<&'a str>,
}

impl PostgresRole {
    fn roles(&self) -> Vec<&str> {
        match &self.mode {
            Mode::Single { role } => vec![role.as_str()],
            Mode::Alternating { roles } => roles.iter().map(String::as_str).collect(),
        }
    }

    fn other(&self, role: &str) -> Result<&str, ProviderError> {
        match &self.mode {
            Mode::Alternating { roles: [a, b] } if role == a => Ok(b),
            Mode::Alternating { roles: [a, b] } if role == b => Ok(a),
            _ => Err(ProviderError::permanent(format!(
                "role {role:?} is not one of the roles configured for PostgreSQL at {} ({}); was the config changed during the rotation?",
                self.admin,
                self.roles().join(", ")
            ))),
        }
    }

    fn where_(&self) -> String {
        format!("PostgreSQL at {} (database {})", self.admin, self.dbname)
    }

    /// Classifies a driver error into a message that says what to check. `secrets` are
    /// scrubbed from it.
    fn error(&self, e: &tokio_postgres::Error, doing: &str, secrets: &[&str]) -> ProviderError {
        let detail = match e.as_db_error() {
            Some(db) => format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            ),
            None => chain(e),
        };
        let detail = scrub(detail, secrets);
        let code = e.code();
        let permanent = |hint: &str| {
            ProviderError::permanent(scrub(format!("{doing}: {detail}; {hint}"), secrets))
        };
        match code {
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => permanent(&format!(
                "{} needs CREATEROLE (and on PostgreSQL 16 or later, ADMIN OPTION on each rotated role: GRANT <role> TO {} WITH ADMIN OPTION)",
                self.admin_user, self.admin_user
            )),
            Some(c) if *c == SqlState::UNDEFINED_OBJECT => permanent(
                "check the role names in the config against pg_roles (names are case-sensitive)",
            ),
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                permanent("check dbname in the config")
            }
            Some(c) if is_transient_state(c) => {
                ProviderError::transient(scrub(format!("{doing}: {detail}"), secrets))
            }
            Some(_) => permanent("see the server's message"),
            None if detail.starts_with("error performing TLS handshake") => permanent(
                "check that the server has TLS on, that its certificate is for this host name and chains to a trusted root (tls_ca_file adds one); tls = \"disable\" is allowed for loopback and Unix sockets only",
            ),
            None => ProviderError::transient(scrub(
                format!("{doing}: {detail}; is the server up and reachable?"),
                secrets,
            )),
        }
    }

    /// Opens a connection; its driver task ends when the client is dropped.
    async fn connect(&self, login: &Login<'_>) -> Result<Client, ProviderError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&login.endpoint.host)
            .port(login.endpoint.port)
            .dbname(&self.dbname)
            .user(login.user)
            .password(login.password)
            .application_name("rekey")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(options) = login.options {
            cfg.options(options);
        }
        let secrets = [login.password];
        let fail = |e: tokio_postgres::Error| {
            if is_auth_failure(&e) {
                let detail = e
                    .as_db_error()
                    .map_or_else(|| chain(&e), |db| db.message().to_owned());
                ProviderError::permanent(scrub(
                    format!(
                        "PostgreSQL at {} refused the login of {} to database {}: {detail}; {}",
                        login.endpoint, login.user, self.dbname, login.on_refused
                    ),
                    &secrets,
                ))
            } else {
                self.error(
                    &e,
                    &format!(
                        "cannot connect to PostgreSQL at {} as {} (database {})",
                        login.endpoint, login.user, self.dbname
                    ),
                    &secrets,
                )
            }
        };
        let client = match &self.tls {
            Tls::Disable => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = cfg.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Tls::VerifyFull(tls) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = cfg.connect(tls.clone()).await.map_err(fail)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        Ok(client)
    }

    async fn admin_client(&self) -> Result<Client, ProviderError> {
        let on_refused = format!(
            "check that the environment variable {} holds the password of {} and that pg_hba.conf lets {} in from this host",
            self.admin_password_env, self.admin_user, self.admin_user
        );
        self.connect(&Login {
            endpoint: &self.admin,
            user: &self.admin_user,
            password: self.admin_password.expose(),
            on_refused: &on_refused,
            options: Some(SESSION_OPTIONS),
        })
        .await
    }

    /// The configured roles as the catalog shows them, in config order.
    async fn load(&self, client: &Client) -> Result<Vec<RoleRow>, ProviderError> {
        let names: Vec<String> = self.roles().into_iter().map(str::to_owned).collect();
        let rows = client
            .query(
                "SELECT rolname::text, rolcanlogin, rolsuper, \
                 shobj_description(oid, 'pg_authid') \
                 FROM pg_roles WHERE rolname = ANY($1)",
                &[&names],
            )
            .await
            .map_err(|e| {
                self.error(
                    &e,
                    &format!("cannot read roles from {}", self.where_()),
                    &[],
                )
            })?;
        let mut out = Vec::new();
        for name in &names {
            let row = rows
                .iter()
                .find(|r| r.get::<_, String>(0) == *name)
                .ok_or_else(|| {
                    ProviderError::permanent(format!(
                        "role {name:?} does not exist on {}; create it (CREATE ROLE {} LOGIN IN ROLE <group>) or fix the name in the config (names are case-sensitive)",
                        self.where_(),
                        quote_ident(name)
                    ))
                })?;
            let comment: Option<String> = row.get(3);
            out.push(RoleRow {
                name: name.clone(),
                can_login: row.get(1),
                superuser: row.get(2),
                marker: comment.as_deref().and_then(Marker::parse),
            });
        }
        Ok(out)
    }

    /// The marker on `role` now.
    async fn marker(&self, client: &Client, role: &str) -> Result<Option<Marker>, ProviderError> {
        Ok(self
            .load(client)
            .await?
            .into_iter()
            .find(|r| r.name == role)
            .and_then(|r| r.marker))
    }

    /// Checks the roles can be rotated: they log in, are not superusers, and (alternating)
    /// share a group role, without which grants would not survive a switch.
    async fn check(&self, client: &Client, rows: &[RoleRow]) -> Result<(), ProviderError> {
        for r in rows {
            if !r.can_login {
                return Err(ProviderError::permanent(format!(
                    "role {:?} on {} cannot log in; ALTER ROLE {} LOGIN, or fix the name in the config",
                    r.name,
                    self.where_(),
                    quote_ident(&r.name)
                )));
            }
            if r.superuser {
                return Err(ProviderError::permanent(format!(
                    "role {:?} on {} is a superuser; rekey rotates application roles only",
                    r.name,
                    self.where_()
                )));
            }
        }
        if let Mode::Alternating { roles: [a, b] } = &self.mode {
            let shared = client
                .query(
                    "SELECT g.rolname::text FROM pg_auth_members ma \
                     JOIN pg_auth_members mb ON mb.roleid = ma.roleid \
                     JOIN pg_roles g ON g.oid = ma.roleid \
                     WHERE ma.member = (SELECT oid FROM pg_roles WHERE rolname = $1) \
                       AND mb.member = (SELECT oid FROM pg_roles WHERE rolname = $2)",
                    &[a, b],
                )
                .await
                .map_err(|e| {
                    self.error(
                        &e,
                        &format!("cannot read role memberships from {}", self.where_()),
                        &[],
                    )
                })?;
            if shared.is_empty() {
                return Err(ProviderError::permanent(format!(
                    "roles {a:?} and {b:?} on {} share no group role, so privileges granted to one would be lost when rekey switches to the other; create a group role that holds the privileges and owns the objects, and GRANT it TO {}, {}",
                    self.where_(),
                    quote_ident(a),
                    quote_ident(b)
                )));
            }
        }
        Ok(())
    }

    /// The role consumers use: the one handed out most recently; before rekey has handed
    /// out either, the first configured.
    fn in_use(&self, rows: &[RoleRow]) -> String {
        rows.iter()
            .filter_map(|r| {
                r.marker
                    .as_ref()
                    .filter(|m| m.state == MarkState::Issued)
                    .map(|m| (m.at, &r.name))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map_or_else(|| rows[0].name.clone(), |(_, name)| name.clone())
    }

    /// A new password: `password_bytes` from the operating system's CSPRNG, hex encoded
    /// (safe in connection strings, URLs and shells).
    fn generate(&self) -> Result<SecretValue, ProviderError> {
        let mut raw = Zeroizing::new(vec![0u8; self.password_bytes]);
        rand::rngs::SysRng
            .try_fill_bytes(&mut raw[..])
            .map_err(|e| ProviderError::transient(format!("the OS random source failed: {e}")))?;
        Ok(SecretValue::new(hex::encode(&raw[..])))
    }

    /// The value handed out for `role`'s new `password`.
    fn encode(&self, role: &str, password: &SecretValue) -> Result<SecretValue, ProviderError> {
        match self.value_format {
            ValueFormat::Password => Ok(password.clone()),
            ValueFormat::Json => serde_json::to_string(&Credentials {
                username: role.into(),
                password: password.expose().into(),
            })
            .map(SecretValue::new)
            .map_err(|_| ProviderError::permanent("cannot encode the value as JSON")),
        }
    }

    /// The role a value names (JSON only) and its password. Parse errors are not quoted:
    /// they may quote the value.
    fn decode(&self, value: &SecretValue) -> Result<(Option<String>, SecretValue), ProviderError> {
        match self.value_format {
            ValueFormat::Password => Ok((None, value.clone())),
            ValueFormat::Json => {
                let c: Credentials<'_> = serde_json::from_str(value.expose()).map_err(|_| {
                    ProviderError::permanent(
                        "the value is not the JSON object {\"username\", \"password\"} that value_format = \"json\" makes",
                    )
                })?;
                Ok((
                    Some(c.username.into_owned()),
                    SecretValue::new(c.password.into_owned()),
                ))
            }
        }
    }

    /// Sets `role`'s password and its marker in one transaction, so the marker is there
    /// exactly when the password is.
    ///
    /// `ALTER ROLE` takes no bind parameters, and statement text is logged: by
    /// tokio-postgres at debug level (which rekey's log bridge forwards) and by servers
    /// with `log_statement = ddl`. So the statement text stays constant: the values travel
    /// as bind parameters into transaction-local settings, and a `DO` block builds the
    /// statements on the server with `format('%I', '%L')`, PostgreSQL's own quoting.
    async fn set_password(
        &self,
        client: &mut Client,
        role: &str,
        password: &SecretValue,
        state: MarkState,
        key: &str,
    ) -> Result<(), ProviderError> {
        let verifier = Zeroizing::new(postgres_protocol::password::scram_sha_256(
            password.expose().as_bytes(),
        ));
        let secrets = [password.expose(), verifier.as_str()];
        let marker = Marker::render(state, key, self.clock.now_ms());
        let doing = format!(
            "cannot set the password of role {role:?} on {}",
            self.where_()
        );
        let fail = |e: tokio_postgres::Error| self.error(&e, &doing, &secrets);
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(
            "SELECT set_config('rekey.role', $1, true), \
             set_config('rekey.verifier', $2, true), \
             set_config('rekey.marker', $3, true)",
            &[&role, &Hidden(&verifier), &marker],
        )
        .await
        .map_err(fail)?;
        tx.batch_execute(SET_PASSWORD).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        info!(role, marker = state.as_str(), key, "role password set");
        Ok(())
    }

    /// Gives `role` a random password nobody knows, marked retired with `key`.
    async fn retire(&self, role: &str, key: &str) -> Result<(), ProviderError> {
        let unknown = self.generate()?;
        let mut client = self.admin_client().await?;
        self.set_password(&mut client, role, &unknown, MarkState::Retired, key)
            .await
    }

    /// The role this rotation's `Create` handed out, found by its marker (a verifier is not
    /// told what the rotator produced).
    async fn issued_by(&self, rotation_id: &str) -> Result<String, ProviderError> {
        let prefix = format!("{rotation_id}:{}:", Action::Create.as_str());
        let issued = |m: &Marker| m.state == MarkState::Issued && m.key.starts_with(&prefix);
        let client = self.admin_client().await?;
        let rows = self.load(&client).await?;
        rows.into_iter()
            .find(|r| r.marker.as_ref().is_some_and(issued))
            .map(|r| r.name)
            .ok_or_else(|| {
                ProviderError::permanent(format!(
                    "no role on {} carries the marker of rotation {rotation_id}; was its comment changed by hand?",
                    self.where_()
                ))
            })
    }

    /// Logs in as `role` with `password` and runs `SELECT 1`, retrying a refused login a
    /// bounded number of times (a replica behind `verify_host` may lag).
    async fn verify_login(&self, role: &str, password: &SecretValue) -> Result<(), ProviderError> {
        let on_refused = "the new password does not work; verification failed";
        let mut delay = self.verify_backoff_ms;
        let mut attempt = 1;
        loop {
            let login = async {
                let client = self
                    .connect(&Login {
                        endpoint: &self.verify,
                        user: role,
                        password: password.expose(),
                        on_refused,
                        options: None,
                    })
                    .await?;
                let row = client.query_one("SELECT 1::int4", &[]).await.map_err(|e| {
                    self.error(
                        &e,
                        &format!(
                            "role {role:?} logged in at {} but SELECT 1 failed",
                            self.verify
                        ),
                        &[password.expose()],
                    )
                })?;
                if row.get::<_, i32>(0) == 1 {
                    Ok(())
                } else {
                    Err(ProviderError::permanent(format!(
                        "role {role:?} at {}: SELECT 1 did not return 1",
                        self.verify
                    )))
                }
            };
            let result = tokio::time::timeout(LOGIN_TIMEOUT, login)
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::transient(format!(
                        "PostgreSQL at {} did not answer a login within {} s",
                        self.verify,
                        LOGIN_TIMEOUT.as_secs()
                    )))
                });
            match result {
                Ok(()) => {
                    info!(role, endpoint = %self.verify, "new password verified");
                    return Ok(());
                }
                Err(e) if attempt < self.verify_attempts => {
                    warn!(
                        role,
                        attempt,
                        error = e.message,
                        "verification login failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one provider call within [`CALL_TIMEOUT`].
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::transient(format!(
                    "{} did not answer within {} s",
                    self.where_(),
                    CALL_TIMEOUT.as_secs()
                )))
            })
    }

    fn captured<'c>(
        &self,
        step: Step<'_>,
        captured: Option<&'c str>,
    ) -> Result<&'c str, ProviderError> {
        captured.ok_or_else(|| {
            ProviderError::permanent(format!(
                "step {} has no captured role; the rotation's capture step did not record one",
                step.id
            ))
        })
    }

    /// Finds the role in use. The value the stores hold (which the runner shows a
    /// rotator's capture) names it best: consumers use exactly that. Without one (a first
    /// rotation, a password-only value), the markers tell.
    async fn capture_role(&self, stored: Option<&SecretValue>) -> Result<String, ProviderError> {
        let client = self.admin_client().await?;
        let rows = self.load(&client).await?;
        self.check(&client, &rows).await?;
        let marked = self.in_use(&rows);
        let stored = match (&self.mode, stored) {
            (Mode::Alternating { .. }, Some(v)) => self
                .decode(v)
                .ok()
                .and_then(|(user, _)| user)
                .filter(|u| self.roles().contains(&u.as_str())),
            _ => None,
        };
        Ok(match stored {
            Some(user) if user != marked => {
                warn!(
                    stored = user,
                    marked,
                    "the stores name another role in use than the markers; following the stores"
                );
                user
            }
            Some(user) => user,
            None => marked,
        })
    }

    async fn create_password(
        &self,
        step: Step<'_>,
        captured: Option<&str>,
    ) -> Result<Created, ProviderError> {
        let target = match &self.mode {
            Mode::Single { role } => role.clone(),
            Mode::Alternating { .. } => self.other(self.captured(step, captured)?)?.to_owned(),
        };
        let password = self.generate()?;
        let mut client = self.admin_client().await?;
        let value = self.encode(&target, &password)?;
        self.set_password(&mut client, &target, &password, MarkState::Issued, step.key)
            .await?;
        Ok(Created { id: target, value })
    }

    async fn verify_value(&self, step: Step<'_>, value: &SecretValue) -> Result<(), ProviderError> {
        let (user, password) = self.decode(value)?;
        let role = match (&self.mode, user) {
            (_, Some(user)) if self.roles().contains(&user.as_str()) => user,
            (_, Some(user)) => {
                return Err(ProviderError::permanent(format!(
                    "the value names role {user:?}, which is not one of the roles configured for {} ({})",
                    self.where_(),
                    self.roles().join(", ")
                )));
            }
            (Mode::Single { role }, None) => role.clone(),
            // A password-only value in alternating mode: the markers say which role.
            (Mode::Alternating { .. }, None) => self.issued_by(step.rotation_id).await?,
        };
        self.verify_login(&role, &password).await
    }

    /// Whether the role `role` carries the marker `state` with `step.key`.
    async fn marked(
        &self,
        step: Step<'_>,
        role: &str,
        state: MarkState,
    ) -> Result<bool, ProviderError> {
        let client = self.admin_client().await?;
        let marker = self.marker(&client, role).await?;
        Ok(marker.is_some_and(|m| m.is(state, step.key)))
    }

    /// `Found` for a step whose marker on `role` is `state`.
    async fn found_marked(
        &self,
        step: Step<'_>,
        role: Option<&str>,
        state: MarkState,
    ) -> Result<Found, ProviderError> {
        Ok(match role {
            Some(role) if self.marked(step, role, state).await? => Found::Applied { id: None },
            _ => Found::NotApplied,
        })
    }
}

/// Each password rekey sets carries a marker with the step's key, so the database itself
/// answers whether an in-doubt step happened. Every call is bounded by `CALL_TIMEOUT`.
impl Rotator for PostgresRole {
    fn capture<'a>(
        &'a self,
        _: Step<'a>,
        stored: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(self.bounded(async move { self.capture_role(stored).await.map(Some) }))
    }

    fn create<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(self.bounded(self.create_password(step, captured)))
    }

    fn retire_old<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(self.bounded(async move {
            match &self.mode {
                // Single mode: the old password was replaced by `Create`; nothing is left.
                Mode::Single { .. } => Ok(()),
                // The role used until now gets a password nobody knows. Not NOLOGIN: the
                // next rotation hands this role out again by setting a password.
                Mode::Alternating { .. } => {
                    self.retire(self.captured(step, captured)?, step.key).await
                }
            }
        }))
    }

    fn discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(self.bounded(async move {
            match (&self.mode, old) {
                // The old password is known only to the stores; when the runner passes it,
                // set it back so consumers restored to it work again.
                (Mode::Single { role }, Some(old)) => {
                    let (_, old) = self.decode(old)?;
                    let mut client = self.admin_client().await?;
                    self.set_password(&mut client, role, &old, MarkState::Restored, step.key)
                        .await?;
                    Ok(Some(role.clone()))
                }
                // Without it the new password stays: the old one is gone since `Create`.
                // Recorded in the step's outcome, so the journal says so too.
                (Mode::Single { role }, None) => {
                    warn!(
                        role,
                        "single mode cannot restore the old password (rekey was not given it); the role keeps the new password"
                    );
                    Ok(Some("new-password-kept".into()))
                }
                // A credential handed out and taken back: a password nobody knows.
                (Mode::Alternating { .. }, _) => {
                    if let Some(role) = created {
                        self.retire(role, step.key).await?;
                    }
                    Ok(None)
                }
            }
        }))
    }

    /// A credential lost in a crash: a password nobody knows.
    fn discard_lost<'a>(&'a self, step: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(self.bounded(async move {
            if let Some(role) = created {
                self.retire(role, step.key).await?;
            }
            Ok(())
        }))
    }

    fn reconcile_create<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Reconciled> {
        Box::pin(self.bounded(async move {
            let role = match &self.mode {
                Mode::Single { role } => role.as_str(),
                Mode::Alternating { .. } => self.other(self.captured(step, captured)?)?,
            };
            Ok(if self.marked(step, role, MarkState::Issued).await? {
                // The password was set but its text died with the response: unusable.
                Reconciled::AppliedUnusable {
                    orphan_id: role.to_owned(),
                }
            } else {
                Reconciled::NotApplied
            })
        }))
    }

    /// Single mode retires nothing, so it is safe to run again.
    fn reconcile_retire_old<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.bounded(async move {
            match &self.mode {
                Mode::Single { .. } => Ok(Found::NotApplied),
                Mode::Alternating { .. } => {
                    let role = self.captured(step, captured)?;
                    self.found_marked(step, Some(role), MarkState::Retired)
                        .await
                }
            }
        }))
    }

    /// Single mode sets the old password back, which is safe to run again.
    fn reconcile_discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.bounded(async move {
            match &self.mode {
                Mode::Single { .. } => Ok(Found::NotApplied),
                Mode::Alternating { .. } => {
                    self.found_marked(step, created, MarkState::Retired).await
                }
            }
        }))
    }

    fn reconcile_discard_lost<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.bounded(self.found_marked(step, created, MarkState::Retired)))
    }
}

/// As a verifier: a login with the new password (on `verify_host`), retried a bounded
/// number of times while a replica catches up.
impl Verifier for PostgresRole {
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(self.bounded(self.verify_value(step, new)))
    }
}

/// Logs in as the admin, reads the configured roles and checks them as `capture` does
/// (they exist, log in, are not superusers; alternating roles share a group role), and
/// checks the admin may change their passwords: `CREATEROLE`, and from PostgreSQL 16 on
/// `ADMIN OPTION` on each role. Writes nothing.
impl crate::probe::Probe for PostgresRole {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let probed = self.bounded(async {
                let client = self.admin_client().await?;
                let rows = self.load(&client).await?;
                self.check(&client, &rows).await?;
                let read_err = |e: tokio_postgres::Error| {
                    self.error(
                        &e,
                        &format!("cannot read the privileges of {} on {}", self.admin_user, self.where_()),
                        &[],
                    )
                };
                let me = client
                    .query_one(
                        "SELECT rolsuper, rolcreaterole, current_setting('server_version_num')::int4 \
                         FROM pg_roles WHERE rolname = current_user",
                        &[],
                    )
                    .await
                    .map_err(read_err)?;
                let (superuser, createrole, version): (bool, bool, i32) =
                    (me.get(0), me.get(1), me.get(2));
                let admin = quote_ident(&self.admin_user);
                if !superuser && !createrole {
                    return Err(ProviderError::permanent(format!(
                        "{} on {} lacks CREATEROLE, which changing a role's password needs: as a superuser, ALTER ROLE {admin} CREATEROLE",
                        self.admin_user,
                        self.where_()
                    )));
                }
                // PostgreSQL 16 made CREATEROLE act only on roles one holds ADMIN OPTION on.
                if !superuser && version >= 160_000 {
                    for role in self.roles() {
                        let admin_option: bool = client
                            .query_one(
                                "SELECT pg_has_role(current_user, $1::text, 'MEMBER WITH ADMIN OPTION')",
                                &[&role],
                            )
                            .await
                            .map_err(read_err)?
                            .get(0);
                        if !admin_option {
                            return Err(ProviderError::permanent(format!(
                                "{} on {} has no ADMIN OPTION on role {role:?}, which PostgreSQL 16 and later need to change its password: GRANT {} TO {admin} WITH ADMIN OPTION",
                                self.admin_user,
                                self.where_(),
                                quote_ident(role)
                            )));
                        }
                    }
                }
                Ok(format!(
                    "{}: logged in as {}; role(s) {} ready to rotate",
                    self.where_(),
                    self.admin_user,
                    self.roles().join(", ")
                ))
            });
            probed.await.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("app_blue"), "\"app_blue\"");
        assert_eq!(quote_ident("App\"; DROP"), "\"App\"\"; DROP\"");
    }

    #[test]
    fn markers_round_trip_and_foreign_comments_are_ignored() {
        let text = Marker::render(MarkState::Issued, "r1:create:0:0", 1_700_000_000_123);
        let m = Marker::parse(&text).unwrap();
        assert!(m.is(MarkState::Issued, "r1:create:0:0"));
        assert_eq!(m.at.as_millisecond(), 1_700_000_000_123);
        assert_eq!(Marker::parse("the payments app's role"), None);
        assert_eq!(Marker::parse("rekey issued k"), None);
    }

    #[test]
    fn scrub_removes_every_secret() {
        assert_eq!(
            scrub("near 'abc' and abc".into(), &["abc", ""]),
            "near '[redacted]' and [redacted]"
        );
    }
}
