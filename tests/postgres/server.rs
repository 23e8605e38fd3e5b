//! One real PostgreSQL server for the whole test run, on loopback in a temp dir, and a
//! database with its own roles for each test, so tests stay independent and share the
//! start-up cost.
//!
//! The cluster machinery (a temp dir, `runuser` when we are root, a watchdog that stops the
//! server when this process ends) is the journal crate's tests' too:
//! `journal/tests/support/pg_cluster.rs`. The server runs with `fsync=on` and
//! `synchronous_commit=on`, as a journal in it requires.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokio_postgres::{Client, NoTls};

#[path = "../../journal/tests/support/pg_cluster.rs"]
mod pg_cluster;

/// The bootstrap superuser, used only to set up fixtures.
const SUPERUSER: &str = "rekey_super";

/// A user the server refuses without TLS (the admin of `Fixture::new("tls")`).
pub const TLS_ONLY_USER: &str = "tls_admin";

/// Another user the server refuses without TLS: the journal's, in the one test that proves
/// the journal connects over TLS.
pub const JOURNAL_TLS_USER: &str = "tlsonly_journal";

/// The running server. It accepts TLS too, with a certificate for `localhost` and
/// `127.0.0.1` issued by a CA made for this run.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// The PEM root that the server's certificate chains to.
    pub ca_file: PathBuf,
    superuser_password: String,
    /// Stops the server at process exit.
    _cluster: pg_cluster::Cluster,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        Server::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"))
    })
}

fn random_hex(bytes: usize) -> String {
    use rand::RngExt;
    let mut raw = vec![0u8; bytes];
    rand::rng().fill(&mut raw[..]);
    hex::encode(raw)
}

/// A CA and a server certificate for `localhost` and `127.0.0.1`, with openssl's CLI
/// (installed with PostgreSQL, whose Debian package depends on it).
fn make_certificates(dir: &Path) -> Result<(), String> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [&[&str]; 3] = [
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=rekey test CA"][..],
            &ec,
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
        &[
            &["req", "-subj", "/CN=localhost"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}; install openssl (.ci/run does)"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // PostgreSQL refuses a key file others can read.
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())
}

impl Server {
    fn start() -> Result<Self, String> {
        let superuser_password = random_hex(16);
        let cluster = pg_cluster::Cluster::start(&pg_cluster::Spec {
            prefix: "rekey-pg-",
            superuser: SUPERUSER,
            password: Some(&superuser_password),
            settings: "-c fsync=on -c synchronous_commit=on -c full_page_writes=off \
                       -c max_connections=200 -c ssl=on -c ssl_cert_file=$dir/server.crt \
                       -c ssl_key_file=$dir/server.key",
            // These users may log in over TLS only, proving TLS is really used.
            hba_first: format!(
                "hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n\
                 hostnossl all {JOURNAL_TLS_USER} 127.0.0.1/32 reject\n"
            ),
            prepare: &|dir| {
                make_certificates(dir)?;
                Ok(["ca.pem", "server.crt", "server.key"]
                    .map(|f| dir.join(f))
                    .to_vec())
            },
        })?;
        Ok(Self {
            port: cluster.port,
            ca_file: cluster.dir.join("ca.pem"),
            superuser_password,
            _cluster: cluster,
        })
    }

    /// A connection as the superuser to `dbname`.
    pub async fn superuser(&self, dbname: &str) -> Client {
        connect(self.port, dbname, SUPERUSER, &self.superuser_password)
            .await
            .unwrap_or_else(|e| panic!("superuser connection to {dbname}: {e}"))
    }
}

/// Connects over loopback TCP; the driver task ends with the client.
pub async fn connect(
    port: u16,
    dbname: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .dbname(dbname)
        .user(user)
        .password(password)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A test's own database: an admin role with CREATEROLE (no superuser), a group role
/// `<p>_owner` owning schema `app`, two login roles in it (`<p>_blue`, `<p>_green`), and a
/// lone login role `<p>_app` for single mode. Passwords are random and known to the test.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub port: u16,
    pub db: String,
    pub admin: String,
    pub admin_password: String,
    pub owner: String,
    pub blue: String,
    pub blue_password: String,
    pub green: String,
    pub green_password: String,
    pub app: String,
    pub app_password: String,
}

impl Fixture {
    /// Creates the database and roles named after `prefix` (unique per test).
    pub async fn new(prefix: &str) -> Self {
        let s = server();
        let f = Self {
            port: s.port,
            db: prefix.to_owned(),
            admin: format!("{prefix}_admin"),
            admin_password: random_hex(12),
            owner: format!("{prefix}_owner"),
            blue: format!("{prefix}_blue"),
            blue_password: random_hex(12),
            green: format!("{prefix}_green"),
            green_password: random_hex(12),
            app: format!("{prefix}_app"),
            app_password: random_hex(12),
        };
        let su = s.superuser("postgres").await;
        su.batch_execute(&format!(
            "CREATE ROLE {} LOGIN CREATEROLE PASSWORD '{}'",
            f.admin, f.admin_password
        ))
        .await
        .unwrap();
        // CREATE DATABASE may not share a statement batch (an implicit transaction).
        su.batch_execute(&format!("CREATE DATABASE {}", f.db))
            .await
            .unwrap();
        // Created by the admin, so PostgreSQL 16+ gives it ADMIN OPTION on them, as a real
        // deployment's CREATEROLE admin would have.
        su.batch_execute(&format!(
            "SET ROLE {admin};
             CREATE ROLE {owner} NOLOGIN;
             CREATE ROLE {blue} LOGIN PASSWORD '{bp}' IN ROLE {owner};
             CREATE ROLE {green} LOGIN PASSWORD '{gp}' IN ROLE {owner};
             CREATE ROLE {app} LOGIN PASSWORD '{ap}';
             RESET ROLE;",
            admin = f.admin,
            owner = f.owner,
            blue = f.blue,
            green = f.green,
            app = f.app,
            bp = f.blue_password,
            gp = f.green_password,
            ap = f.app_password,
        ))
        .await
        .unwrap();
        let su_db = s.superuser(&f.db).await;
        su_db
            .batch_execute(&format!(
                "CREATE SCHEMA app AUTHORIZATION {owner}; GRANT CONNECT ON DATABASE {db} TO {owner}",
                owner = f.owner,
                db = f.db
            ))
            .await
            .unwrap();
        f
    }

    /// Whether `user` can log in with `password`: `false` only for a refused password.
    pub async fn can_login(&self, user: &str, password: &str) -> bool {
        match connect(self.port, &self.db, user, password).await {
            Ok(c) => {
                c.query_one("SELECT 1", &[]).await.unwrap();
                true
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) => false,
            Err(e) => panic!("login of {user} failed for another reason: {e}"),
        }
    }

    /// A connection as `user`, which must succeed.
    pub async fn login(&self, user: &str, password: &str) -> Client {
        connect(self.port, &self.db, user, password)
            .await
            .unwrap_or_else(|e| panic!("login of {user}: {e}"))
    }
}
