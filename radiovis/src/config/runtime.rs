//! What a binary does around its work: logging set-up, the exit code (printing the
//! error and its causes) and the shutdown signal.

use std::error::Error;

/// Logging of both binaries: `RUST_LOG`, default `info`; `RABBITMQ_DEBUG` (on by
/// default, as in the original) adds the bus module's debug logs, which are few: no
/// per-message line. lapin's own logs are off unless `RUST_LOG` names lapin: it logs
/// a normal passive declare of a missing exchange as an ERROR, and the bus module
/// reports connection trouble itself.
pub fn init_logging(rabbitmq_debug: bool) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut filter = match &from_env {
        // Keep lapin quiet unless the operator asked for it by name.
        Some(v) if v.contains("lapin") => tracing_subscriber::EnvFilter::new(v),
        Some(v) => tracing_subscriber::EnvFilter::new(format!("{v},lapin=off")),
        None => tracing_subscriber::EnvFilter::new("info,lapin=off"),
    };
    if rabbitmq_debug {
        if let Ok(d) = "radiovis::backend::rabbitmq=debug".parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// The exit of a binary: success, or the error with its causes (see [`error_chain`])
/// logged and printed (prefixed with the binary's name) and a failure code. Takes any
/// error: a [`ConfigError`](super::ConfigError), an `anyhow::Error`, a `String`.
pub fn exit_code<E>(binary: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn Error + Send + Sync + 'static>>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn Error + Send + Sync + 'static> = e.into();
            let text = error_chain(e.as_ref());
            tracing::error!("{text}");
            eprintln!("{binary}: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause of the cause...`, each cause said once: many errors (I/O and
/// HTTP libraries' among them) already spell out their cause in their own message, and
/// a cause whose text is already there is skipped rather than repeated.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Completes on SIGINT or SIGTERM (what both binaries stop on).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Raises this process's soft limit of open files to its hard limit (every connection
/// is a file descriptor; the usual soft limit, 1,024, would cap a server far below
/// `RADIOVIS_MAX_CONNECTIONS`) and warns when `max_connections` is still above it:
/// accepts would then fail with "too many open files" before the limit answers with an
/// ERROR. Returns the soft limit in force.
pub fn raise_open_files_limit(max_connections: usize) -> Option<u64> {
    // Descriptors besides client connections: listeners, bus, cache, directory, logs.
    const SPARE: u64 = 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = (max_connections as u64).saturating_add(SPARE);
            if wanted > limit {
                tracing::warn!(
                    open_files = limit,
                    max_connections,
                    "RADIOVIS_MAX_CONNECTIONS is above what the open files limit allows: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower it"
                );
            } else {
                tracing::info!(open_files = limit, "open files limit");
            }
            Some(limit)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open files limit");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct SaysItsCause(#[source] std::io::Error);

    #[test]
    fn the_chain_says_each_cause_once() {
        let io = || std::io::Error::other("refused");
        assert_eq!(error_chain(&Outer(io())), "outer: refused");
        assert_eq!(error_chain(&SaysItsCause(io())), "wrapped: refused");
        let boxed: Box<dyn Error + Send + Sync> = "plain".into();
        assert_eq!(error_chain(boxed.as_ref()), "plain");
    }

    #[test]
    fn config_errors_read_as_before() {
        let e = super::super::ConfigError::invalid("RADIODNS_API_METHOD", "PUT is not GET or POST");
        assert_eq!(
            error_chain(&e),
            "RADIODNS_API_METHOD: PUT is not GET or POST"
        );
        let e = super::super::ConfigError::Listen {
            addr: ([127, 0, 0, 1], 1).into(),
            source: std::io::Error::other("in use"),
        };
        assert_eq!(
            error_chain(&e),
            "cannot listen on 127.0.0.1:1 (STOMP_IP/STOMP_PORT): in use"
        );
    }
}
