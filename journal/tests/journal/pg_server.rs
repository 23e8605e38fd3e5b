//! One real PostgreSQL server for the whole test run, on 127.0.0.1 in a temp dir (the
//! cluster machinery rekey's own tests share: `journal/tests/support/pg_cluster.rs`), and a
//! schema of its own for each journal a test opens, so tests stay independent and share the
//! start-up cost. The server runs with `fsync=on`, as the journal requires.
//!
//! `REKEY_PG_PORT` points the tests at a server already running (trust authentication for
//! user `rekey_test`, database `journal`); child processes of the crash test use it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rekey_journal::PostgresConfig;

#[path = "../support/pg_cluster.rs"]
mod pg_cluster;

/// The tests' superuser (trusted on loopback only) and database.
const USER: &str = "rekey_test";
const DATABASE: &str = "journal";
/// Set to the port of a server started by a parent test process.
pub const PORT_ENV: &str = "REKEY_PG_PORT";

/// The running server.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// Stops the server at process exit; `None` for a server we did not start.
    _cluster: Option<pg_cluster::Cluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Some(port) = std::env::var(PORT_ENV).ok().and_then(|p| p.parse().ok()) {
            return Server {
                port,
                _cluster: None,
            };
        }
        Server::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"))
    })
}

/// Connection settings for the test database.
pub fn config() -> PostgresConfig {
    config_on(server().port)
}

/// Connection settings for the test database reached through `port` on 127.0.0.1 (a proxy).
pub fn config_on(port: u16) -> PostgresConfig {
    let mut c = PostgresConfig::new();
    c.host("127.0.0.1").port(port).user(USER).dbname(DATABASE);
    c
}

/// A schema name no other journal of this run (or of another process) uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A plain client of the test database, for fixtures and attacks; its connection task runs
/// on the current runtime.
pub async fn client() -> tokio_postgres::Client {
    let (client, connection) = config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl Server {
    fn start() -> Result<Self, String> {
        let cluster = pg_cluster::Cluster::start(&pg_cluster::Spec {
            prefix: "rekey-journal-pg-",
            superuser: USER,
            password: None,
            settings: "-c fsync=on -c synchronous_commit=on -c max_connections=300",
            hba_first: String::new(),
            prepare: &|_| Ok(Vec::new()),
        })?;
        cluster.create_database(USER, DATABASE)?;
        Ok(Self {
            port: cluster.port,
            _cluster: Some(cluster),
        })
    }
}
