//! Scale-out mode (`--instances I`): I radiovis-server processes on one RabbitMQ (a
//! fanout exchange of their own), N subscribers per instance.
//!
//! The per-process fd limit keeps one loader process below ~20,000 connections, so the
//! subscribers of instance i live in a sub-loader process of their own (this binary,
//! hidden subcommand `sub-loader`). Bodies carry `t=<Unix nanoseconds>` (the clock the
//! processes share). Protocol, one JSON object per stdout line of a sub-loader:
//! `{"type":"ready",…}` once its subscribers are set up, `{"type":"complete"}` once each
//! has all its messages, `{"type":"result",…}` (counts and the latency histogram as
//! `[value, count]` pairs) after the parent writes `stop` on its stdin (or closes it).
//!
//! Long file: one benchmark mode end to end (start the instances, spawn the
//! sub-loaders, publish, merge their results); split, its steps would only be read
//! together.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::{load, start_server, sys, RunArgs, ServerKind};

/// Arguments of the hidden `sub-loader` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SubLoaderArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(short = 'n', long)]
    pub subscribers: usize,
    #[arg(short = 'k', long)]
    pub topics: usize,
    #[arg(short = 'm', long)]
    pub messages: u64,
    #[arg(long)]
    pub topic_prefix: String,
    #[arg(long)]
    pub concurrency: usize,
    #[arg(long)]
    pub connect_timeout: u64,
    /// Exit after this many seconds whatever happens.
    #[arg(long, default_value_t = 900)]
    pub max_secs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Ready {
        connected: usize,
        failed: usize,
        first_error: Option<String>,
        connect_secs: f64,
    },
    Complete,
    Result(SubTotals),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SubTotals {
    expected: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    ended_early: usize,
    first_error: Option<String>,
    /// Latency histogram (µs): `[highest equivalent value, count]` per bucket.
    latency_us: Vec<(u64, u64)>,
    /// Connection setup histogram (µs), same encoding.
    setup_us: Vec<(u64, u64)>,
}

fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn emit(line: &Line) {
    use std::io::Write;
    if let Ok(s) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// The sub-loader process: N subscribers to one instance.
pub async fn sub_loader(a: SubLoaderArgs) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);
    let t0 = Instant::now();
    let mut subs = load::spawn_subscribers(&load::SubParams {
        addr: a.addr,
        n: a.subscribers,
        topics: a.topics,
        prefix: a.topic_prefix.clone(),
        messages: a.messages,
        concurrency: a.concurrency,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        clock: load::Clock::Unix,
    });
    let phase_deadline = t0 + Duration::from_secs(a.connect_timeout + 5);
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    while connected + failed < a.subscribers {
        let left = phase_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, subs.ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    emit(&Line::Ready {
        connected,
        failed,
        first_error,
        connect_secs: t0.elapsed().as_secs_f64(),
    });

    // `stop` on stdin, or its end (the parent is gone), ends the run.
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.trim() == "stop" {
                break;
            }
        }
        let _ = stop_tx.send(()).await;
    });
    let mut reported_complete = false;
    loop {
        if !reported_complete && subs.complete.load(Ordering::Relaxed) >= connected {
            emit(&Line::Complete);
            reported_complete = true;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::select! {
            _ = stop_rx.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let _ = subs.stop.send(true);

    let c = load::collect(&mut subs).await?;
    let mut t = SubTotals {
        expected: c.expected,
        received: c.received,
        duplicates: c.duplicates,
        out_of_order: c.out_of_order,
        ended_early: c.ended_early,
        first_error: c.first_error,
        ..SubTotals::default()
    };
    let (hist, setup) = (c.latency, c.setup);
    t.latency_us = buckets(&hist);
    t.setup_us = buckets(&setup);
    emit(&Line::Result(t));
    Ok(())
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct InstanceReport {
    addr: String,
    pid: Option<u32>,
    connected: usize,
    connect_failures: usize,
    first_connect_error: Option<String>,
    connect_secs: f64,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    subscribers_ended_early: usize,
    first_subscriber_error: Option<String>,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
    rss_kib_before: Option<u64>,
    rss_kib_connected: Option<u64>,
    rss_kib_end: Option<u64>,
    rss_bytes_per_connection: Option<f64>,
    cpu_us_publish_phase: Option<u64>,
    cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ScaleReport {
    instances: usize,
    subscribers_per_instance: usize,
    topics: usize,
    rate: f64,
    messages: u64,
    exchange: String,
    exchange_deleted: bool,
    loadavg_start: Option<String>,
    loadavg_end: Option<String>,
    connected: usize,
    connect_failures: usize,
    connect_secs: f64,
    setup_ms_p50: u64,
    setup_ms_p99: u64,
    setup_ms_max: u64,
    publish_secs: f64,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    subscribers_ended_early: usize,
    latency_us_p50: u64,
    latency_us_p90: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
    deliveries_per_sec: f64,
    rss_kib_connected_sum: u64,
    rss_kib_end_sum: u64,
    rss_bytes_per_connection_mean: Option<f64>,
    cpu_us_publish_phase_sum: u64,
    cpu_us_per_delivery: Option<f64>,
    per_instance: Vec<InstanceReport>,
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Connects one probe subscriber per instance, then publishes `TEXT warmup` on
/// instance 0 every 250 ms until every probe got one: every instance's bus consumer is
/// up. Bounded by `within`.
async fn warm_up(
    addrs: &[SocketAddr],
    publisher: &mut Client,
    prefix: &str,
    within: Duration,
) -> Result<(), String> {
    let dest = format!("{prefix}warmup/text");
    let mut probes = Vec::new();
    for a in addrs {
        let mut c = Client::connect(*a, &[])
            .await
            .map_err(|e| format!("warm-up probe {a}: {e}"))?;
        let sub = Frame::new(Command::Subscribe)
            .header("destination", dest.as_str())
            .header("id", "w")
            .header("x-ebu-nofastreply", "yes");
        c.send_with_receipt(sub)
            .await
            .map_err(|e| format!("warm-up probe {a}: {e}"))?;
        probes.push(Some(c));
    }
    let deadline = Instant::now() + within;
    tokio::time::sleep(Duration::from_millis(500)).await;
    loop {
        publisher
            .send(&dest, "TEXT warmup", &[])
            .await
            .map_err(|e| format!("warm-up send: {e}"))?;
        for slot in probes.iter_mut() {
            if let Some(c) = slot {
                if let Ok(Some(f)) = c.next_frame_within(Duration::from_millis(250)).await {
                    if f.command == Command::Message {
                        *slot = None;
                    }
                }
            }
        }
        let left = probes.iter().filter(|p| p.is_some()).count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{left} of {} instances did not relay a message within {within:?}",
                addrs.len()
            ));
        }
    }
}

/// Best effort: deletes the benchmark's exchange on the broker.
async fn delete_exchange(exchange: &str) -> Result<(), String> {
    use lapin::options::ExchangeDeleteOptions;
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

/// The parent of a scale-out run.
pub async fn run(args: &RunArgs, instances: usize) -> Result<ScaleReport, String> {
    let exchange = format!("radiovis-bench-{}", uuid::Uuid::new_v4());
    let env: Vec<(String, String)> = [
        ("RABBITMQ_HOST", "127.0.0.1"),
        ("RABBITMQ_EXCHANGE", exchange.as_str()),
        ("RADIOVIS_WATCHDOG", "off"),
        ("MONITORING_ENABLED", "False"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let result = run_inner(args, instances, &exchange, &env).await;
    // The servers are gone (dropped in run_inner): delete the exchange.
    let deleted =
        match tokio::time::timeout(Duration::from_secs(10), delete_exchange(&exchange)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                eprintln!("  could not delete exchange {exchange}: {e}");
                false
            }
            Err(_) => {
                eprintln!("  could not delete exchange {exchange}: timed out");
                false
            }
        };
    let mut r = result?;
    r.exchange_deleted = deleted;
    Ok(r)
}

async fn run_inner(
    args: &RunArgs,
    instances: usize,
    exchange: &str,
    env: &[(String, String)],
) -> Result<ScaleReport, String> {
    let mut r = ScaleReport {
        instances,
        subscribers_per_instance: args.subscribers,
        topics: args.topics,
        rate: args.rate,
        messages: args.messages,
        exchange: exchange.to_string(),
        loadavg_start: loadavg(),
        ..ScaleReport::default()
    };
    let mut servers = Vec::with_capacity(instances);
    for _ in 0..instances {
        servers.push(start_server(args, ServerKind::Radiovis, env).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let pids: Vec<Option<u32>> = servers.iter().map(|s| s.pid).collect();
    eprintln!(
        "[scale-out] I={instances} N={} per instance K={} R={} M={} exchange {exchange}, instances on {:?}",
        args.subscribers, args.topics, args.rate, args.messages, addrs
    );
    let rss = |i: usize| pids[i].and_then(|p| sys::rss_kib(p).ok());
    let cpu = |i: usize| pids[i].and_then(|p| sys::cpu_micros(p).ok());
    let mut per: Vec<InstanceReport> = (0..instances)
        .map(|i| InstanceReport {
            addr: addrs[i].to_string(),
            pid: pids[i],
            ..InstanceReport::default()
        })
        .collect();

    let pub_params = load::PubParams {
        addr: addrs[0],
        login: args.login.clone(),
        passcode: args.passcode.clone(),
        topics: args.topics,
        prefix: args.topic_prefix.clone(),
        messages: args.messages,
        rate: args.rate,
        clock: load::Clock::Unix,
    };
    // The bus may still be connecting: retry the publisher's probe for a while.
    let mut publisher = None;
    let mut last_err = String::new();
    for _ in 0..20 {
        match load::connect_publisher(&pub_params).await {
            Ok(c) => {
                publisher = Some(c);
                break;
            }
            Err(e) => {
                last_err = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut publisher = publisher.ok_or(last_err)?;
    warm_up(
        &addrs,
        &mut publisher,
        &args.topic_prefix,
        Duration::from_secs(20),
    )
    .await?;
    eprintln!("  every instance relays messages");
    for (i, p) in per.iter_mut().enumerate() {
        p.rss_kib_before = rss(i);
    }

    // One sub-loader per instance.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let (line_tx, mut line_rx) = mpsc::channel::<(usize, Line)>(4 * instances + 4);
    let mut children = Vec::with_capacity(instances);
    let mut stdins = Vec::with_capacity(instances);
    for (i, addr) in addrs.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("sub-loader")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("-n")
            .arg(args.subscribers.to_string())
            .arg("-k")
            .arg(args.topics.to_string())
            .arg("-m")
            .arg(args.messages.to_string())
            .arg("--topic-prefix")
            .arg(&args.topic_prefix)
            .arg("--concurrency")
            .arg(args.concurrency.to_string())
            .arg("--connect-timeout")
            .arg(args.connect_timeout.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start sub-loader {i}: {e}"))?;
        let stdout = child.stdout.take().ok_or("sub-loader stdout")?;
        stdins.push(child.stdin.take());
        children.push(child);
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Line>(&l) {
                    Ok(line) => {
                        if tx.send((i, line)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("  sub-loader {i}: unexpected line ({e}): {l}"),
                }
            }
        });
    }
    drop(line_tx);

    let t0 = Instant::now();
    let mut setup = load::new_hist()?;
    let mut hist = load::new_hist()?;
    let mut hists: Vec<Histogram<u64>> = (0..instances)
        .map(|_| load::new_hist())
        .collect::<Result<_, _>>()?;
    let mut ready = 0;
    let mut complete = 0;
    let mut results = 0;
    let mut handle = |i: usize, line: Line, per: &mut [InstanceReport]| -> (usize, usize, usize) {
        match line {
            Line::Ready {
                connected,
                failed,
                first_error,
                connect_secs,
            } => {
                per[i].connected = connected;
                per[i].connect_failures = failed;
                per[i].first_connect_error = first_error;
                per[i].connect_secs = connect_secs;
                eprintln!(
                    "  instance {i}: {connected} of {} connected in {connect_secs:.2}s ({failed} failed)",
                    args.subscribers
                );
                (1, 0, 0)
            }
            Line::Complete => (0, 1, 0),
            Line::Result(t) => {
                let p = &mut per[i];
                p.expected = t.expected;
                p.received = t.received;
                p.lost = t.expected.saturating_sub(t.received);
                p.duplicates = t.duplicates;
                p.out_of_order = t.out_of_order;
                p.subscribers_ended_early = t.ended_early;
                p.first_subscriber_error = t.first_error;
                for (v, c) in t.latency_us {
                    hists[i].saturating_record_n(v, c);
                }
                for (v, c) in t.setup_us {
                    setup.saturating_record_n(v, c);
                }
                (0, 0, 1)
            }
        }
    };

    let connect_deadline = t0 + Duration::from_secs(args.connect_timeout + 30);
    while ready < instances {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, line_rx.recv()).await {
            Ok(Some((i, line))) => {
                let (a, b, c) = handle(i, line, &mut per);
                ready += a;
                complete += b;
                results += c;
            }
            Ok(None) | Err(_) => break,
        }
    }
    r.connect_secs = t0.elapsed().as_secs_f64();
    if ready < instances {
        return Err(format!(
            "only {ready} of {instances} sub-loaders set up their subscribers"
        ));
    }
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    for (i, p) in per.iter_mut().enumerate() {
        p.rss_kib_connected = rss(i);
    }

    // Publish on instance 0.
    let cpu_before: Vec<Option<u64>> = (0..instances).map(cpu).collect();
    r.publish_secs = load::publish(publisher, &pub_params).await?.as_secs_f64();
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while complete < instances {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, line_rx.recv()).await {
            Ok(Some((i, line))) => {
                let (_, b, c) = handle(i, line, &mut per);
                complete += b;
                results += c;
            }
            Ok(None) | Err(_) => break,
        }
    }
    for (i, p) in per.iter_mut().enumerate() {
        if let (Some(a), Some(b)) = (cpu_before[i], cpu(i)) {
            p.cpu_us_publish_phase = Some(b.saturating_sub(a));
        }
        p.rss_kib_end = rss(i);
    }

    // Stop the sub-loaders and collect their results.
    for s in stdins.iter_mut().flatten() {
        let _ = s.write_all(b"stop\n").await;
        let _ = s.flush().await;
    }
    let result_deadline = Instant::now() + Duration::from_secs(60);
    while results < instances {
        let left = result_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, line_rx.recv()).await {
            Ok(Some((i, line))) => {
                results += handle(i, line, &mut per).2;
            }
            Ok(None) | Err(_) => break,
        }
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        let _ = c.kill().await;
    }
    drop(servers);
    if results < instances {
        return Err(format!(
            "only {results} of {instances} sub-loaders reported results"
        ));
    }

    for (p, h) in per.iter_mut().zip(&hists) {
        p.latency_us_p50 = h.value_at_quantile(0.5);
        p.latency_us_p99 = h.value_at_quantile(0.99);
        p.latency_us_max = h.max();
        if let (Some(a), Some(b)) = (p.rss_kib_before, p.rss_kib_connected) {
            if p.connected > 0 {
                p.rss_bytes_per_connection =
                    Some((b as f64 - a as f64) * 1024.0 / p.connected as f64);
            }
        }
        if let Some(c) = p.cpu_us_publish_phase {
            if p.received > 0 {
                p.cpu_us_per_delivery = Some(c as f64 / p.received as f64);
            }
        }
        hist.add(h).map_err(|e| format!("histogram: {e}"))?;
        r.connected += p.connected;
        r.connect_failures += p.connect_failures;
        r.expected += p.expected;
        r.received += p.received;
        r.duplicates += p.duplicates;
        r.out_of_order += p.out_of_order;
        r.subscribers_ended_early += p.subscribers_ended_early;
        r.rss_kib_connected_sum += p.rss_kib_connected.unwrap_or(0);
        r.rss_kib_end_sum += p.rss_kib_end.unwrap_or(0);
        r.cpu_us_publish_phase_sum += p.cpu_us_publish_phase.unwrap_or(0);
    }
    r.lost = r.expected.saturating_sub(r.received);
    r.setup_ms_p50 = setup.value_at_quantile(0.5) / 1000;
    r.setup_ms_p99 = setup.value_at_quantile(0.99) / 1000;
    r.setup_ms_max = setup.max() / 1000;
    r.latency_us_p50 = hist.value_at_quantile(0.5);
    r.latency_us_p90 = hist.value_at_quantile(0.9);
    r.latency_us_p99 = hist.value_at_quantile(0.99);
    r.latency_us_p999 = hist.value_at_quantile(0.999);
    r.latency_us_max = hist.max();
    if r.publish_secs > 0.0 {
        r.deliveries_per_sec = r.received as f64 / r.publish_secs;
    }
    let per_conn: Vec<f64> = per
        .iter()
        .filter_map(|p| p.rss_bytes_per_connection)
        .collect();
    if !per_conn.is_empty() {
        r.rss_bytes_per_connection_mean =
            Some(per_conn.iter().sum::<f64>() / per_conn.len() as f64);
    }
    if r.received > 0 {
        r.cpu_us_per_delivery = Some(r.cpu_us_publish_phase_sum as f64 / r.received as f64);
    }
    r.per_instance = per;
    r.loadavg_end = loadavg();
    Ok(r)
}

pub fn print(r: &ScaleReport) {
    println!(
        "== scale-out: {} instances x N={} K={} R={} M={} (exchange {}, deleted: {})",
        r.instances,
        r.subscribers_per_instance,
        r.topics,
        r.rate,
        r.messages,
        r.exchange,
        r.exchange_deleted
    );
    println!(
        "load average start {} / end {}",
        r.loadavg_start.as_deref().unwrap_or("-"),
        r.loadavg_end.as_deref().unwrap_or("-")
    );
    println!(
        "connected {} of {} ({} failed) in {:.2}s, setup p50/p99/max {}/{}/{} ms",
        r.connected,
        r.instances * r.subscribers_per_instance,
        r.connect_failures,
        r.connect_secs,
        r.setup_ms_p50,
        r.setup_ms_p99,
        r.setup_ms_max
    );
    println!(
        "expected {} received {} lost {} duplicates {} out of order {} ended early {}",
        r.expected, r.received, r.lost, r.duplicates, r.out_of_order, r.subscribers_ended_early
    );
    println!(
        "latency us p50 {} p90 {} p99 {} p99.9 {} max {}",
        r.latency_us_p50, r.latency_us_p90, r.latency_us_p99, r.latency_us_p999, r.latency_us_max
    );
    println!(
        "publish {:.2}s, deliveries/s {:.0}, RSS connected sum {} KiB, end sum {} KiB, RSS/conn mean {}, CPU publish sum {} us, CPU/delivery {}",
        r.publish_secs,
        r.deliveries_per_sec,
        r.rss_kib_connected_sum,
        r.rss_kib_end_sum,
        r.rss_bytes_per_connection_mean.map_or("-".into(), |v| format!("{v:.0} B")),
        r.cpu_us_publish_phase_sum,
        r.cpu_us_per_delivery.map_or("-".into(), |v| format!("{v:.2} us")),
    );
    println!(
        "{:>3} {:>9} {:>9} {:>9} {:>6} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "i", "connected", "expected", "received", "lost", "dup", "ooo", "p50 us", "p99 us", "max us",
        "RSS0 KiB", "RSSc KiB", "RSSe KiB", "CPU us", "B/conn"
    );
    for (i, p) in r.per_instance.iter().enumerate() {
        let o = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "{:>3} {:>9} {:>9} {:>9} {:>6} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            i,
            p.connected,
            p.expected,
            p.received,
            p.lost,
            p.duplicates,
            p.out_of_order,
            p.latency_us_p50,
            p.latency_us_p99,
            p.latency_us_max,
            o(p.rss_kib_before),
            o(p.rss_kib_connected),
            o(p.rss_kib_end),
            o(p.cpu_us_publish_phase),
            p.rss_bytes_per_connection.map_or("-".into(), |v| format!("{v:.0}")),
        );
        if let Some(e) = &p.first_connect_error {
            println!("    first connect error: {e}");
        }
        if let Some(e) = &p.first_subscriber_error {
            println!("    first subscriber error: {e}");
        }
    }
}
