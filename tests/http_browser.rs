//! The web transports in a real browser (headless Debian `chromium`): a page speaking
//! the EBU player's WebSocket mode, a page using `@stomp/stompjs` (installed from npm
//! at test set-up) and an `EventSource` page each show a slide and a text published
//! over TCP STOMP: the slide published before the page opened (replay), the text
//! published once the slide is shown (live). Read from the page's DOM through the
//! DevTools protocol.

use std::time::Duration;

use radiovis::http::HttpConfig;
use testkit::browser::{npm_package, Browser, Page};
use testkit::harness::*;
use testkit::web::serve_http;

const SERVICE: &str = "/topic/fm/4e1/4001/09580";
const IMAGE: &str = "/topic/fm/4e1/4001/09580/image";
const SLIDE: &str = "https://example.org/slide.png";
const SHOWN: Duration = Duration::from_secs(20);

/// The page's shared markup: a status line, the slide and the text.
fn page(script: &str, head: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8">{head}</head><body>
<p id="status">loading</p><img id="slide" alt="slide"><p id="text"></p>
<script>
function show(destination, body) {{
  if (destination.endsWith('/text') && body.startsWith('TEXT ')) document.getElementById('text').textContent = body.slice(5);
  if (destination.endsWith('/image') && body.startsWith('SHOW ')) document.getElementById('slide').setAttribute('src', body.slice(5));
}}
{script}
</script></body></html>"#
    )
}

/// Publishes the slide, opens `html`, waits for the slide, publishes a text, waits for
/// it.
async fn shows_slide_and_text(hub: &TestHub, browser: &Browser, html: String, name: &str) -> Page {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = hub.broadcaster().await;
    let slide = format!("{SLIDE}?{name}");
    b.publish(IMAGE, format!("SHOW {slide}").as_bytes(), &[])
        .await;
    let file = dir.path().join(format!("{name}.html"));
    std::fs::write(&file, html).expect("write page");
    let mut page = browser.open(&format!("file://{}", file.display())).await;
    page.wait_for(
        "document.getElementById('slide').getAttribute('src') || ''",
        &slide,
        SHOWN,
    )
    .await;
    let text = format!("Now playing on {name}");
    b.publish(TEXT, format!("TEXT {text}").as_bytes(), &[])
        .await;
    page.wait_for("document.getElementById('text').textContent", &text, SHOWN)
        .await;
    page
}

#[tokio::test]
async fn an_ebu_mode_page_shows_slide_and_text() {
    let Some(browser) = Browser::launch("an_ebu_mode_page_shows_slide_and_text").await else {
        return;
    };
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    // Parses as EBU's player does: split on ':' for RADIOVISWEBSOCKET messages, on
    // '\n' for frames.
    let script = format!(
        r#"
const ws = new WebSocket('ws://{http}{SERVICE}');
ws.onmessage = (evt) => {{
  const parts = evt.data.split(':');
  if (parts[0] === 'RADIOVISWEBSOCKET') {{
    document.getElementById('status').textContent = parts[1] === 'HELLO\x00' ? 'connected' : 'error ' + parts[2];
    return;
  }}
  const lines = evt.data.split('\n');
  const start = lines[0] === '' ? 1 : 0;
  const headers = {{}};
  let i = start + 1;
  for (; i < lines.length && lines[i] !== ''; i++) {{
    const name = lines[i].split(':', 1)[0];
    headers[name] = lines[i].substr(name.length + 1);
  }}
  if (lines[start] === 'MESSAGE') show(headers['destination'], lines.slice(i + 1).join('\n'));
}};
"#
    );
    let mut page = shows_slide_and_text(&hub, &browser, page(&script, ""), "ebu").await;
    assert_eq!(
        page.eval("document.getElementById('status').textContent")
            .await,
        "connected"
    );
    // The screenshot helper works on the same page (reused for the status page).
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("ebu.png");
    page.screenshot(&png).await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[tokio::test]
async fn a_stompjs_page_shows_slide_and_text() {
    let test = "a_stompjs_page_shows_slide_and_text";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let Some(bundle) = npm_package(test, "@stomp/stompjs@7", "bundles/stomp.umd.min.js").await
    else {
        return;
    };
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let head = format!(r#"<script src="file://{}"></script>"#, bundle.display());
    let script = format!(
        r#"
const client = new StompJs.Client({{ brokerURL: 'ws://{http}/stomp', reconnectDelay: 500 }});
client.onConnect = () => {{
  document.getElementById('status').textContent = 'connected';
  for (const topic of ['{SERVICE}/text', '{SERVICE}/image']) {{
    client.subscribe(topic, (m) => show(m.headers['destination'], m.body));
  }}
}};
client.onStompError = (f) => {{ document.getElementById('status').textContent = 'error ' + f.headers['message']; }};
client.activate();
"#
    );
    let mut page = shows_slide_and_text(&hub, &browser, page(&script, &head), "stompjs").await;
    assert_eq!(
        page.eval("document.getElementById('status').textContent")
            .await,
        "connected"
    );
}

#[tokio::test]
async fn an_event_source_page_shows_slide_and_text() {
    let Some(browser) = Browser::launch("an_event_source_page_shows_slide_and_text").await else {
        return;
    };
    let hub = TestHub::start().await;
    let http = serve_http(&hub, HttpConfig::default()).await;
    let script = format!(
        r#"
const es = new EventSource('http://{http}/radiodns/push/1.0/fm/4e1/4001/09580');
es.onopen = () => {{ document.getElementById('status').textContent = 'connected'; }};
es.addEventListener('text', (e) => show('/text', 'TEXT ' + JSON.parse(e.data).body));
es.addEventListener('image', (e) => show('/image', 'SHOW ' + JSON.parse(e.data).src));
"#
    );
    let mut page = shows_slide_and_text(&hub, &browser, page(&script, ""), "eventsource").await;
    assert_eq!(
        page.eval("document.getElementById('status').textContent")
            .await,
        "connected"
    );
}
