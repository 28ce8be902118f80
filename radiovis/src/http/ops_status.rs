//! The live status page (docs/protocol.md#status-page): `GET /` renders the channels
//! with their current text and image, clients per transport and channel, messages per
//! minute and the state of the bus, directory, cache and watchdog as plain HTML (no
//! build step, readable without JavaScript); `GET /status/events` streams the same
//! snapshot as server-sent events every [`PUSH_EVERY`], which the page's small script
//! applies; `GET /status.json` gives it once. `GET /admin` (behind the admin
//! credentials) adds login counters and the hub's limits.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::backend::{Cache, DirectoryApi, MessageBus};
use crate::hub::Transport;
use crate::metrics::Metrics;
use crate::server::StompHub;
use crate::watchdog::WatchdogStats;

/// How often the page gets a fresh snapshot.
pub const PUSH_EVERY: Duration = Duration::from_secs(2);

/// Most topics the page shows (the newest).
const MAX_TOPICS: usize = 200;

/// Messages received from the bus per minute, from samples of the counter taken when
/// a snapshot is made (bounded: one minute of samples, at most one per second).
#[derive(Debug, Default)]
pub struct MessageRate {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl MessageRate {
    /// Records `count` (the bus message counter) now; returns messages per minute over
    /// the last minute of samples.
    pub fn sample(&self, count: u64) -> f64 {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            samples.push_back((now, count));
        }
        let Some((t0, c0)) = samples.front().copied() else {
            return 0.0;
        };
        let elapsed = now.duration_since(t0).as_secs_f64();
        if elapsed < 1.0 {
            return 0.0;
        }
        (count.saturating_sub(c0)) as f64 * 60.0 / elapsed
    }
}

/// The body of a message without its `TEXT ` / `SHOW ` prefix.
fn payload<'a>(body: &'a str, prefix: &str) -> Option<&'a str> {
    body.strip_prefix(prefix).map(str::trim)
}

/// The snapshot the page shows (and `/status.json` and the events carry).
pub fn snapshot<B: MessageBus, D: DirectoryApi, C: Cache>(
    hub: &StompHub<B, D, C>,
    metrics: &Metrics,
    watchdog: Option<&WatchdogStats>,
    rate: &MessageRate,
) -> Value {
    let inner = hub.hub();
    let stats = inner.stats();
    // Channel -> its text and image topics' last messages.
    let mut channels: BTreeMap<String, Value> = BTreeMap::new();
    for t in hub.topic_status(MAX_TOPICS) {
        let (channel, kind) = match t.last.topic.rsplit_once('/') {
            Some((c, k)) => (format!("{c}/"), k.to_owned()),
            None => (t.last.topic.clone(), String::new()),
        };
        let body = String::from_utf8_lossy(&t.last.body).into_owned();
        let header = |name: &str| {
            t.last
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let entry = channels.entry(channel.clone()).or_insert_with(|| {
            json!({"channel": channel, "text": null, "image": null, "link": null, "subscribers": 0})
        });
        entry["subscribers"] =
            json!(entry["subscribers"].as_u64().unwrap_or(0) + t.subscribers as u64);
        match kind.as_str() {
            "text" if entry["text"].is_null() => {
                entry["text"] = json!(payload(&body, "TEXT ").unwrap_or(&body));
            }
            "image" if entry["image"].is_null() => {
                // Only web URLs are shown as images.
                let url = payload(&body, "SHOW ")
                    .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
                entry["image"] = json!(url);
                entry["link"] = json!(header("link"));
            }
            _ => {}
        }
        if entry["when"].is_null() {
            entry["when"] = json!(header("when"));
        }
    }
    let transports: serde_json::Map<String, Value> = Transport::ALL
        .iter()
        .map(|t| {
            let open = stats.transport(*t).open.load(Ordering::Relaxed);
            (t.as_str().to_owned(), json!(open))
        })
        .collect();
    let snap = stats.snapshot();
    let readiness = hub.readiness(Some(metrics.directory()));
    let cache = metrics.cache();
    json!({
        "ready": readiness.ready(),
        "reason": readiness.reason(),
        "connections": snap.connections,
        "transports": transports,
        "subscriptions": snap.subscriptions,
        "messages_per_minute": (rate.sample(snap.bus_messages) * 10.0).round() / 10.0,
        "deliveries": snap.deliveries,
        "bus": {
            "state": if readiness.bus_connected { "connected" } else { "disconnected" },
            "reconnects": snap.bus_reconnects,
        },
        "directory": {
            "state": readiness.directory.as_str(),
            "errors": metrics.directory().errors(),
        },
        "cache": {
            "state": if cache.failing() { "failing" } else { "ok" },
            "errors": cache.errors(),
        },
        "watchdog": watchdog.map(|w| json!({
            "defaults_sent": w.defaults_sent.load(Ordering::Relaxed),
            "log_buffered": w.log_buffered(),
            "log_sent": w.log_written.load(Ordering::Relaxed),
            "log_dropped": w.log_dropped.load(Ordering::Relaxed),
        })),
        "channels": channels.into_values().collect::<Vec<_>>(),
    })
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => "&ndash;".into(),
        v => escape(&v.to_string()),
    }
}

