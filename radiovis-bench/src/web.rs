//! `radiovis-bench web-memory`: the server's memory per client for each transport at
//! N clients, against STOMP over TCP measured in the same run (BENCHMARKS.md).
//!
//! For each transport a fresh server is started, its RSS read, N idle clients opened
//! (each subscribed to `<prefix><i % K>/text`, topics with no message, so that
//! long-polls stay held; and `<prefix><i % K>/image` too, as radios and players
//! follow a station, unless `--text-only`), 2 s of settling, its RSS read again: per client =
//! (after - before) / N. Clients are raw sockets speaking just enough of each
//! protocol (no client library in the measured path).

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::{free_port, start_server, sys, RunArgs, ServerKind};

/// Arguments of `web-memory`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Clients per transport (N).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub clients: usize,
    /// Topics (K) the clients are spread over.
    #[arg(short = 'k', long, default_value_t = 100)]
    pub topics: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// The radiovis-server binary to start.
    #[arg(long, default_value = "target/release/radiovis-server")]
    pub server_bin: std::path::PathBuf,
    /// RUST_LOG of the started servers.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Messages published to every topic after the memory is read, to measure the
    /// fan-out latency to every client (0: memory only).
    #[arg(short = 'm', long, default_value_t = 10)]
    pub messages: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// STOMP, long-poll and STOMP-over-WebSocket clients follow only `<topic>/text`
    /// (how this was measured before 2026-12-01). By default every client follows
    /// one station's text and image, as radios and players do; EBU player and SSE
    /// clients always do.
    #[arg(long)]
    pub text_only: bool,
    /// Measure only these transports (comma-separated); STOMP over TCP, the
    /// baseline of the ratios, is always measured first.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Transport>,
    /// Repeat the whole measurement this many times and print the median of each
    /// ratio (latency on shared cores varies from run to run).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// The transports measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    StompTcp,
    LongPoll,
    Sse,
    EbuWebsocket,
    StompWebsocket,
}

const TRANSPORTS: [Transport; 5] = [
    Transport::StompTcp,
    Transport::LongPoll,
    Transport::Sse,
    Transport::EbuWebsocket,
    Transport::StompWebsocket,
];

const SERVICE: &str = "/topic/dab/4e1/4001/4001/0/web";

#[derive(Debug, Serialize)]
struct Row {
    transport: Transport,
    clients: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_client: f64,
    /// Topics each client follows.
    subscriptions: usize,
    ratio_to_stomp_tcp: f64,
    latency: Option<crate::web_latency::Latency>,
    /// The server's CPU time (user + system) while the messages were delivered, per
    /// delivery (the clients' is not counted).
    cpu_us_per_delivery: Option<f64>,
    /// The clients' CPU time (this process: the clients and the publisher) over the
    /// same phase, per delivery: on shared cores it delays deliveries as the server's
    /// does.
    client_cpu_us_per_delivery: Option<f64>,
}

