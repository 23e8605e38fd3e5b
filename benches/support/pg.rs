//! A PostgreSQL server for a bench run, on 127.0.0.1 in a temp dir, with `fsync=on` and
//! `synchronous_commit=on` (the journal's durability): the tests' cluster helper, started
//! once per bench process and stopped when it ends. Without PostgreSQL installed the
//! PostgreSQL benches are skipped with a notice.

use std::sync::OnceLock;

use rekey::journal::PostgresConfig;

#[path = "../../journal/tests/support/pg_cluster.rs"]
mod pg_cluster;

const USER: &str = "rekey_bench";
const DATABASE: &str = "bench";

static SERVER: OnceLock<Option<pg_cluster::Cluster>> = OnceLock::new();

/// Connection settings for the bench database, or `None` (with a notice on stderr) when no
/// server can be started here.
pub fn config() -> Option<PostgresConfig> {
    let cluster = SERVER.get_or_init(|| match start() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("notice: PostgreSQL benches skipped: {e}");
            None
        }
    });
    let port = cluster.as_ref()?.port;
    let mut c = PostgresConfig::new();
    c.host("127.0.0.1").port(port).user(USER).dbname(DATABASE);
    Some(c)
}

fn start() -> Result<pg_cluster::Cluster, String> {
    let bin = pg_cluster::bindir()?;
    if !bin.join("initdb").exists() {
        return Err(format!("no initdb in {}", bin.display()));
    }
    let cluster = pg_cluster::Cluster::start(&pg_cluster::Spec {
        prefix: "rekey-bench-pg-",
        superuser: USER,
        password: None,
        settings: "-c fsync=on -c synchronous_commit=on -c max_connections=100",
        hba_first: String::new(),
        prepare: &|_| Ok(Vec::new()),
    })?;
    cluster.create_database(USER, DATABASE)?;
    Ok(cluster)
}
