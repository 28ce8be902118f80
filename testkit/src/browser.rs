//! A real browser for the web transports' tests: Debian's `chromium`, headless, driven
//! through the DevTools protocol (open a page, evaluate an expression, wait until it
//! holds, take a screenshot). Skips with a printed reason when chromium is absent,
//! unless `RADIOVIS_REQUIRE_SERVICES=1` (`.ci/run` installs it). `RADIOVIS_CHROMIUM`
//! names another binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::services::skip;
use crate::web::request;

/// Where Debian installs chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The chromium binary, or `None` (after [`skip`]) when there is none.
pub fn chromium(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("RADIOVIS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    if path.exists() {
        Some(path)
    } else {
        skip(
            test,
            &format!(
                "no chromium at {} (apt-get install chromium)",
                path.display()
            ),
        );
        None
    }
}

/// A headless chromium with the DevTools protocol on a local port. Killed on drop.
pub struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromium, or returns `None` (after [`skip`]) when it is not installed.
    pub async fn launch(test: &str) -> Option<Browser> {
        let binary = chromium(test)?;
        let profile = tempfile::Builder::new()
            .prefix("radiovis-chromium")
            .tempdir()
            .expect("profile directory");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=800,600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("chromium stderr");
        let mut lines = BufReader::new(stderr).lines();
        let devtools = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    return rest.split('/').next().map(str::to_owned);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromium printed its DevTools address");
        // Keep reading its stderr, so that chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Browser {
            child,
            devtools,
            _profile: profile,
        })
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page {
        let r = request(
            &self.devtools,
            "PUT",
            &format!("/json/new?{url}"),
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.status, 200, "DevTools /json/new: {r:?}");
        let target = r.json();
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a debugger URL")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("DevTools WebSocket");
        Page { ws, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One tab, through the DevTools protocol.
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("DevTools send");
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = self.ws.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).expect("DevTools JSON");
                if v["id"] == id {
                    if v.get("error").is_some() {
                        panic!("DevTools {method}: {v}");
                    }
                    return v["result"].clone();
                }
            }
            panic!("DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools {method}: no answer"))
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expression` (a string) equals `want`; panics with what it was.
    pub async fn wait_for(&mut self, expression: &str, want: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.eval(expression).await;
            if got.as_str() == Some(want) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let dom = self.eval("document.body.outerHTML").await;
                panic!("{expression} is {got}, not {want:?}, after {within:?}; page: {dom}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as shown, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let data = r["data"].as_str().expect("screenshot data");
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Installs an npm package (from the npm registry, at test set-up, never committed)
/// into a directory under the system's temporary directory, reused by later runs;
/// returns the path of `file` inside the installed package, or `None` (after
/// [`skip`]) when npm is missing or the install fails.
pub async fn npm_package(test: &str, package: &str, file: &str) -> Option<PathBuf> {
    let name = package.trim_start_matches('@').replace(['/', '@'], "-");
    let prefix = std::env::temp_dir().join(format!("radiovis-npm-{name}"));
    let bare = package
        .rsplit_once('@')
        .filter(|(n, _)| !n.is_empty())
        .map_or(package, |(n, _)| n);
    let installed = prefix.join("node_modules").join(bare).join(file);
    if installed.exists() {
        return Some(installed);
    }
    let status = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(package)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await;
    match status {
        Ok(Ok(s)) if s.success() && installed.exists() => Some(installed),
        other => {
            skip(test, &format!("npm install {package} failed: {other:?}"));
            None
        }
    }
}
