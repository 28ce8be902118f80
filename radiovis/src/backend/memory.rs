//! In-process backends: the standalone server's defaults, and what embedders use in
//! their tests. They are also the reference for what a backend must do.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{
    BusError, BusMessage, BusStream, Cache, CacheError, CacheItem, ChannelDefault, ChannelRef,
    DirectoryApi, DirectoryError, LogEntry, LogError, LogStore, MessageBus,
};

/// A bus inside one process: every subscriber gets every message.
///
/// Each subscriber has a bounded queue; `publish` waits for room (backpressure on the
/// publisher) rather than dropping, so nothing is lost. Subscribers whose stream was
/// dropped are forgotten.
#[derive(Debug)]
pub struct LocalBus {
    capacity: usize,
    subscribers: Mutex<Vec<mpsc::Sender<BusMessage>>>,
}

impl LocalBus {
    /// A bus whose subscribers each buffer up to `capacity` messages.
    pub fn new(capacity: usize) -> LocalBus {
        LocalBus {
            capacity: capacity.max(1),
            subscribers: Mutex::new(Vec::new()),
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new(4096)
    }
}

#[async_trait]
impl MessageBus for LocalBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        let subscribers: Vec<_> = {
            let mut subs = self.subscribers.lock();
            subs.retain(|s| !s.is_closed());
            subs.clone()
        };
        for s in subscribers {
            // A subscriber gone between the snapshot and now is not an error.
            let _ = s.send(message.clone()).await;
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<BusStream, BusError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.subscribers.lock().push(tx);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

/// One station of a [`StaticDirectory`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Station {
    /// Station id; defaults to the part of `login` before the first `.`.
    #[serde(default)]
    pub id: Option<String>,
    /// Login (`<station id>.<name>` by convention, e.g. `1.radio1`).
    pub login: String,
    /// Passcode.
    pub passcode: String,
    /// When not empty, logins are accepted only from these networks (`10.0.0.0/8`,
    /// `192.0.2.7`, `::1/128`).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// Channel topics (ending with `/`) the station may publish to.
    #[serde(default)]
    pub channels: Vec<String>,
}

impl Station {
    fn station_id(&self) -> &str {
        match &self.id {
            Some(id) => id,
            None => self.login.split('.').next().unwrap_or(&self.login),
        }
    }
}

/// One channel of a [`StaticDirectory`], with its default slide.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// The channel's id (what `get_channel_default` takes).
    pub id: String,
    /// Channel topic, ending with `/`.
    pub topic: String,
    /// Default text, sent as `TEXT <radiotext>` by the watchdog.
    #[serde(default)]
    pub radiotext: Option<String>,
    /// Default `link` header of the watchdog's messages.
    #[serde(default)]
    pub radiolink: Option<String>,
    /// Default image file name, appended to `FB_IMAGE_LOCATIONS`.
    #[serde(default)]
    pub filename: Option<String>,
    /// Default image URL, used when `FB_IMAGE_LOCATIONS` is empty.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Channel {
    fn default_slide(&self) -> Option<ChannelDefault> {
        if self.radiotext.is_none() && self.filename.is_none() && self.public_url.is_none() {
            return None;
        }
        Some(ChannelDefault {
            filename: self.filename.clone(),
            radiotext: self.radiotext.clone(),
            radiolink: self.radiolink.clone(),
            public_url: self.public_url.clone(),
        })
    }

    fn has_picture(&self) -> bool {
        self.filename.is_some() || self.public_url.is_some()
    }
}

/// The contents of a directory file (see `examples/directory.toml`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectoryData {
    /// ISO country code -> GCC (`ch = "4e1"`).
    #[serde(default)]
    pub gcc: HashMap<String, String>,
    /// The stations (`[[station]]`).
    #[serde(default, rename = "station")]
    pub stations: Vec<Station>,
    /// The channels (`[[channel]]`).
    #[serde(default, rename = "channel")]
    pub channels: Vec<Channel>,
}

/// Why a directory file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryFileError {
    /// The file could not be read.
    #[error("cannot read directory file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a valid directory (TOML syntax, unknown field, bad network).
    #[error("invalid directory file {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong in it.
        #[source]
        source: DirectoryDataError,
    },
}

