//! WebSocket transports on upgraded HTTP connections (the listener's own, or
//! hyper's on a connection it serves):
//!
//! - EBU player mode on any `/topic/...` path (docs/protocol.md#websocket-ebu): the
//!   text `RADIOVISWEBSOCKET:HELLO\0`, then every MESSAGE of `<path>/text` and
//!   `<path>/image` (replays first) as one text message holding the STOMP 1.0 frame
//!   without its NUL; a bad path gets `RADIOVISWEBSOCKET:ERROR:<reason>\0` and a close.
//! - STOMP over WebSocket on `/stomp` (docs/protocol.md#stomp-over-websocket): the
//!   full STOMP session of the TCP port, over [`WsBytes`], with the subprotocols
//!   `v12.stomp`, `v11.stomp`, `v10.stomp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::connection::{Io, RawUpgrade, Upgraded};
use super::watch::{raw_frames, Ended, Watch};
use super::ws_bytes::WsBytes;
use super::{Abort, Body, Place};
use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::{Hub, Transport};
use crate::StompHub;

/// STOMP subprotocols, preferred first.
const STOMP_PROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// What a browser may send in one WebSocket message (EBU mode: nothing useful; STOMP:
/// frames, bounded again by the session's own limits).
const MAX_MESSAGE: usize = 1024 * 1024;

/// tungstenite's read buffer per WebSocket, and the most it reads at once. It grows
/// to the largest message read and stays so: a browser's CONNECT and SUBSCRIBE frames
/// fit in 256 bytes when it starts at 128 (at 256 they made it 512). A large message
/// is read 128 bytes per call; browsers send small frames, broadcasters publish over
/// STOMP/TCP or HTTP.
const READ_BUFFER: usize = 128;

/// The socket of an upgraded connection.
type Socket = Box<dyn Io>;

/// Where the upgraded connection comes from: the listener's own reader
/// (docs/protocol.md#http-listener), or hyper on a connection it serves.
enum Upgrade {
    Raw(oneshot::Receiver<Upgraded>),
    Hyper(OnUpgrade),
}

impl Upgrade {
    fn of<T>(req: &mut Request<T>) -> Self {
        match RawUpgrade::take(req) {
            Some(raw) => Upgrade::Raw(raw),
            None => Upgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The connection, once the `101` answer is written.
    async fn wait(self) -> Option<Upgraded> {
        match self {
            Upgrade::Raw(rx) => rx.await.ok(),
            Upgrade::Hyper(on) => match on.await {
                Ok(upgraded) => Some(Upgraded {
                    io: Box::new(TokioIo::new(upgraded)),
                    read: Vec::new(),
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    None
                }
            },
        }
    }
}

/// Checks a WebSocket upgrade request; the `101` answer (with `protocol` chosen) and
/// the upgrade to wait for, or the answer refusing it.
fn accept<T>(
    req: &mut Request<T>,
    protocol: Option<&'static str>,
) -> Result<(Response<Body>, Upgrade), Box<Response<Body>>> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(super::error(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade is required on this path",
        )));
    };
    if !upgrade || !version_ok {
        return Err(Box::new(super::error(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade (version 13) is required on this path",
        )));
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = Upgrade::of(req);
    let mut response = Response::new(super::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok((response, on_upgrade))
}

async fn websocket(on_upgrade: Upgrade) -> Option<WebSocketStream<Socket>> {
    let upgraded = on_upgrade.wait().await?;
    // Small buffers: tungstenite's defaults (128 KiB to read, 128 KiB to write) would
    // make an idle player cost 25 times a STOMP radio (BENCHMARKS.md).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    Some(
        WebSocketStream::from_partially_read(
            upgraded.io,
            upgraded.read,
            Role::Server,
            Some(config),
        )
        .await,
    )
}

/// STOMP over WebSocket: the session of the STOMP port on the upgraded connection.
pub(super) fn stomp<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    server: &StompHub<B, D, C>,
    mut req: Request<T>,
    peer: SocketAddr,
) -> Response<Body> {
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_ascii_lowercase()))
        .collect();
    let protocol = STOMP_PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p));
    if !offered.is_empty() && protocol.is_none() {
        return super::error(
            StatusCode::BAD_REQUEST,
            "no supported subprotocol: offer v12.stomp, v11.stomp or v10.stomp",
        );
    }
    let (response, on_upgrade) = match accept(&mut req, protocol) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let server = server.clone();
    let place = Place::take(&req);
    tokio::spawn(async move {
        if let Some(ws) = websocket(on_upgrade).await {
            // The session takes a place of its own: give back the HTTP connection's
            // first, so that the connection is never counted twice.
            drop(place);
            server.serve_stream(WsBytes::new(ws), peer, "websocket");
        }
    });
    response
}

