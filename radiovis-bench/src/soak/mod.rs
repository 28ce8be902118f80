//! The soak run: a radiovis-server under a steady load with churn for a long time, its
//! RSS, open fds and threads sampled from `/proc`; fails when they grow or when a
//! connected subscriber misses a message. See BENCHMARKS.md ("Soak") and RELIABILITY.md.
//!
//! Loss is judged per subscription: after SUBSCRIBE, `Client::sync` returns once the
//! subscription is in place; if the publisher had then completed `C` messages on the
//! topic, every message from `C + 1` on was written after that point and must arrive, in
//! order and without gaps, until the subscriber leaves (churn) or the run ends (then up
//! to the last message sent). Message `C` may or may not arrive; it is not counted.

mod subs;
mod verdict;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use radiovis::client::Client;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::{load, start_server, sys, RunArgs, ServerKind};
use subs::{churner, subscriber, Shared, SubCtx};
use verdict::{growth, print, verdict, Sample, SoakReport};

/// Soak run: N subscribers over K topics, R messages/s per topic, churn, for a duration.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Seconds of steady state (after all subscribers are connected).
    #[arg(long, default_value_t = 3600)]
    duration: u64,
    /// Subscriber connections (N); subscriber i listens to topic i % K.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: usize,
    /// Topics (K).
    #[arg(short = 'k', long, default_value_t = 10)]
    topics: usize,
    /// Messages per second sent to each topic (R).
    #[arg(short = 'r', long, default_value_t = 1.0)]
    rate: f64,
    /// Percent of the subscribers that disconnect and reconnect (and resubscribe) per
    /// minute, spread evenly over the minute; every other one leaves with DISCONNECT, the
    /// others by closing the socket.
    #[arg(long, default_value_t = 1.0)]
    churn: f64,
    /// Seconds between two samples of the server's RSS, fds and threads.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
    /// Allowed RSS growth (mean of the last 20% of samples over the mean of the 20%-40%
    /// window), percent...
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance_pct: f64,
    /// ... plus this many KiB.
    #[arg(long, default_value_t = 2048)]
    rss_tolerance_kib: u64,
    /// Allowed growth of open fds (same windows), percent...
    #[arg(long, default_value_t = 1.0)]
    fd_tolerance_pct: f64,
    /// ... plus this many fds.
    #[arg(long, default_value_t = 8)]
    fd_tolerance: u64,
    /// The radiovis-server binary to start (standalone, in-process bus).
    #[arg(long, default_value = "target/release/radiovis-server")]
    server_bin: PathBuf,
    /// RUST_LOG of the started server (its logs go to a file in the temp dir).
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Topic k is `<prefix><k>/text`; must be a sub-topic of a channel of the station.
    #[arg(long, default_value = "/topic/dab/4e1/4001/4001/0/soak")]
    topic_prefix: String,
    /// Publisher login.
    #[arg(long, default_value = "1.radio1")]
    login: String,
    /// Publisher passcode.
    #[arg(long, default_value = "secret1")]
    passcode: String,
    /// Connections being set up at once in the connect phase.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds the connect phase, and each later reconnection, may take.
    #[arg(long, default_value_t = 300)]
    connect_timeout: u64,
    /// Seconds to wait at the end for the last messages to reach every subscriber.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Write all figures (with the series) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the soak; an `Err` (non-zero exit) when a figure grew beyond its tolerance, a
