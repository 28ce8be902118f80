//! What a binary does around its work: the exit code (printing the error and its
//! causes) and the shutdown signal. Logging set-up is [`super::logging`]'s.

use std::error::Error;

use super::error::ConfigError;
use super::logging::EXIT_CONFIG;

/// The exit of a binary: success, or the error with its causes (see [`error_chain`])
/// logged and printed (prefixed with the binary's name) and a failure code:
/// [`EXIT_CONFIG`] (78) when a [`ConfigError`] is in the chain, else 1 (see
/// [`EXIT_CODES`](super::logging::EXIT_CODES)). Takes an `anyhow::Error` (whose
/// `as_ref` is the original error, so a [`ConfigError`] is still recognised) or a
/// boxed error.
pub fn exit_code<E>(binary: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e: &(dyn Error + 'static) = e.as_ref();
            let text = error_chain(e);
            tracing::error!("{text}");
            eprintln!("{binary}: {text}");
            if is_config_error(e) {
                std::process::ExitCode::from(EXIT_CONFIG)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Whether `error` or one of its causes is a [`ConfigError`] (an `anyhow::Error` with
/// context keeps the original error as a cause).
fn is_config_error(error: &(dyn Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(c) = e {
        if c.is::<ConfigError>() {
            return true;
        }
        e = c.source();
    }
    false
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

/// Keeps SIGHUP (`systemctl reload`, a closed terminal) from ending a process that has
/// nothing to reload (the signal's default action): each one is logged with `why`.
/// The handler is in place when this returns; call it from within the runtime.
pub fn log_sighup(why: &'static str) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: {why}");
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: it would stop the process")
        }
    }
    #[cfg(not(unix))]
    let _ = why;
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

/// Listens on `addr` with a deep accept queue: after a restart or a network blip
/// thousands of radios reconnect at once, and the default backlog (128) made the kernel
/// drop connection attempts that then waited a second to retry (seen in the benchmark).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
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

    #[derive(Debug, thiserror::Error)]
    #[error("context")]
    struct Context(#[source] super::super::ConfigError);

    #[test]
    fn a_configuration_error_exits_78_anything_else_1() {
        let config = || super::super::ConfigError::Zero { var: "X" };
        // Reached through a wrapper (what anyhow's context makes of it) too.
        let wrapped = Context(config());
        assert!(is_config_error(&config()));
        assert!(!is_config_error(&Outer(std::io::Error::other("refused"))));
        assert!(is_config_error(&wrapped));
        let code = |r: Result<(), Box<dyn Error + Send + Sync>>| exit_code("test", r);
        assert_eq!(code(Ok(())), std::process::ExitCode::SUCCESS);
        assert_eq!(
            code(Err(Box::new(config()))),
            std::process::ExitCode::from(EXIT_CONFIG)
        );
        assert_eq!(
            code(Err("bus gone".into())),
            std::process::ExitCode::FAILURE
        );
    }
}
