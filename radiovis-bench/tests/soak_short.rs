//! The short soak run of CI: `radiovis-bench soak` for 120 s with 2,000 subscribers over
//! 10 topics (1 message/s each) and 10%/min churn against a freshly built
//! radiovis-server; the bench exits non-zero when the server's RSS or open fds grow
//! beyond their tolerance, or a connected subscriber misses a message (BENCHMARKS.md,
//! "Soak"). The one-hour run is on demand only.

use std::path::PathBuf;
use std::process::Command;

/// radiovis-server of the same profile and target dir as this test: the one
/// `cargo test --workspace` just built (as the chaos test uses it), else built here.
/// Binary crates cannot be dependencies, so the test asks cargo itself; cargo holds no
/// lock while tests run. (Built alone, radiovis gets other features than in the
/// workspace build and is compiled again: a minute of CI saved by taking the
/// workspace's binary.)
fn server_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_radiovis-bench"));
    let dir = bench
        .parent()
        .expect("the bench binary sits in a directory");
    let built = dir.join("radiovis-server");
    if built.is_file() {
        return built;
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "-p", "radiovis-server"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cargo.env("CARGO_TARGET_DIR", target);
    }
    let status = cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p radiovis-server failed");
    dir.join("radiovis-server")
}

#[test]
fn soak_two_minutes_is_flat_and_loses_nothing() {
    let server = server_bin();
    let json =
        std::env::temp_dir().join(format!("radiovis-soak-short-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_radiovis-bench"))
        .args([
            "soak",
            "--duration",
            "120",
            "--subscribers",
            "2000",
            "--topics",
            "10",
        ])
        .args(["--rate", "1", "--churn", "10", "--sample-secs", "2"])
        .arg("--server-bin")
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("radiovis-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The bench's own verdict passed; check that it measured what it claims.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON report")).expect("valid JSON");
    let _ = std::fs::remove_file(&json);
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert_eq!(n("lost"), 0, "{stdout}");
    assert_eq!(n("unexpected_closes"), 0, "{stdout}");
    assert!(n("reconnects") >= 300, "churn did not happen: {stdout}");
    assert!(n("received") > 100_000, "too little traffic: {stdout}");
    assert!(
        report["samples"].as_array().map_or(0, Vec::len) >= 50,
        "{stdout}"
    );
    assert_eq!(report["rss"]["ok"], true, "{stdout}");
    assert_eq!(report["fds"]["ok"], true, "{stdout}");
    println!("{stdout}");
}
