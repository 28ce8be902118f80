//! The original server's AMQP message shape (docs/protocol.md#rabbitmq): the AMQP body is the
//! STOMP body and the `application_headers` are the forwarded headers plus `topic`.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use tracing::{debug, warn};

use crate::backend::BusMessage;

/// The AMQP headers of a message: the forwarded headers and `topic`, long strings.
pub(super) fn encode_headers(message: &BusMessage) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in &message.headers {
        // The topic is the message's; for a repeated header the first wins (STOMP).
        if k == "topic" || table.contains_key(k) {
            continue;
        }
        match ShortString::try_new(k.as_str()) {
            Ok(name) => {
                table.insert(name, AMQPValue::LongString(LongString::from(v.as_str())));
            }
            Err(_) => warn!(header = %k, "header name too long for AMQP, dropped"),
        }
    }
    table.insert(
        ShortString::from("topic"),
        AMQPValue::LongString(LongString::from(message.topic.as_str())),
    );
    table
}

/// A string from an AMQP header value the original may have written.
fn value_to_string(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// The bus message of a delivery; `None` (logged) when it has no `topic`.
pub(super) fn decode(properties: &BasicProperties, body: &[u8]) -> Option<BusMessage> {
    let mut topic = None;
    let mut headers = Vec::new();
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            let Some(value) = value_to_string(v) else {
                debug!(header = %k.as_str(), "AMQP header of an unsupported type, dropped");
                continue;
            };
            if k.as_str() == "topic" {
                topic = Some(value);
            } else {
                headers.push((k.as_str().to_owned(), value));
            }
        }
    }
    match topic {
        Some(topic) if !topic.is_empty() => Some(BusMessage {
            topic,
            body: Bytes::copy_from_slice(body),
            headers,
        }),
        _ => {
            warn!(
                body_len = body.len(),
                "RabbitMQ message without a topic header, dropped"
            );
            None
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let m = BusMessage {
            topic: "/topic/fm/4e1/4001/09580/text".into(),
            body: Bytes::from_static(b"TEXT hi"),
            headers: vec![
                ("message-id".into(), "1".into()),
                ("when".into(), "1700000000".into()),
            ],
        };
        let props = BasicProperties::default().with_headers(encode_headers(&m));
        let back = decode(&props, b"TEXT hi").expect("has topic");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.header("message-id"), Some("1"));
        assert_eq!(back.header("when"), Some("1700000000"));
        assert_eq!(back.header("topic"), None);
        assert!(decode(&BasicProperties::default(), b"x").is_none());
    }
}
