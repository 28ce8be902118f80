//! The background task of a [`RabbitBus`](super::RabbitBus): connect, declare, consume
//! and dispatch, and on connection loss start over with jittered, capped exponential
//! backoff, until shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::attempt::{classify, AttemptError};
use super::topology::{declare, open_consumer_channel};
use super::wire::decode;
use super::{QueueKind, RabbitConfig, Shared};
use crate::backend::{Ack, AckHandle, Delivery, Reason};

/// A connection that lived this long resets the reconnection backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Bound on a polite close (connection or channel).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Acknowledges a RabbitMQ delivery once every acked stream that got it acknowledged
/// it; dropped unacknowledged, the delivery is rejected with requeue, so the broker
/// redelivers it (to this consumer after a reconnection, or to another).
struct RabbitAck {
    acker: lapin::Acker,
    acked: AtomicBool,
    tracker: tokio_util::task::TaskTracker,
}

impl Drop for RabbitAck {
    fn drop(&mut self) {
        let acker = self.acker.clone();
        let acked = self.acked.load(Ordering::SeqCst);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.tracker.spawn_on(
                async move {
                    let r = if acked {
                        acker.ack(BasicAckOptions::default()).await
                    } else {
                        acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await
                    };
                    if let Err(e) = r {
                        // The channel closed meanwhile: the broker requeues it anyway.
                        debug!(error = %e, acked, "delivery acknowledgement not sent");
                    }
                },
                &handle,
            );
        }
    }
}

/// One acked stream's share of a [`RabbitAck`].
struct RabbitAckHandle(Arc<RabbitAck>);

impl AckHandle for RabbitAckHandle {
    fn ack(self: Box<Self>) {
        self.0.acked.store(true, Ordering::SeqCst);
    }
}
/// Jittered capped exponential backoff: the delay before attempt `n` is uniform in
/// `[d/2, d]` where `d = min * 2^n` capped at `max`, so it never exceeds `max`.
///
/// backon's jitter adds a uniform `[0, d]` on top of its delay `d`, so it is given half
/// the bounds: `[d/2, d/2 + d/2]` is the same interval.
struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    /// The last delay, when the iterator (never exhausted: no attempt limit) ends.
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(min / 2)
            .with_max_delay(max / 2)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// Starts over from the shortest delay.
    fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// The delay before the next attempt.
    fn delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}

/// A live connection with everything declared.
struct Session {
    connection: Connection,
    publisher: Channel,
    consumer_channel: Channel,
    queue: ShortString,
}