/// Why directory contents are refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryDataError {
    /// Not the TOML of a directory file (the TOML parser's message, with its position).
    #[error("{0}")]
    Toml(#[source] Box<toml::de::Error>),
    /// A station's `allowed_networks` entry that is not an IP address or network.
    #[error("invalid network {network:?}: {why}")]
    Network {
        /// The entry as written.
        network: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A directory held in memory, loaded from a TOML file or built in code.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    data: DirectoryData,
    networks: Vec<Vec<IpNet>>,
}

impl StaticDirectory {
    /// A directory with these contents. Fails on an invalid network in
    /// `allowed_networks`.
    pub fn new(data: DirectoryData) -> Result<StaticDirectory, DirectoryDataError> {
        let networks = data
            .stations
            .iter()
            .map(|s| {
                s.allowed_networks
                    .iter()
                    .map(|n| {
                        parse_network(n).map_err(|why| DirectoryDataError::Network {
                            network: n.clone(),
                            why,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StaticDirectory { data, networks })
    }

    /// Parses the TOML text of a directory file.
    pub fn from_toml(text: &str) -> Result<StaticDirectory, DirectoryDataError> {
        let data: DirectoryData =
            toml::from_str(text).map_err(|e| DirectoryDataError::Toml(Box::new(e)))?;
        StaticDirectory::new(data)
    }

    /// Loads a directory file.
    pub fn from_file(path: &Path) -> Result<StaticDirectory, DirectoryFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        StaticDirectory::from_toml(&text).map_err(|source| DirectoryFileError::Invalid {
            path: path.display().to_string(),
            source,
        })
    }

    /// The contents.
    pub fn data(&self) -> &DirectoryData {
        &self.data
    }
}

#[async_trait]
impl DirectoryApi for StaticDirectory {
    async fn check_auth(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<bool, DirectoryError> {
        let ok = self
            .data
            .stations
            .iter()
            .zip(&self.networks)
            .any(|(s, nets)| {
                s.login == username
                    && passcode_matches(&s.passcode, password)
                    && (nets.is_empty() || nets.iter().any(|n| network_contains(n, ip)))
            });
        Ok(ok)
    }

    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(self
            .data
            .stations
            .iter()
            .filter(|s| s.station_id() == station_id)
            .flat_map(|s| s.channels.iter().cloned())
            .collect())
    }

    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        Ok(self.data.gcc.get(&cc.to_ascii_lowercase()).cloned())
    }

    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(self
            .data
            .channels
            .iter()
            .map(|c| ChannelRef {
                topic: c.topic.clone(),
                id: c.id.clone(),
            })
            .collect())
    }

    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        Ok(self
            .data
            .channels
            .iter()
            .filter(|c| c.has_picture())
            .map(|c| ChannelRef {
                topic: c.topic.clone(),
                id: c.id.clone(),
            })
            .collect())
    }

    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        Ok(self
            .data
            .channels
            .iter()
            .find(|c| c.id == id)
            .and_then(Channel::default_slide))
    }
}

/// An entry of `allowed_networks`: `addr/prefix`, or a bare address (a /32 or /128).
/// Blanks around the address and the prefix are ignored. The error says what is wrong.
fn parse_network(s: &str) -> Result<IpNet, &'static str> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| "not an IP address or network (expected 10.0.0.0/8, 192.0.2.7, ::1)")?;
    if !s.contains('/') {
        return Ok(IpNet::from(addr));
    }
    let prefix: u8 = prefix
        .trim()
        .parse()
        .map_err(|_| "the prefix length is not a number")?;
    IpNet::new(addr, prefix)
        .map_err(|_| "the prefix length is longer than the address (32 for IPv4, 128 for IPv6)")
}

/// Whether `ip` is in `net`; an IPv4 client seen as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, a dual-stack listener) counts as its IPv4 address.
fn network_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    net.contains(&ip)
}

/// A cache in process memory, with TTLs.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (CacheItem, Instant)>>,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_item(key).await?.map(|item| item.data))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        let item = CacheItem {
            flags: 0,
            data: value,
        };
        self.set_item(key, item, ttl).await
    }

    async fn get_item(&self, key: &str) -> Result<Option<CacheItem>, CacheError> {
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some((v, expires)) if *expires > Instant::now() => Ok(Some(v.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set_item(&self, key: &str, item: CacheItem, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        // Keep the map from growing with dead entries.
        if entries.len() > 10_000 {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.to_owned(), (item, now + ttl));
        Ok(())
    }
}

/// A log store in memory that keeps the newest `capacity` entries.
#[derive(Debug)]
pub struct MemoryLogStore {
    capacity: usize,
    entries: Mutex<std::collections::VecDeque<LogEntry>>,
}

impl MemoryLogStore {
    /// A store keeping the last `capacity` entries (at least one).
    pub fn new(capacity: usize) -> MemoryLogStore {
        MemoryLogStore {
            capacity: capacity.max(1),
            entries: Mutex::new(Default::default()),
        }
    }

    /// A copy of the entries, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.entries.lock().iter().cloned().collect()
    }
}

impl Default for MemoryLogStore {
    fn default() -> Self {
        MemoryLogStore::new(10_000)
    }
}

#[async_trait]
impl LogStore for MemoryLogStore {
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError> {
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
        Ok(())
    }

    async fn cleanup_logs(&self, max_age: Duration) -> Result<(), LogError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let oldest = now.saturating_sub(max_age.as_secs());
        self.entries.lock().retain(|e| e.timestamp >= oldest);
        Ok(())
    }
}

