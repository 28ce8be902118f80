//! Micro-benchmarks of the hot paths: frame decode, MESSAGE encode, topic normalisation
//! and matching, the pattern index of the fan-out. `cargo bench -p radiovis --bench hot`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use radiovis::backend::memory::{MemoryCache, StaticDirectory};
use radiovis::hub::PatternTrie;
use radiovis::outbound::{encode_head, Published};
use radiovis::stomp::{Command, Decoder, Frame, Limits, Version};
use radiovis::topic::{self, Normaliser};

const SEND: &[u8] = b"SEND\ndestination:/topic/fm/ch/4001/09580/text\nreceipt:r-17\n\
trigger-time:NOW\n\nTEXT Now playing: Some Artist - Some Title (2024)\0";

const MESSAGE: &[u8] = b"MESSAGE\ndestination:/topic/fm/4e1/4001/09580/text\nsubscription:s\n\
message-id:6f1c1b9e-6a8e-4b8e-9a51-0c7d1f3c0b4a\nwhen:1764064000\n\n\
TEXT Now playing: Some Artist - Some Title (2024)\0";

const DIRECTORY: &str = r#"
[gcc]
ch = "4e1"
[[station]]
login = "1.radio1"
passcode = "secret1"
channels = ["/topic/fm/4e1/4001/09580/"]
"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, wire) in [("send", SEND), ("message", MESSAGE)] {
        g.bench_function(name, |b| {
            let mut dec = Decoder::new(Limits::default());
            let mut buf = BytesMut::with_capacity(1024);
            b.iter(|| {
                buf.extend_from_slice(black_box(wire));
                let f = dec.decode(&mut buf).expect("valid").expect("complete");
                black_box(f)
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let body = Bytes::from_static(b"TEXT Now playing: Some Artist - Some Title (2024)");
    let headers = vec![
        (
            "message-id".to_string(),
            "6f1c1b9e-6a8e-4b8e-9a51-0c7d1f3c0b4a".to_string(),
        ),
        ("when".to_string(), "1764064000".to_string()),
    ];
    let dest = "/topic/fm/4e1/4001/09580/text";
    let mut g = c.benchmark_group("encode");
    g.bench_function("frame_encode_message_1_0", |b| {
        let mut f = Frame::new(Command::Message)
            .header("destination", dest)
            .header("subscription", "s");
        for (k, v) in &headers {
            f = f.header(k.as_str(), v.as_str());
        }
        let f = f.body(body.clone());
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            black_box(&f).encode(Version::V1_0, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("frame_encode_message_1_2", |b| {
        let mut f = Frame::new(Command::Message)
            .header("destination", dest)
            .header("subscription", "s");
        for (k, v) in &headers {
            f = f.header(k.as_str(), v.as_str());
        }
        let f = f.body(body.clone());
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            black_box(&f).encode(Version::V1_2, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("published_tail_first", |b| {
        // The once-per-message cost: a fresh Published and its first tail.
        b.iter(|| {
            let p = Published::new(1, dest.to_string(), body.clone(), headers.clone());
            black_box(p.tail(Version::V1_0))
        })
    });
    g.bench_function("published_tail_cached", |b| {
        // The per-subscriber cost in the fan-out: the cached tail and a cloned head.
        let p = Published::new(1, dest.to_string(), body.clone(), headers.clone());
        let head = encode_head(dest, Some("s"), Version::V1_0);
        b.iter(|| black_box((head.clone(), p.tail(Version::V1_0))))
    });
    g.bench_function("encode_head", |b| {
        b.iter(|| black_box(encode_head(black_box(dest), Some("s"), Version::V1_0)))
    });
    g.finish();
}

fn topics(c: &mut Criterion) {
    let dir = Arc::new(StaticDirectory::from_toml(DIRECTORY).expect("directory"));
    let cache = Arc::new(MemoryCache::new());
    let norm = Normaliser::new(dir, cache);
    let cc_topic = "/topic/fm/ch/4001/09580/text";
    // Warm the cache (the case the fan-out sees).
    let first = futures::executor::block_on(norm.normalise(cc_topic));
    assert_eq!(first, "/topic/fm/4e1/4001/09580/text");
    let mut g = c.benchmark_group("topic");
    g.bench_function("normalise_fm_cc_cached", |b| {
        b.iter(|| futures::executor::block_on(norm.normalise(black_box(cc_topic))))
    });
    g.bench_function("normalise_fm_gcc", |b| {
        b.iter(|| {
            futures::executor::block_on(norm.normalise(black_box("/topic/fm/4e1/4001/09580/text")))
        })
    });
    g.bench_function("normalise_dab", |b| {
        b.iter(|| {
            futures::executor::block_on(
                norm.normalise(black_box("/topic/dab/4e1/4001/4001/0/text")),
            )
        })
    });
    g.bench_function("matches_hit", |b| {
        b.iter(|| {
            topic::matches(
                black_box("/topic/fm/4e1/4001/*/text"),
                black_box("/topic/fm/4e1/4001/09580/text"),
            )
        })
    });
    g.bench_function("matches_miss", |b| {
        b.iter(|| {
            topic::matches(
                black_box("/topic/fm/4e1/4001/*/image"),
                black_box("/topic/fm/4e1/4001/09580/text"),
            )
        })
    });
    g.finish();
}

/// The patterns part of the fan-out of one message with 1,000 distinct patterns held by
/// other clients (FM on other PIs, DAB on other services), none matching: the trie the
/// hub uses, and the one-by-one `topic::matches` loop it replaced (the "before").
fn patterns(c: &mut Criterion) {
    let topic = "/topic/fm/4e1/4001/09580/text";
    let list: Vec<String> = (0..1000u32)
        .map(|i| match i % 2 {
            0 => format!("/topic/fm/4e1/{:04x}/*/text", 0x5000 + i),
            _ => format!("/topic/dab/*/{:04x}/4001/0/text", 0x5000 + i),
        })
        .collect();
    let mut trie: PatternTrie<u32> = PatternTrie::default();
    let mut map = std::collections::HashMap::new();
    for (i, p) in list.iter().enumerate() {
        *trie.entry(p) = i as u32;
        map.insert(p.clone(), i as u32);
    }
    let mut g = c.benchmark_group("fan_out_patterns");
    g.bench_function("1000_miss_trie", |b| {
        b.iter(|| {
            let mut n = 0u32;
            trie.for_each_match(black_box(topic), |_| n += 1);
            black_box(n)
        })
    });
    g.bench_function("1000_miss_linear_before", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for p in map.keys() {
                if topic::matches(p, black_box(topic)) {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    // The same with the radio's own fallback pattern among them (one match).
    *trie.entry("/topic/fm/4e1/4001/*/text") = 1000;
    g.bench_function("1000_plus_1_hit_trie", |b| {
        b.iter(|| {
            let mut n = 0u32;
            trie.for_each_match(black_box(topic), |_| n += 1);
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode, topics, patterns);
criterion_main!(benches);
