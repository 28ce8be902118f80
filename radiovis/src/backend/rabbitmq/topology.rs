//! Declaring what the bus needs on the broker: the fanout exchange (checked, or
//! declared durable when missing), the queue and its binding, and the channels.

use lapin::options::{
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::{debug, info};

use super::attempt::{classify, reply_code, AttemptError, NOT_FOUND, PRECONDITION_FAILED};
use super::config::{INSTANCE_QUEUE_EXPIRES, INSTANCE_QUEUE_MAX};
use super::{QueueKind, RabbitConfig};
use crate::backend::Reason;

/// On the publishing connection: checks (or declares) the exchange and opens the
/// confirm-mode channel to publish on.
pub(super) async fn open_publisher(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<Channel, AttemptError> {
    declare_exchange(config, connection).await?;
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| classify("open channel", &e))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| classify("enable publisher confirms", &e))?;
    Ok(publisher)
}

/// On the consuming connection: checks (or declares) the exchange, declares the queue
/// and binds it; returns the channel to consume on and the queue's name.
pub(super) async fn declare_consumer(
    config: &RabbitConfig,
    connection: &Connection,
    instance_queue: &str,
) -> Result<(Channel, ShortString), AttemptError> {
    declare_exchange(config, connection).await?;

    let consumer_channel = open_consumer_channel(config, connection).await?;
    let queue = match &config.queue {
        QueueKind::Instance => {
            let mut arguments = FieldTable::default();
            let expires = u32::try_from(INSTANCE_QUEUE_EXPIRES.as_millis()).unwrap_or(u32::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongUInt(expires));
            arguments.insert(
                "x-max-length".into(),
                AMQPValue::LongUInt(INSTANCE_QUEUE_MAX),
            );
            consumer_channel
                .queue_declare(
                    instance_queue.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    arguments,
                )
                .await
                .map_err(|e| {
                    classify(
                        &format!("declare the instance queue {instance_queue:?}"),
                        &e,
                    )
                })?
                .name()
                .clone()
        }
        QueueKind::Durable(name) => adopt_named_queue(config, connection, name).await?,
    };
    consumer_channel
        .queue_bind(
            queue.clone(),
            config.exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&format!("bind queue {:?}", queue.as_str()), &e))?;
    Ok((consumer_channel, queue))
}

/// The watchdog's named queue (`FB_QUEUE`), shared with the original Python watchdog
/// during a migration (docs/protocol.md#rabbitmq-queues): a queue that exists is used as
/// it is, whoever declared it and with whatever properties (a passive declare first; a
/// full declare of an existing queue with other properties would be refused, and the
/// original retries its own declare for ever when ours differs). A missing queue is
/// declared not exclusive, not auto-delete, without arguments, durable only with
/// [`RabbitConfig::durable_queue`]. What was found is logged. Every declare runs on a
/// throwaway channel, since a refused one closes its channel.
async fn adopt_named_queue(
    config: &RabbitConfig,
    connection: &Connection,
    name: &str,
) -> Result<ShortString, AttemptError> {
    let ours = QueueDeclareOptions {
        durable: config.durable_queue,
        ..Default::default()
    };
    let ours_text = if config.durable_queue {
        "durable"
    } else {
        "non-durable"
    };
    // Twice at most: a queue declared by someone else between our passive declare
    // (not found) and our declare (refused) is adopted on the second pass.
    for _ in 0..2 {
        let ch = new_channel(connection).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
        {
            Ok(found) => {
                let _ = ch.close(200, "ok".into()).await;
                // Whether it matches what we would declare: an equivalent declare is
                // accepted, another is refused (and only closes its throwaway channel).
                let probe = new_channel(connection).await?;
                let same = probe
                    .queue_declare(name.into(), ours, FieldTable::default())
                    .await;
                let _ = probe.close(200, "ok".into()).await;
                let (messages, consumers) = (found.message_count(), found.consumer_count());
                match same {
                    Ok(_) => info!(
                        queue = name,
                        messages, consumers, "using the existing {ours_text} queue"
                    ),
                    Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => info!(
                        queue = name,
                        messages,
                        consumers,
                        found = %e,
                        "using the existing queue as it is: it was declared with other \
                         properties than ours ({ours_text}, e.g. by the original Python \
                         watchdog)"
                    ),
                    Err(e) => {
                        return Err(classify(&format!("check the queue {name:?}"), &e));
                    }
                }
                return Ok(name.into());
            }
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => {}
            Err(e) => return Err(classify(&format!("check the queue {name:?}"), &e)),
        }
        let ch = new_channel(connection).await?;
        match ch
            .queue_declare(name.into(), ours, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = ch.close(200, "ok".into()).await;
                info!(
                    queue = name,
                    "declared the {ours_text} queue (it did not exist)"
                );
                return Ok(name.into());
            }
            Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => {
                debug!(queue = name, error = %e, "queue declared meanwhile by someone else");
            }
            Err(e) => return Err(classify(&format!("declare the queue {name:?}"), &e)),
        }
    }
    Err(AttemptError::Transient(
        format!("queue {name:?} kept changing while it was declared").into(),
    ))
}

