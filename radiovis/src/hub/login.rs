//! A station's login, whatever the transport (STOMP CONNECT, HTTP Basic): the
//! throttle per address, the bound on checks in flight, the directory's answer
//! (docs/protocol.md#connect), counted in [`Stats`](super::Stats).

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::backend::{Cache, DirectoryApi, MessageBus};

use super::Hub;

/// Why a login was refused. Its Display text is what a STOMP client reads in its
/// ERROR (docs/protocol.md#connect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// Too many failed logins from the client's address: refused without asking.
    #[error("Too many failed logins: try again later")]
    Throttled,
    /// The directory refused the credentials (after the failure's delay).
    #[error("Wrong credentials")]
    WrongCredentials,
    /// The directory failed, was too slow, or had no turn free in time.
    #[error("Cannot check credentials: directory unavailable")]
    DirectoryUnavailable,
}

impl<B: MessageBus, D: DirectoryApi, C: Cache> Hub<B, D, C> {
    /// Checks a station's credentials for a client at `ip`, throttled per address:
    /// the station id (the login's part before the first `.`) when accepted. A wrong
    /// password returns only after its delay (docs/protocol.md#connect).
    pub async fn log_in(
        &self,
        login: &str,
        passcode: &str,
        ip: IpAddr,
    ) -> Result<String, LoginRefused> {
        let throttle = self.login_throttle();
        let stats = self.stats();
        if throttle.is_blocked(ip).await {
            stats.auth_throttled.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                login,
                "login refused: too many failed logins from this address"
            );
            return Err(LoginRefused::Throttled);
        }
        let limit = self.config().directory_timeout;
        // Bounded: a slow directory must not collect every login in flight.
        let answer = match throttle.permit(limit).await {
            Some(_permit) => self.check_auth(login, passcode, ip).await,
            None => {
                tracing::warn!(login, "too many credential checks in flight");
                None
            }
        };
        match answer {
            Some(Ok(true)) => {
                throttle.succeeded(ip).await;
                stats.auth_succeeded.fetch_add(1, Ordering::Relaxed);
                let station = login.split('.').next().unwrap_or(login).to_owned();
                tracing::info!(login, station = %station, "logged in as a station");
                Ok(station)
            }
            Some(Ok(false)) => {
                let delay = throttle.failed(ip).await;
                stats.auth_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(login, ?delay, "wrong credentials");
                // Slows guessing down; no permit is held meanwhile.
                tokio::time::sleep(delay).await;
                Err(LoginRefused::WrongCredentials)
            }
            Some(Err(e)) => {
                stats.auth_unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(login, error = %e, "cannot check credentials");
                Err(LoginRefused::DirectoryUnavailable)
            }
            None => {
                stats.auth_unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(login, "directory timed out checking credentials");
                Err(LoginRefused::DirectoryUnavailable)
            }
        }
    }
}
