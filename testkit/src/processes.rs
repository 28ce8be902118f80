//! Real processes for deployment tests: the workspace's binaries (`radiovis-server`,
//! `radiovis-fallback`) with their log lines captured, a private memcached, free ports,
//! and a guard that always restarts a stopped RabbitMQ application.
//!
//! Every child is killed when its handle is dropped (a failing test leaves nothing
//! behind); every wait is bounded.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::services::reachable;

/// Log lines kept per process (the oldest are forgotten beyond: memory stays bounded).
const KEPT_LINES: usize = 20_000;

/// The path of a binary of this workspace, `target/<profile>/<name>`, found from the
/// running test executable (`target/<profile>/deps/<test>-<hash>`). Cargo builds the
/// workspace's binaries for `cargo test --workspace`; a lone `cargo test -p ... --test`
/// does not, hence the message.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (`cargo build -p {name}`, or run `cargo test --workspace`)",
            path.display()
        ))
    }
}

/// A free TCP port on 127.0.0.1 (bound then released: another process could take it
/// in between, which is unlikely enough for tests).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Whether this process runs as root (memcached then needs `-u root`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// The captured output of a process: its last `KEPT_LINES` lines, stdout and
/// stderr interleaved as they came.
#[derive(Debug, Default, Clone)]
pub struct LogLines(Arc<Mutex<VecDeque<String>>>);

impl LogLines {
    fn push(&self, line: String) {
        if let Ok(mut l) = self.0.lock() {
            if l.len() == KEPT_LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// Every kept line, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many kept lines contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.0
            .lock()
            .map(|l| l.iter().filter(|s| s.contains(text)).count())
            .unwrap_or(0)
    }

    /// The kept lines that contain `text`.
    pub fn matching(&self, text: &str) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().filter(|s| s.contains(text)).cloned().collect())
            .unwrap_or_default()
    }

    /// The last kept line that contains any of `texts`, as (index of the text, line).
    pub fn last_of(&self, texts: &[&str]) -> Option<(usize, String)> {
        let l = self.0.lock().ok()?;
        l.iter().rev().find_map(|s| {
            texts
                .iter()
                .position(|t| s.contains(t))
                .map(|i| (i, s.clone()))
        })
    }

    /// The last `n` lines, joined (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        let l = self.lines();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    fn capture(&self, stream: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
        });
    }
}

/// A child process whose output is captured; SIGKILLed when dropped.
pub struct Process {
    /// A name for messages (`server-a`, `fallback-1`, ...).
    pub name: String,
    child: Child,
    /// Its output.
    pub log: LogLines,
}

impl Process {
    /// Starts `program` with `args` and these environment variables added (colours off,
    /// `RUST_LOG` as given or `info`).
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Process, String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        let log = LogLines::default();
        if let Some(out) = child.stdout.take() {
            log.capture(out);
        }
        if let Some(err) = child.stderr.take() {
            log.capture(err);
        }
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until a line containing `text` has been logged, or the process exits, or
    /// `within` passes.
    pub async fn wait_log(&mut self, text: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if self.log.count(text) > 0 {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before logging {text:?}:\n{}",
                    self.name,
                    self.log.tail(30)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {text:?} within {within:?}:\n{}",
                    self.name,
                    self.log.tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A memcached of the test's own on 127.0.0.1, killed on drop.
pub struct Memcached {
    port: u16,
    child: Option<Child>,
}

impl Memcached {
    /// Starts memcached on `port` (UDP off) and waits until it accepts connections.
    pub async fn start(port: u16) -> Result<Memcached, String> {
        let mut m = Memcached { port, child: None };
        m.restart().await?;
        Ok(m)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: its cached values are gone, as after a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port; fails when the port is taken or it does not
    /// come up within 5 s.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let addr = self.addr();
        if reachable(&addr).await {
            return Err(format!(
                "port {} already in use, cannot start memcached",
                self.port
            ));
        }
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-p", &self.port.to_string(), "-U", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start memcached: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("memcached exited at start: {status}"));
                }
            }
            if reachable(&addr).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("memcached did not start on {addr}"))
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `rabbitmqctl <args>` bounded by `within`; the error says what failed.
pub async fn rabbitmqctl(args: &[&str], within: Duration) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("rabbitmqctl");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .map_err(|_| format!("rabbitmqctl {args:?} did not finish within {within:?}"))?
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Keeps the RabbitMQ application running: [`RabbitGuard::stop_app`] stops it, and
/// dropping the guard (even while a test panics) runs `rabbitmqctl start_app` if it
/// was stopped, so that the broker every other test uses is never left down.
#[derive(Debug, Default)]
pub struct RabbitGuard {
    stopped: bool,
}

impl RabbitGuard {
    /// A guard that has stopped nothing yet.
    pub fn new() -> RabbitGuard {
        RabbitGuard::default()
    }

    /// `rabbitmqctl stop_app` (bounded to 60 s).
    pub async fn stop_app(&mut self) -> Result<(), String> {
        // Marked first: a stop that timed out may still have stopped the app.
        self.stopped = true;
        rabbitmqctl(&["stop_app"], Duration::from_secs(60)).await
    }

    /// `rabbitmqctl start_app` (bounded to 60 s).
    pub async fn start_app(&mut self) -> Result<(), String> {
        rabbitmqctl(&["start_app"], Duration::from_secs(60)).await?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for RabbitGuard {
    fn drop(&mut self) {
        if self.stopped {
            // Synchronous on purpose: this may run while a panic unwinds, outside any
            // runtime that could still poll a future.
            let status = Command::new("rabbitmqctl")
                .arg("start_app")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            eprintln!("RabbitGuard: rabbitmqctl start_app after an interrupted test: {status:?}");
        }
    }
}

/// Reads `child`'s standard output (piped) line by line until a line contains
/// `marker`, for at most `within`: the lines read (the marker's included) and whether
/// it came. The binaries' start-up tests wait for "listening for STOMP connections".
pub async fn stdout_until(
    child: &mut tokio::process::Child,
    marker: &str,
    within: Duration,
) -> (bool, Vec<String>) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let came = tokio::time::timeout(within, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains(marker);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    (came, seen)
}
