//! The background tasks of a [`RabbitBus`](super::RabbitBus), one per AMQP connection:
//! the publishing connection (a confirm-mode channel) and the consuming connection
//! (queue, binding, consumer, dispatch). Each connects, declares, runs, and on
//! connection loss starts over with jittered, capped exponential backoff, until
//! shutdown. Two connections because a broker under a memory or disk alarm stops
//! reading the connections that publish (`connection.blocked`): consumption (and its
//! acknowledgements) must not be on one of them (docs/protocol.md#rabbitmq-queues).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::ack::{RabbitAck, RabbitAckHandle};
use super::attempt::{classify, AttemptError};
use super::topology::{declare_consumer, open_consumer_channel, open_publisher};
use super::wire::decode;
use super::{QueueKind, RabbitConfig, Shared};
use crate::backend::{Ack, Delivery, Reason};

/// A connection that lived this long resets the reconnection backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Bound on a polite close (connection or channel).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// What one of the bus's connections is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Publishing, with publisher confirms.
    Publish,
    /// Consuming from the queue and dispatching to the streams.
    Consume,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Consume => "consume",
        }
    }
}

/// A live connection with everything its role needs declared.
struct Session {
    connection: Connection,
    work: Work,
}

enum Work {
    Publish(Channel),
    Consume {
        channel: Channel,
        queue: ShortString,
    },
}

/// The background task: connect, run, reconnect, until shutdown.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    role: Role,
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
            r = tokio::time::timeout(config.connect_timeout, open_session(config, role, &shared.instance_queue)) => r,
        };
        let attempt = attempt.unwrap_or_else(|elapsed| {
            Err(AttemptError::Transient(Reason::caused_by(
                format!("no answer within {:?}", config.connect_timeout),
                elapsed,
            )))
        });
        match attempt {
            Ok(session) => {
                match &session.work {
                    Work::Publish(channel) => {
                        info!(broker = %target, exchange = %config.exchange, "connected to RabbitMQ for publishing");
                        shared.publisher.send_replace(Some(channel.clone()));
                    }
                    Work::Consume { queue, .. } => {
                        info!(broker = %target, exchange = %config.exchange, queue = %queue.as_str(), "connected to RabbitMQ for consuming");
                        shared.connects.fetch_add(1, Ordering::Relaxed);
                        shared.consuming.send_replace(true);
                    }
                }
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                failures = 0;
                let since = tokio::time::Instant::now();
                let mut session = session;
                let reason = match &mut session.work {
                    Work::Publish(channel) => {
                        run_publisher(&shared, &session.connection, channel).await
                    }
                    Work::Consume { channel, queue } => {
                        // Announced once consuming, so that whoever resynchronises after
                        // it does not miss what arrives meanwhile.
                        let generation = shared.connects.load(Ordering::Relaxed);
                        run_consumer(&shared, &session.connection, channel, queue, generation).await
                    }
                };
                match role {
                    Role::Publish => {
                        shared.publisher.send_replace(None);
                    }
                    Role::Consume => {
                        // Deliveries of the closed channel are requeued by the broker.
                        shared.channel_epoch.fetch_add(1, Ordering::SeqCst);
                        shared.consuming.send_replace(false);
                    }
                }
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
                            connection = role.as_str(),
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
                        connection = role.as_str(),
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
    match role {
        Role::Publish => {
            shared.publisher.send_replace(None);
        }
        Role::Consume => {
            shared.consuming.send_replace(false);
            // Ends the subscriber streams.
            shared.subscribers.lock().clear();
            shared.acked_subscribers.lock().clear();
        }
    }
    debug!(connection = role.as_str(), "RabbitMQ bus task stopped");
}

/// Closes a connection politely, without waiting long for a dead broker.
pub(super) async fn close_connection(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, why.into())).await;
}

/// Connects (the connection named after its role and the exchange, so that operators
/// can tell them apart) and declares what the role needs.
async fn open_session(
    config: &RabbitConfig,
    role: Role,
    instance_queue: &str,
) -> Result<Session, AttemptError> {
    let name = format!("radiovis {} {}", role.as_str(), config.exchange);
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let connection = Connection::connect_uri(config.uri(), properties)
        .await
        .map_err(|e| classify("connect", &e))?;
    let work = match role {
        Role::Publish => open_publisher(config, &connection).await.map(Work::Publish),
        Role::Consume => declare_consumer(config, &connection, instance_queue)
            .await
            .map(|(channel, queue)| Work::Consume { channel, queue }),
    };
    match work {
        Ok(work) => Ok(Session { connection, work }),
        Err(e) => {
            close_connection(&connection, "setup failed").await;
            Err(e)
        }
    }
}

/// Watches the publishing connection until shutdown (`None`) or its loss.
async fn run_publisher(
    shared: &Shared,
    connection: &Connection,
    channel: &Channel,
) -> Option<String> {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = check.tick() => {
                if !connection.status().connected() {
                    return Some("connection closed".into());
                }
                if !channel.status().connected() {
                    return Some("publishing channel closed".into());
                }
            }
        }
    }
}

/// Consumes and dispatches until shutdown (`None`) or connection loss (`Some(reason)`).
async fn run_consumer(
    shared: &Shared,
    connection: &Connection,
    consumer_channel: &mut Channel,
    queue: &ShortString,
    generation: u64,
) -> Option<String> {
    let config = &shared.config;
    let durable = matches!(config.queue, QueueKind::Durable(_));
    let mut subscribed = shared.subscribed.subscribe();
    let mut consumer: Option<Consumer> = None;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A durable queue keeps its messages until someone subscribes.
        if consumer.is_none() && (!durable || shared.has_subscribers()) {
            match consumer_channel
                .basic_consume(
                    queue.clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => consumer = Some(c),
                Err(e) => return Some(format!("consume from {:?}: {e}", queue.as_str())),
            }
            // Consuming: the hub may resynchronise what it missed (once per connection).
            if *shared.generation.borrow() != generation {
                shared.generation.send_replace(generation);
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = check.tick() => {
                if !connection.status().connected() {
                    return Some("connection closed".into());
                }
                if !consumer_channel.status().connected() {
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
                        consumer_channel.close(200, "no subscriber".into()),
                    )
                    .await;
                    // Acknowledgements still pending are for the closed channel.
                    shared.channel_epoch.fetch_add(1, Ordering::SeqCst);
                    match open_consumer_channel(config, connection).await {
                        Ok(ch) => *consumer_channel = ch,
                        Err(e) => return Some(e.to_string()),
                    }
                    debug!(queue = %queue.as_str(), "no subscriber left, paused consuming");
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
                let ack = RabbitAck::new(
                    delivery.acker.clone(),
                    shared.channel_epoch.load(Ordering::SeqCst),
                    shared.channel_epoch.clone(),
                    shared.acks.clone(),
                );
                for s in acked_subscribers {
                    let d = Delivery {
                        message: message.clone(),
                        ack: Ack::new(Box::new(RabbitAckHandle::new(ack.clone()))),
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
