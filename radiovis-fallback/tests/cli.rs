//! The watchdog's command line and logs (docs/protocol.md#configuration): `--version`,
//! the exit codes in `--help`, JSON logs one object per line with the effective
//! settings at start-up and no secret in them. Needs no RabbitMQ: the settings line
//! comes before the first connection attempt (to a closed port here).

use std::process::Stdio;
use std::time::Duration;

use testkit::processes::{free_port, Process};

const FALLBACK: &str = env!("CARGO_BIN_EXE_radiovis-fallback");

async fn run(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(FALLBACK);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("exits within 20 s")
        .expect("run radiovis-fallback")
}

#[tokio::test]
async fn version_and_help() {
    let out = run(&["--version"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("radiovis-fallback {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "Exit codes:",
        "  78  ",
        "--log-format",
        "RADIOVIS_LOG_FORMAT",
    ] {
        assert!(help.contains(text), "{text:?} missing from --help:\n{help}");
    }
    let out = run(&["--log-format", "yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test]
async fn json_logs_with_the_settings_and_no_secret() {
    const PASSWORD: &str = "FallbackPw0rd";
    const API_SECRET: &str = "FbApiS3cret";
    let closed = free_port().expect("port");
    let env = [
        ("RABBITMQ_HOST", "127.0.0.1".to_owned()),
        ("RABBITMQ_PORT", closed.to_string()),
        ("RABBITMQ_PASSWORD", PASSWORD.to_owned()),
        (
            "RADIODNS_API_URL",
            format!("http://127.0.0.1:{closed}/plugIt/{API_SECRET}/"),
        ),
        ("RUST_LOG", "debug".to_owned()),
        ("FB_HTTP_PORT", "off".to_owned()),
    ];
    let mut fallback = Process::spawn(
        "fallback",
        std::path::Path::new(FALLBACK),
        &["--log-format", "json"],
        &env,
    )
    .expect("start radiovis-fallback");
    // It may go on retrying the closed port or give up: either way the settings come
    // first, and whatever it logged until then is checked.
    let _ = fallback
        .wait_log("effective settings", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fallback.kill();
    let lines = fallback.log.lines();
    let mut settings = None;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        if v["fields"]["message"] == "effective settings" {
            settings = v["fields"]["settings"].as_str().map(str::to_owned);
        }
        assert!(!line.contains(PASSWORD), "password logged: {line}");
        assert!(!line.contains(API_SECRET), "API secret logged: {line}");
    }
    let settings = settings.unwrap_or_else(|| panic!("no settings line in {lines:#?}"));
    for shown in [
        "RABBITMQ_HOST=127.0.0.1",
        "RABBITMQ_PASSWORD=***",
        "RADIODNS_API_URL=http://127.0.0.1:",
        "FB_QUEUE=fallbacklogs",
        "RADIOVIS_FALLBACK_TAKEOVER=2",
        "RADIOVIS_LOG_FORMAT=json",
    ] {
        assert!(settings.contains(shown), "{shown:?} not in {settings}");
    }
}

/// SIGHUP (`systemctl reload`, a closed terminal) does not end the watchdog: it has
/// nothing to reload and says so (docs/protocol.md#tls). Failed before: the
/// signal's default action killed the process.
#[tokio::test]
async fn sighup_is_logged_not_fatal() {
    let closed = free_port().expect("port");
    let env = [
        ("RABBITMQ_HOST", "127.0.0.1".to_owned()),
        ("RABBITMQ_PORT", closed.to_string()),
        ("FB_HTTP_PORT", "off".to_owned()),
    ];
    let mut fallback = Process::spawn("fallback", std::path::Path::new(FALLBACK), &[], &env)
        .expect("start radiovis-fallback");
    fallback
        .wait_log("effective settings", Duration::from_secs(20))
        .await
        .expect("started");
    let pid = fallback.id().to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(sent.success(), "SIGHUP sent");
    fallback
        .wait_log("SIGHUP", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}; exited: {:?}", fallback.exited()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fallback.exited(), None, "still running after SIGHUP");
    fallback.kill();
}