/// The rows of the channel table.
fn channel_rows(snapshot: &Value) -> String {
    let mut rows = String::new();
    for c in snapshot["channels"].as_array().into_iter().flatten() {
        let image = match c["image"].as_str() {
            Some(url) => format!(
                "<img src=\"{}\" alt=\"slide\" loading=\"lazy\">",
                escape(url)
            ),
            None => "&ndash;".into(),
        };
        rows.push_str(&format!(
            "<tr><td class=\"channel\">{}</td><td class=\"text\">{}</td><td class=\"image\">{}</td><td class=\"subs\">{}</td></tr>\n",
            text_of(&c["channel"]),
            text_of(&c["text"]),
            image,
            text_of(&c["subscribers"]),
        ));
    }
    rows
}

/// The summary list (clients, rate, bus, directory, cache, watchdog).
fn summary(snapshot: &Value) -> String {
    let transports: Vec<String> = snapshot["transports"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(t, n)| format!("{} {}", escape(t), n))
        .collect();
    let watchdog = match &snapshot["watchdog"] {
        Value::Null => "not in this process".to_owned(),
        w => format!(
            "{} defaults sent, {} log entries buffered, {} sent, {} dropped",
            w["defaults_sent"], w["log_buffered"], w["log_sent"], w["log_dropped"]
        ),
    };
    let ready = if snapshot["ready"].as_bool() == Some(true) {
        "ready".to_owned()
    } else {
        format!("not ready: {}", text_of(&snapshot["reason"]))
    };
    format!(
        "<dl>\
<dt>state</dt><dd id=\"ready\">{ready}</dd>\
<dt>clients</dt><dd id=\"clients\">{} ({})</dd>\
<dt>subscriptions</dt><dd id=\"subscriptions\">{}</dd>\
<dt>messages per minute</dt><dd id=\"rate\">{}</dd>\
<dt>bus</dt><dd id=\"bus\">{}, {} reconnects</dd>\
<dt>directory</dt><dd id=\"directory\">{}, {} errors</dd>\
<dt>cache</dt><dd id=\"cache\">{}, {} errors</dd>\
<dt>watchdog</dt><dd id=\"watchdog\">{}</dd>\
</dl>",
        snapshot["connections"],
        if transports.is_empty() {
            "none".to_owned()
        } else {
            transports.join(", ")
        },
        snapshot["subscriptions"],
        snapshot["messages_per_minute"],
        text_of(&snapshot["bus"]["state"]),
        snapshot["bus"]["reconnects"],
        text_of(&snapshot["directory"]["state"]),
        snapshot["directory"]["errors"],
        text_of(&snapshot["cache"]["state"]),
        snapshot["cache"]["errors"],
        escape(&watchdog),
    )
}

