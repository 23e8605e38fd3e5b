#![allow(dead_code)] // shared by two test crates, each using a part
//! A throwaway PostgreSQL cluster for a test run, on 127.0.0.1 in a temp dir: the machinery
//! the journal crate's tests (`journal/tests/journal/pg_server.rs`) and rekey's own
//! (`tests/postgres/server.rs`) share, each adding its settings (authentication, TLS, hba
//! rules, databases).
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! `postgres` OS user (the Debian package creates it) through `runuser`, in a temp dir that
//! user owns. A static is never dropped, so a small watchdog shell starts the server and then
//! reads its stdin, a pipe from this process: when this process ends, however it ends (even
//! SIGKILL), the pipe closes and the watchdog stops the server and removes the temp dir.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Starts the server, waits for it (pg_ctl's bounded wait), then holds until stdin closes.
/// Arguments: bin dir, temp dir, port, extra server settings.
const WATCHDOG: &str = r#"
trap '' INT HUP
bin=$1; dir=$2; port=$3; settings=$4
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir $settings" \
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

/// How to set up a cluster.
pub struct Spec<'a> {
    /// The temp dir's name prefix.
    pub prefix: &'a str,
    /// The bootstrap superuser.
    pub superuser: &'a str,
    /// Its password, with `scram-sha-256` authentication; `None` trusts every local login.
    pub password: Option<&'a str>,
    /// Server settings beyond address, port and socket dir (`-c name=value ...`); `$dir` is
    /// the temp dir.
    pub settings: &'a str,
    /// Lines put before the default `pg_hba.conf` rules.
    pub hba_first: String,
    /// Runs in the temp dir before the server starts (certificates); returns the files it
    /// made, which the server's user must own.
    pub prepare: &'a dyn Fn(&Path) -> Result<Vec<PathBuf>, String>,
}

/// A running cluster; it stops when this process ends.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    /// The temp dir (data, socket, log, the files `prepare` made).
    pub dir: PathBuf,
    pub bin: PathBuf,
    _watchdog: Mutex<(Child, ChildStdin)>,
}

/// PostgreSQL's programs: `REKEY_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout; `.ci/run` installs the package when it is missing).
pub fn bindir() -> Result<PathBuf, String> {
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

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command run as the `postgres` OS user when we are root, else as ourselves.
pub fn command(program: &str) -> Command {
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

/// Runs `c`; its output is the error when it fails.
pub fn run(mut c: Command, what: &str) -> Result<(), String> {
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

impl Cluster {
    /// Creates the cluster and starts its server.
    pub fn start(spec: &Spec<'_>) -> Result<Self, String> {
        let bin = bindir()?;
        // Root's TMPDIR may be closed to the postgres user; /tmp never is.
        let parent = if running_as_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix(spec.prefix)
            .tempdir_in(parent)
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let mut made = (spec.prepare)(&dir)?;
        let pwfile = dir.join("pwfile");
        if let Some(password) = spec.password {
            std::fs::write(&pwfile, password).map_err(|e| e.to_string())?;
            made.push(pwfile.clone());
        }
        if running_as_root() {
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            for p in std::iter::once(&dir).chain(&made) {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let mut initdb = command(&bin.join("initdb").to_string_lossy());
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", spec.superuser, "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        match spec.password {
            Some(_) => initdb
                .args(["-A", "scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            None => initdb.args(["-A", "trust"]),
        };
        run(initdb, "initdb")?;
        if !spec.hba_first.is_empty() {
            let hba = dir.join("data/pg_hba.conf");
            let rules = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
            std::fs::write(&hba, format!("{}{rules}", spec.hba_first))
                .map_err(|e| e.to_string())?;
        }
        let settings = spec.settings.replace("$dir", &dir.display().to_string());
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = command("sh")
                .args(["-c", WATCHDOG, "sh"])
                .arg(&bin)
                .arg(&dir)
                .arg(port.to_string())
                .arg(&settings)
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
                    dir,
                    bin,
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

    /// Creates the database `name`, owned by `user`, over loopback.
    pub fn create_database(&self, user: &str, name: &str) -> Result<(), String> {
        let mut createdb = command(&self.bin.join("createdb").to_string_lossy());
        createdb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            user,
            name,
        ]);
        run(createdb, "createdb")
    }
}
