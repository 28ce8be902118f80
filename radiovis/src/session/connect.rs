//! CONNECT negotiation: protocol version, station credentials, heart-beats, then
//! CONNECTED (docs/protocol.md#connect).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::LoginRefused;
use crate::monitoring::{Event, SessionInfo};
use crate::stomp::{Command, Frame, Version};

use super::{Session, SessionError, SessionIo};

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    /// Waits for CONNECT (bounded in time) and answers it.
    pub(super) async fn connect_phase(&mut self) -> Result<(), SessionError> {
        let limit = self.hub.config().connect_timeout;
        let queue = self.queue.clone();
        let first = tokio::select! {
            r = tokio::time::timeout(limit, self.read_frame()) => r,
            _ = queue.killed() => return Err(SessionError::Shutdown),
        };
        let frame = match first {
            Err(_) => {
                let msg = format!(
                    "timed out waiting for CONNECT: limit is {} s",
                    limit.as_secs_f64()
                );
                self.write_frame(&Frame::error(msg)).await?;
                return Err(SessionError::ConnectTimeout(limit));
            }
            Ok(Err(SessionError::Codec(e))) => {
                self.write_frame(&Frame::error(e.to_string())).await?;
                return Err(e.into());
            }
            Ok(r) => r?,
        };
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            tracing::warn!(
                command = frame.command.as_str(),
                "first frame is not CONNECT"
            );
            self.write_frame(&Frame::error("Expected CONNECT")).await?;
            return Err(SessionError::ConnectRefused(format!(
                "{} instead of CONNECT",
                frame.command.as_str()
            )));
        }

        let Some(version) = Version::negotiate(frame.get("accept-version")) else {
            let err = Frame::error("Supported protocol versions are 1.0,1.1,1.2")
                .header("version", "1.0,1.1,1.2");
            self.write_frame(&err).await?;
            return Err(SessionError::ConnectRefused(
                "no common protocol version".into(),
            ));
        };
        self.version = version;
        self.decoder.set_version(version);

        let login = frame.get("login").unwrap_or("").trim();
        let passcode = frame.get("passcode").unwrap_or("").trim();
        if !login.is_empty() || !passcode.is_empty() {
            // Boxed: it runs once per login, and only for broadcasters.
            Box::pin(self.log_in(login, passcode)).await?;
        }

        let session_id = uuid::Uuid::new_v4().to_string();
        let mut connected = Frame::new(Command::Connected);
        if version != Version::V1_0 {
            let (sx, sy) = self.hub.config().heartbeat;
            let (cx, cy) = parse_heartbeat(frame.get("heart-beat"));
            self.hb_send = negotiate_interval(sx, cy);
            self.hb_recv = negotiate_interval(sy, cx);
            connected = connected
                .header("version", version.as_str())
                .header(
                    "heart-beat",
                    format!("{},{}", sx.as_millis(), sy.as_millis()),
                )
                .header("server", self.hub.config().server_name.clone());
        }
        if let Some(r) = frame.get("request-id").filter(|v| !v.is_empty()) {
            connected = connected.header("response-id", r);
        }
        if let Some(r) = frame.get("receipt").filter(|v| !v.is_empty()) {
            connected = connected.header("receipt-id", r);
        }
        connected = connected.header("session", session_id.clone());
        self.write_frame(&connected).await?;
        self.connected = true;
        if self.hub.monitor().enabled() {
            let info = Arc::new(SessionInfo {
                session_id: session_id.as_str().into(),
                peer: self.peer,
            });
            self.hub.monitor().emit(Event::Connection(info.clone()));
            self.info = Some(info);
        }
        tracing::info!(
            session = %session_id,
            version = version.as_str(),
            anonymous = self.station.is_none(),
            heartbeat_send = ?self.hb_send,
            heartbeat_recv = ?self.hb_recv,
            "connected"
        );
        Ok(())
    }
}

impl<I: SessionIo, B: MessageBus, D: DirectoryApi, C: Cache> Session<I, B, D, C> {
    /// Checks a station's credentials with the directory, throttled per address
    /// (docs/protocol.md#connect): an ERROR and `Err` when refused.
    async fn log_in(&mut self, login: &str, passcode: &str) -> Result<(), SessionError> {
        let ip = canonical_ip(self.peer.ip());
        let hub = self.hub.clone();
        match hub.log_in(login, passcode, ip).await {
            Ok(station) => {
                self.station = Some(station);
                Ok(())
            }
            Err(refused) => {
                let reason = match refused {
                    LoginRefused::Throttled => "login throttled",
                    LoginRefused::WrongCredentials => "wrong credentials",
                    LoginRefused::DirectoryUnavailable => "directory unavailable",
                };
                self.write_frame(&Frame::error(refused.to_string())).await?;
                Err(SessionError::ConnectRefused(reason.to_owned()))
            }
        }
    }
}

/// Longest heart-beat interval honoured (one day).
const MAX_HEARTBEAT_MS: u64 = 86_400_000;

/// Parses a `heart-beat: cx,cy` header (milliseconds); absent or invalid means 0,0.
fn parse_heartbeat(value: Option<&str>) -> (Duration, Duration) {
    let Some((a, b)) = value.and_then(|v| v.split_once(',')) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    // Clamped to a day: a client's absurd value must not overflow the timer arithmetic.
    let ms = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map(|v| Duration::from_millis(v.min(MAX_HEARTBEAT_MS)))
            .unwrap_or_default()
    };
    (ms(a), ms(b))
}

/// The heart-beat interval of one direction: both sides must want it; the slower wins.
fn negotiate_interval(ours: Duration, theirs: Duration) -> Option<Duration> {
    (!ours.is_zero() && !theirs.is_zero()).then(|| ours.max(theirs))
}

/// IPv4 peers reached through an IPv6 socket are reported as IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_negotiation() {
        assert_eq!(
            parse_heartbeat(Some("1000,2000")),
            (Duration::from_millis(1000), Duration::from_millis(2000))
        );
        assert_eq!(parse_heartbeat(Some("x")), (Duration::ZERO, Duration::ZERO));
        let day = Duration::from_millis(MAX_HEARTBEAT_MS);
        assert_eq!(
            parse_heartbeat(Some("18446744073709551615,18446744073709551615")),
            (day, day),
            "absurd values are clamped, never overflow the timers"
        );
        assert_eq!(parse_heartbeat(None), (Duration::ZERO, Duration::ZERO));
        let s = Duration::from_secs(10);
        assert_eq!(
            negotiate_interval(s, Duration::from_secs(20)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(negotiate_interval(s, Duration::ZERO), None);
        assert_eq!(negotiate_interval(Duration::ZERO, s), None);
    }
}
