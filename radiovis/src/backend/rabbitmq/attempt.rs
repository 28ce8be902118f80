//! How one attempt to reach the broker failed: "fix the configuration" (a refused
//! login, a queue or exchange declared differently) or "try again later" (broker down,
//! network, timeout). Shared by the supervisor and the topology declarations.

use std::fmt;

use crate::backend::Reason;

/// AMQP reply codes that mean "fix the configuration", not "try again later".
pub(super) const ACCESS_REFUSED: u16 = 403;
pub(super) const NOT_FOUND: u16 = 404;
pub(super) const PRECONDITION_FAILED: u16 = 406;
pub(super) const NOT_ALLOWED: u16 = 530;

/// One failed attempt of the background task.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// Will not get better by itself.
    Config(Reason),
    /// Broker down, network, timeout: retry.
    Transient(Reason),
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Config(m) | AttemptError::Transient(m) => f.write_str(m),
        }
    }
}

/// The AMQP reply code of a protocol error.
pub(super) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// Classifies an error of the connection or of a declaration.
pub(super) fn classify(context: &str, e: &lapin::Error) -> AttemptError {
    let reason = Reason::caused_by(format!("{context}: {e}"), e.clone());
    match reply_code(e) {
        Some(ACCESS_REFUSED | NOT_ALLOWED | PRECONDITION_FAILED) => AttemptError::Config(reason),
        _ => AttemptError::Transient(reason),
    }
}
