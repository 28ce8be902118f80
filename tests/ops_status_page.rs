//! The status page in a real browser (docs/protocol.md#status-page): headless
//! Chromium (through `testkit::browser`) opens `GET /` of a hub, a slide is then
//! published over HTTP, and the page, updating live, shows the slide's text and image
//! (and the STOMP radio listening to it); a screenshot is kept under the target
//! directory (`tmp/status-page.png`).
//!
//! Skipped, with a message, when Chromium is not installed, unless
//! `RADIOVIS_REQUIRE_SERVICES=1` (`.ci/run` installs Debian's `chromium`).

use std::path::PathBuf;
use std::time::Duration;

use testkit::browser::Browser;
use testkit::harness::{TestHub, LOGIN, PASSCODE, TEXT};
use testkit::ops::{curl, curl_installed};
use testkit::web::serve_http;

/// How long the page may take to show what was published (it updates every ~2 s).
const SHOWN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_status_page_shows_a_slide_just_published() {
    const TEST: &str = "the_status_page_shows_a_slide_just_published";
    if !curl_installed().await {
        testkit::services::skip(TEST, "curl is not installed");
        return;
    }
    let Some(browser) = Browser::launch(TEST).await else {
        return;
    };
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("t"), &[]).await;
    radio.sync().await;

    // The page is open before the slide exists: what it shows comes live.
    let mut page = browser.open(&format!("http://{http}/")).await;
    page.wait_for("document.readyState", "complete", SHOWN)
        .await;

    let user = format!("{LOGIN}:{PASSCODE}");
    let (status, body) = curl(&[
        "-u",
        &user,
        "-d",
        "topic=/topic/fm/4e1/4001/09580/",
        "--data-urlencode",
        "text=Status page <test> & slide",
        "--data-urlencode",
        "image=https://radio1.example/status-slide.jpg",
        &format!("http://{http}/publish"),
    ])
    .await
    .expect("curl");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        radio.expect("MESSAGE").await.body,
        b"TEXT Status page <test> & slide"
    );

    let yes = |cond: &str| format!("({cond}) ? 'yes' : 'no'");
    page.wait_for(
        &yes("document.body.innerHTML.includes('/topic/fm/4e1/4001/09580/')"),
        "yes",
        SHOWN,
    )
    .await;
    // The text shown as text (escaped), never as markup.
    page.wait_for(
        &yes("document.body.innerText.includes('Status page <test> & slide')"),
        "yes",
        SHOWN,
    )
    .await;
    page.wait_for(
        &yes("document.body.innerHTML.includes('<test>')"),
        "no",
        SHOWN,
    )
    .await;
    page.wait_for(
        &yes("[...document.images].some(i => i.src === 'https://radio1.example/status-slide.jpg')"),
        "yes",
        SHOWN,
    )
    .await;
    page.wait_for(
        &yes("document.body.innerHTML.includes('stomp 1')"),
        "yes",
        SHOWN,
    )
    .await;

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    page.screenshot(&shot).await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
}
