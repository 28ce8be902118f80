//! What the operations tests share: reading one series out of a `/metrics` answer,
//! running the real `curl` (as a playout system or an operator would), and a TCP proxy
//! that a test can cut and restore to take a service away from one hub only (the shared
//! RabbitMQ stays up for the other tests). Every wait is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The value of one series (`name` or `name{label="value"}` exactly as exposed) in a
/// Prometheus text answer.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs `curl -sS --max-time 10 <args>` and returns the HTTP status and the body;
/// `Err` when curl cannot run (not installed) or fails.
pub async fn curl(args: &[&str]) -> Result<(u16, String), String> {
    let run = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .map_err(|_| "curl did not finish within 15 s".to_owned())?
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text
        .rsplit_once('\n')
        .ok_or_else(|| format!("no status in curl's output: {text:?}"))?;
    let status = status
        .trim()
        .parse()
        .map_err(|_| format!("bad status in curl's output: {text:?}"))?;
    Ok((status, body.to_owned()))
}

/// Whether the `curl` program runs here.
pub async fn curl_installed() -> bool {
    tokio::process::Command::new("curl")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// A TCP proxy on 127.0.0.1 to `target`. [`TcpProxy::cut`] closes every connection
/// through it and closes new ones at once (the service looks down to its clients);
/// [`TcpProxy::restore`] forwards again. Stops when dropped.
pub struct TcpProxy {
    addr: String,
    up: Arc<AtomicBool>,
    /// Bumped by `cut`: each forwarded connection ends when it changes.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port`), forwarding.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let target = target.to_owned();
        let task = tokio::spawn({
            let up = up.clone();
            let generation = generation.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(mut server)) = tokio::time::timeout(
                            Duration::from_secs(5),
                            TcpStream::connect(&target),
                        )
                        .await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        TcpProxy {
            addr,
            up,
            generation,
            task,
        }
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("proxy port")
    }

    /// Closes every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
