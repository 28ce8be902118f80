//! Start-up of a server exposed to the internet (docs/protocol.md#configuration): no
//! secret in the log, every numeric setting checked for range before anything runs,
//! and the demo directory only when nothing else is configured, said loudly.

use std::process::Stdio;
use std::time::Duration;

use testkit::processes::stdout_until;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// Runs the server from the workspace root with `env` until it logs that it listens
/// (or exits); returns what it logged.
async fn startup_log(env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("HTTP_PORT", "0")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .env_remove("RABBITMQ_HOST")
        .env_remove("RABBITMQ_URL")
        .env_remove("RADIODNS_API_URL")
        .env_remove("MEMCACHED_HOST")
        .env_remove("RADIOVIS_DIRECTORY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let (_, seen) = stdout_until(
        &mut child,
        "listening for STOMP connections",
        Duration::from_secs(30),
    )
    .await;
    let _ = child.start_kill();
    seen.join("\n")
}

#[tokio::test]
async fn the_plugit_api_secret_is_never_logged() {
    // PlugIt's API secret is a path segment of the URL; nothing answers on port 9.
    let log = startup_log(&[
        (
            "RADIODNS_API_URL",
            "http://127.0.0.1:9/plugIt/Ap1-S3cret-XYZ/",
        ),
        ("RADIOVIS_DIRECTORY_TIMEOUT", "0.2"),
    ])
    .await;
    assert!(log.contains("plugit"), "the directory is named: {log}");
    assert!(!log.contains("Ap1-S3cret-XYZ"), "secret in the log: {log}");
}

#[tokio::test]
async fn the_demo_directory_is_announced_and_never_used_with_plugit() {
    let log = startup_log(&[]).await;
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("examples/directory.toml"))
        .unwrap_or_else(|| panic!("no WARN naming the demo directory: {log}"));
    assert!(warn.contains("demo"), "{warn}");

    let log = startup_log(&[
        ("RADIODNS_API_URL", "http://127.0.0.1:9/plugIt/x/"),
        ("RADIOVIS_DIRECTORY_TIMEOUT", "0.2"),
    ])
    .await;
    assert!(
        !log.contains("examples/directory.toml"),
        "demo directory loaded next to PlugIt: {log}"
    );
}

#[tokio::test]
async fn out_of_range_numbers_stop_startup_naming_the_variable() {
    for (var, value) in [
        ("RADIOVIS_DIRECTORY_TIMEOUT", "1e30"),
        ("RADIOVIS_DIRECTORY_TIMEOUT", "0"),
        ("RADIOVIS_CONNECT_TIMEOUT", "1e30"),
        ("RADIOVIS_MAX_CONNECTIONS", "100000000000000"),
        ("RADIOVIS_MAX_CONNECTIONS", "0"),
        ("RADIOVIS_OUTBOUND_QUEUE", "0"),
        ("RADIOVIS_MAX_FRAME_SIZE", "0"),
        ("FB_FALLBACK_CHECK", "0"),
        ("FB_FALLBACK_CHECK", "1e30"),
        ("FB_CHANNEL_CACHE", "0"),
        ("FB_LOGS_CLEANUP", "0"),
        ("FB_FALLBACK_TIME", "99999999999999999"),
        ("RADIOVIS_HEARTBEAT_MS", "18446744073709551615"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("STOMP_IP", "127.0.0.1")
            .env("STOMP_PORT", "0")
            .env("HTTP_PORT", "0")
            .env("RADIOVIS_WATCHDOG", "on")
            .env(var, value)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out)
            .await
            .unwrap_or_else(|_| panic!("{var}={value}: the server started instead of refusing"))
            .expect("run radiovis-server");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!text.contains("panicked"), "{var}={value} panicked: {text}");
        // 78: refused by our checks; 2: refused by the argument parser. Never a panic
        // (101), never the code of a failure while running (1).
        assert!(
            matches!(out.status.code(), Some(2 | 78)),
            "{var}={value}: {:?} {text}",
            out.status
        );
        assert!(text.contains(var), "{var}={value}: {text}");
    }
}

/// Each connection is a file descriptor: the usual soft limit (1,024, here lowered to
/// 256) would cap the server far below RADIOVIS_MAX_CONNECTIONS. The server raises it
/// to the hard limit and says so; above the hard limit it warns.
#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let run = |max: &'static str| async move {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn 256 && exec {}",
                env!("CARGO_BIN_EXE_radiovis-server")
            ))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("STOMP_IP", "127.0.0.1")
            .env("STOMP_PORT", "0")
            .env("HTTP_PORT", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("RADIOVIS_MAX_CONNECTIONS", max)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start radiovis-server");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("open_files=") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let _ = child.start_kill();
        line.ok()
            .flatten()
            .expect("a log line with the open files limit")
    };
    let hard: u64 = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Hn")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u64::MAX);
    let line = run("100").await;
    assert!(line.contains("INFO"), "{line}");
    if hard != u64::MAX {
        assert!(line.contains(&format!("open_files={hard}")), "{line}");
    }
    let line = run("10000000").await;
    assert!(
        line.contains("WARN") && line.contains("RADIOVIS_MAX_CONNECTIONS"),
        "{line}"
    );
}
