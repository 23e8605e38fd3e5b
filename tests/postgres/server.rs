//! One real PostgreSQL server for the whole test run, on loopback in a temp dir, and a
//! database with its own roles for each test, so tests stay independent and share the
//! start-up cost.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! `postgres` OS user (the Debian package creates it) through `runuser`, in a temp dir
//! owned by that user.
//!
//! A static is never dropped, so a `Drop` guard cannot stop a shared server. Instead a small
//! watchdog shell starts the server and then reads its stdin, a pipe from this process:
//! when this process ends, however it ends (even SIGKILL), the pipe closes, and the
//! watchdog stops the server and removes the temp dir.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tokio_postgres::{Client, NoTls};

/// The bootstrap superuser, used only to set up fixtures.
const SUPERUSER: &str = "rekey_super";

/// A user the server refuses without TLS (the admin of `Fixture::new("tls")`).
pub const TLS_ONLY_USER: &str = "tls_admin";

/// Another user the server refuses without TLS: the journal's, in the one test that proves
/// the journal connects over TLS.
pub const JOURNAL_TLS_USER: &str = "tlsonly_journal";

/// Starts the server, waits for it (pg_ctl's bounded wait), then holds until stdin closes.
/// Arguments: bin dir, data dir parent, port.
const WATCHDOG: &str = r#"
trap '' INT HUP
bin=$1; dir=$2; port=$3
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on -c full_page_writes=off -c max_connections=200 -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
    start >"$dir/pg_ctl.out" 2>&1; then
  echo failed
  cat "$dir/pg_ctl.out" "$dir/server.log" 2>/dev/null
  exit 1
fi
echo ready
cat >/dev/null
"$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
rm -rf "$dir"
"#;

/// The running server. It accepts TLS too, with a certificate for `localhost` and
/// `127.0.0.1` issued by a CA made for this run.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// The PEM root that the server's certificate chains to.
    pub ca_file: PathBuf,
    superuser_password: String,
    /// Closing it (at process exit) stops the server.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        Server::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"))
    })
}

/// PostgreSQL's programs: `REKEY_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout; `.ci/run` installs the package when it is missing).
fn bindir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("REKEY_PG_BINDIR") {
        return Ok(d.into());
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}; install PostgreSQL (.ci/run does)", root.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| root.join(v.to_string()).join("bin/initdb").exists())
        .max()
        .ok_or_else(|| format!("no PostgreSQL under {}", root.display()))?;
    Ok(root.join(newest.to_string()).join("bin"))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command run as the `postgres` OS user when we are root, else as ourselves.
fn command(program: &str) -> Command {
    if running_as_root() {
        let runuser = Path::new("/usr/sbin/runuser");
        let mut c = Command::new(if runuser.exists() {
            runuser.as_os_str()
        } else {
            "runuser".as_ref()
        });
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn id_of(flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .map_err(|e| format!("id {flag} postgres: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "there is no postgres OS user to run the server as (we are root)".into())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
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
        let bin = bindir()?;
        let builder = tempfile::Builder::new().prefix("rekey-pg-").tempdir_in(
            // Root's TMPDIR may be closed to the postgres user; /tmp never is.
            if running_as_root() {
                PathBuf::from("/tmp")
            } else {
                std::env::temp_dir()
            },
        );
        let dir = builder.map_err(|e| format!("temp dir: {e}"))?.keep();
        let superuser_password = random_hex(16);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &superuser_password).map_err(|e| e.to_string())?;
        make_certificates(&dir)?;
        let generated = ["pwfile", "ca.pem", "server.crt", "server.key"].map(|f| dir.join(f));
        if running_as_root() {
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            for p in std::iter::once(&dir).chain(&generated) {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let out = command(&bin.join("initdb").to_string_lossy())
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The `tls` fixture's admin may log in over TLS only, proving TLS is really used.
        let hba = dir.join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        std::fs::write(
            &hba,
            format!(
                "hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n\
                 hostnossl all {JOURNAL_TLS_USER} 127.0.0.1/32 reject\n{rules}"
            ),
        )
        .map_err(|e| e.to_string())?;
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = command("sh")
                .args(["-c", WATCHDOG, "sh"])
                .arg(&bin)
                .arg(&dir)
                .arg(port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("watchdog: {e}"))?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
            let mut line = String::new();
            stdout.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim() == "ready" {
                return Ok(Self {
                    port,
                    ca_file: dir.join("ca.pem"),
                    superuser_password,
                    _watchdog: Mutex::new((child, stdin)),
                });
            }
            last.clear();
            let _ = stdout.read_to_string(&mut last);
            let _ = child.wait();
            if !last.contains("in use") {
                break;
            }
        }
        Err(format!("the server did not start: {last}"))
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
