//! The status page in a real browser (docs/protocol.md#status-page): headless
//! Chromium loads `GET /` of a hub to which a slide was just published over HTTP; the
//! DOM shows the slide's text and image (and the STOMP radio listening to it), and a
//! screenshot is kept under the target directory (`tmp/status-page.png`).
//!
//! Skipped, with a message, when Chromium is not installed, unless
//! `RADIOVIS_REQUIRE_SERVICES=1` (`.ci/run` installs Debian's `chromium`).

use std::path::PathBuf;
use std::time::Duration;

use testkit::harness::{TestHub, LOGIN, PASSCODE, TEXT};
use testkit::ops::{curl, curl_installed};
use testkit::web::serve_http;

/// The first Chromium found on `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args` (bounded in time); its stdout.
async fn headless(browser: &PathBuf, args: &[&str], url: &str) -> String {
    let profile = tempdir("chromium-profile");
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under the target directory's `tmp`.
fn tempdir(what: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[tokio::test]
async fn the_status_page_shows_a_slide_just_published() {
    let Some(browser) = chromium() else {
        testkit::services::skip(
            "the_status_page_shows_a_slide_just_published",
            "chromium is not installed",
        );
        return;
    };
    if !curl_installed().await {
        testkit::services::skip(
            "the_status_page_shows_a_slide_just_published",
            "curl is not installed",
        );
        return;
    }
    let hub = TestHub::start().await;
    let http = serve_http(&hub, Default::default()).await;
    let mut radio = hub.radio().await;
    radio.subscribe(TEXT, Some("t"), &[]).await;
    radio.sync().await;

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

    let url = format!("http://{http}/");
    // The DOM after the page's script ran (and applied a live event).
    let dom = headless(&browser, &["--dump-dom"], &url).await;
    assert!(dom.contains("/topic/fm/4e1/4001/09580/"), "{dom}");
    assert!(
        dom.contains("Status page &lt;test&gt; &amp; slide"),
        "text shown as text: {dom}"
    );
    assert!(
        dom.contains("src=\"https://radio1.example/status-slide.jpg\""),
        "the image is shown: {dom}"
    );
    assert!(!dom.contains("<test>"), "no markup from a slide: {dom}");
    assert!(dom.contains("stomp 1"), "the radio is counted: {dom}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        &[
            "--window-size=1200,800",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
}
