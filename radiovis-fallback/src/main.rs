//! `radiovis-fallback`: configuration -> backends -> [`Watchdog`], under a leader lock.
//!
//! Consumes the queue `FB_QUEUE` bound to the servers' exchange (adopted as it is when
//! it exists, e.g. declared by the original Python watchdog; see
//! docs/protocol.md#rabbitmq-queues), logs every message to the PlugIt API and sends
//! each quiet channel's default slide. Two (or more) may run: the one holding the
//! broker-side lock is active, the others stand by and take over within
//! `RADIOVIS_FALLBACK_TAKEOVER` seconds after it dies; messages wait in the queue
//! meanwhile.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use radiovis::backend::rabbitmq::{LeaderLock, QueueKind, RabbitBus};
use radiovis::config::{
    ConfigError, DirectoryArgs, DirectoryBackends, FallbackArgs, FallbackHttpArgs, LogArgs,
    RabbitArgs,
};
use radiovis::http::ops_respond::ReadyReport;
use radiovis::http::ProcessRouter;
use radiovis::metrics::{Metrics, WatchdogCollector};
use radiovis::watchdog::Watchdog;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// RadioVis fallback watchdog. Every option can also be set through the environment
/// variable named in brackets (the names of the original Python watchdog). RabbitMQ
/// is required (RABBITMQ_HOST defaults to 127.0.0.1, as in the original).
#[derive(Debug, Parser)]
#[command(name = "radiovis-fallback", version, about, after_help = radiovis::config::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
    #[command(flatten)]
    fallback: FallbackArgs,
    #[command(flatten)]
    http: FallbackHttpArgs,
    /// Name of the broker-side lock (an exclusive queue) that elects the active
    /// watchdog [default: <FB_QUEUE>.lock].
    #[arg(
        long,
        env = "RADIOVIS_FALLBACK_LOCK",
        value_name = "RADIOVIS_FALLBACK_LOCK"
    )]
    lock: Option<String>,
    /// Seconds between a standby's attempts to take over.
    #[arg(
        long,
        env = "RADIOVIS_FALLBACK_TAKEOVER",
        value_name = "RADIOVIS_FALLBACK_TAKEOVER",
        default_value_t = 2.0
    )]
    takeover: f64,
}

/// How long the log store may fail (down, or refusing every entry) before the active
/// watchdog hands its lock over.
const LOG_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(300);

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, matches) = radiovis::config::parse_cli::<Cli>();
    radiovis::config::init_logging(cli.rabbit.rabbitmq_debug, cli.log.log_format);
    radiovis::config::log_sighup("the watchdog has nothing to reload");
    radiovis::config::log_settings(&Cli::command(), &matches);
    radiovis::config::exit_code("radiovis-fallback", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut watchdog_config = cli.fallback.watchdog_config()?;
    // A leader whose log store has taken nothing for this long stops, releases its lock
    // and stands for election again, so that a watchdog that can log takes over (the
    // entries it could not write are redelivered to it).
    watchdog_config.log_give_up = Some(LOG_GIVE_UP);
    let takeover = radiovis::config::secs("RADIOVIS_FALLBACK_TAKEOVER", cli.takeover)?;
    let queue = cli.fallback.fb_queue.clone();
    let mut rabbit = cli
        .rabbit
        .rabbit_config(QueueKind::Durable(queue.clone()))?;
    // The log buffer holds what the broker may have in flight unacknowledged.
    rabbit.prefetch = 1000;
    rabbit.durable_queue = cli.fallback.fb_queue_durable;
    tracing::info!(host = %rabbit.host, port = rabbit.port, exchange = %rabbit.exchange, queue = %queue, durable_if_created = rabbit.durable_queue, "message bus: rabbitmq (shared queue FB_QUEUE)");
    let bus = Arc::new(RabbitBus::connect(rabbit.clone()).await?);

    // Every directory and cache call is timed for /metrics; the watchdog's counters
    // live in its configuration, shared by every term as leader.
    let metrics = Metrics::new();
    metrics.register(WatchdogCollector(watchdog_config.stats.clone()));
    let DirectoryBackends {
        directory,
        log,
        cache,
    } = cli.directory.backends()?.timed(&metrics);
    if cli.directory.radiodns_api_url.is_none() {
        tracing::warn!("message log kept in memory only: set RADIODNS_API_URL for PlugIt");
    }

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            radiovis::config::shutdown_signal().await;
            shutdown.cancel();
        }
    });

    // /metrics, /healthz, /readyz on FB_HTTP_IP / FB_HTTP_PORT (docs/protocol.md#health):
    // ready while the broker connection is up, active or standby.
    let active = Arc::new(AtomicBool::new(false));
    let ready = {
        let bus = bus.clone();
        let active = active.clone();
        Arc::new(move || {
            let connected = bus.is_connected();
            let mut checks = serde_json::Map::new();
            checks.insert(
                "bus".into(),
                json!(if connected {
                    "connected"
                } else {
                    "disconnected"
                }),
            );
            checks.insert(
                "role".into(),
                json!(if active.load(Ordering::Relaxed) {
                    "active"
                } else {
                    "standby"
                }),
            );
            ReadyReport {
                ready: connected,
                reason: (!connected).then(|| "message bus not connected".to_owned()),
                checks,
            }
        })
    };
    let router = ProcessRouter::new(metrics, ready);
    let mut http_tasks = Vec::new();
    for addr in cli.http.addresses() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ConfigError::ListenOn {
                addr,
                vars: "FB_HTTP_IP/FB_HTTP_PORT; FB_HTTP_PORT=off disables it",
                source,
            })?;
        http_tasks.push(tokio::spawn(radiovis::http::serve(
            listener,
            router.clone(),
            shutdown.clone(),
        )));
    }
    if http_tasks.is_empty() {
        tracing::info!("operations listener off (FB_HTTP_PORT=off)");
    }

    let lock_name = cli.lock.clone().unwrap_or_else(|| format!("{queue}.lock"));
    loop {
        let Some(lock) = LeaderLock::acquire(&rabbit, &lock_name, takeover, &shutdown).await else {
            break;
        };
        active.store(true, Ordering::Relaxed);
        let watchdog = Watchdog::new(
            bus.clone(),
            directory.clone(),
            cache.clone(),
            log.clone(),
            watchdog_config.clone(),
        );
        let stop = shutdown.child_token();
        let mut run = tokio::spawn(watchdog.run(stop.clone()));
        tokio::select! {
            r = &mut run => {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "watchdog stopped; restarting"),
                    Err(e) => tracing::error!(error = %e, "watchdog task failed; restarting"),
                }
                lock.release().await;
                if shutdown.is_cancelled() {
                    break;
                }
                tokio::time::sleep(takeover).await;
            }
            _ = lock.lost() => {
                tracing::warn!("leadership lost: stopping the watchdog until it is regained");
                stop.cancel();
                let _ = run.await;
            }
        }
        active.store(false, Ordering::Relaxed);
    }
    shutdown.cancel();
    for task in http_tasks {
        let _ = task.await;
    }
    bus.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