/// The background task: connect, run, reconnect, until shutdown.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<(), AttemptError>>,
) {
    let config = &shared.config;
    let target = config.display_target();
    let mut first = Some(first);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout(config.connect_timeout, open_session(config)) => r,
        };
        let attempt = attempt.unwrap_or_else(|elapsed| {
            Err(AttemptError::Transient(Reason::caused_by(
                format!("no answer within {:?}", config.connect_timeout),
                elapsed,
            )))
        });
        match attempt {
            Ok(session) => {
                info!(
                    broker = %target,
                    exchange = %config.exchange,
                    queue = %session.queue.as_str(),
                    "connected to RabbitMQ"
                );
                shared.connects.fetch_add(1, Ordering::Relaxed);
                shared
                    .publisher
                    .send_replace(Some(session.publisher.clone()));
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                failures = 0;
                let since = tokio::time::Instant::now();
                let mut session = session;
                let reason = run_session(&shared, &mut session).await;
                shared.publisher.send_replace(None);
                match reason {
                    None => {
                        close_connection(&session.connection, "shutdown").await;
                        break;
                    }
                    Some(reason) => {
                        // A connection that lived a while starts over from the shortest
                        // delay; one that keeps dropping at once backs off.
                        if since.elapsed() >= STABLE_SESSION {
                            backoff.reset();
                        }
                        let delay = backoff.delay();
                        warn!(
                            broker = %target,
                            error = %reason,
                            retry_in = ?delay,
                            "lost RabbitMQ connection, reconnecting"
                        );
                        close_connection(&session.connection, "reconnecting").await;
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            Err(AttemptError::Config(m)) if first.is_some() => {
                error!(broker = %target, error = %m, "RabbitMQ configuration error, not starting");
                if let Some(first) = first.take() {
                    let _ = first.send(Err(AttemptError::Config(m)));
                }
                break;
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.delay();
                match &e {
                    AttemptError::Config(m) => error!(
                        broker = %target,
                        error = %m,
                        retry_in = ?delay,
                        "RabbitMQ configuration error"
                    ),
                    AttemptError::Transient(m) => warn!(
                        broker = %target,
                        error = %m,
                        attempt = failures,
                        retry_in = ?delay,
                        "cannot connect to RabbitMQ, retrying"
                    ),
                }
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                }
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.publisher.send_replace(None);
    // Ends the subscriber streams.
    shared.subscribers.lock().clear();
    debug!("RabbitMQ bus task stopped");
}

/// Closes a connection politely, without waiting long for a dead broker.
pub(super) async fn close_connection(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, why.into())).await;
}

/// Connects, declares the exchange and the queue, binds, opens the publishing channel.
async fn open_session(config: &RabbitConfig) -> Result<Session, AttemptError> {
    let connection = Connection::connect_uri(config.uri(), ConnectionProperties::default())
        .await
        .map_err(|e| classify("connect", &e))?;
    match declare(config, &connection).await {
        Ok((publisher, consumer_channel, queue)) => Ok(Session {
            connection,
            publisher,
            consumer_channel,
            queue,
        }),
        Err(e) => {
            close_connection(&connection, "setup failed").await;
            Err(e)
        }
    }
}
/// Consumes and dispatches until shutdown (`None`) or connection loss (`Some(reason)`).
async fn run_session(shared: &Shared, session: &mut Session) -> Option<String> {
    let config = &shared.config;
    let durable = matches!(config.queue, QueueKind::Durable(_));
    let mut subscribed = shared.subscribed.subscribe();
    let mut consumer: Option<Consumer> = None;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A durable queue keeps its messages until someone subscribes.
        if consumer.is_none() && (!durable || shared.has_subscribers()) {
            match session
                .consumer_channel
                .basic_consume(
                    session.queue.clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => consumer = Some(c),
                Err(e) => return Some(format!("consume from {:?}: {e}", session.queue.as_str())),
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = check.tick() => {
                if !session.connection.status().connected() {
                    return Some("connection closed".into());
                }
                if !session.publisher.status().connected() {
                    return Some("publishing channel closed".into());
                }
                if !session.consumer_channel.status().connected() {
                    return Some("consuming channel closed".into());
                }
            }
            _ = subscribed.changed(), if consumer.is_none() => {}
            delivery = next_delivery(&mut consumer), if consumer.is_some() => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("the broker cancelled the consumer".into()),
                };
                let subscribers = shared.live_subscribers();
                let acked_subscribers = shared.live_acked_subscribers();
                if durable && subscribers.is_empty() && acked_subscribers.is_empty() {
                    // Nobody to hand it to: this one and the prefetched ones go back to
                    // the queue (closing the channel requeues them), and consuming
                    // resumes with the next subscriber.
                    let _ = delivery
                        .nack(BasicNackOptions { requeue: true, ..Default::default() })
                        .await;
                    consumer = None;
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        session.consumer_channel.close(200, "no subscriber".into()),
                    )
                    .await;
                    match open_consumer_channel(config, &session.connection).await {
                        Ok(ch) => session.consumer_channel = ch,
                        Err(e) => return Some(e.to_string()),
                    }
                    debug!(queue = %session.queue.as_str(), "no subscriber left, paused consuming");
                    continue;
                }
                let Some(message) = decode(&delivery.properties, &delivery.data) else {
                    // No topic: logged by `decode`, dropped.
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        return Some(format!("ack: {e}"));
                    }
                    continue;
                };
                for s in subscribers {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return None,
                        // A stream dropped meanwhile is not an error.
                        _ = s.send(message.clone()) => {}
                    }
                }
                if acked_subscribers.is_empty() {
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        return Some(format!("ack: {e}"));
                    }
                    continue;
                }
                // Acknowledged when the acked streams are done with it (or requeued
                // when they drop it unacknowledged).
                let ack = Arc::new(RabbitAck {
                    acker: delivery.acker.clone(),
                    acked: AtomicBool::new(false),
                    tracker: shared.acks.clone(),
                });
                for s in acked_subscribers {
                    let d = Delivery {
                        message: message.clone(),
                        ack: Ack::new(Box::new(RabbitAckHandle(ack.clone()))),
                    };
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return None,
                        _ = s.send(d) => {}
                    }
                }
            }
        }
    }
}

async fn next_delivery(
    consumer: &mut Option<Consumer>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.delay();
            assert!(last <= Duration::from_secs(10));
        }
        assert!(last >= Duration::from_secs(5));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
