//! Start-up as an operator sees it (behaviour.md §9): the log says which backends are
//! in use; a bad value stops start-up with a message naming the variable.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

#[tokio::test]
async fn the_startup_log_names_the_backends() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RABBITMQ_HOST")
        .env_remove("RABBITMQ_URL")
        .env_remove("RADIODNS_API_URL")
        .env_remove("MEMCACHED_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start radiovis-server");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("listening for STOMP connections");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(listening, Ok(true), "{seen:#?}");
    let log = seen.join("\n");
    assert!(log.contains(r#"message bus backend="in-process""#), "{log}");
    assert!(
        log.contains(r#"backend="file""#) && log.contains("examples/directory.toml"),
        "{log}"
    );
    assert!(
        log.contains(r#"shared cache backend="in-process""#),
        "{log}"
    );
    assert!(log.contains("monitoring events off"), "{log}");
    let _ = child.start_kill();
}

#[tokio::test]
async fn a_bad_value_stops_startup_naming_the_variable() {
    for (var, value) in [
        ("STOMP_PORT", "sixty"),
        ("RADIOVIS_MAX_CONNECTIONS", "-1"),
        ("MONITORING_ENABLED", "maybe"),
        ("RADIODNS_API_URL", "ftp://nowhere/"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
            .env("STOMP_IP", "127.0.0.1")
            .env("STOMP_PORT", "0")
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run radiovis-server");
        assert!(!out.status.success(), "{var}={value} must stop start-up");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(text.contains(var), "{var}={value}: {text}");
    }
}
