//! A second opinion from Python itself on the cache values shared with the original
//! (docs/protocol.md#cache-values): Python 3's `pickle` and `pickletools` read what
//! radiovis writes (and check that every opcode exists in protocol 2, the highest Python
//! 2 reads), and radiovis reads what Python's `pickle.dumps(..., protocol=2)` writes.
//!
//! Not part of the default test command (it needs `python3`); run it with
//! `cargo test -p radiovis-tests --test migration_python -- --ignored`. The default tests
//! (`migration_cache.rs`) check the same values without Python.

use std::sync::Arc;
use std::time::Duration;

use radiovis::backend::memcached::MemcachedCache;
use radiovis::backend::{pyvalue, Cache, ChannelDefault};
use testkit::plugit_server::CHANNELS;
use testkit::processes::{free_port, Memcached};
use testkit::services::skip;

/// Python that reads `key` from memcached at `port`, and prints the flags and the value
/// as JSON (pickles loaded, after checking every opcode is of protocol 2 or less).
const READ: &str = r#"
import json, pickle, pickletools, socket, sys
port, key = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(("get %s\r\n" % key).encode())
buf = b""
while not buf.endswith(b"END\r\n"):
    buf += s.recv(65536)
head, rest = buf.split(b"\r\n", 1)
_, _, flags, length = head.decode().split(" ")[:4]
data = rest[: int(length)]
flags = int(flags)
if flags == 1:
    assert max(op.proto for op, _, _ in pickletools.genops(data)) <= 2, "not Python 2"
    value = pickle.loads(data, encoding="latin1")
elif flags == 16:
    value = data.decode("utf-8")
else:
    value = data.decode("latin1")
print(json.dumps({"flags": flags, "value": value}, sort_keys=True))
"#;

/// Python that stores `pickle.dumps(eval(value), 2)` under `key` with flags 1.
const WRITE: &str = r#"
import pickle, socket, sys
port, key, value = int(sys.argv[1]), sys.argv[2], eval(sys.argv[3])
data = pickle.dumps(value, protocol=2)
s = socket.create_connection(("127.0.0.1", port))
s.sendall(("set %s 1 600 %d\r\n" % (key, len(data))).encode() + data + b"\r\n")
assert s.recv(100) == b"STORED\r\n"
"#;

async fn python(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("python3")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
#[ignore = "needs python3; run with --ignored"]
async fn python_reads_radiovis_values_and_radiovis_reads_pythons() {
    if python(&["-c", "pass"]).await.is_err() {
        skip("python second opinion", "python3 not found");
        return;
    }
    let m = match free_port() {
        Ok(port) => Memcached::start(port).await,
        Err(e) => Err(e),
    };
    let Ok(m) = m else {
        skip(
            "python second opinion",
            "cannot start a memcached of its own",
        );
        return;
    };
    let port = m.addr().rsplit(':').next().unwrap_or_default().to_owned();
    let cache = Arc::new(MemcachedCache::from_host(&m.addr()).expect("host"));
    let ttl = Duration::from_secs(600);

    let default = ChannelDefault {
        filename: Some("r1.png".into()),
        radiotext: Some("Radio One \u{2013} live".into()),
        radiolink: Some("http://radio1.example/".into()),
        public_url: None,
    };
    let topics: Vec<String> = CHANNELS.iter().map(|c| c.to_string()).collect();
    cache
        .set_item(
            "get_channel_default_7",
            pyvalue::channel_default(Some(&default)),
            ttl,
        )
        .await
        .expect("set");
    cache
        .set_item("get_channel_default_8", pyvalue::channel_default(None), ttl)
        .await
        .expect("set");
    cache
        .set_item(
            "radiovis_channels_topics",
            pyvalue::topic_list(&topics),
            ttl,
        )
        .await
        .expect("set");
    cache
        .set_item("radiovis_isoecc_x", pyvalue::text(CHANNELS[0]), ttl)
        .await
        .expect("set");

    let read = |key: &'static str| {
        let port = port.clone();
        async move {
            python(&["-c", READ, &port, key])
                .await
                .expect("python reads")
        }
    };
    assert_eq!(
        read("get_channel_default_7").await,
        r#"{"flags": 1, "value": {"filename": "r1.png", "radiolink": "http://radio1.example/", "radiotext": "Radio One \u2013 live"}}"#
    );
    assert_eq!(
        read("get_channel_default_8").await,
        r#"{"flags": 1, "value": null}"#
    );
    assert_eq!(
        read("radiovis_channels_topics").await,
        format!(
            r#"{{"flags": 1, "value": ["{}", "{}"]}}"#,
            CHANNELS[0], CHANNELS[1]
        )
    );
    assert_eq!(
        read("radiovis_isoecc_x").await,
        format!(r#"{{"flags": 16, "value": "{}"}}"#, CHANNELS[0])
    );

    python(&[
        "-c",
        WRITE,
        &port,
        "get_channel_default_9",
        "{u'id': 9, u'filename': u'p.png', u'radiotext': u'From Python', u'radiolink': u'http://p/'}",
    ])
    .await
    .expect("python writes");
    let item = cache
        .get_item("get_channel_default_9")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(
        pyvalue::read_channel_default(&item),
        Some(Some(ChannelDefault {
            filename: Some("p.png".into()),
            radiotext: Some("From Python".into()),
            radiolink: Some("http://p/".into()),
            public_url: None,
        }))
    );
    python(&[
        "-c",
        WRITE,
        &port,
        "radiovis_channels_topics",
        "[u'/topic/a/', u'/topic/b/']",
    ])
    .await
    .expect("python writes");
    let item = cache
        .get_item("radiovis_channels_topics")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(
        pyvalue::read_topic_list(&item),
        Some(vec!["/topic/a/".to_owned(), "/topic/b/".to_owned()])
    );
}
