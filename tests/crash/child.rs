//! Running the real `rekey` binary as a child process: spawn it, SIGKILL it after a delay
//! or wait for it with a timeout, and keep everything it printed (to scan for secrets).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use rekey::journal::{Clock, SystemClock};

/// How often a wait with a timeout looks at the child.
const POLL: Duration = Duration::from_millis(10);
/// The signal `Child::kill` sends on Unix.
const SIGKILL: i32 = 9;

/// How to start `rekey` against the crash test's config.
#[derive(Debug)]
pub struct Rekey {
    pub config: PathBuf,
    /// The client secret, handed over in the environment as the config says.
    pub secret_env: (String, String),
    /// More variables for the children (an API token, a journal password).
    pub env: Vec<(String, String)>,
    /// Everything every child printed, stdout and stderr.
    pub transcript: Vec<u8>,
}

/// A child that is running; killed and reaped if dropped (a panicking test leaves none).
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    args: Vec<String>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Ended {
    pub args: Vec<String>,
    pub status: ExitStatus,
    /// We SIGKILLed it while it was still running.
    pub killed: bool,
    /// It outlived its timeout (and was killed for that).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ended {
    /// A one-line account for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "`rekey {}` ended with {}{}; stdout: {}; stderr: {}",
            self.args.join(" "),
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

impl Rekey {
    /// Starts `rekey --config CONFIG ARGS…` with warnings logged to stderr.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
        cmd.arg("--config").arg(&self.config).args(args);
        self.start(cmd, args)
    }

    /// Starts `rekey ARGS…` without a config (the auditor's commands).
    pub fn spawn_bare(&self, args: &[&str]) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
        cmd.args(args);
        self.start(cmd, args)
    }

    fn start(&self, mut cmd: Command, args: &[&str]) -> Running {
        for var in [
            "REKEY_CONFIG",
            "REKEY_JOURNAL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .env(&self.secret_env.0, &self.secret_env.1)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning rekey");
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Running {
            child,
            stdout,
            stderr,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Keeps a finished child's output for the leak check.
    pub fn record(&mut self, ended: &Ended) {
        self.transcript.extend_from_slice(ended.stdout.as_bytes());
        self.transcript.extend_from_slice(ended.stderr.as_bytes());
    }
}

/// Reads a pipe to its end on a thread of its own, so a chatty child never blocks.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Running {
    /// Lets the child run for `delay`, then SIGKILLs it unless it has already exited.
    pub fn kill_after(mut self, delay: Duration) -> Ended {
        std::thread::sleep(delay);
        let running = self.child.try_wait().expect("polling rekey").is_none();
        if running {
            self.child.kill().expect("SIGKILL rekey");
        }
        self.finish(running, false)
    }

    /// SIGKILLs the child now, unless it has already exited.
    pub fn kill(self) -> Ended {
        self.kill_after(Duration::ZERO)
    }

    /// Whether the child has exited (by itself: nobody else signals it).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("polling rekey").is_some()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the child to exit.
    pub fn terminate(self, timeout: Duration) -> Ended {
        // Our own child, not yet reaped: the pid is still its.
        let pid = self.child.id() as i32;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        self.wait_for(timeout)
    }

    /// Waits up to `timeout` for the child to exit; kills it if it does not.
    pub fn wait_for(mut self, timeout: Duration) -> Ended {
        let clock = SystemClock;
        let deadline = clock.now_ms() + timeout.as_millis() as i64;
        while self.child.try_wait().expect("polling rekey").is_none() {
            if clock.now_ms() >= deadline {
                self.child.kill().expect("killing a stuck rekey");
                return self.finish(false, true);
            }
            std::thread::sleep(POLL);
        }
        self.finish(false, false)
    }

    fn finish(&mut self, killed: bool, timed_out: bool) -> Ended {
        let status = self.child.wait().expect("reaping rekey");
        let text = |h: Option<JoinHandle<Vec<u8>>>| {
            String::from_utf8_lossy(&h.map(|h| h.join().unwrap_or_default()).unwrap_or_default())
                .into_owned()
        };
        let killed = killed && status.signal() == Some(SIGKILL);
        Ended {
            args: std::mem::take(&mut self.args),
            status,
            killed,
            timed_out,
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
