//! One STOMP connection's life: CONNECT (version, credentials, heart-beats) -> loop over
//! { client frame | queued MESSAGE | heart-beat due } -> close.
//!
//! The session is a single task that owns both halves of its socket. It reads only when
//! the socket is readable (no read buffer is held by an idle connection), writes its
//! own replies (CONNECTED, RECEIPT, ERROR, replayed last message) directly, and drains
//! its bounded outbound queue, coalescing queued MESSAGE frames into one write. The hub
//! cancels `kill` when the queue overflows: the session then closes at once, even in
//! the middle of a blocked write.
//!
//! Version rules (behaviour.md §3): in a 1.0 session a `receipt` is answered before the
//! frame takes effect and an ERROR leaves the connection open; in 1.1/1.2 the RECEIPT
//! follows success, and a failing frame gets an ERROR (carrying `receipt-id`) and the
//! connection closes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{BusError, BusMessage, Cache, DirectoryApi, LogStore, MessageBus};
use crate::hub::{IndexKey, Shared, SubEntry};
use crate::monitoring::{Event, SessionInfo};
use crate::outbound::{encode_head, Outbound, OutboundQueue};
use crate::stomp::{CodecError, Command, Decoder, Frame, Version};
use crate::topic::{self, TopicError};

/// Why a session ended (logged when it closes).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    PeerClosed,
    #[error("client disconnected")]
    Disconnected,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("CONNECT refused: {0}")]
    ConnectRefused(String),
    #[error("no heart-beat from client within {0:?}")]
    HeartbeatTimeout(Duration),
    #[error("slow consumer: outbound queue full")]
    SlowConsumer,
    #[error("server shutting down")]
    Shutdown,
    #[error("closed after ERROR: {0}")]
    FrameFailed(String),
}

/// Why one frame was refused; the Display text is the ERROR's `message` header.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("I need a destination")]
    NoDestination,
    #[error("{0}")]
    BadDestination(#[from] TopicError),
    #[error("too many subscriptions: limit is {0} per session")]
    TooManySubscriptions(usize),
    #[error("UNSUBSCRIBE needs an id or a destination")]
    NoIdOrDestination,
    #[error("unknown subscription id {0:?}")]
    UnknownId(String),
    #[error("not subscribed to {0:?}")]
    NotSubscribed(String),
    #[error("You cannot do that.")]
    NotAuthenticated,
    #[error("You cannot do that. (no rights on {0:?})")]
    NotAllowed(String),
    #[error("cannot check channel rights: directory unavailable")]
    DirectoryUnavailable,
    #[error("message not sent: {0}")]
    Bus(#[from] BusError),
}

/// What to do after a frame.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One subscription as the session knows it.
struct SubRecord {
    sub: u64,
    key: IndexKey,
    destination: String,
}

/// A session's subscriptions by key (id, or destination when the client gave no id).
/// A small vector: sessions have one or two subscriptions, and a map would allocate
/// several buckets per radio.
#[derive(Default)]
struct Subscriptions(Vec<(String, SubRecord)>);

impl Subscriptions {
    fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    fn remove(&mut self, key: &str) -> Option<SubRecord> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }
    fn insert(&mut self, key: String, record: SubRecord) {
        self.0.push((key, record));
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn iter(&self) -> impl Iterator<Item = (&String, &SubRecord)> {
        self.0.iter().map(|(k, r)| (k, r))
    }
    fn drain(&mut self) -> impl Iterator<Item = (String, SubRecord)> + '_ {
        self.0.drain(..)
    }
}

