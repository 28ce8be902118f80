//! Configuration of both binaries (feature `cli`): the original's environment variables
//! (same names, same defaults) plus matching command-line flags. A bad value stops
//! start-up with a message naming the variable (clap prints `invalid value 'x' for
//! '--stomp-port <STOMP_PORT>'`; the checks here print e.g. `RADIOVIS_OUTBOUND_QUEUE
//! must be at least 1`).
//!
//! | module | job |
//! |---|---|
//! | [`args`] | clap argument groups -> the library's typed configurations |
//! | [`wiring`] | configuration -> concrete backends (the only place naming them) |
//! | [`logging`] | log format, the effective settings line (secrets masked), exit codes |
//! | [`runtime`] | exit code, shutdown signal, listening sockets |
//! | `tls` | TLS listeners and their certificate (feature `tls`) |
//! | [`error`] | [`ConfigError`]: what stops start-up, naming the variable |
//!
//! Everything is re-exported here, so `radiovis::config::StompArgs` and the like work.

pub mod args;
pub mod error;
pub mod logging;
pub mod runtime;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(all(feature = "plugit", feature = "memcached"))]
pub mod wiring;

pub use args::{
    parse_bool, secs, DirectoryArgs, FallbackArgs, HubArgs, MonitoringArgs, RabbitArgs, StompArgs,
};
#[cfg(feature = "http")]
pub use args::{FallbackHttpArgs, OpsArgs};
#[cfg(feature = "http")]
pub use args::{HttpArgs, PortOrOff};
pub use error::{BoxError, ConfigError, NotABool};
pub use logging::{
    effective_settings, init_logging, log_settings, parse_cli, redacted_url, LogArgs, LogFormat,
    EXIT_CODES, EXIT_CONFIG,
};
pub use runtime::{
    error_chain, exit_code, listen, log_sighup, raise_open_files_limit, shutdown_signal,
};
#[cfg(feature = "tls")]
pub use tls::{TlsArgs, TlsListeners};
#[cfg(all(feature = "plugit", feature = "memcached"))]
pub use wiring::DirectoryBackends;