/// Compares passcodes in time independent of where they differ, so that response
/// times tell an attacker nothing about a guess (only the length may show).
fn passcode_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn passcodes_compare_right() {
        assert!(passcode_matches("secret", "secret"));
        assert!(passcode_matches("", ""));
        assert!(!passcode_matches("secret", "secreT"));
        assert!(!passcode_matches("secret", "secret2"));
        assert!(!passcode_matches("secret", "secre"));
        assert!(!passcode_matches("secret", ""));
        assert!(!passcode_matches("", "x"));
    }

    const DIR: &str = r#"
        [gcc]
        ch = "4e1"

        [[station]]
        login = "1.radio1"
        passcode = "secret"
        allowed_networks = ["127.0.0.0/8", "::1"]
        channels = ["/topic/fm/4e1/4001/09580/"]

        [[channel]]
        id = "7"
        topic = "/topic/fm/4e1/4001/09580/"
        radiotext = "Radio One"
        filename = "r1.png"
    "#;

    #[tokio::test]
    async fn static_directory_answers() {
        let d = StaticDirectory::from_toml(DIR).expect("valid");
        let local: IpAddr = "127.0.0.9".parse().expect("ip");
        let remote: IpAddr = "192.0.2.1".parse().expect("ip");
        let v6: IpAddr = "::1".parse().expect("ip");
        assert!(d.check_auth("1.radio1", "secret", local).await.expect("ok"));
        assert!(d.check_auth("1.radio1", "secret", v6).await.expect("ok"));
        assert!(!d
            .check_auth("1.radio1", "secret", remote)
            .await
            .expect("ok"));
        assert!(!d.check_auth("1.radio1", "wrong", local).await.expect("ok"));
        assert_eq!(
            d.get_channels("1").await.expect("ok"),
            vec!["/topic/fm/4e1/4001/09580/".to_string()]
        );
        assert!(d.get_channels("2").await.expect("ok").is_empty());
        assert_eq!(d.get_gcc("CH").await.expect("ok"), Some("4e1".into()));
        assert_eq!(d.get_gcc("xx").await.expect("ok"), None);
        assert_eq!(d.get_all_vis_channels().await.expect("ok").len(), 1);
        let def = d.get_channel_default("7").await.expect("ok").expect("some");
        assert_eq!(def.radiotext.as_deref(), Some("Radio One"));
        assert_eq!(d.get_channel_default("8").await.expect("ok"), None);
    }

    #[test]
    fn bad_network_is_an_error() {
        let bad = "[[station]]\nlogin='a'\npasscode='b'\nallowed_networks=['10.0.0.0/40']";
        assert!(StaticDirectory::from_toml(bad).is_err());
        for bad in ["10.0.0.0/x", "10.0.0/8", "::1/129", "", "host"] {
            assert!(parse_network(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn networks_match_as_before() {
        let net = |s: &str| parse_network(s).expect("valid network");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // A bare address is a single host; host bits in a network are ignored.
        assert!(network_contains(&net("192.0.2.7"), ip("192.0.2.7")));
        assert!(!network_contains(&net("192.0.2.7"), ip("192.0.2.8")));
        assert!(network_contains(&net(" 10.1.2.3 / 8 "), ip("10.200.0.1")));
        assert!(network_contains(&net("0.0.0.0/0"), ip("203.0.113.1")));
        assert!(!network_contains(&net("0.0.0.0/0"), ip("2001:db8::1")));
        assert!(network_contains(&net("2001:db8::/32"), ip("2001:db8::1")));
        // An IPv4 client on a dual-stack listener.
        assert!(network_contains(
            &net("127.0.0.0/8"),
            ip("::ffff:127.0.0.1")
        ));
    }

    #[tokio::test]
    async fn local_bus_delivers_to_every_subscriber() {
        let bus = LocalBus::new(8);
        let mut a = bus.subscribe().await.expect("sub");
        let mut b = bus.subscribe().await.expect("sub");
        let m = BusMessage {
            topic: "/topic/x/text".into(),
            body: Bytes::from_static(b"TEXT hi"),
            headers: vec![],
        };
        bus.publish(m.clone()).await.expect("publish");
        assert_eq!(a.next().await, Some(m.clone()));
        assert_eq!(b.next().await, Some(m));
    }

    #[tokio::test]
    async fn memory_cache_expires() {
        let c = MemoryCache::new();
        c.set("k", Bytes::from_static(b"v"), Duration::from_millis(30))
            .await
            .expect("set");
        assert_eq!(
            c.get("k").await.expect("get"),
            Some(Bytes::from_static(b"v"))
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(c.get("k").await.expect("get"), None);
    }
}
