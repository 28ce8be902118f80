//! `radiovis-bench`: load and fan-out latency of a RadioVis server over loopback TCP,
//! against a minimal fan-out baseline. See `--help` and BENCHMARKS.md.

mod baseline;
mod load;
mod report;
mod scaleout;
mod soak;
mod sys;
mod web;
mod web_latency;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use report::{print_compare, print_report, ratios};
use serde::Serialize;

/// Load/latency benchmark of radiovis-server (black box over TCP on 127.0.0.1).
///
/// Starts the server (or targets `--addr`), opens N STOMP 1.0 subscribers spread over K
/// topics round-robin (`x-ebu-nofastreply:yes`, connected `--concurrency` at a time and
/// confirmed by a RECEIPT), then one logged-in publisher sends M messages over the K
/// topics at R per second. Each body is `TEXT seq=<n> t=<nanos>`; every subscriber
/// checks loss, duplicates and order and records the fan-out latency. Reports latency
/// percentiles, deliveries per second, and the server's RSS and CPU per delivery
/// (from /proc). `--compare` runs radiovis and the built-in baseline server with the
/// same parameters and prints the ratios radiovis/baseline.
#[derive(Debug, Parser)]
#[command(name = "radiovis-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The baseline fan-out server (started by the benchmark itself).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        addr: SocketAddr,
        /// Which baseline design.
        #[arg(long, value_enum, default_value_t = BaselineDesign::Lean)]
        design: BaselineDesign,
        /// Exit after this many seconds whatever happens (no orphan outlives a run).
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
    },
    /// N subscribers of a scale-out run (started by the benchmark itself).
    #[command(hide = true)]
    SubLoader(scaleout::SubLoaderArgs),
    /// Soak run: the server's RSS, fds and threads over time under churn (BENCHMARKS.md).
    Soak(soak::SoakArgs),
    /// Memory per client of each web transport against STOMP over TCP (BENCHMARKS.md).
    WebMemory(web::WebArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ServerKind {
    Radiovis,
    /// The lean baseline (`baseline/lean.rs`), the one `--compare` uses.
    Baseline,
    /// The first baseline (`baseline/channel.rs`): a bounded mpsc per connection.
    BaselineChannel,
}

/// The baseline server designs (`radiovis-bench/src/baseline/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaselineDesign {
    Lean,
    Channel,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Subscriber connections (N).
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// Topics (K); subscriber i listens to topic i % K, message n goes to topic n % K.
    #[arg(short = 'k', long, default_value_t = 10)]
    topics: usize,
    /// Messages per second the publisher sends (R).
    #[arg(short = 'r', long, default_value_t = 60.0)]
    rate: f64,
    /// Messages the publisher sends (M).
    #[arg(short = 'm', long, default_value_t = 600)]
    messages: u64,
    /// Which server to measure.
    #[arg(long, value_enum, default_value_t = ServerKind::Radiovis)]
    server: ServerKind,
    /// Run both radiovis and the baseline with these parameters and print the ratios.
    #[arg(long)]
    compare: bool,
    /// The radiovis-server binary to start.
    #[arg(long, default_value = "target/release/radiovis-server")]
    server_bin: PathBuf,
    /// Directory file for radiovis-server (default: one written to the temp dir with
    /// station `1.radio1`/`secret1` owning `/topic/dab/4e1/4001/4001/0/`).
    #[arg(long)]
    directory: Option<PathBuf>,
    /// RUST_LOG of the started radiovis-server (its logs go to a file in the temp dir).
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Target an already running server at this address instead of starting one.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Process id of the server at `--addr`, for its RSS and CPU figures.
    #[arg(long, requires = "addr")]
    pid: Option<u32>,
    /// Loopback port for the started server (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Topic k is `<prefix><k>/text`; must be a sub-topic of a channel of the station.
    #[arg(long, default_value = "/topic/dab/4e1/4001/4001/0/bench")]
    topic_prefix: String,
    /// Publisher login.
    #[arg(long, default_value = "1.radio1")]
    login: String,
    /// Publisher passcode.
    #[arg(long, default_value = "secret1")]
    passcode: String,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds the whole connect phase may take.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Milliseconds to wait after the last RECEIPT before publishing (a STOMP 1.0
    /// RECEIPT may be written before the SUBSCRIBE takes effect).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Seconds to wait for the last deliveries after the publisher is done.
    #[arg(long, default_value_t = 15)]
    drain_timeout: u64,
    /// Scale-out mode: start I radiovis-server instances on the RabbitMQ at
    /// 127.0.0.1:5672 (guest/guest) with an exchange of their own
    /// (`radiovis-bench-<uuid>`, deleted at the end), N subscribers per instance (each
    /// instance's in a sub-loader process of its own), the publisher on instance 0.
    #[arg(long, conflicts_with_all = ["compare", "addr"])]
    instances: Option<usize>,
    /// Write all figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Report {
    server: String,
    subscribers: usize,
    topics: usize,
    rate: f64,
    messages: u64,
    connected: usize,
    connect_failures: usize,
    first_connect_error: Option<String>,
    connect_secs: f64,
    setup_ms_p50: u64,
    setup_ms_p99: u64,
    setup_ms_max: u64,
    publish_secs: f64,
    latency_us_p50: u64,
    latency_us_p90: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
    deliveries_per_sec: f64,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    subscribers_ended_early: usize,
    first_subscriber_error: Option<String>,
    rss_kib_before: Option<u64>,
    rss_kib_connected: Option<u64>,
    rss_kib_end: Option<u64>,
    rss_bytes_per_connection: Option<f64>,
    cpu_us_publish_phase: Option<u64>,
    cpu_us_per_delivery: Option<f64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = sys::raise_nofile() {
        eprintln!("radiovis-bench: cannot raise RLIMIT_NOFILE: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("radiovis-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Some(Cmd::BaselineServer {
            addr,
            design,
            max_secs,
        }) => rt.block_on(async {
            let serve = async {
                match design {
                    BaselineDesign::Lean => baseline::lean::serve(addr).await,
                    BaselineDesign::Channel => baseline::channel::serve(addr).await,
                }
            };
            match tokio::time::timeout(Duration::from_secs(max_secs), serve).await {
                Ok(r) => r.map_err(|e| format!("baseline server: {e}")),
                Err(_) => Ok(()),
            }
        }),
        Some(Cmd::SubLoader(a)) => rt.block_on(scaleout::sub_loader(a)),
        Some(Cmd::Soak(a)) => rt.block_on(soak::run(a)),
        Some(Cmd::WebMemory(a)) => rt.block_on(web::run(a)),
        None => rt.block_on(bench(cli.run)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("radiovis-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(args: RunArgs) -> Result<(), String> {
    if args.topics == 0 || args.subscribers == 0 {
        return Err("--subscribers and --topics must be at least 1".into());
    }
    if let Some(instances) = args.instances {
        if instances == 0 {
            return Err("--instances must be at least 1".into());
        }
        let r = scaleout::run(&args, instances).await?;
        scaleout::print(&r);
        if let Some(path) = &args.json {
            write_json(path, &serde_json::to_value(&r).map_err(|e| e.to_string())?)?;
        }
    } else if args.compare {
        let rv = run_one(&args, ServerKind::Radiovis).await?;
        print_report(&rv);
        let bl = run_one(&args, ServerKind::Baseline).await?;
        print_report(&bl);
        print_compare(&rv, &bl);
        if let Some(path) = &args.json {
            let json = serde_json::json!({
                "radiovis": rv,
                "baseline": bl,
                "ratio_radiovis_over_baseline": ratios(&rv, &bl),
            });
            write_json(path, &json)?;
        }
    } else {
        let r = run_one(&args, args.server).await?;
        print_report(&r);
        if let Some(path) = &args.json {
            write_json(path, &serde_json::to_value(&r).map_err(|e| e.to_string())?)?;
        }
    }
    Ok(())
}

fn write_json(path: &PathBuf, v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A server process the benchmark started; killed on drop.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    pid: Option<u32>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

const BENCH_DIRECTORY: &str = r#"# written by radiovis-bench
[[station]]
login = "1.radio1"
passcode = "secret1"
channels = ["/topic/dab/4e1/4001/4001/0/"]
"#;

async fn start_server(
    args: &RunArgs,
    kind: ServerKind,
    env: &[(String, String)],
) -> Result<Server, String> {
    if let Some(addr) = args.addr {
        return Ok(Server {
            child: None,
            addr,
            pid: args.pid,
        });
    }
    let port = if args.port == 0 {
        free_port()?
    } else {
        args.port
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let hard = sys::nofile_hard().map_err(|e| format!("getrlimit: {e}"))?;
    let tmp = std::env::temp_dir();
    let (program, prog_args): (PathBuf, Vec<String>) = match kind {
        ServerKind::Radiovis => {
            let dir = match &args.directory {
                Some(d) => d.clone(),
                None => {
                    let p = tmp.join(format!(
                        "radiovis-bench-directory-{}.toml",
                        std::process::id()
                    ));
                    std::fs::write(&p, BENCH_DIRECTORY)
                        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
                    p
                }
            };
            if !args.server_bin.exists() {
                return Err(format!(
                    "{} not found: build it (cargo build --release -p radiovis-server) or pass --server-bin",
                    args.server_bin.display()
                ));
            }
            (
                args.server_bin.clone(),
                vec![
                    "--stomp-ip".into(),
                    "127.0.0.1".into(),
                    "--stomp-port".into(),
                    port.to_string(),
                    // Several servers run at once (scale-out): no HTTP listener
                    // unless the run asks for one (HTTP_PORT in `env`).
                    "--http-port".into(),
                    env.iter()
                        .find(|(k, _)| k == "HTTP_PORT")
                        .map_or("off".into(), |(_, v)| v.clone()),
                    "--watchdog".into(),
                    "off".into(),
                    "--directory".into(),
                    dir.display().to_string(),
                    // Every subscriber of the benchmark comes from 127.0.0.1, and its
                    // STOMP 1.0 subscribers send nothing after SUBSCRIBE: the limits
                    // against one address and against silent clients are not what
                    // is measured.
                    "--max-connections-per-address".into(),
                    "10000000".into(),
                    "--idle-timeout".into(),
                    "0".into(),
                ],
            )
        }
        ServerKind::Baseline | ServerKind::BaselineChannel => (
            std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
            vec![
                "baseline-server".into(),
                "--addr".into(),
                addr.to_string(),
                "--design".into(),
                if kind == ServerKind::Baseline {
                    "lean"
                } else {
                    "channel"
                }
                .into(),
            ],
        ),
    };
    let log_path = tmp.join(format!("radiovis-bench-{kind:?}-{port}.log").to_lowercase());
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    // The server does not raise its own fd limit: `ulimit -n` in a shell that execs it
    // (same pid).
    let mut cmd = Command::new("sh");
    // SAFETY: only async-signal-safe prctl between fork and exec. The server gets
    // SIGTERM when the benchmark dies (the flag survives exec), so none is left behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .arg("-c")
        .arg(format!("ulimit -n {hard}; exec \"$0\" \"$@\""))
        .arg(&program)
        .args(&prog_args)
        .env("RUST_LOG", &args.server_log)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id();
    let mut server = Server {
        child: Some(child),
        addr,
        pid: Some(pid),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Some(c) = &mut server.child {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "{} exited with {status} (log: {})",
                    program.display(),
                    log_path.display()
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{} does not listen on {addr}", program.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let it settle after the probe connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(server)
}

async fn run_one(args: &RunArgs, kind: ServerKind) -> Result<Report, String> {
    let server = start_server(args, kind, &[]).await?;
    let pid = server.pid;
    let rss = || pid.and_then(|p| sys::rss_kib(p).ok());
    let cpu = || pid.and_then(|p| sys::cpu_micros(p).ok());
    let mut r = Report {
        server: match (kind, args.addr) {
            (_, Some(a)) => format!("external {a}"),
            (ServerKind::Radiovis, None) => "radiovis".into(),
            (ServerKind::Baseline, None) => "baseline".into(),
            (ServerKind::BaselineChannel, None) => "baseline-channel".into(),
        },
        subscribers: args.subscribers,
        topics: args.topics,
        rate: args.rate,
        messages: args.messages,
        ..Report::default()
    };
    eprintln!(
        "[{}] N={} K={} R={} M={} on {}",
        r.server, args.subscribers, args.topics, args.rate, args.messages, server.addr
    );
    let start = Instant::now();
    let pub_params = load::PubParams {
        addr: server.addr,
        login: args.login.clone(),
        passcode: args.passcode.clone(),
        topics: args.topics,
        prefix: args.topic_prefix.clone(),
        messages: args.messages,
        rate: args.rate,
        clock: load::Clock::Since(start),
    };
    let publisher = load::connect_publisher(&pub_params).await?;
    r.rss_kib_before = rss();

    // Connect phase.
    let t0 = Instant::now();
    let mut subs = load::spawn_subscribers(&load::SubParams {
        addr: server.addr,
        n: args.subscribers,
        topics: args.topics,
        prefix: args.topic_prefix.clone(),
        messages: args.messages,
        concurrency: args.concurrency,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        clock: load::Clock::Since(start),
    });
    let phase_deadline = t0 + Duration::from_secs(args.connect_timeout + 5);
    let mut reported = 0;
    while reported < args.subscribers {
        let left = phase_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, subs.ready_rx.recv()).await {
            Ok(Some(Ok(()))) => r.connected += 1,
            Ok(Some(Err(e))) => {
                r.connect_failures += 1;
                r.first_connect_error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
        reported += 1;
        if reported % 5000 == 0 {
            eprintln!("  {reported} subscribers set up");
        }
    }
    r.connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  connected {} of {} in {:.2}s ({} failed)",
        r.connected, args.subscribers, r.connect_secs, r.connect_failures
    );
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    r.rss_kib_connected = rss();

    // Publish phase.
    let cpu_before = cpu();
    r.publish_secs = load::publish(publisher, &pub_params).await?.as_secs_f64();
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while subs.complete.load(std::sync::atomic::Ordering::Relaxed) < r.connected
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = cpu();
    let _ = subs.stop.send(true);
    r.rss_kib_end = rss();

    let collected = load::collect(&mut subs).await?;
    r.expected = collected.expected;
    r.received = collected.received;
    r.duplicates = collected.duplicates;
    r.out_of_order = collected.out_of_order;
    r.subscribers_ended_early = collected.ended_early;
    r.first_subscriber_error = collected.first_error;
    let (hist, setup) = (collected.latency, collected.setup);
    r.setup_ms_p50 = setup.value_at_quantile(0.5) / 1000;
    r.setup_ms_p99 = setup.value_at_quantile(0.99) / 1000;
    r.setup_ms_max = setup.max() / 1000;
    r.lost = r.expected.saturating_sub(r.received);
    r.latency_us_p50 = hist.value_at_quantile(0.50);
    r.latency_us_p90 = hist.value_at_quantile(0.90);
    r.latency_us_p99 = hist.value_at_quantile(0.99);
    r.latency_us_p999 = hist.value_at_quantile(0.999);
    r.latency_us_max = hist.max();
    r.deliveries_per_sec = if r.publish_secs > 0.0 {
        r.received as f64 / r.publish_secs
    } else {
        0.0
    };
    if let (Some(a), Some(b)) = (r.rss_kib_before, r.rss_kib_connected) {
        if r.connected > 0 {
            r.rss_bytes_per_connection = Some((b as f64 - a as f64) * 1024.0 / r.connected as f64);
        }
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        r.cpu_us_publish_phase = Some(b.saturating_sub(a));
        if r.received > 0 {
            r.cpu_us_per_delivery = Some(b.saturating_sub(a) as f64 / r.received as f64);
        }
    }
    drop(server);
    Ok(r)
}