/// `GET /`: the page, rendered with the snapshot; the script keeps it current.
pub fn page(snapshot: &Value, admin: bool) -> String {
    let admin_link = if admin {
        "<p><a href=\"/admin\">admin</a></p>"
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>radiovis status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4em; text-align: left; vertical-align: top; }}
img {{ max-width: 240px; max-height: 135px; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }}
dt {{ font-weight: bold; }}
#live {{ color: #888; font-size: .9em; }}
</style></head>
<body>
<h1>radiovis</h1>
<p id="live">snapshot at load</p>
<div id="summary">{summary}</div>
{admin_link}
<h2>Channels</h2>
<table><thead><tr><th>channel</th><th>text</th><th>image</th><th>subscribers</th></tr></thead>
<tbody id="channels">
{rows}</tbody></table>
<script>
"use strict";
function cell(row, cls, value) {{
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = value === null || value === undefined ? "\u2013" : String(value);
  row.appendChild(td);
}}
function render(s) {{
  const body = document.getElementById("channels");
  body.replaceChildren();
  for (const c of s.channels) {{
    const row = document.createElement("tr");
    cell(row, "channel", c.channel);
    cell(row, "text", c.text);
    const td = document.createElement("td");
    td.className = "image";
    if (c.image) {{
      const img = document.createElement("img");
      img.src = c.image; img.alt = "slide"; img.loading = "lazy";
      td.appendChild(img);
    }} else {{ td.textContent = "\u2013"; }}
    row.appendChild(td);
    cell(row, "subs", c.subscribers);
    body.appendChild(row);
  }}
  const t = Object.entries(s.transports).filter(([, n]) => n > 0).map(([k, n]) => k + " " + n);
  document.getElementById("ready").textContent = s.ready ? "ready" : "not ready: " + s.reason;
  document.getElementById("clients").textContent = s.connections + " (" + (t.length ? t.join(", ") : "none") + ")";
  document.getElementById("subscriptions").textContent = s.subscriptions;
  document.getElementById("rate").textContent = s.messages_per_minute;
  document.getElementById("bus").textContent = s.bus.state + ", " + s.bus.reconnects + " reconnects";
  document.getElementById("directory").textContent = s.directory.state + ", " + s.directory.errors + " errors";
  document.getElementById("cache").textContent = s.cache.state + ", " + s.cache.errors + " errors";
  const w = s.watchdog;
  document.getElementById("watchdog").textContent = w === null ? "not in this process" :
    w.defaults_sent + " defaults sent, " + w.log_buffered + " log entries buffered, " + w.log_sent + " sent, " + w.log_dropped + " dropped";
  document.getElementById("live").textContent = "live, updated " + new Date().toLocaleTimeString();
}}
const events = new EventSource("/status/events");
events.onmessage = (e) => render(JSON.parse(e.data));
events.onerror = () => {{ document.getElementById("live").textContent = "disconnected: retrying"; }};
</script>
</body></html>
"#,
        summary = summary(snapshot),
        rows = channel_rows(snapshot),
    )
}

/// `GET /admin`: login counters and the hub's limits.
pub fn admin_page<B: MessageBus, D: DirectoryApi, C: Cache>(hub: &StompHub<B, D, C>) -> String {
    let s = hub.stats();
    let config = hub.hub().config();
    let rows = [
        ("logins accepted", s.auth_succeeded.to_string()),
        (
            "logins refused (wrong credentials)",
            s.auth_failed.to_string(),
        ),
        ("logins refused (throttled)", s.auth_throttled.to_string()),
        (
            "connections refused over a limit",
            s.refused_connections.to_string(),
        ),
        ("slow consumers disconnected", s.slow_consumers.to_string()),
        ("replays", s.replays.to_string()),
        ("max connections", config.max_connections.to_string()),
        (
            "max connections per address",
            config.max_connections_per_address.to_string(),
        ),
        ("outbound queue", config.outbound_queue.to_string()),
        (
            "max subscriptions per session",
            config.max_subscriptions.to_string(),
        ),
        ("max frame size", config.limits.max_frame_size.to_string()),
        (
            "failed logins before blocking",
            config.auth_max_failures.to_string(),
        ),
        ("block (s)", config.auth_block.as_secs().to_string()),
    ];
    let mut body = String::new();
    for (k, v) in rows {
        body.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            escape(k),
            escape(&v)
        ));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>radiovis admin</title></head>\
<body><h1>radiovis admin</h1><p><a href=\"/\">status</a></p><table>\n{body}</table></body></html>\n"
    )
}

/// One server-sent event carrying `snapshot`.
pub fn event(snapshot: &Value) -> Bytes {
    Bytes::from(format!("data: {snapshot}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_only_web_images_are_shown() {
        let s = json!({
            "channels": [{"channel": "/topic/x/", "text": "<b>hi</b>", "image": "https://x/a.jpg?a=1&b=2", "subscribers": 2}],
        });
        let rows = channel_rows(&s);
        assert!(rows.contains("&lt;b&gt;hi&lt;/b&gt;"), "{rows}");
        assert!(
            rows.contains("src=\"https://x/a.jpg?a=1&amp;b=2\""),
            "{rows}"
        );
        assert_eq!(payload("SHOW  https://x ", "SHOW "), Some("https://x"));
    }

    #[test]
    fn rate_counts_over_the_samples() {
        let rate = MessageRate::default();
        assert_eq!(rate.sample(10), 0.0);
        rate.samples.lock().front_mut().expect("sample").0 -= Duration::from_secs(30);
        // 30 more in the 30 s (and a few microseconds) since the first sample.
        let per_minute = rate.sample(40);
        assert!((59.9..=60.0).contains(&per_minute), "{per_minute}");
    }
}
