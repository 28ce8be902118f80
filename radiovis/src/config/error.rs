//! Why a configuration cannot start a binary. Every message names the variable to fix;
//! the wording is what operators have always seen (tests pin it).
//!
//! Messages do not repeat their cause: print the chain with
//! [`error_chain`](super::error_chain) (what [`exit_code`](super::exit_code) does),
//! which gives e.g. `RABBITMQ_URL: RabbitMQ configuration error: invalid AMQP URL: ...`.

use std::net::SocketAddr;
use std::time::TryFromFloatSecsError;

/// Any error a backend reports about its own configuration. Boxed so that this type
/// does not follow every backend's error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A configuration that cannot start a binary.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value the component it configures refused.
    #[error("{var}")]
    Invalid {
        /// The environment variable (and flag) holding the value.
        var: &'static str,
        /// What the component said about it.
        #[source]
        source: BoxError,
    },
    /// A number of seconds that is negative, not a number or too large.
    #[error("{var}: {value} is not a valid number of seconds")]
    Seconds {
        /// The environment variable holding the value.
        var: &'static str,
        /// The value given.
        value: f64,
        /// Why it is not a duration.
        #[source]
        source: TryFromFloatSecsError,
    },
    /// A number outside what the setting allows (too large to be meant, or too small
    /// to work): refused before anything runs, rather than a panic or a server that
    /// refuses every frame.
    #[error("{var}: {value} is out of range ({range})")]
    OutOfRange {
        /// The environment variable holding the value.
        var: &'static str,
        /// The value given.
        value: String,
        /// What is allowed, in words.
        range: String,
    },
    /// A count given as 0 where at least one is needed.
    #[error("{var} must be at least 1")]
    Zero {
        /// The environment variable holding the value.
        var: &'static str,
    },
    /// A period given as 0 seconds where at least one is needed.
    #[error("{var} must be at least 1 second")]
    ZeroSeconds {
        /// The environment variable holding the value.
        var: &'static str,
    },
    /// The directory file named by `var` could not be loaded. The loader's message
    /// comes first (it names the file), as it always did.
    #[error("{source} ({var})")]
    DirectoryFile {
        /// The environment variable naming the file.
        var: &'static str,
        /// Why it could not be loaded.
        #[source]
        source: crate::backend::memory::DirectoryFileError,
    },
    /// The demo directory file (`examples/directory.toml`, used when no variable names
    /// one) could not be loaded.
    #[error(transparent)]
    DemoDirectoryFile(crate::backend::memory::DirectoryFileError),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} (STOMP_IP/STOMP_PORT)")]
    Listen {
        /// The address from `STOMP_IP` and `STOMP_PORT`.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener's socket could not be opened.
    #[error("cannot listen on {addr} (HTTP_IP/HTTP_PORT; HTTP_PORT=off disables it)")]
    ListenHttp {
        /// The address from `HTTP_IP` and `HTTP_PORT`.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Another listening socket (TLS) could not be opened.
    #[error("cannot listen on {addr} ({vars})")]
    ListenOn {
        /// The address.
        addr: SocketAddr,
        /// The variables that chose it, e.g. `STOMP_IP/STOMP_TLS_PORT`.
        vars: &'static str,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The message bus could not be set up (its own message, as it always was).
    #[error("{source}")]
    MessageBus {
        /// The bus's error.
        #[source]
        source: BoxError,
    },
}

impl ConfigError {
    /// `var` holds a value that `source` refused.
    pub fn invalid(var: &'static str, source: impl Into<BoxError>) -> ConfigError {
        ConfigError::Invalid {
            var,
            source: source.into(),
        }
    }
}

/// A boolean variable that is not `True`/`False` (or one of the usual others). clap
/// puts the variable's name in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a boolean (True/False)")]
pub struct NotABool(pub String);
