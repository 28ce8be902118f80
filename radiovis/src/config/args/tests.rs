//! Parsing the binaries' variables and flags into typed configuration.

use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    stomp: StompArgs,
    #[command(flatten)]
    hub: HubArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[test]
fn defaults_and_lists() {
    let cli = Cli::try_parse_from(["x", "--stomp-ip", "127.0.0.1,::1"]).expect("valid");
    assert_eq!(cli.stomp.stomp_ip.len(), 2);
    assert_eq!(cli.stomp.stomp_port, 61613);
    assert_eq!(cli.rabbit.rabbitmq_exchange, "amq.fanout");
    assert!(cli.hub.hub_config(5.0).is_ok());
}

#[test]
fn bad_port_names_the_variable() {
    let err = Cli::try_parse_from(["x", "--stomp-port", "abc"]).expect_err("invalid");
    assert!(err.to_string().contains("STOMP_PORT"), "{err}");
}

#[test]
fn python_booleans() {
    assert_eq!(parse_bool("True"), Ok(true));
    assert_eq!(parse_bool("False"), Ok(false));
    assert_eq!(
        parse_bool("Maybe").map_err(|e| e.to_string()),
        Err(r#""maybe" is not a boolean (True/False)"#.to_owned())
    );
}

#[test]
fn bad_bool_names_the_variable() {
    #[derive(Debug, Parser)]
    struct Mon {
        #[command(flatten)]
        monitoring: MonitoringArgs,
    }
    let err = Mon::try_parse_from(["x", "--monitoring-enabled", "maybe"]).expect_err("invalid");
    assert!(err.to_string().contains("MONITORING_ENABLED"), "{err}");
}

// The wording operators see is part of the interface: keep it.
#[test]
fn zero_and_bad_seconds_keep_their_wording() {
    let mut cli = Cli::try_parse_from(["x"]).expect("valid");
    cli.hub.outbound_queue = 0;
    let e = cli.hub.hub_config(5.0).expect_err("zero queue");
    assert_eq!(e.to_string(), "RADIOVIS_OUTBOUND_QUEUE must be at least 1");
    cli.hub.outbound_queue = 1;
    cli.hub.max_connections = 0;
    let e = cli.hub.hub_config(5.0).expect_err("zero connections");
    assert_eq!(e.to_string(), "RADIOVIS_MAX_CONNECTIONS must be at least 1");
    cli.hub.max_connections = 1;
    let e = cli.hub.hub_config(-1.0).expect_err("negative");
    assert_eq!(
        e.to_string(),
        "RADIOVIS_DIRECTORY_TIMEOUT: -1 is not a valid number of seconds"
    );
    assert!(std::error::Error::source(&e).is_some());

    #[derive(Debug, Parser)]
    struct Fb {
        #[command(flatten)]
        fallback: FallbackArgs,
    }
    let fb = Fb::try_parse_from(["x", "--fb-fallback-check", "0"]).expect("valid");
    let e = fb.fallback.watchdog_config().expect_err("zero check");
    assert_eq!(e.to_string(), "FB_FALLBACK_CHECK must be at least 1 second");
}

#[cfg(feature = "rabbitmq")]
#[test]
fn a_bad_url_names_the_variable() {
    let cli = Cli::try_parse_from(["x", "--rabbitmq-url", "http://x/"]).expect("valid");
    let e = cli
        .rabbit
        .rabbit_config(crate::backend::rabbitmq::QueueKind::Instance)
        .expect_err("not amqp");
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                var: "RABBITMQ_URL",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        crate::config::error_chain(&e).starts_with("RABBITMQ_URL: "),
        "{}",
        crate::config::error_chain(&e)
    );
}