/// Runs every transport (`--runs` times) and prints a table of each run, then the
/// median of each ratio over the runs.
pub async fn run(a: WebArgs) -> Result<(), String> {
    if a.clients == 0 || a.topics == 0 || a.runs == 0 {
        return Err("--clients, --topics and --runs must be at least 1".into());
    }
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        let rows = measure(&a).await?;
        print_table(&rows);
        runs.push(rows);
    }
    if runs.len() > 1 {
        print_medians(&runs);
    }
    if let Some(path) = &a.json {
        let text = match runs.as_slice() {
            [rows] => serde_json::to_string_pretty(rows),
            _ => serde_json::to_string_pretty(&runs),
        }
        .map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// One run: every transport against the STOMP TCP baseline measured first.
async fn measure(a: &WebArgs) -> Result<Vec<Row>, String> {
    let mut rows: Vec<Row> = Vec::new();
    for transport in TRANSPORTS {
        if transport != Transport::StompTcp && !a.only.is_empty() && !a.only.contains(&transport) {
            continue;
        }
        let http_port = free_port()?;
        let env = vec![
            ("HTTP_PORT".to_owned(), http_port.to_string()),
            // Held long-polls stay held for the whole measurement.
            ("HTTP_POLL_HOLD".to_owned(), "3600".to_owned()),
        ];
        let server = start_server(&run_args(a), ServerKind::Radiovis, &env).await?;
        let pid = server.pid.ok_or("no server pid")?;
        let http = format!("127.0.0.1:{http_port}");
        let stomp = server.addr.to_string();
        let before = sys::rss_kib(pid).map_err(|e| format!("rss: {e}"))?;
        let clients = open_clients(a, transport, &stomp, &http).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = sys::rss_kib(pid).map_err(|e| format!("rss: {e}"))?;
        let per = after.saturating_sub(before) as f64 / a.clients as f64;
        let base = rows.first().map_or(per, |r| r.kib_per_client);
        let opened = clients.len();
        let cpu_before = sys::cpu_micros(pid).map_err(|e| format!("cpu: {e}"))?;
        let me = std::process::id();
        let client_cpu_before = sys::cpu_micros(me).map_err(|e| format!("cpu: {e}"))?;
        let latency = match a.messages {
            0 => None,
            m => Some(
                crate::web_latency::measure(
                    clients,
                    matches!(transport, Transport::LongPoll).then_some(!a.text_only),
                    &stomp,
                    SERVICE,
                    a.topics,
                    m,
                )
                .await?,
            ),
        };
        // The server's CPU time over the latency phase, per message delivered.
        let cpu = sys::cpu_micros(pid).map_err(|e| format!("cpu: {e}"))? - cpu_before;
        let client_cpu = sys::cpu_micros(me).map_err(|e| format!("cpu: {e}"))? - client_cpu_before;
        let per_delivery = |micros: u64| {
            latency
                .as_ref()
                .filter(|l| l.deliveries > 0)
                .map(|l| micros as f64 / l.deliveries as f64)
        };
        let cpu_us_per_delivery = per_delivery(cpu);
        let client_cpu_us_per_delivery = per_delivery(client_cpu);
        rows.push(Row {
            transport,
            clients: opened,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_client: per,
            subscriptions: match transport {
                Transport::Sse | Transport::EbuWebsocket => 2,
                _ if a.text_only => 1,
                _ => 2,
            },
            ratio_to_stomp_tcp: if base > 0.0 { per / base } else { f64::NAN },
            latency,
            cpu_us_per_delivery,
            client_cpu_us_per_delivery,
        });
        drop(server);
    }
    Ok(rows)
}

/// The name of a transport as the tables and JSON write it.
fn name(transport: Transport) -> String {
    serde_json::to_value(transport)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<16} {:>8} {:>12} {:>12} {:>10} {:>8} {:>10} {:>9} {:>9} {:>7} {:>10} {:>10}",
        "transport",
        "clients",
        "rss before",
        "rss after",
        "KiB/client",
        "x tcp",
        "delivered",
        "p50 µs",
        "p99 µs",
        "missing",
        "cpu µs/msg",
        "client µs"
    );
    for r in rows {
        let l = r.latency.as_ref();
        println!(
            "{:<16} {:>8} {:>9} KiB {:>9} KiB {:>10.2} {:>8.2} {:>10} {:>9} {:>9} {:>7} {:>10.1} {:>10.1}",
            name(r.transport),
            r.clients,
            r.rss_before_kib,
            r.rss_after_kib,
            r.kib_per_client,
            r.ratio_to_stomp_tcp,
            l.map_or(0, |l| l.deliveries),
            l.map_or(0, |l| l.p50_us),
            l.map_or(0, |l| l.p99_us),
            l.map_or(0, |l| l.missing),
            r.cpu_us_per_delivery.unwrap_or(f64::NAN),
            r.client_cpu_us_per_delivery.unwrap_or(f64::NAN),
        );
    }
}

