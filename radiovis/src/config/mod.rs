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
//! | [`runtime`] | logging set-up, exit code, shutdown signal |
//! | [`error`] | [`ConfigError`]: what stops start-up, naming the variable |
//!
//! Everything is re-exported here, so `radiovis::config::StompArgs` and the like work.

pub mod args;
pub mod error;
pub mod runtime;
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
pub use runtime::{error_chain, exit_code, init_logging, raise_open_files_limit, shutdown_signal};
#[cfg(all(feature = "plugit", feature = "memcached"))]
pub use wiring::DirectoryBackends;
