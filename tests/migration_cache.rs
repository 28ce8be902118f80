//! Migration from the original Python RadioVisServer, on a real memcached: the cache keys
//! both implementations share hold what the original's pylibmc writes
//! (docs/protocol.md#cache-values), and each reads the other's values identically.
//!
//! The original's values are the files of `tests/fixtures/python/` (exact bytes and flags;
//! their README says how they were made), stored here with a raw memcached `set` as
//! pylibmc stores them. What radiovis writes is read back raw and decoded by [`py2`], a
//! reader of exactly the pickle opcodes Python 2's unpickler knows (protocol 0 to 2): a
//! value radiovis writes in a form Python 2 cannot load fails here.
//!
//! Each test has a memcached of its own (the keys are fixed, and other tests share the one
//! on 11211); skipped when memcached cannot be started, unless
//! `RADIOVIS_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use radiovis::backend::memcached::MemcachedCache;
use radiovis::backend::memory::LocalBus;
use radiovis::backend::plugit::{PlugitConfig, PlugitDirectory};
use radiovis::backend::{pyvalue, MessageBus, MockDirectoryApi};
use radiovis::topic::Normaliser;
use radiovis::watchdog::{Watchdog, WatchdogConfig};
use radiovis::{HubConfig, StompHub};
use testkit::harness::Conn;
use testkit::plugit_server::{PlugitServer, CHANNELS};
use testkit::processes::{free_port, Memcached};
use testkit::services::skip;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/python/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A memcached of the test's own, or `None` (skipped) when it cannot be started.
async fn memcached(test: &str) -> Option<Memcached> {
    let started = match free_port() {
        Ok(port) => Memcached::start(port).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(m) => Some(m),
        Err(e) => {
            skip(test, &format!("cannot start a memcached of its own: {e}"));
            None
        }
    }
}

/// Stores a value as pylibmc does: `set <key> <flags> <exptime> <bytes>`.
async fn raw_set(addr: &str, key: &str, flags: u32, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut cmd = format!("set {key} {flags} 600 {}\r\n", data.len()).into_bytes();
    cmd.extend_from_slice(data);
    cmd.extend_from_slice(b"\r\n");
    s.write_all(&cmd).await.expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.expect("reply");
    assert_eq!(line, "STORED\r\n");
}

/// The flags and bytes memcached holds under `key`.
async fn raw_get(addr: &str, key: &str) -> Option<(u32, Vec<u8>)> {
    let s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut s = BufReader::new(s);
    s.get_mut()
        .write_all(format!("get {key}\r\n").as_bytes())
        .await
        .expect("write");
    let mut line = String::new();
    s.read_line(&mut line).await.expect("reply");
    if line == "END\r\n" {
        return None;
    }
    let parts: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(parts[0], "VALUE", "{line:?}");
    let flags: u32 = parts[2].parse().expect("flags");
    let len: usize = parts[3].parse().expect("length");
    let mut data = vec![0; len + 2];
    s.read_exact(&mut data).await.expect("value");
    data.truncate(len);
    Some((flags, data))
}

