//! One real PostgreSQL server for the whole test run, on 127.0.0.1 in a temp dir, and a
//! schema of its own for each journal a test opens, so tests stay independent and share the
//! start-up cost. The server runs with `fsync=on`, as the journal requires.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! `postgres` OS user (the Debian package creates it) through `runuser`, in a temp dir that
//! user owns. A static is never dropped, so a small watchdog shell starts the server and then
//! reads its stdin, a pipe from this process: when this process ends, however it ends, the
//! pipe closes and the watchdog stops the server and removes the temp dir.
//!
//! `REKEY_PG_PORT` points the tests at a server already running (trust authentication for
//! user `rekey_test`, database `journal`); child processes of the crash test use it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rekey_journal::PostgresConfig;

/// The tests' superuser (trusted on loopback only) and database.
const USER: &str = "rekey_test";
const DATABASE: &str = "journal";
/// Set to the port of a server started by a parent test process.
pub const PORT_ENV: &str = "REKEY_PG_PORT";

/// Starts the server, waits for it (pg_ctl's bounded wait), then holds until stdin closes.
/// Arguments: bin dir, temp dir, port.
const WATCHDOG: &str = r#"
trap '' INT HUP
bin=$1; dir=$2; port=$3
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on -c max_connections=300" \
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

/// The running server.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// Closing it (at process exit) stops the server; `None` for a server we did not start.
    _watchdog: Option<Mutex<(Child, ChildStdin)>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Some(port) = std::env::var(PORT_ENV).ok().and_then(|p| p.parse().ok()) {
            return Server {
                port,
                _watchdog: None,
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

/// PostgreSQL's programs: `REKEY_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`.
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
        let mut c = Command::new("runuser");
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

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Server {
    fn start() -> Result<Self, String> {
        let bin = bindir()?;
        // Root's TMPDIR may be closed to the postgres user; /tmp never is.
        let parent = if running_as_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("rekey-journal-pg-")
            .tempdir_in(parent)
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        if running_as_root() {
            std::os::unix::fs::chown(&dir, Some(id_of("-u")?), Some(id_of("-g")?))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let mut initdb = command(&bin.join("initdb").to_string_lossy());
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", USER, "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run(initdb, "initdb")?;
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
                let mut createdb = command(&bin.join("createdb").to_string_lossy());
                createdb.args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    USER,
                    DATABASE,
                ]);
                run(createdb, "createdb")?;
                return Ok(Self {
                    port,
                    _watchdog: Some(Mutex::new((child, stdin))),
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
}
