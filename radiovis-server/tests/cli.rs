//! The command line and logs as an operator meets them (docs/protocol.md#configuration):
//! `--version`, the exit codes in `--help`, JSON logs one object per line, plain text
//! when the output is not a terminal, the effective settings at start-up with every
//! secret masked, and the documented exit codes.

use std::process::Stdio;
use std::time::Duration;

use testkit::harness::Conn;
use testkit::processes::{free_port, stdout_until, Process};

const SERVER: &str = env!("CARGO_BIN_EXE_radiovis-server");

/// Secrets given to the server in every way it takes them; none may appear in its
/// output.
const RABBIT_PASSWORD: &str = "AmqpPw0rd-in-url";
const MONITORING_PASSWORD: &str = "MonPw0rd-9";
const API_SECRET: &str = "PlugItS3cretKey";
const PASSCODE: &str = "StationPassc0de";

async fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(SERVER);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the server exits within 20 s")
        .expect("run radiovis-server")
}

#[tokio::test]
async fn version_prints_the_name_and_version() {
    let out = run(&["--version"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("radiovis-server {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn help_lists_the_exit_codes_and_the_log_format() {
    let out = run(&["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "Exit codes:",
        "  78  ",
        "  2   ",
        "--log-format",
        "RADIOVIS_LOG_FORMAT",
    ] {
        assert!(help.contains(text), "{text:?} missing from --help:\n{help}");
    }
}

#[tokio::test]
async fn exit_codes_tell_usage_from_configuration() {
    // Not a number: the argument parser refuses it (2).
    let usage = run(&[], &[("STOMP_IP", "127.0.0.1"), ("STOMP_PORT", "sixty")]).await;
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    // A number out of range: refused by the configuration checks (78).
    let config = run(
        &[],
        &[
            ("STOMP_IP", "127.0.0.1"),
            ("STOMP_PORT", "0"),
            ("HTTP_PORT", "off"),
            ("RADIOVIS_MAX_CONNECTIONS", "0"),
        ],
    )
    .await;
    assert_eq!(config.status.code(), Some(78), "{config:?}");
    let err = String::from_utf8_lossy(&config.stderr);
    assert!(err.contains("RADIOVIS_MAX_CONNECTIONS"), "{err}");
    let format = run(&["--log-format", "xml"], &[]).await;
    assert_eq!(format.status.code(), Some(2), "{format:?}");
}

/// Starts the server with secrets in every place it takes them (a RabbitMQ URL with a
/// password, a PlugIt URL whose path is the API secret, the monitoring password), none
/// of the services reachable, debug logs on, `args` on its command line; waits until
/// it listens and returns its address.
async fn server_with_secrets(args: &[&str], extra: &[(&str, String)]) -> (Process, String) {
    let closed = free_port().expect("port");
    let mut env = vec![
        ("STOMP_IP", "127.0.0.1".to_owned()),
        ("STOMP_PORT", "0".to_owned()),
        ("HTTP_PORT", "off".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
        (
            "RABBITMQ_URL",
            format!("amqp://radio:{RABBIT_PASSWORD}@127.0.0.1:{closed}/%2f"),
        ),
        (
            "RADIODNS_API_URL",
            format!("http://127.0.0.1:{closed}/plugIt/{API_SECRET}/"),
        ),
        ("RADIODNS_API_METHOD", "POST".to_owned()),
        ("MONITORING_ENABLED", "False".to_owned()),
        ("MONITORING_PASSWORD", MONITORING_PASSWORD.to_owned()),
        ("RADIOVIS_AUTH_DELAY", "0".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let mut server = Process::spawn("server", std::path::Path::new(SERVER), args, &env)
        .expect("start radiovis-server");
    server
        .wait_log("listening for STOMP connections", Duration::from_secs(30))
        .await
        .expect("server listens");
    let line = server
        .log
        .matching("listening for STOMP connections")
        .remove(0);
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .expect("the listening line names the address");
    (server, format!("127.0.0.1:{port}"))
}

/// A broadcaster logs in with a passcode (the directory is unreachable, so it fails
/// and is logged), then leaves.
async fn login_attempt(addr: &str) {
    let mut conn = Conn::open(addr).await;
    conn.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "radiovis"),
            ("login", "1.radio1"),
            ("passcode", PASSCODE),
        ],
        b"",
    )
    .await;
    let _ = conn.frames_until_closed(Duration::from_secs(15)).await;
}

fn assert_no_secret(lines: &[String]) {
    for line in lines {
        for secret in [RABBIT_PASSWORD, MONITORING_PASSWORD, API_SECRET, PASSCODE] {
            assert!(!line.contains(secret), "secret {secret:?} logged: {line}");
        }
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_never_show_a_secret() {
    for how in ["flag", "env"] {
        let (mut server, addr) = match how {
            "flag" => server_with_secrets(&["--log-format", "json"], &[]).await,
            _ => server_with_secrets(&[], &[("RADIOVIS_LOG_FORMAT", "json".to_owned())]).await,
        };
        login_attempt(&addr).await;
        server.kill();
        let lines = server.log.lines();
        assert!(lines.len() > 3, "{how}: too few lines: {lines:#?}");
        let mut settings = None;
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{how}: not one JSON object ({e}): {line}"));
            assert!(v["level"].is_string(), "{how}: no level: {line}");
            assert!(
                v["fields"]["message"].is_string(),
                "{how}: no message: {line}"
            );
            if v["fields"]["message"] == "effective settings" {
                settings = v["fields"]["settings"].as_str().map(str::to_owned);
            }
        }
        let settings = settings.unwrap_or_else(|| panic!("{how}: no settings line"));
        for shown in [
            "STOMP_IP=127.0.0.1",
            "STOMP_PORT=0",
            "RADIOVIS_LOG_FORMAT=json",
            "RABBITMQ_URL=amqp://127.0.0.1:",
            "RADIODNS_API_URL=http://127.0.0.1:",
            "RADIODNS_API_METHOD=POST",
            "MONITORING_PASSWORD=***",
            "RABBITMQ_PASSWORD=***",
            "RADIOVIS_MAX_CONNECTIONS=100000",
        ] {
            assert!(
                settings.contains(shown),
                "{how}: {shown:?} not in {settings}"
            );
        }
        assert_no_secret(&lines);
    }
}

#[tokio::test]
async fn text_logs_into_a_pipe_have_no_colour_codes_and_no_secret() {
    // NO_COLOR unset: only "not a terminal" may turn colours off.
    let mut child = tokio::process::Command::new(SERVER)
        .env_remove("NO_COLOR")
        .env_remove("RADIOVIS_LOG_FORMAT")
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("HTTP_PORT", "off")
        .env("RUST_LOG", "debug")
        .env("RABBITMQ_PASSWORD", RABBIT_PASSWORD)
        .env("RADIOVIS_WATCHDOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let (listening, seen) = stdout_until(
        &mut child,
        "listening for STOMP connections",
        Duration::from_secs(30),
    )
    .await;
    let _ = child.start_kill();
    assert!(listening, "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("effective settings")
            && l.contains("RABBITMQ_PASSWORD=***")
            && l.contains("RADIOVIS_LOG_FORMAT=text")),
        "{seen:#?}"
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "escape sequence in {line:?}");
    }
    assert_no_secret(&seen);
}