async fn new_channel(connection: &Connection) -> Result<Channel, AttemptError> {
    connection
        .create_channel()
        .await
        .map_err(|e| classify("open channel", &e))
}

/// A channel to consume on, with the prefetch set.
pub(super) async fn open_consumer_channel(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<Channel, AttemptError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| classify("open channel", &e))?;
    channel
        .basic_qos(config.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| classify("set the prefetch", &e))?;
    Ok(channel)
}

/// Makes sure the exchange exists and is a fanout. Each check runs on a throwaway
/// channel since a failed declare closes its channel.
async fn declare_exchange(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<(), AttemptError> {
    let name = config.exchange.as_str();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let new_channel = || async {
        connection
            .create_channel()
            .await
            .map_err(|e| classify("open channel", &e))
    };

    if name.starts_with("amq.") {
        // Predeclared: clients may only declare them passively, and their type is
        // given by their name.
        let kind = match name {
            "amq.fanout" => "fanout",
            "amq.direct" => "direct",
            "amq.topic" => "topic",
            "amq.headers" | "amq.match" => "headers",
            _ => "unknown",
        };
        if kind != "fanout" {
            return Err(AttemptError::Config(
                format!("exchange {name:?} is a {kind} exchange, a fanout exchange is required")
                    .into(),
            ));
        }
        let ch = new_channel().await?;
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&format!("check exchange {name:?}"), &e))?;
        let _ = ch.close(200, "ok".into()).await;
        return Ok(());
    }

    let ch = new_channel().await?;
    match ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            // It exists: an equivalent declare checks its type.
            let ch = new_channel().await?;
            match ch
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => {
                    let _ = ch.close(200, "ok".into()).await;
                    Ok(())
                }
                Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => {
                    let text = e.to_string();
                    if text.contains("'type'") {
                        Err(AttemptError::Config(Reason::caused_by(
                            format!(
                                "exchange {name:?} exists with another type than fanout: {text}"
                            ),
                            e,
                        )))
                    } else {
                        // A fanout with other flags (e.g. not durable): usable.
                        debug!(exchange = name, error = %text, "existing fanout exchange has other flags, using it");
                        Ok(())
                    }
                }
                Err(e) => Err(classify(&format!("check exchange {name:?}"), &e)),
            }
        }
        Err(e) if reply_code(&e) == Some(NOT_FOUND) => {
            let ch = new_channel().await?;
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(&format!("declare exchange {name:?}"), &e))?;
            info!(exchange = name, "declared durable fanout exchange");
            let _ = ch.close(200, "ok".into()).await;
            Ok(())
        }
        Err(e) => Err(classify(&format!("check exchange {name:?}"), &e)),
    }
}
