//! The single-server run's report as a table, and the radiovis/baseline comparison.

use crate::Report;

fn rows(r: &Report) -> Vec<(&'static str, Option<f64>)> {
    let f = |v: u64| Some(v as f64);
    vec![
        ("connected", Some(r.connected as f64)),
        ("connect time s", Some(r.connect_secs)),
        ("conn setup p50 ms", f(r.setup_ms_p50)),
        ("conn setup p99 ms", f(r.setup_ms_p99)),
        ("conn setup max ms", f(r.setup_ms_max)),
        ("latency p50 us", f(r.latency_us_p50)),
        ("latency p90 us", f(r.latency_us_p90)),
        ("latency p99 us", f(r.latency_us_p99)),
        ("latency p99.9 us", f(r.latency_us_p999)),
        ("latency max us", f(r.latency_us_max)),
        ("deliveries/s", Some(r.deliveries_per_sec)),
        ("expected", f(r.expected)),
        ("received", f(r.received)),
        ("lost", f(r.lost)),
        ("duplicates", f(r.duplicates)),
        ("out of order", f(r.out_of_order)),
        ("RSS before KiB", r.rss_kib_before.map(|v| v as f64)),
        ("RSS connected KiB", r.rss_kib_connected.map(|v| v as f64)),
        ("RSS end KiB", r.rss_kib_end.map(|v| v as f64)),
        ("RSS per conn B", r.rss_bytes_per_connection),
        ("CPU publish us", r.cpu_us_publish_phase.map(|v| v as f64)),
        ("CPU per delivery us", r.cpu_us_per_delivery),
    ]
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Some(v) => format!("{v:.3}"),
    }
}

pub fn print_report(r: &Report) {
    println!(
        "== {} (N={} K={} R={} M={})",
        r.server, r.subscribers, r.topics, r.rate, r.messages
    );
    for (name, v) in rows(r) {
        println!("{name:<22} {:>14}", fmt(v));
    }
    if r.connect_failures > 0 {
        println!(
            "connect failures       {:>14}  first: {}",
            r.connect_failures,
            r.first_connect_error.as_deref().unwrap_or("")
        );
    }
    if r.subscribers_ended_early > 0 {
        println!(
            "subscribers ended early{:>14}  first: {}",
            r.subscribers_ended_early,
            r.first_subscriber_error.as_deref().unwrap_or("")
        );
    }
}

pub fn ratios(rv: &Report, bl: &Report) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for ((name, a), (_, b)) in rows(rv).into_iter().zip(rows(bl)) {
        let v = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => serde_json::json!(a / b),
            _ => serde_json::Value::Null,
        };
        m.insert(name.to_string(), v);
    }
    m
}

pub fn print_compare(rv: &Report, bl: &Report) {
    println!(
        "== compare (N={} K={} R={} M={})",
        rv.subscribers, rv.topics, rv.rate, rv.messages
    );
    println!(
        "{:<22} {:>14} {:>14} {:>10}",
        "figure", "radiovis", "baseline", "ratio"
    );
    for ((name, a), (_, b)) in rows(rv).into_iter().zip(rows(bl)) {
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!("{name:<22} {:>14} {:>14} {:>10}", fmt(a), fmt(b), ratio);
    }
}