/// The median over the runs of each transport's ratios to the STOMP TCP row of the
/// same run: memory, p50 and p99 latency, server CPU per delivery.
fn print_medians(runs: &[Vec<Row>]) {
    println!(
        "median of {} runs, x STOMP TCP of the same run:\n{:<16} {:>8} {:>8} {:>8} {:>8}",
        runs.len(),
        "transport",
        "memory",
        "p50",
        "p99",
        "cpu"
    );
    let median = |mut v: Vec<f64>| -> f64 {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let Some(first) = runs.first() else { return };
    for (i, r) in first.iter().enumerate() {
        let ratio = |f: &dyn Fn(&Row) -> Option<f64>| {
            median(
                runs.iter()
                    .filter_map(|run| Some(f(run.get(i)?)? / f(run.first()?)?))
                    .collect(),
            )
        };
        let latency = |q: fn(&crate::web_latency::Latency) -> u64| {
            move |row: &Row| row.latency.as_ref().map(|l| q(l) as f64)
        };
        println!(
            "{:<16} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name(r.transport),
            ratio(&|row| Some(row.kib_per_client)),
            ratio(&latency(|l| l.p50_us)),
            ratio(&latency(|l| l.p99_us)),
            ratio(&|row| row.cpu_us_per_delivery),
        );
    }
}

fn run_args(a: &WebArgs) -> RunArgs {
    RunArgs {
        subscribers: a.clients,
        topics: a.topics,
        rate: 1.0,
        messages: 0,
        server: ServerKind::Radiovis,
        compare: false,
        server_bin: a.server_bin.clone(),
        directory: None,
        server_log: a.server_log.clone(),
        addr: None,
        pid: None,
        port: 0,
        topic_prefix: SERVICE.to_owned(),
        login: String::new(),
        passcode: String::new(),
        concurrency: a.concurrency,
        connect_timeout: 300,
        settle_ms: 0,
        drain_timeout: 0,
        instances: None,
        json: None,
    }
}

/// Opens N clients of one transport, `concurrency` at a time; each is set up (and,
/// where the protocol confirms it, subscribed) when this returns.
async fn open_clients(
    a: &WebArgs,
    transport: Transport,
    stomp: &str,
    http: &str,
) -> Result<Vec<TcpStream>, String> {
    let gate = std::sync::Arc::new(Semaphore::new(a.concurrency.max(1)));
    let text_only = a.text_only;
    let mut tasks = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let gate = gate.clone();
        let service = format!("{SERVICE}{}", i % a.topics);
        let addr = match transport {
            Transport::StompTcp => stomp.to_owned(),
            _ => http.to_owned(),
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let station = !text_only;
            tokio::time::timeout(
                Duration::from_secs(30),
                open(transport, &addr, &service, station),
            )
            .await
            .map_err(|_| format!("{transport:?} client {i}: set-up timed out"))?
        }));
    }
    let mut out = Vec::with_capacity(a.clients);
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// Opens one client of `service`: its text topic, and its image topic too when
/// `station` (always for EBU and SSE clients).
async fn open(
    transport: Transport,
    addr: &str,
    service: &str,
    station: bool,
) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut topics = vec![format!("{service}/text")];
    if station {
        topics.push(format!("{service}/image"));
    }
    // One SUBSCRIBE per topic, the last with a receipt.
    let subscribes: String = topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let receipt = if i + 1 == topics.len() {
                "receipt:r\n"
            } else {
                ""
            };
            format!("SUBSCRIBE\ndestination:{t}\nid:{i}\nx-ebu-nofastreply:yes\n{receipt}\n\0")
        })
        .collect();
    match transport {
        Transport::StompTcp => {
            let frames = format!("CONNECT\n\n\0{subscribes}");
            write(&mut s, frames.as_bytes()).await?;
            read_until(&mut s, b"RECEIPT").await?;
        }
        Transport::LongPoll => {
            let req = format!(
                "GET {}&last_id=none HTTP/1.1\r\nHost: b\r\n\r\n",
                long_poll_target(service, station)
            );
            write(&mut s, req.as_bytes()).await?;
        }
        Transport::Sse => {
            let path = service.trim_start_matches("/topic/");
            let req = format!("GET /radiodns/push/1.0/{path} HTTP/1.1\r\nHost: b\r\n\r\n");
            write(&mut s, req.as_bytes()).await?;
            read_until(&mut s, b"retry:").await?;
        }
        Transport::EbuWebsocket => {
            write(&mut s, upgrade(service, None).as_bytes()).await?;
            read_until(&mut s, b"HELLO").await?;
        }
        Transport::StompWebsocket => {
            write(&mut s, upgrade("/stomp", Some("v10.stomp")).as_bytes()).await?;
            read_until(&mut s, b"\r\n\r\n").await?;
            write(&mut s, &ws_frame(b"CONNECT\n\n\0")).await?;
            read_until(&mut s, b"CONNECTED").await?;
            write(&mut s, &ws_frame(subscribes.as_bytes())).await?;
            read_until(&mut s, b"RECEIPT").await?;
        }
    }
    Ok(s)
}

/// The long-poll request target (without `last_id`) of a client of `service`.
pub(crate) fn long_poll_target(service: &str, station: bool) -> String {
    let enc = |t: String| t.replace('/', "%2F");
    let mut target = format!(
        "/radiodns/vis/vis.json?topic={}",
        enc(format!("{service}/text"))
    );
    if station {
        target.push_str(&format!("&topic={}", enc(format!("{service}/image"))));
    }
    target
}

fn upgrade(path: &str, protocol: Option<&str>) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A client text frame (masked with a zero key, which leaves the payload as it is).
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

async fn write(s: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    s.write_all(bytes).await.map_err(|e| format!("write: {e}"))
}

/// Reads until `needle` has arrived (bounded to 64 KiB).
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Result<(), String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 64 * 1024 {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before {:?}: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen)
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
    }
    Err("no answer within 64 KiB".into())
}
