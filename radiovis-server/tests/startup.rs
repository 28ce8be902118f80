//! Start-up as an operator sees it (docs/protocol.md#configuration): the log says which backends are
//! in use; a bad value stops start-up with a message naming the variable.

use std::process::Stdio;
use std::time::Duration;

use testkit::processes::stdout_until;
use tokio::process::Command;

#[tokio::test]
async fn the_startup_log_names_the_backends() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_radiovis-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("STOMP_IP", "127.0.0.1")
        .env("STOMP_PORT", "0")
        .env("HTTP_PORT", "0")
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
    let (listening, seen) = stdout_until(
        &mut child,
        "listening for STOMP connections",
        Duration::from_secs(30),
    )
    .await;
    assert!(listening, "{seen:#?}");
    let log = seen.join("\n");
    assert!(
        log.contains(r#"backend="file""#) && log.contains("examples/directory.toml"),
        "{log}"
    );
    assert!(log.contains("monitoring events off"), "{log}");
    // Every standalone piece and the demo directory are said at WARN, with the mode and
    // why (issue 10: the original defaulted RABBITMQ_HOST and MEMCACHED_HOST to
    // 127.0.0.1, radiovis treats them unset as standalone).
    let warned = |text: &str, why: &str| {
        seen.iter().any(|l| {
            l.contains("WARN") && l.contains(text) && l.contains(why) && l.contains("mode=")
        })
    };
    assert!(
        warned("message bus in this process only", "RABBITMQ_HOST"),
        "{log}"
    );
    assert!(
        warned("shared cache in this process only", "MEMCACHED_HOST"),
        "{log}"
    );
    assert!(warned("demo directory", "RADIODNS_API_URL"), "{log}");
    assert!(
        warned("fallback watchdog running in this process", "RABBITMQ_HOST"),
        "{log}"
    );
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
            .env("HTTP_PORT", "0")
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

/// Start-up errors print the error and its cause on one line, as they always read.
#[tokio::test]
async fn startup_errors_read_as_before_with_their_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("local addr").port().to_string();
    let cases = [
        (
            vec![("STOMP_PORT", port.as_str())],
            format!("radiovis-server: cannot listen on 127.0.0.1:{port} (STOMP_IP/STOMP_PORT): "),
        ),
        (
            vec![("STOMP_PORT", "0"), ("RADIOVIS_OUTBOUND_QUEUE", "0")],
            "radiovis-server: RADIOVIS_OUTBOUND_QUEUE must be at least 1".to_owned(),
        ),
        (
            vec![("STOMP_PORT", "0"), ("RADIODNS_API_URL", "ftp://nowhere/")],
            "radiovis-server: RADIODNS_API_URL: invalid PlugIt API URL".to_owned(),
        ),
    ];
    for (vars, expected) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_radiovis-server"));
        cmd.env("STOMP_IP", "127.0.0.1")
            .env("HTTP_PORT", "0")
            .env("NO_COLOR", "1")
            .env_remove("RABBITMQ_HOST")
            .env_remove("RABBITMQ_URL")
            .env_remove("RADIODNS_API_URL")
            .env_remove("MEMCACHED_HOST")
            .stdin(Stdio::null());
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let out = cmd.output().await.expect("run radiovis-server");
        assert!(!out.status.success(), "{vars:?} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "{vars:?}: expected a line starting {expected:?} in {stderr}"
        );
    }
    drop(taken);
}