/// EBU player mode for the service at `path` (`/topic/...`, without `/text`). The
/// upgraded connection keeps the HTTP connection's place under the connection limits.
pub(super) fn ebu<T, B: MessageBus, D: DirectoryApi, C: Cache>(
    server: &StompHub<B, D, C>,
    mut req: Request<T>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let (response, on_upgrade) = match accept(&mut req, None) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    // The HTTP connection's place under the limits goes along with the player.
    let place = Place::take(&req);
    // The connection's token: the fan-out cancels it when the player does not keep up.
    let kill = Abort::of(&req);
    let hub = server.hub().clone();
    tokio::spawn(async move {
        let Some(mut ws) = websocket(on_upgrade).await else {
            return;
        };
        tracing::info!(%peer, %path, "EBU player WebSocket connected");
        let ended = ebu_session(hub, &mut ws, kill, peer, &path).await;
        tracing::info!(%peer, %path, reason = %ended, "EBU player WebSocket closed");
        drop(place);
    });
    response
}

async fn ebu_session<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: Arc<Hub<B, D, C>>,
    ws: &mut WebSocketStream<Socket>,
    kill: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
    path: &str,
) -> String {
    // What this future holds while it waits is what an idle player costs: the socket
    // is its caller's; the start (hello, subscriptions, replays) and each write are
    // futures of their own (boxed), so that the wait holds only the loop's state.
    let w = Writer {
        limit: hub.config().write_timeout,
        kill: kill.clone(),
    };
    let watch = match Box::pin(ebu_start(hub, ws, &w, kill, peer, path)).await {
        Ok(watch) => watch,
        Err(reason) => return reason,
    };
    loop {
        tokio::select! {
            woke = watch.next() => match woke {
                Ok(()) => {
                    // A write blocked past the write timeout is a slow consumer; so is
                    // an overflow of the queue meanwhile (the next `next`).
                    if let Err(e) = Box::pin(w.send_frames(ws, watch.take())).await {
                        return e;
                    }
                }
                Err(Ended::Shutdown) => {
                    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), ws.close(None))).await;
                    return "server shutting down".into();
                }
                Err(Ended::SlowConsumer) => return "slow consumer: outbound queue full".into(),
            },
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Close(_))) | None => return "client closed".into(),
                Some(Err(e)) => return format!("WebSocket error: {e}"),
                // What the player sends is not read (pings are answered).
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Greets an EBU player, subscribes it to `<path>/text` and `<path>/image` and sends
/// their last messages; the player's subscriptions, or why it ended.
async fn ebu_start<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: Arc<Hub<B, D, C>>,
    ws: &mut WebSocketStream<Socket>,
    w: &Writer,
    kill: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
    path: &str,
) -> Result<Watch<B, D, C>, String> {
    let mut watch = Watch::new(hub, peer, kill, Transport::WebSocket);
    if w.send(ws, "RADIOVISWEBSOCKET:HELLO\0".into())
        .await
        .is_err()
    {
        return Err("client gone".into());
    }
    let mut replays = Vec::new();
    for suffix in ["/text", "/image"] {
        match watch.subscribe(&format!("{path}{suffix}")).await {
            Ok(Some((seq, item))) => {
                let mut bytes = bytes::BytesMut::from(&item.head[..]);
                bytes.extend_from_slice(&item.tail);
                replays.push((seq, bytes));
            }
            Ok(None) => {}
            Err(e) => {
                // The player splits on ':' and shows the third part.
                let reason = e.to_string().replace(':', " ");
                let _ = w
                    .send(ws, format!("RADIOVISWEBSOCKET:ERROR:{reason}\0"))
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return Err(e.to_string());
            }
        }
    }
    replays.sort_by_key(|(seq, _)| *seq);
    for (_, bytes) in replays {
        if w.send_frames(ws, bytes).await.is_err() {
            return Err("client gone".into());
        }
    }
    Ok(watch)
}

/// Writes to an EBU player's WebSocket, giving up when a write makes no progress for
/// `limit` or the fan-out declares the client a slow consumer.
struct Writer {
    limit: Duration,
    kill: tokio_util::sync::CancellationToken,
}

impl Writer {
    /// Sends queued MESSAGE frames, one text message each, without their NUL.
    async fn send_frames(
        &self,
        ws: &mut WebSocketStream<Socket>,
        bytes: bytes::BytesMut,
    ) -> Result<(), String> {
        // Queued as a 1.0 radio receives them (docs/protocol.md#websocket-ebu).
        for encoded in raw_frames(bytes) {
            let without_nul = encoded.strip_suffix(b"\0").unwrap_or(&encoded);
            let text = String::from_utf8_lossy(without_nul).into_owned();
            self.send(ws, text).await?;
        }
        Ok(())
    }

    async fn send(&self, ws: &mut WebSocketStream<Socket>, text: String) -> Result<(), String> {
        let limit = self.limit;
        tokio::select! {
            r = tokio::time::timeout(limit, ws.send(Message::text(text))) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("WebSocket error: {e}")),
                Err(_) => Err(format!("slow consumer: no write progress within {limit:?}")),
            },
            _ = self.kill.cancelled() => Err("slow consumer or shutdown while writing".into()),
        }
    }
}
