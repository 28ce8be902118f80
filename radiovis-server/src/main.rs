//! `radiovis-server`: configuration -> backends -> [`StompHub`].
//!
//! With no RabbitMQ, PlugIt or memcached configured it runs standalone on the
//! in-process backends and the directory file (`--directory`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use radiovis::backend::rabbitmq::RabbitBus;
use radiovis::config::{
    listen, ConfigError, DirectoryArgs, DirectoryBackends, FallbackArgs, HttpArgs, HubArgs,
    LogArgs, MonitoringArgs, OpsArgs, RabbitArgs, StompArgs, TlsArgs,
};
use radiovis::http::ops::Ops;
use radiovis::http::RadiovisRouter;
use radiovis::metrics::{Metrics, WatchdogCollector};
use radiovis::monitoring::Monitor;
use radiovis::watchdog::Watchdog;
use radiovis::StompHub;

/// RadioVis STOMP server. Every option can also be set through the environment
/// variable named in brackets (the names of the original Python server).
#[derive(Debug, Parser)]
#[command(name = "radiovis-server", version, about, after_help = radiovis::config::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    stomp: StompArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
    #[command(flatten)]
    hub: HubArgs,
    #[command(flatten)]
    monitoring: MonitoringArgs,
    /// Run the fallback watchdog in this process: `auto` does so when standalone (no
    /// RabbitMQ, no PlugIt), where no separate radiovis-fallback can see the messages.
    #[arg(long, env = "RADIOVIS_WATCHDOG", value_name = "RADIOVIS_WATCHDOG", default_value = "auto", value_parser = ["auto", "on", "off"])]
    watchdog: String,
    #[command(flatten)]
    fallback: FallbackArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, matches) = radiovis::config::parse_cli::<Cli>();
    radiovis::config::init_logging(cli.rabbit.rabbitmq_debug, cli.log.log_format);
    radiovis::config::log_settings(&Cli::command(), &matches);
    radiovis::config::exit_code("radiovis-server", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let hub_config = cli.hub.hub_config(cli.directory.directory_timeout)?;
    radiovis::config::raise_open_files_limit(hub_config.max_connections);

    let bus = cli.rabbit.server_bus().await?;
    // Every directory and cache call is timed for /metrics (and /readyz).
    let metrics = Metrics::new();
    let DirectoryBackends {
        directory,
        log,
        cache,
    } = cli.directory.backends()?.timed(&metrics);
    let stop_monitoring = tokio_util::sync::CancellationToken::new();
    let mut monitoring_task = None;
    let mut hub_config = hub_config;
    // Monitoring is on when enabled and there is a RabbitMQ to send to: an explicit
    // MONITORING_HOST, or the bus's RabbitMQ. A standalone first run stays quiet.
    let monitoring_target = cli.monitoring.monitoring_host.is_some() || cli.rabbit.configured();
    if cli.monitoring.monitoring_enabled && monitoring_target {
        let config = cli.monitoring.rabbit_config();
        tracing::info!(host = %config.host, exchange = %config.exchange, queue = %cli.monitoring.monitoring_queue, "monitoring events enabled");
        let sink = RabbitBus::connect(config)
            .await
            .context("monitoring (MONITORING_*)")?;
        let (monitor, task) = Monitor::start(
            sink,
            cli.monitoring.monitoring_server_id.clone(),
            10_000,
            stop_monitoring.clone(),
        );
        hub_config.monitor = monitor;
        monitoring_task = Some(task);
    } else {
        tracing::info!("monitoring events off");
    }

    let mut listeners = Vec::new();
    for ip in &cli.stomp.stomp_ip {
        let addr = std::net::SocketAddr::new(*ip, cli.stomp.stomp_port);
        let l = listen(addr).map_err(|source| ConfigError::Listen { addr, source })?;
        listeners.push(l);
    }
    let http_config = cli.http.http_config()?;
    let mut http_listeners = Vec::new();
    for addr in cli.http.addresses(&cli.stomp) {
        let l = listen(addr).map_err(|source| ConfigError::ListenHttp { addr, source })?;
        http_listeners.push(l);
    }
    if http_listeners.is_empty() {
        tracing::info!("HTTP listener off (HTTP_PORT=off)");
    }
    let http_ips: Vec<std::net::IpAddr> = cli
        .http
        .http_ip
        .clone()
        .unwrap_or_else(|| cli.stomp.stomp_ip.clone());
    let tls = cli.tls.bind(&cli.stomp, &http_ips)?;

    // Fully standalone only: with PlugIt (or RabbitMQ) configured, the deployment has a
    // radiovis-fallback of its own, and a second watchdog would log every message twice.
    let standalone = !cli.rabbit.configured() && cli.directory.radiodns_api_url.is_none();
    let watchdog_on = match cli.watchdog.as_str() {
        "on" => true,
        "off" => false,
        _ => standalone,
    };
    let stop_watchdog = tokio_util::sync::CancellationToken::new();
    let mut watchdog_stats = None;
    let watchdog = if watchdog_on {
        let config = cli.fallback.watchdog_config()?;
        metrics.register(WatchdogCollector(config.stats.clone()));
        watchdog_stats = Some(config.stats.clone());
        if standalone {
            tracing::warn!(
                mode = "standalone",
                "fallback watchdog running in this process (RABBITMQ_HOST and RADIODNS_API_URL are not set; RADIOVIS_WATCHDOG=off turns it off): in a fleet, run radiovis-fallback instead"
            );
        } else {
            tracing::info!("fallback watchdog running in process (RADIOVIS_WATCHDOG=on)");
        }
        let wd = Watchdog::new(
            bus.clone(),
            directory.clone(),
            cache.clone(),
            log.clone(),
            config,
        );
        Some(tokio::spawn(wd.run(stop_watchdog.clone())))
    } else {
        None
    };

    let hub = StompHub::new(bus, directory, cache, hub_config);
    let stop = tokio_util::sync::CancellationToken::new();
    let ops = Ops::new(hub.clone(), metrics, cli.ops.admin(), watchdog_stats);
    let router = RadiovisRouter::new(hub.clone(), http_config).with_ops(ops);
    let http_tasks: Vec<_> = http_listeners
        .into_iter()
        .map(|l| tokio::spawn(radiovis::http::serve(l, router.clone(), stop.clone())))
        .collect();
    let sighup = tokio::spawn(radiovis::tls::reload_on_sighup(
        tls.reloaders(),
        stop.clone(),
    ));
    let mut tls_tasks = Vec::new();
    if let Some((listeners, acceptor)) = tls.stomp {
        for l in listeners {
            let hub = hub.clone();
            let serve = move |stream, peer| {
                hub.serve_stream(stream, peer, "stomp_tls");
                std::future::ready(())
            };
            let task =
                radiovis::tls::serve(l, acceptor.clone(), "STOMP over TLS", stop.clone(), serve);
            tls_tasks.push(tokio::spawn(task));
        }
    }
    if let Some((listeners, acceptor)) = tls.http {
        for l in listeners {
            let router = router.clone();
            let shutdown = radiovis::http::ShutdownShards::new(&stop);
            let serve = move |stream, peer| {
                radiovis::http::serve_connection(router.clone(), stream, peer, shutdown.next())
            };
            let task = radiovis::tls::serve(l, acceptor.clone(), "HTTPS", stop.clone(), serve);
            tls_tasks.push(tokio::spawn(task));
        }
    }
    let served = hub.run(listeners, stop.clone());
    tokio::pin!(served);
    let served = tokio::select! {
        r = &mut served => r,
        () = radiovis::config::shutdown_signal() => {
            stop.cancel();
            served.await
        }
    };
    served?;
    for task in http_tasks.into_iter().chain(tls_tasks).chain([sighup]) {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "HTTP listener task failed");
        }
    }
    stop_watchdog.cancel();
    stop_monitoring.cancel();
    if let Some(task) = monitoring_task {
        // The last sessions' events are still buffered: let them out, but never hang
        // the exit on an unreachable monitoring RabbitMQ.
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "monitoring task failed"),
            Err(_) => tracing::warn!("monitoring events still unsent after 5 s: dropped"),
        }
    }
    if let Some(w) = watchdog {
        match w.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "watchdog stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "watchdog task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("stopped");
    Ok(())
}