/// message was lost or a client was refused or dropped.
pub async fn run(a: SoakArgs) -> Result<(), String> {
    if a.topics == 0 || a.subscribers == 0 || a.rate <= 0.0 || a.sample_secs == 0 {
        return Err("--subscribers, --topics, --rate and --sample-secs must be > 0".into());
    }
    if a.duration < 5 * a.sample_secs {
        return Err("--duration must cover at least 5 samples".into());
    }
    let server = start_server(&run_args(&a), ServerKind::Radiovis, &[]).await?;
    let pid = server.pid.ok_or("the started server has no pid")?;
    let shared = Arc::new(Shared::new(a.topics));
    eprintln!(
        "[soak] N={} K={} R={}/s per topic churn={}%/min for {}s on {} (pid {pid})",
        a.subscribers, a.topics, a.rate, a.churn, a.duration, server.addr
    );
    let pub_params = load::PubParams {
        addr: server.addr,
        login: a.login.clone(),
        passcode: a.passcode.clone(),
        topics: a.topics,
        prefix: a.topic_prefix.clone(),
        messages: 0,
        rate: a.rate,
        clock: shared.clock,
    };
    let publisher = load::connect_publisher(&pub_params).await?;

    // Connect phase: every subscriber connected and subscribed once.
    let ctx = Arc::new(SubCtx {
        addr: server.addr,
        prefix: a.topic_prefix.clone(),
        topics: a.topics,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        permits: Semaphore::new(a.concurrency.max(1)),
        shared: shared.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(a.subscribers);
    let churn: Vec<Arc<Notify>> = (0..a.subscribers)
        .map(|_| Arc::new(Notify::new()))
        .collect();
    let handles: Vec<_> = churn
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (ctx, n, stop, ready) = (ctx.clone(), n.clone(), stop_rx.clone(), ready_tx.clone());
            tokio::spawn(subscriber(i, ctx, n, stop, ready))
        })
        .collect();
    drop(ready_tx);
    let t0 = Instant::now();
    for done in 1..=a.subscribers {
        if ready_rx.recv().await.is_none() {
            break;
        }
        if done % 5000 == 0 {
            eprintln!("  {done} subscribers set up");
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  connected {} in {connect_secs:.1}s ({} failures)",
        shared.connected.load(Ordering::Relaxed),
        shared.connect_failures.load(Ordering::Relaxed)
    );

    // Steady state: publisher, churn and samples for the duration.
    let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
    let pub_task = tokio::spawn(publish(publisher, pub_params, shared.clone(), pub_stop_rx));
    let churn_task = tokio::spawn(churner(churn, a.churn));
    let begin = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(a.sample_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while begin.elapsed() < Duration::from_secs(a.duration) {
        tick.tick().await;
        let s = sample(pid, begin, &shared)?;
        eprintln!(
            "  t={:>6.0}s rss={} KiB fds={} threads={} connected={} received={} lost={}",
            s.t,
            s.rss_kib,
            s.fds,
            s.threads,
            s.connected,
            s.received,
            shared.lost.load(Ordering::Relaxed)
        );
        samples.push(s);
        if pub_task.is_finished() {
            break;
        }
    }
    churn_task.abort();
    let _ = pub_stop_tx.send(true);
    let published = match pub_task.await {
        Ok(r) => r?,
        Err(e) => return Err(format!("publisher task: {e}")),
    };
    // The publisher is done: subscribers drain up to the last message and stop.
    let _ = stop_tx.send(true);
    let join = async {
        for h in handles {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(ctx.drain_timeout + Duration::from_secs(15), join)
        .await
        .is_err()
    {
        shared.note("subscribers did not stop after the drain".into());
    }
    drop(server);

    let report = make_report(&a, connect_secs, published, &shared, samples);
    print(&report);
    if let Some(path) = &a.json {
        crate::write_json(
            path,
            &serde_json::to_value(&report).map_err(|e| e.to_string())?,
        )?;
    }
    verdict(&report)
}

/// The `RunArgs` that `start_server` reads (server binary, log level; a fresh port and
/// the built-in directory).
fn run_args(a: &SoakArgs) -> RunArgs {
    RunArgs {
        subscribers: a.subscribers,
        topics: a.topics,
        rate: a.rate,
        messages: 0,
        server: ServerKind::Radiovis,
        compare: false,
        server_bin: a.server_bin.clone(),
        directory: None,
        server_log: a.server_log.clone(),
        addr: None,
        pid: None,
        port: 0,
        topic_prefix: a.topic_prefix.clone(),
        login: a.login.clone(),
        passcode: a.passcode.clone(),
        concurrency: a.concurrency,
        connect_timeout: a.connect_timeout,
        settle_ms: 0,
        drain_timeout: a.drain_timeout,
        instances: None,
        json: None,
    }
}

fn sample(pid: u32, begin: Instant, sh: &Shared) -> Result<Sample, String> {
    let err = |e: std::io::Error| format!("server process {pid}: {e} (did it exit?)");
    Ok(Sample {
        t: begin.elapsed().as_secs_f64(),
        rss_kib: sys::rss_kib(pid).map_err(err)?,
        fds: sys::fd_count(pid).map_err(err)?,
        threads: sys::threads(pid).map_err(err)?,
        connected: sh.connected.load(Ordering::Relaxed),
        received: sh.received.load(Ordering::Relaxed),
    })
}

/// Sends one message to each topic per tick until stopped; returns the messages sent.
async fn publish(
    mut c: Client,
    p: load::PubParams,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / p.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dests: Vec<String> = (0..p.topics).map(|k| load::topic(&p.prefix, k)).collect();
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        for (k, dest) in dests.iter().enumerate() {
            let seq = sh.published[k].load(Ordering::Relaxed);
            let body = format!("TEXT seq={seq} t={}", p.clock.now_ns());
            c.send(dest, body, &[])
                .await
                .map_err(|e| format!("publisher send to {dest}: {e}"))?;
            // Counted only once written: subscribers rely on it (see the module doc).
            sh.published[k].store(seq + 1, Ordering::Release);
            sent += 1;
        }
    }
    // The server has read every SEND once this RECEIPT is back.
    match tokio::time::timeout(Duration::from_secs(10), c.sync()).await {
        Ok(Ok(())) => Ok(sent),
        Ok(Err(e)) => Err(format!("publisher final receipt: {e}")),
        Err(_) => Err("publisher final receipt timed out".into()),
    }
}

fn make_report(
    a: &SoakArgs,
    connect_secs: f64,
    published: u64,
    sh: &Shared,
    samples: Vec<Sample>,
) -> SoakReport {
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64).collect();
    let fds: Vec<f64> = samples.iter().map(|s| s.fds as f64).collect();
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    SoakReport {
        duration_secs: a.duration,
        subscribers: a.subscribers,
        topics: a.topics,
        rate_per_topic: a.rate,
        churn_pct_per_min: a.churn,
        connect_secs,
        published,
        received: load(&sh.received),
        lost: load(&sh.lost),
        duplicates_or_out_of_order: load(&sh.duplicates),
        reconnects: load(&sh.reconnects),
        connect_failures: load(&sh.connect_failures),
        unexpected_closes: load(&sh.unexpected_closes),
        latency_us_max: load(&sh.latency_us_max),
        first_error: sh.first_error.lock().ok().and_then(|e| e.clone()),
        rss: growth(&rss, a.rss_tolerance_pct, a.rss_tolerance_kib as f64),
        fds: growth(&fds, a.fd_tolerance_pct, a.fd_tolerance as f64),
        threads_min: samples.iter().map(|s| s.threads).min().unwrap_or(0),
        threads_max: samples.iter().map(|s| s.threads).max().unwrap_or(0),
        samples,
    }
}
