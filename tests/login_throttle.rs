//! Login throttling (docs/protocol.md#connect): failed logins from one address are
//! answered more and more slowly and, after `auth_max_failures`, refused without asking
//! the directory; the directory never sees more than `auth_concurrency` checks at once.
//! Anonymous radios are never affected.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use radiovis::backend::{ChannelDefault, ChannelRef, DirectoryApi, DirectoryError};
use radiovis::HubConfig;
use testkit::harness::*;

/// [`DIRECTORY`] that counts `check_auth` calls (and the most in flight at once), and
/// optionally hangs in it.
#[derive(Clone)]
struct Counting {
    inner: Dir,
    hang: bool,
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Counting {
    fn new(hang: bool) -> Counting {
        Counting {
            inner: static_directory(),
            hang,
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }
}

/// Counts a call out of flight when its future ends or is dropped (timed out).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl DirectoryApi for Counting {
    async fn check_auth(&self, u: &str, p: &str, ip: IpAddr) -> Result<bool, DirectoryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(self.in_flight.clone());
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.inner.check_auth(u, p, ip).await
    }
    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        self.inner.get_channels(station_id).await
    }
    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        self.inner.get_gcc(cc).await
    }
    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_channels().await
    }
    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        self.inner.get_all_vis_channels().await
    }
    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        self.inner.get_channel_default(id).await
    }
}

fn quick_throttle() -> HubConfig {
    HubConfig {
        auth_failure_delay: Duration::from_millis(1),
        auth_max_failures: 10,
        auth_block: Duration::from_secs(300),
        ..test_config()
    }
}

/// CONNECT with these credentials; the ERROR's message, or None when CONNECTED.
async fn login(hub: &TestHub, login: &str, passcode: &str) -> Option<String> {
    let mut c = hub.conn().await;
    c.send_frame("CONNECT", &[("login", login), ("passcode", passcode)], b"")
        .await;
    let f = c.next(Duration::from_secs(20)).await;
    match f {
        Next::Frame(f) if f.command == "CONNECTED" => None,
        Next::Frame(f) if f.command == "ERROR" => {
            assert!(!String::from_utf8_lossy(&f.raw).contains(PASSCODE));
            Some(f.message())
        }
        other => panic!("no answer to CONNECT: {other:?}"),
    }
}

#[tokio::test]
async fn fifty_wrong_logins_reach_the_directory_at_most_max_failures_times() {
    let dir = Counting::new(false);
    let hub = TestHub::with(quick_throttle(), Arc::new(dir.clone())).await;
    let wrong = format!("{PASSCODE}-wrong");
    let mut throttled = 0;
    for i in 0..50 {
        let m = login(&hub, LOGIN, &wrong)
            .await
            .unwrap_or_else(|| panic!("wrong login {i} accepted"));
        if m.contains("too many failed logins") {
            throttled += 1;
        } else {
            assert!(m.contains("wrong credentials"), "{m}");
        }
    }
    let calls = dir.calls.load(Ordering::SeqCst);
    assert!(calls <= 10, "the directory was asked {calls} times");
    assert_eq!(throttled, 50 - calls, "the later logins are throttled");
    // Anonymous radios from the same address are not affected.
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
}

#[tokio::test]
async fn a_successful_login_resets_the_count() {
    let dir = Counting::new(false);
    let config = HubConfig {
        auth_max_failures: 3,
        ..quick_throttle()
    };
    let hub = TestHub::with(config, Arc::new(dir.clone())).await;
    let wrong = format!("{PASSCODE}-wrong");
    for _ in 0..2 {
        let m = login(&hub, LOGIN, &wrong).await.expect("refused");
        assert!(m.contains("wrong credentials"), "{m}");
    }
    assert_eq!(login(&hub, LOGIN, PASSCODE).await, None, "accepted");
    for _ in 0..2 {
        let m = login(&hub, LOGIN, &wrong).await.expect("refused");
        assert!(
            m.contains("wrong credentials"),
            "not throttled after a success: {m}"
        );
    }
    assert_eq!(dir.calls.load(Ordering::SeqCst), 5);
}

/// The ERROR of a failed login comes after a delay that grows with each failure (the
/// test only checks that it does not come earlier than that).
#[tokio::test]
async fn failed_logins_are_answered_after_a_growing_delay() {
    let config = HubConfig {
        auth_failure_delay: Duration::from_millis(300),
        ..test_config()
    };
    let hub = TestHub::with(config, static_directory()).await;
    let wrong = format!("{PASSCODE}-wrong");
    for quiet in [250, 550] {
        let mut c = hub.conn().await;
        c.send_frame("CONNECT", &[("login", LOGIN), ("passcode", &wrong)], b"")
            .await;
        c.expect_silence(Duration::from_millis(quiet)).await;
        let e = c.expect("ERROR").await;
        assert!(e.message().contains("wrong credentials"), "{e:?}");
    }
}

#[tokio::test]
async fn concurrent_logins_to_a_hanging_directory_are_bounded() {
    let dir = Counting::new(true);
    let config = HubConfig {
        auth_concurrency: 8,
        directory_timeout: Duration::from_millis(500),
        ..quick_throttle()
    };
    let hub = Arc::new(TestHub::with(config, Arc::new(dir.clone())).await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let m = login(&hub, &format!("{i}.x"), "pw").await.expect("refused");
            assert!(m.contains("directory unavailable"), "{m}");
        }));
    }
    for t in tasks {
        t.await.expect("login task");
    }
    let max = dir.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 8, "{max} credential checks in flight at once");
    assert!(max >= 1);
    // Radios are not held up.
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("r"), &[]).await;
}