/// Runs a session to its end and cleans up after it.
pub(crate) async fn run<B, D, C, L>(
    shared: Arc<Shared<B, D, C, L>>,
    mut stream: TcpStream,
    peer: SocketAddr,
) where
    B: MessageBus,
    D: DirectoryApi,
    C: Cache,
    L: LogStore,
{
    let conn = shared.next_id();
    let span = tracing::info_span!("session", %peer, conn);
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    async {
        let (reader, writer) = stream.split();
        let mut session = Session {
            decoder: Decoder::new(shared.config.limits),
            shared: shared.clone(),
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version: Version::V1_0,
            peer,
            conn,
            station: None,
            subs: Subscriptions::default(),
            queue: Arc::new(OutboundQueue::new(shared.config.outbound_queue)),
            kill: shared.shutdown.child_token(),
            hb_send: None,
            hb_recv: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            info: None,
            connected: false,
        };
        let reason = session.run().await;
        session.queue.close();
        session.unsubscribe_all();
        if let Some(info) = session.info.take() {
            shared.config.monitor.emit(Event::Disconnection(info));
        }
        match &reason {
            SessionError::PeerClosed | SessionError::Disconnected | SessionError::Shutdown => {
                tracing::info!(reason = %reason, "session closed")
            }
            _ => tracing::warn!(reason = %reason, "session closed"),
        }
    }
    .instrument(span)
    .await;
    shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

struct Session<'a, B, D, C, L> {
    shared: Arc<Shared<B, D, C, L>>,
    reader: ReadHalf<'a>,
    writer: WriteHalf<'a>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    version: Version,
    peer: SocketAddr,
    conn: u64,
    /// Station id when logged in as a broadcaster.
    station: Option<String>,
    /// Subscriptions by id (or by destination when the client gave no id).
    subs: Subscriptions,
    /// MESSAGE frames the fan-out queued for this connection.
    queue: Arc<OutboundQueue>,
    kill: CancellationToken,
    /// Heart-beat intervals negotiated with a 1.1/1.2 client.
    hb_send: Option<Duration>,
    hb_recv: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    /// Who this session is, for monitoring events (only when monitoring is on).
    info: Option<Arc<SessionInfo>>,
    /// CONNECTED was sent.
    connected: bool,
}

/// Largest chunk written at once when draining the queue.
const WRITE_BATCH: usize = 64 * 1024;

