//! The deployment files in `packaging/` (docs/operators.md), checked without a Docker
//! engine or systemd: the Dockerfile builds and copies exactly the shipped binaries
//! and runs as a non-root user; the compose file is the original deployment (RabbitMQ,
//! memcached, several servers, the watchdog); the systemd units are hardened; and every
//! variable these files set is one the binary it runs accepts (its `--help`), so a
//! misspelt name cannot pass silently. `packaging/check.sh` goes further (it runs the
//! Dockerfile's build step and `systemd-analyze`) on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::processes::workspace_binary;
use yaml_rust2::{Yaml, YamlLoader};

/// The binaries the image and the units ship.
const SHIPPED: [&str; 2] = ["radiovis-server", "radiovis-fallback"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The environment variables `binary` accepts, from the `[env: NAME=...]` marks of its
/// `--help`.
fn accepted_variables(binary: &str) -> BTreeSet<String> {
    let path = workspace_binary(binary).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(path)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{binary} --help: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let vars: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(vars.contains("RABBITMQ_HOST"), "{binary}: {vars:?}");
    vars
}

#[test]
fn the_dockerfile_builds_and_copies_the_shipped_binaries_and_runs_as_nonroot() {
    let dockerfile = read("packaging/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(froms[0].ends_with(" AS build"), "{}", froms[0]);
    assert!(
        !froms[1].contains("rust:"),
        "the runtime image carries no toolchain: {}",
        froms[1]
    );

    // The build step check.sh runs: release, the committed lock file, the shipped
    // binaries and nothing else.
    let builds: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("RUN cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "{builds:?}");
    let words: Vec<&str> = builds[0].split_whitespace().collect();
    assert!(
        words.contains(&"--release") && words.contains(&"--locked"),
        "{words:?}"
    );
    let packages: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    assert_eq!(packages, SHIPPED.into_iter().collect(), "{words:?}");
    let check = read("packaging/check.sh");
    assert!(
        check.contains("RUN cargo build"),
        "check.sh takes its build command from the Dockerfile"
    );

    // Each binary copied from where that build puts it.
    for bin in SHIPPED {
        let copy = format!("COPY --from=build /src/target/release/{bin} /usr/local/bin/{bin}");
        assert!(lines.contains(&copy.as_str()), "missing: {copy}");
    }
    // Rust no older than the workspace's minimum.
    let manifest = read("Cargo.toml");
    let minimum = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("rust-version");
    let image = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    assert!(version(image) >= version(&minimum), "{image} < {minimum}");

    // The runtime stage ends as a non-root user and starts the server.
    let runtime = &lines[lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap_or(0)..];
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let name = user.split(':').next().unwrap_or(user);
    assert!(name != "root" && name != "0", "runs as {user}");
    assert!(
        runtime.contains(&r#"ENTRYPOINT ["/usr/local/bin/radiovis-server"]"#),
        "{runtime:?}"
    );
    // Variables the image sets are the server's.
    let accepted = accepted_variables("radiovis-server");
    for l in runtime.iter().filter(|l| l.starts_with("ENV ")) {
        for pair in l.trim_start_matches("ENV ").split_whitespace() {
            let var = pair.split('=').next().unwrap_or(pair);
            if var != "\\" {
                assert!(accepted.contains(var), "ENV {var} is not a server variable");
            }
        }
    }
}

/// A mapping with YAML merge keys (`<<: *anchor`) applied, as compose does.
fn merged(y: &Yaml) -> BTreeMap<String, Yaml> {
    let mut out = BTreeMap::new();
    if let Some(h) = y.as_hash() {
        if let Some(base) = h.get(&Yaml::String("<<".into())) {
            out.extend(merged(base));
        }
        for (k, v) in h {
            if let Some(k) = k.as_str() {
                if k != "<<" {
                    out.insert(k.to_owned(), v.clone());
                }
            }
        }
    }
    out
}

fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn compose_is_the_original_deployment_with_known_variables() {
    let docs = YamlLoader::load_from_str(&read("packaging/compose.yaml")).expect("valid YAML");
    let services = merged(&merged(&docs[0])["services"]);
    let image = |s: &str| text(&merged(&services[s])["image"]);
    assert!(image("rabbitmq").contains("rabbitmq"));
    assert!(image("memcached").contains("memcached"));

    let server_vars = accepted_variables("radiovis-server");
    let fallback_vars = accepted_variables("radiovis-fallback");
    let mut servers = 0;
    let mut fallbacks = 0;
    let mut host_ports = BTreeSet::new();
    for (name, service) in &services {
        let service = merged(service);
        if !text(&service["image"]).starts_with("radiovis") {
            continue;
        }
        let entrypoint = service
            .get("entrypoint")
            .and_then(|e| e.as_vec())
            .and_then(|v| v.first())
            .map(text);
        let (binary, accepted) = match entrypoint.as_deref() {
            None => {
                servers += 1;
                ("radiovis-server", &server_vars)
            }
            Some("/usr/local/bin/radiovis-fallback") => {
                fallbacks += 1;
                ("radiovis-fallback", &fallback_vars)
            }
            Some(other) => panic!("{name}: unexpected entrypoint {other}"),
        };
        let env = merged(&service["environment"]);
        for var in env.keys() {
            assert!(
                accepted.contains(var),
                "{name}: {binary} has no variable {var}"
            );
        }
        // The original's wiring: the bus, the cache and the directory of the fleet.
        assert_eq!(text(&env["RABBITMQ_HOST"]), "rabbitmq", "{name}");
        assert!(
            text(&env["MEMCACHED_HOST"]).starts_with("memcached"),
            "{name}"
        );
        assert!(env.contains_key("RADIODNS_API_URL"), "{name}");
        for port in service
            .get("ports")
            .and_then(|p| p.as_vec())
            .into_iter()
            .flatten()
        {
            let host = text(port).split(':').next().unwrap_or_default().to_owned();
            assert!(
                host_ports.insert(host.clone()),
                "host port {host} used twice"
            );
        }
    }
    assert!(servers >= 2, "several servers share the bus: {servers}");
    assert_eq!(fallbacks, 1, "one watchdog");
}

/// `Key=value` lines of a unit file (all values of a repeated key).
fn unit(rel: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

#[test]
fn systemd_units_are_hardened_and_their_variables_known() {
    for (file, binary) in [
        (
            "packaging/systemd/radiovis-server@.service",
            "radiovis-server",
        ),
        (
            "packaging/systemd/radiovis-fallback.service",
            "radiovis-fallback",
        ),
    ] {
        let u = unit(file);
        let one = |k: &str| u.get(k).and_then(|v| v.last()).cloned().unwrap_or_default();
        assert_eq!(
            one("ExecStart"),
            format!("/usr/local/bin/{binary}"),
            "{file}"
        );
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallArchitectures", "native"),
            ("User", "radiovis"),
        ] {
            assert_eq!(one(key), value, "{file}: {key}");
        }
        // A refused configuration (78) or command line (2) is not restarted in a loop.
        let prevent = one("RestartPreventExitStatus");
        assert!(
            prevent.split_whitespace().any(|c| c == "78")
                && prevent.split_whitespace().any(|c| c == "2"),
            "{file}: {prevent}"
        );
        let accepted = accepted_variables(binary);
        for env in u.get("Environment").into_iter().flatten() {
            let var = env.split('=').next().unwrap_or(env);
            assert!(
                accepted.contains(var),
                "{file}: {binary} has no variable {var}"
            );
        }
    }
    let shared = accepted_variables("radiovis-fallback");
    let server = accepted_variables("radiovis-server");
    for (file, accepted) in [
        ("packaging/systemd/radiovis.env", &shared),
        ("packaging/systemd/server-1.env", &server),
    ] {
        for line in read(file).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let var = line.split('=').next().unwrap_or(line);
            assert!(accepted.contains(var), "{file}: unknown variable {var}");
        }
    }
}

#[test]
fn alert_rules_parse_and_cover_the_four_conditions() {
    let docs =
        YamlLoader::load_from_str(&read("packaging/prometheus/radiovis-alerts.yml")).expect("YAML");
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("groups[0].rules");
    let mut exprs = BTreeMap::new();
    for r in rules {
        let alert = r["alert"].as_str().expect("alert name").to_owned();
        let expr = r["expr"].as_str().expect("expr").to_owned();
        assert!(r["labels"]["severity"].as_str().is_some(), "{alert}");
        assert!(r["annotations"]["summary"].as_str().is_some(), "{alert}");
        exprs.insert(alert, expr);
    }
    for (alert, metric) in [
        ("RadiovisBusDown", "radiovis_bus_connected"),
        ("RadiovisDirectoryErrors", "radiovis_directory_errors_total"),
        (
            "RadiovisSlowConsumers",
            "radiovis_slow_consumer_disconnects_total",
        ),
        ("RadiovisNoDeliveries", "radiovis_deliveries_total"),
    ] {
        let expr = exprs
            .get(alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        assert!(expr.contains(metric), "{alert}: {expr}");
    }
}

/// Every `radiovis_*` series an alert rule reads is one a real process serves: a
/// server running the watchdog in process (so the watchdog metrics are there too),
/// whose PlugIt directory is unreachable (so the directory error series exists: a
/// labelled counter appears with its first error), scraped on `GET /metrics`.
#[tokio::test]
async fn alert_rules_read_metrics_the_server_serves() {
    use testkit::processes::Process;
    let docs =
        YamlLoader::load_from_str(&read("packaging/prometheus/radiovis-alerts.yml")).expect("YAML");
    let mut wanted = BTreeSet::new();
    for r in docs[0]["groups"][0]["rules"].as_vec().expect("rules") {
        let expr = r["expr"].as_str().expect("expr");
        for part in expr.split("radiovis_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            wanted.insert(format!("radiovis_{name}"));
        }
    }
    assert!(wanted.len() >= 5, "{wanted:?}");

    let server_bin = workspace_binary("radiovis-server").unwrap_or_else(|e| panic!("{e}"));
    let closed = testkit::processes::free_port().expect("port");
    let env = [
        ("STOMP_IP", "127.0.0.1".to_owned()),
        ("STOMP_PORT", "0".to_owned()),
        ("HTTP_PORT", "0".to_owned()),
        (
            "RADIODNS_API_URL",
            format!("http://127.0.0.1:{closed}/plugIt/"),
        ),
        ("RADIOVIS_WATCHDOG", "on".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut server = Process::spawn("server", &server_bin, &[], &env).expect("start");
    server
        .wait_log("listening for HTTP connections", Duration::from_secs(30))
        .await
        .expect("HTTP listener");
    let line = server
        .log
        .matching("listening for HTTP connections")
        .remove(0);
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_owned();
    // The directory's first (failing) calls run at start-up: scrape until they show.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = testkit::web::get(&addr, "/metrics", Duration::from_secs(10)).await;
        assert_eq!(metrics.status, 200);
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let served: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !served.contains(n.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alert rules read {missing:?}, which /metrics does not serve:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