/// Waits until memcached holds `key`.
async fn wait_for(addr: &str, key: &str) -> (u32, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = raw_get(addr, key).await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cache(m: &Memcached) -> Arc<MemcachedCache> {
    Arc::new(MemcachedCache::from_host(&m.addr()).expect("host"))
}

fn plugit(server: &PlugitServer) -> Arc<PlugitDirectory> {
    Arc::new(PlugitDirectory::new(PlugitConfig::new(server.base_url())).expect("plugit"))
}

/// A reader of Python 2's pickles (protocols 0 to 2) for the value types the shared keys
/// hold, refusing every opcode Python 2's unpickler does not know (protocol 3+: bytes,
/// frames, memoize, short unicode) and any it would run code for.
#[path = "migration/py2.rs"]
mod py2;

use py2::{field, unicode, Py};

/// The decoder itself reads every fixture as Python 2 would (and refuses protocol 3).
#[test]
fn py2_reader_reads_the_fixtures() {
    let list = py2::loads(&fixture("radiovis_channels_topics.flags1.bin")).expect("list");
    assert_eq!(
        list,
        Py::List(vec![unicode(CHANNELS[0]), unicode(CHANNELS[1])])
    );
    let list = py2::loads(&fixture("radiovis_channels_topics_py2str.flags1.bin")).expect("str");
    assert_eq!(
        list,
        Py::List(vec![
            Py::Str(CHANNELS[0].as_bytes().to_vec()),
            Py::Str(CHANNELS[1].as_bytes().to_vec())
        ])
    );
    let d = py2::loads(&fixture("get_channel_default.flags1.bin")).expect("dict");
    assert_eq!(field(&d, "id"), Some(&Py::Int(7)));
    assert_eq!(
        field(&d, "clean_filename"),
        Some(&unicode("r1-original.png"))
    );
    assert_eq!(
        py2::loads(&fixture("get_channel_default_none.flags1.bin")),
        Ok(Py::None)
    );
    assert!(py2::loads(b"\x80\x03N.").is_err(), "protocol 3 refused");
    assert!(
        py2::loads(b"\x80\x02C\x01a.").is_err(),
        "SHORT_BINBYTES refused"
    );
}

/// `radiovis_isoecc_<topic>`: the original's unicode (flags 16), its older pylibmc's
/// pickled unicode and a byte string are read without asking the directory; what
/// radiovis writes is the original's exact bytes and flags.
#[tokio::test]
async fn isoecc_entries_are_read_and_written_as_the_original_does() {
    let Some(m) = memcached("isoecc").await else {
        return;
    };
    let addr = m.addr();
    let variants = [
        ("ca", 16, fixture("radiovis_isoecc.flags16.bin")),
        ("de", 1, fixture("radiovis_isoecc_pickled.flags1.bin")),
        ("fr", 0, fixture("radiovis_isoecc.flags16.bin")),
    ];
    for (cc, flags, data) in &variants {
        raw_set(
            &addr,
            &format!("radiovis_isoecc_/topic/fm/{cc}/4001/09580/"),
            *flags,
            data,
        )
        .await;
    }
    // A directory that must not be asked (a mock with no expectation panics).
    let n = Normaliser::new(Arc::new(MockDirectoryApi::new()), cache(&m));
    for (cc, _, _) in &variants {
        assert_eq!(
            n.normalise(&format!("/topic/fm/{cc}/4001/09580/image"))
                .await,
            "/topic/fm/4e1/4001/09580/image",
            "{cc}"
        );
    }

    let mut dir = MockDirectoryApi::new();
    dir.expect_get_gcc()
        .times(1)
        .returning(|_| Ok(Some("4e1".into())));
    let n = Normaliser::new(Arc::new(dir), cache(&m));
    assert_eq!(
        n.normalise("/topic/fm/ch/4001/09580/text").await,
        "/topic/fm/4e1/4001/09580/text"
    );
    let written = wait_for(&addr, "radiovis_isoecc_/topic/fm/ch/4001/09580/").await;
    assert_eq!(written, (16, fixture("radiovis_isoecc.flags16.bin")));
}

fn watchdog_config() -> WatchdogConfig {
    WatchdogConfig {
        fallback_check: Duration::from_millis(500),
        fallback_time: Duration::from_secs(1),
        image_locations: "http://img.example/".to_owned(),
        ..WatchdogConfig::default()
    }
}

/// Runs a watchdog on `m` with PlugIt as directory and log, until the first default
/// TEXT it sends; returns that body.
async fn first_default_text(m: &Memcached, server: &PlugitServer) -> String {
    let bus = Arc::new(LocalBus::default());
    let mut seen = bus.subscribe().await.expect("subscribe");
    let wd = Watchdog::new(
        bus.clone(),
        plugit(server),
        cache(m),
        plugit(server),
        watchdog_config(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(wd.run(stop.clone()));
    let text = tokio::time::timeout(WAIT, async {
        while let Some(msg) = seen.next().await {
            if msg.topic == format!("{}text", CHANNELS[0]) {
                return String::from_utf8_lossy(&msg.body).into_owned();
            }
        }
        String::new()
    })
    .await
    .expect("a default within 10 s");
    stop.cancel();
    let _ = task.await;
    text
}

/// `get_channel_default_<id>` written by the original (a pickled `info` dict) is used
/// by radiovis's watchdog without asking PlugIt.
#[tokio::test]
async fn the_watchdog_uses_the_originals_channel_default() {
    let Some(m) = memcached("original channel default").await else {
        return;
    };
    raw_set(
        &m.addr(),
        "get_channel_default_7",
        1,
        &fixture("get_channel_default.flags1.bin"),
    )
    .await;
    let server = PlugitServer::start().await;
    let text = first_default_text(&m, &server).await;
    assert_eq!(text, "TEXT Radio One \u{2013} from the original");
    assert_eq!(server.calls("get_channel_default"), 0);
}

/// What radiovis's watchdog writes is what the original's watchdog reads: a pickled
/// dict with unicode `filename`, `radiotext`, `radiolink` (it does `details['radiotext']`
/// and `FB_IMAGE_LOCATIONS + details['filename']`), a pickled `None` for no default (the
/// exact bytes of the original's), and the channel list as a pickled list of unicode.
#[tokio::test]
async fn the_watchdogs_writes_read_as_the_original_reads_them() {
    let Some(m) = memcached("watchdog writes").await else {
        return;
    };
    let server = PlugitServer::start().await;
    let text = first_default_text(&m, &server).await;
    assert_eq!(text, "TEXT Radio One");
    assert_eq!(server.calls("get_channel_default"), 1);

    let (flags, data) = wait_for(&m.addr(), "get_channel_default_7").await;
    assert_eq!(flags, 1, "pickled");
    let d = py2::loads(&data).expect("Python 2 loads it");
    assert_eq!(field(&d, "filename"), Some(&unicode("r1.png")));
    assert_eq!(field(&d, "radiotext"), Some(&unicode("Radio One")));
    assert_eq!(
        field(&d, "radiolink"),
        Some(&unicode("http://radio1.example/"))
    );
    assert_eq!(
        field(&d, "public_url"),
        Some(&unicode("http://img.example/r1.png"))
    );

    let none = pyvalue::channel_default(None);
    assert_eq!(
        (none.flags, none.data.to_vec()),
        (1, fixture("get_channel_default_none.flags1.bin"))
    );

    let (flags, data) = wait_for(&m.addr(), "radiovis_channels_topics").await;
    assert_eq!(flags, 1, "pickled");
    // The PlugIt test server's vis channels: CHANNELS[0] only.
    assert_eq!(
        py2::loads(&data).expect("Python 2 loads it"),
        Py::List(vec![unicode(CHANNELS[0])])
    );
}

/// Starts a server hub on `m` with PlugIt as directory; returns once it serves STOMP
/// (its known channels are loaded by then).
async fn serving_hub(m: &Memcached, server: &PlugitServer, stop: &CancellationToken) {
    let hub = StompHub::new(
        Arc::new(LocalBus::default()),
        plugit(server),
        cache(m),
        HubConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = stop.clone();
    tokio::spawn(async move { hub.run(vec![listener], stop).await });
    let mut conn = Conn::open(&addr).await;
    conn.send_frame("CONNECT", &[("accept-version", "1.2"), ("host", "x")], b"")
        .await;
    conn.expect("CONNECTED").await;
}

/// `radiovis_channels_topics` written by the original (unicode or Python 2 `str`
/// items) or by an earlier radiovis (JSON) is read at start-up: a server joining a fleet
/// asks PlugIt nothing (before, every server asked `get_all_channels` at start and
/// overwrote the original's list with JSON). With nothing cached it asks once and shares
/// the list in the original's format.
#[tokio::test]
async fn servers_take_the_channel_list_from_the_cache_whoever_wrote_it() {
    let json = serde_json::to_vec(&CHANNELS).expect("json");
    let cases: [(&str, u32, Vec<u8>); 3] = [
        (
            "original",
            1,
            fixture("radiovis_channels_topics.flags1.bin"),
        ),
        (
            "original, str items",
            1,
            fixture("radiovis_channels_topics_py2str.flags1.bin"),
        ),
        ("earlier radiovis", 0, json),
    ];
    for (what, flags, data) in cases {
        let Some(m) = memcached("channel list").await else {
            return;
        };
        raw_set(&m.addr(), "radiovis_channels_topics", flags, &data).await;
        let server = PlugitServer::start().await;
        let stop = CancellationToken::new();
        serving_hub(&m, &server, &stop).await;
        assert_eq!(server.calls("get_all_channels"), 0, "{what}");
        // Left as the original (or the earlier radiovis) wrote it.
        assert_eq!(
            raw_get(&m.addr(), "radiovis_channels_topics").await,
            Some((flags, data)),
            "{what}"
        );
        stop.cancel();
    }

    let Some(m) = memcached("channel list").await else {
        return;
    };
    let server = PlugitServer::start().await;
    let stop = CancellationToken::new();
    serving_hub(&m, &server, &stop).await;
    assert_eq!(server.calls("get_all_channels"), 1);
    // Normalised (the PlugIt test server's channels are in GCC form already).
    let (flags, data) = wait_for(&m.addr(), "radiovis_channels_topics").await;
    assert_eq!(flags, 1);
    assert_eq!(
        py2::loads(&data).expect("Python 2 loads it"),
        Py::List(vec![unicode(CHANNELS[0]), unicode(CHANNELS[1])])
    );
    stop.cancel();
}

/// The watchdog's defaults carry `message-id` as the original's newest version writes
/// it (`str(uuid4().int)`, a decimal number), and the log entry PlugIt receives for them
/// has the original's `headers` text: `json.dumps` of the `[name, value]` pairs.
#[tokio::test]
async fn the_watchdog_logs_and_sends_in_the_originals_shapes() {
    let Some(m) = memcached("watchdog shapes").await else {
        return;
    };
    let server = PlugitServer::start().await;
    let bus = Arc::new(LocalBus::default());
    let mut seen = bus.subscribe().await.expect("subscribe");
    let wd = Watchdog::new(
        bus.clone(),
        plugit(&server),
        cache(&m),
        plugit(&server),
        watchdog_config(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(wd.run(stop.clone()));
    let sent = tokio::time::timeout(WAIT, async {
        loop {
            match seen.next().await {
                Some(msg) if msg.topic == format!("{}text", CHANNELS[0]) => return msg,
                Some(_) => {}
                None => panic!("bus closed"),
            }
        }
    })
    .await
    .expect("a default within 10 s");
    let id = sent.header("message-id").expect("message-id").to_owned();
    assert!(id.parse::<u128>().is_ok(), "decimal: {id}");

    let deadline = tokio::time::Instant::now() + WAIT;
    let logged = loop {
        let found = server.requests().into_iter().find(|r| {
            r.action == "add_log"
                && r.param("message") == Some("TEXT Radio One")
                && r.param("headers").is_some_and(|h| h.contains(&id))
        });
        if let Some(r) = found {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    let _ = task.await;
    let text = logged.param("headers").expect("headers");
    let pairs: Vec<(String, String)> = serde_json::from_str(text).expect("an array of pairs");
    let expected: String = {
        let quoted: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("[\"{k}\", \"{v}\"]"))
            .collect();
        format!("[{}]", quoted.join(", "))
    };
    assert_eq!(text, expected, "json.dumps spacing");
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "trigger-time",
            "link",
            "message-id",
            "expires",
            "priority",
            "timestamp",
            "when"
        ]
    );
    assert_eq!(logged.param("topic"), Some(sent.topic.as_str()));
}