impl<B: MessageBus, D: DirectoryApi, C: Cache, L: LogStore> Session<'_, B, D, C, L> {
    async fn run(&mut self) -> SessionError {
        // Boxed: the CONNECT phase (directory calls) is large and runs once; keeping it
        // out of the session's future keeps every idle connection small.
        let result = match Box::pin(self.connect_phase()).await {
            Ok(()) => self.main_loop().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => SessionError::Disconnected,
            Err(e) => {
                Box::pin(self.close_after(&e)).await;
                e
            }
        }
    }

    /// Tells a client that broke the protocol or a limit why it is closed (an ERROR
    /// naming the limit), then closes gracefully: our side first, discarding what the
    /// client still sends for a moment, so that its kernel does not answer our close
    /// with a reset that would destroy the ERROR before the client reads it.
    async fn close_after(&mut self, reason: &SessionError) {
        if let SessionError::FrameFailed(_) = reason {
            // Its ERROR is written already.
            return self.linger().await;
        }
        let SessionError::Codec(e) = reason else {
            return;
        };
        if !self.connected {
            // The CONNECT phase already answered.
            return self.linger().await;
        }
        let error = Frame::error(e.to_string());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.write_frame(&error)).await;
        self.linger().await;
    }

    async fn linger(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        let mut sink = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut discarded = 0usize;
        while discarded < 16 * 1024 * 1024 {
            match tokio::time::timeout_at(deadline, self.reader.readable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            match self.reader.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Waits for CONNECT (bounded in time) and answers it.
    async fn connect_phase(&mut self) -> Result<(), SessionError> {
        let limit = self.shared.config.connect_timeout;
        let kill = self.kill.clone();
        let first = tokio::select! {
            r = tokio::time::timeout(limit, self.read_frame()) => r,
            _ = kill.cancelled() => return Err(SessionError::Shutdown),
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
            let ip = canonical_ip(self.peer.ip());
            let check = tokio::time::timeout(
                self.shared.config.directory_timeout,
                self.shared.directory.check_auth(login, passcode, ip),
            )
            .await;
            match check {
                Ok(Ok(true)) => {
                    let station = login.split('.').next().unwrap_or(login).to_owned();
                    tracing::info!(login, station = %station, "logged in as a station");
                    self.station = Some(station);
                }
                Ok(Ok(false)) => {
                    tracing::warn!(login, "wrong credentials");
                    self.write_frame(&Frame::error("Wrong credentials")).await?;
                    return Err(SessionError::ConnectRefused("wrong credentials".into()));
                }
                Ok(Err(e)) => {
                    tracing::warn!(login, error = %e, "cannot check credentials");
                    self.write_frame(&Frame::error(
                        "Cannot check credentials: directory unavailable",
                    ))
                    .await?;
                    return Err(SessionError::ConnectRefused(e.to_string()));
                }
                Err(_) => {
                    tracing::warn!(login, "directory timed out checking credentials");
                    self.write_frame(&Frame::error(
                        "Cannot check credentials: directory unavailable",
                    ))
                    .await?;
                    return Err(SessionError::ConnectRefused("directory timeout".into()));
                }
            }
        }

        let session_id = uuid::Uuid::new_v4().to_string();
        let mut connected = Frame::new(Command::Connected);
        if version != Version::V1_0 {
            let (sx, sy) = self.shared.config.heartbeat;
            let (cx, cy) = parse_heartbeat(frame.get("heart-beat"));
            self.hb_send = negotiate_interval(sx, cy);
            self.hb_recv = negotiate_interval(sy, cx);
            connected = connected
                .header("version", version.as_str())
                .header(
                    "heart-beat",
                    format!("{},{}", sx.as_millis(), sy.as_millis()),
                )
                .header("server", self.shared.config.server_name.clone());
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
        if self.shared.config.monitor.enabled() {
            let info = Arc::new(SessionInfo {
                session_id: session_id.as_str().into(),
                peer: self.peer,
            });
            self.shared
                .config
                .monitor
                .emit(Event::Connection(info.clone()));
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

    async fn main_loop(&mut self) -> Result<(), SessionError> {
        // `kill` is a child of the hub's shutdown token: one wait covers both.
        // `kill` is waited on by one future for the whole loop, not one per turn.
        let kill = self.kill.clone();
        let killed = kill.cancelled();
        tokio::pin!(killed);
        // Heart-beat sessions get one boxed timer (next send or receive deadline);
        // 1.0 sessions, the bulk of radios, hold none.
        let mut timer = (self.hb_send.is_some() || self.hb_recv.is_some())
            .then(|| Box::pin(tokio::time::sleep_until(Instant::now())));
        loop {
            while let Some(frame) = self.decoder.decode(&mut self.rbuf)? {
                // Boxed: frames are rare for a radio, and the idle wait below is what
                // every connection holds in memory.
                if Box::pin(self.handle(frame)).await? == Flow::Close {
                    return Ok(());
                }
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // Idle connections hold no read buffer.
                self.rbuf = BytesMut::new();
            }
            let send_at = self.hb_send.map(|d| self.last_write + d);
            let recv_deadline = self.hb_recv.map(|d| self.last_read + d + d / 2);
            if let Some(t) = timer.as_mut() {
                let next = match (send_at, recv_deadline) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => Instant::now() + Duration::from_secs(3600),
                };
                t.as_mut().reset(next);
            }
            // The select only decides; the work happens after it, so the session's
            // future never holds the waiting futures and a write at the same time.
            let event = tokio::select! {
                biased;
                _ = &mut killed => Wake::Killed,
                _ = self.queue.ready() => Wake::Queued,
                r = self.reader.readable() => Wake::Readable(r),
                _ = wait_timer(&mut timer) => Wake::Timer,
            };
            match event {
                Wake::Killed => {
                    if self.shared.shutdown.is_cancelled() {
                        self.flush_queue_on_shutdown().await;
                        return Err(SessionError::Shutdown);
                    }
                    return Err(SessionError::SlowConsumer);
                }
                Wake::Queued => self.write_queued().await?,
                Wake::Readable(r) => {
                    r?;
                    self.read_some()?;
                }
                Wake::Timer => {
                    let now = Instant::now();
                    if recv_deadline.is_some_and(|d| now >= d) {
                        let d = self.hb_recv.unwrap_or_default();
                        return Err(SessionError::HeartbeatTimeout(d + d / 2));
                    }
                    if send_at.is_some_and(|a| now >= a) {
                        self.write_raw(b"\n").await?;
                    }
                }
            }
        }
    }

    /// Reads what the socket has (it reported readable). EOF ends the session.
    fn read_some(&mut self) -> Result<(), SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        match self.reader.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(SessionError::PeerClosed),
            Ok(_) => {
                self.last_read = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads until one whole frame is buffered (used before CONNECT).
    async fn read_frame(&mut self) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(f);
            }
            self.reader.readable().await?;
            self.read_some()?;
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        tracing::debug!(
            command = frame.command.as_str(),
            headers = frame.headers.len(),
            "frame"
        );
        let receipt = frame
            .get("receipt")
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        let v10 = self.version == Version::V1_0;
        if v10 {
            if let Some(r) = &receipt {
                self.write_frame(&Frame::new(Command::Receipt).header("receipt-id", r.clone()))
                    .await?;
            }
        }
        let result = match frame.command {
            Command::Disconnect => Ok(Flow::Close),
            Command::Subscribe => self.subscribe(&frame).await,
            Command::Unsubscribe => self.unsubscribe(&frame),
            Command::Send => self.send(frame).await,
            _ => {
                tracing::debug!("frame ignored");
                Ok(Flow::Continue)
            }
        };
        match result {
            Ok(flow) => {
                if !v10 {
                    if let Some(r) = receipt {
                        self.write_frame(&Frame::new(Command::Receipt).header("receipt-id", r))
                            .await?;
                    }
                }
                Ok(flow)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, "frame refused");
                let mut err = Frame::error(message.clone());
                if !v10 {
                    if let Some(r) = receipt {
                        err = err.header("receipt-id", r);
                    }
                }
                self.write_frame(&err).await?;
                // A 1.0 session survives a refused frame, as with the original; a
                // client over a limit does not (behaviour.md §10).
                let over_limit = matches!(e, FrameError::TooManySubscriptions(_));
                if v10 && !over_limit {
                    Ok(Flow::Continue)
                } else {
                    Err(SessionError::FrameFailed(message))
                }
            }
        }
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<Flow, FrameError> {
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or(FrameError::NoDestination)?
            .to_owned();
        if topic::is_fm(&destination) {
            topic::check_shape(&destination)?;
        }
        let id = frame.get("id").filter(|i| !i.is_empty()).map(str::to_owned);
        let key = id.clone().unwrap_or_else(|| destination.clone());
        let max = self.shared.config.max_subscriptions;
        if !self.subs.contains_key(&key) && self.subs.len() >= max {
            return Err(FrameError::TooManySubscriptions(max));
        }
        if let Some(old) = self.subs.remove(&key) {
            self.shared
                .remove_subscription(&old.key, (self.conn, old.sub));
        }
        let index_key = self.shared.index_key_for(&destination).await;
        // 1.1/1.2 MESSAGE frames must name their subscription; use the destination when
        // the client gave no id.
        let sub_header = match (self.version, &id) {
            (Version::V1_0, id) => id.as_deref(),
            (_, Some(id)) => Some(id.as_str()),
            (_, None) => Some(destination.as_str()),
        };
        let head = encode_head(&destination, sub_header, self.version);
        let sub = self.shared.next_id();
        self.shared.add_subscription(
            &index_key,
            (self.conn, sub),
            SubEntry {
                head: head.clone(),
                version: self.version,
                queue: self.queue.clone(),
                kill: self.kill.clone(),
                monitor: self
                    .info
                    .as_ref()
                    .map(|i| (i.clone(), Arc::from(destination.as_str()))),
            },
        );
        if let Some(info) = &self.info {
            self.shared.config.monitor.emit(Event::Subscription(
                info.clone(),
                destination.as_str().into(),
            ));
        }
        tracing::debug!(%destination, id = ?id, key = ?index_key, "subscribed");
        let replay = frame.get("x-ebu-nofastreply") != Some("yes");
        let last = replay.then(|| self.shared.last_for(&index_key)).flatten();
        self.subs.insert(
            key,
            SubRecord {
                sub,
                key: index_key,
                destination,
            },
        );
        if let Some(last) = last {
            let item = Outbound {
                head,
                tail: last.tail(self.version),
            };
            // A failed write surfaces on the next read or write of the main loop.
            if let Err(e) = self.write_message(item).await {
                tracing::debug!(error = %e, "replay not written");
            }
        }
        Ok(Flow::Continue)
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Flow, FrameError> {
        let id = frame.get("id").filter(|i| !i.is_empty());
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty());
        let key = match (id, destination) {
            (Some(id), _) => {
                if !self.subs.contains_key(id) {
                    return Err(FrameError::UnknownId(id.to_owned()));
                }
                id.to_owned()
            }
            (None, Some(d)) => self
                .subs
                .iter()
                .find(|(_, r)| r.destination == d)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| FrameError::NotSubscribed(d.to_owned()))?,
            (None, None) => return Err(FrameError::NoIdOrDestination),
        };
        if let Some(record) = self.subs.remove(&key) {
            self.shared
                .remove_subscription(&record.key, (self.conn, record.sub));
            tracing::debug!(destination = %record.destination, "unsubscribed");
            self.emit_unsubscription(&record);
        }
        Ok(Flow::Continue)
    }

    async fn send(&mut self, frame: Frame) -> Result<Flow, FrameError> {
        let Some(station) = self.station.clone() else {
            return Err(FrameError::NotAuthenticated);
        };
        let destination = frame
            .get("destination")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or(FrameError::NoDestination)?;
        let channels = self.shared.station_channels(&station).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot load station channels");
            FrameError::DirectoryUnavailable
        })?;
        let targets: Vec<String> = match destination.strip_prefix("/topic/*/") {
            Some(rest) => channels
                .iter()
                .map(|c| {
                    let sep = if c.raw.ends_with('/') { "" } else { "/" };
                    format!("{}{sep}{rest}", c.raw)
                })
                .collect(),
            None => {
                let normalised = self.shared.normaliser.normalise(destination).await;
                if !channels
                    .iter()
                    .any(|c| normalised.starts_with(&c.normalised))
                {
                    return Err(FrameError::NotAllowed(destination.to_owned()));
                }
                vec![destination.to_owned()]
            }
        };
        let mut headers = Vec::with_capacity(4);
        for name in ["trigger-time", "link"] {
            if let Some(v) = frame.get(name).filter(|v| !v.is_empty()) {
                headers.push((name.to_owned(), v.to_owned()));
            }
        }
        let message_id = frame
            .get("message-id")
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        headers.push(("message-id".to_owned(), message_id));
        headers.push(("when".to_owned(), unix_now().to_string()));
        for topic in targets {
            tracing::debug!(%topic, bytes = frame.body.len(), "publishing");
            self.shared
                .bus
                .publish(BusMessage {
                    topic,
                    body: frame.body.clone(),
                    headers: headers.clone(),
                })
                .await?;
        }
        Ok(Flow::Continue)
    }

    /// Removes every subscription of the closing session (and says so to monitoring,
    /// as the original did).
    fn unsubscribe_all(&mut self) {
        let records: Vec<SubRecord> = self.subs.drain().map(|(_, r)| r).collect();
        for record in records {
            self.shared
                .remove_subscription(&record.key, (self.conn, record.sub));
            self.emit_unsubscription(&record);
        }
    }

    fn emit_unsubscription(&self, record: &SubRecord) {
        if let Some(info) = &self.info {
            self.shared.config.monitor.emit(Event::Unsubscription(
                info.clone(),
                record.destination.as_str().into(),
            ));
        }
    }

    /// Writes queued MESSAGE frames, coalesced into one write (up to `WRITE_BATCH`).
    async fn write_queued(&mut self) -> Result<(), SessionError> {
        if self.queue.drain_into(&mut self.wbuf, WRITE_BATCH) == 0 {
            return Ok(());
        }
        self.flush_wbuf().await
    }

    /// Writes one MESSAGE (a replay) directly.
    async fn write_message(&mut self, item: Outbound) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(&item.head);
        self.wbuf.extend_from_slice(&item.tail);
        self.flush_wbuf().await
    }

    async fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        frame.encode(self.version, &mut self.wbuf);
        self.flush_wbuf().await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.wbuf.extend_from_slice(bytes);
        self.flush_wbuf().await
    }

    /// Writes the write buffer out; abandons the write when the hub declares this
    /// connection a slow consumer or the server shuts down.
    async fn flush_wbuf(&mut self) -> Result<(), SessionError> {
        // Fast path: the socket usually has room, and a write that completes at once
        // needs no waiting future (this runs once per delivery batch).
        let mut written = 0;
        let result = loop {
            match self.writer.try_write(&self.wbuf[written..]) {
                Ok(n) => {
                    written += n;
                    if written >= self.wbuf.len() {
                        break Ok(());
                    }
                    if n == 0 {
                        break Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break tokio::select! {
                        r = self.writer.write_all(&self.wbuf[written..]) => r.map_err(SessionError::from),
                        _ = self.kill.cancelled() => Err(if self.shared.shutdown.is_cancelled() {
                            SessionError::Shutdown
                        } else {
                            SessionError::SlowConsumer
                        }),
                    };
                }
                Err(e) => break Err(e.into()),
            }
        };
        self.wbuf.clear();
        if self.wbuf.capacity() > 2 * WRITE_BATCH {
            self.wbuf = BytesMut::new();
        }
        self.last_write = Instant::now();
        result
    }

    /// Best effort at shutdown: write what is queued, bounded in time.
    async fn flush_queue_on_shutdown(&mut self) {
        let mut buf = std::mem::take(&mut self.wbuf);
        self.queue.drain_into(&mut buf, usize::MAX);
        if !buf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.write_all(&buf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }
}

/// What woke the idle session up.
enum Wake {
    Killed,
    Queued,
    Readable(std::io::Result<()>),
    Timer,
}

/// Waits for the heart-beat timer; never completes for a session without one.
async fn wait_timer(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
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
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
