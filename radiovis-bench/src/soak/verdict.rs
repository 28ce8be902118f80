//! The soak run's figures: growth between sample windows, the printed report, pass/fail.

use serde::Serialize;

/// One sample of the server process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the steady state began.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// Subscribers connected and subscribed (seen from the benchmark).
    pub connected: usize,
    /// Messages received so far by all subscribers.
    pub received: u64,
}

/// Growth of one figure between the 20%-40% window and the last 20% of samples.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub early_mean: f64,
    pub late_mean: f64,
    pub growth: f64,
    pub growth_pct: f64,
    pub allowed: f64,
    pub ok: bool,
}

/// Everything a soak run measured (printed, and written with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub duration_secs: u64,
    pub subscribers: usize,
    pub topics: usize,
    pub rate_per_topic: f64,
    pub churn_pct_per_min: f64,
    pub connect_secs: f64,
    pub published: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates_or_out_of_order: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub unexpected_closes: u64,
    pub latency_us_max: u64,
    pub first_error: Option<String>,
    pub rss: Growth,
    pub fds: Growth,
    pub threads_min: u64,
    pub threads_max: u64,
    pub samples: Vec<Sample>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Late (last 20%) over early (20%-40%, after warm-up) means of `values`.
pub fn growth(values: &[f64], pct: f64, abs: f64) -> Growth {
    let n = values.len();
    let at = |f: f64| ((n as f64 * f).floor() as usize).min(n);
    let early = &values[at(0.2)..at(0.4).max(at(0.2) + 1).min(n)];
    let late = &values[at(0.8).min(n.saturating_sub(1))..];
    let (early_mean, late_mean) = (mean(early), mean(late));
    let growth = late_mean - early_mean;
    let allowed = early_mean * pct / 100.0 + abs;
    Growth {
        early_mean,
        late_mean,
        growth,
        growth_pct: if early_mean > 0.0 {
            growth * 100.0 / early_mean
        } else {
            0.0
        },
        allowed,
        ok: growth <= allowed,
    }
}

pub fn print(r: &SoakReport) {
    println!(
        "== soak (N={} K={} R={}/s per topic churn={}%/min, {}s)",
        r.subscribers, r.topics, r.rate_per_topic, r.churn_pct_per_min, r.duration_secs
    );
    println!(
        "{:>8} {:>10} {:>7} {:>8} {:>10} {:>12}",
        "t s", "RSS KiB", "fds", "threads", "connected", "received"
    );
    for s in &r.samples {
        println!(
            "{:>8.0} {:>10} {:>7} {:>8} {:>10} {:>12}",
            s.t, s.rss_kib, s.fds, s.threads, s.connected, s.received
        );
    }
    let first = r.samples.first();
    let last = r.samples.last();
    let g = |name: &str, g: &Growth, start: Option<u64>, end: Option<u64>| {
        println!(
            "{name:<5} start {:>9} end {:>9} | 20-40% mean {:>11.1} last-20% mean {:>11.1} growth {:>+9.1} ({:+.2}%) allowed {:.1} {}",
            start.unwrap_or(0),
            end.unwrap_or(0),
            g.early_mean,
            g.late_mean,
            g.growth,
            g.growth_pct,
            g.allowed,
            if g.ok { "ok" } else { "FAIL" }
        );
    };
    g(
        "RSS",
        &r.rss,
        first.map(|s| s.rss_kib),
        last.map(|s| s.rss_kib),
    );
    g("fds", &r.fds, first.map(|s| s.fds), last.map(|s| s.fds));
    println!("threads min {} max {}", r.threads_min, r.threads_max);
    println!(
        "connect {:.1}s, published {}, received {}, lost {}, duplicates/out of order {}, reconnects {}, connect failures {}, closed by the server {}, latency max {} us",
        r.connect_secs,
        r.published,
        r.received,
        r.lost,
        r.duplicates_or_out_of_order,
        r.reconnects,
        r.connect_failures,
        r.unexpected_closes,
        r.latency_us_max
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}

pub fn verdict(r: &SoakReport) -> Result<(), String> {
    let mut why = Vec::new();
    if !r.rss.ok {
        why.push(format!("RSS grew {:.0} KiB", r.rss.growth));
    }
    if !r.fds.ok {
        why.push(format!("fds grew {:.1}", r.fds.growth));
    }
    if r.lost > 0 {
        why.push(format!("{} messages lost", r.lost));
    }
    if r.duplicates_or_out_of_order > 0 {
        why.push(format!(
            "{} duplicates/out of order",
            r.duplicates_or_out_of_order
        ));
    }
    if r.connect_failures > 0 || r.unexpected_closes > 0 {
        why.push(format!(
            "{} connect failures, {} closed by the server",
            r.connect_failures, r.unexpected_closes
        ));
    }
    if r.received == 0 {
        why.push("nothing received".into());
    }
    if why.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        Err(format!("soak failed: {}", why.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::growth;

    #[test]
    fn flat_series_passes_and_warm_up_is_ignored() {
        // A big rise in the first 20% (warm-up), then flat.
        let mut v = vec![100.0, 500.0];
        v.extend(std::iter::repeat_n(1000.0, 8));
        let g = growth(&v, 1.0, 8.0);
        assert!(g.ok, "{g:?}");
        assert_eq!(g.growth, 0.0);
    }

    #[test]
    fn steady_growth_beyond_tolerance_fails() {
        // +1% per sample: the last 20% are ~10% above the 20%-40% window.
        let v: Vec<f64> = (0..20)
            .map(|i| 10_000.0 * (1.0 + i as f64 / 100.0))
            .collect();
        let g = growth(&v, 5.0, 100.0);
        assert!(!g.ok, "{g:?}");
        assert!(g.growth_pct > 10.0 && g.growth_pct < 16.0, "{g:?}");
        // The same series passes with a tolerance above its growth.
        assert!(growth(&v, 20.0, 0.0).ok);
    }
}
