//! What both binaries print: the log format (`--log-format text|json`, colours only on
//! a terminal), the start-up line listing every effective setting with secrets masked,
//! and the documented exit codes.

use std::io::IsTerminal;

use clap::{ArgMatches, Args, Command, ValueEnum};

/// How log lines are written (standard output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; colours only when standard output is a
    /// terminal and `NO_COLOR` is unset.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with
    /// `message`), for log collectors. Never coloured.
    Json,
}

/// The log format flag, shared by both binaries.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: `text` (human-readable) or `json` (one JSON object per line).
    #[arg(
        long = "log-format",
        env = "RADIOVIS_LOG_FORMAT",
        value_name = "RADIOVIS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The exit codes of both binaries, printed at the end of `--help` (and listed in the
/// README).
pub const EXIT_CODES: &str = "\
Exit codes:
  0   stopped cleanly (SIGINT or SIGTERM), or --help / --version
  1   failed while running (or at start-up for a reason other than configuration)
  2   command-line usage error (unknown flag, value not of the right type)
  78  configuration refused (a variable out of range, an unreadable file, a port that cannot be listened on); restarting will not help";

/// Exit code of a configuration the binary refused (`EX_CONFIG` of sysexits.h): a
/// supervisor (systemd's `RestartPreventExitStatus=`) need not restart it.
pub const EXIT_CONFIG: u8 = 78;

/// Logging of both binaries: `RUST_LOG`, default `info`; `RABBITMQ_DEBUG` (on by
/// default, as in the original) adds the bus module's debug logs, which are few: no
/// per-message line. lapin's own logs are off unless `RUST_LOG` names lapin: it logs
/// a normal passive declare of a missing exchange as an ERROR, and the bus module
/// reports connection trouble itself. Text lines carry ANSI colours only when standard
/// output is a terminal and `NO_COLOR` is unset (a log file or journald gets plain
/// text).
pub fn init_logging(rabbitmq_debug: bool, format: LogFormat) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut filter = match &from_env {
        // Keep lapin quiet unless the operator asked for it by name.
        Some(v) if v.contains("lapin") => tracing_subscriber::EnvFilter::new(v),
        Some(v) => tracing_subscriber::EnvFilter::new(format!("{v},lapin=off")),
        None => tracing_subscriber::EnvFilter::new("info,lapin=off"),
    };
    if rabbitmq_debug {
        if let Ok(d) = "radiovis::backend::rabbitmq=debug".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(colours_wanted()).init(),
    }
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to anything
/// (<https://no-color.org>).
fn colours_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Parses the command line (and environment) of a binary's `C`, keeping the matches
/// for [`log_settings`]. Exits with code 2 and clap's message on a usage error, 0 after
/// `--help` or `--version`.
pub fn parse_cli<C: clap::Parser>() -> (C, ArgMatches) {
    let matches = C::command().get_matches();
    match C::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.exit(),
    }
}

/// Logs one line, `effective settings`, with every setting of `command` as
/// `VARIABLE=value` (the environment variable's name, else the flag's), whether it
/// came from a flag, the environment or the default. Secrets are masked: see
/// [`shown_value`].
pub fn log_settings(command: &Command, matches: &ArgMatches) {
    let settings = effective_settings(command, matches);
    tracing::info!(settings = %settings, "effective settings");
}

/// The text of [`log_settings`]: `NAME=value` pairs separated by spaces, in the order
/// `--help` lists them; an unset optional setting reads `NAME=unset`.
pub fn effective_settings(command: &Command, matches: &ArgMatches) -> String {
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let name = match (arg.get_env(), arg.get_long()) {
            (Some(env), _) => env.to_string_lossy().into_owned(),
            (None, Some(long)) => format!("--{long}"),
            (None, None) => id.to_owned(),
        };
        let value = match matches.try_get_raw(id) {
            Ok(Some(values)) => values
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
            _ => "unset".to_owned(),
        };
        let secret = arg.is_hide_env_values_set() || is_secret_name(&name);
        out.push(format!("{name}={}", shown_value(&value, secret)));
    }
    out.join(" ")
}

/// Whether a setting's name says it holds a secret.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passcode", "secret", "token"]
        .iter()
        .any(|w| n.contains(w))
}

/// How a value appears in logs: any URL without its user information and path
/// ([`redacted_url`]: PlugIt's API secret is a path segment, AMQP URLs carry a
/// password); a secret's value as `***` (or `unset`/empty as it is, so an operator
/// sees whether it was given).
pub fn shown_value(value: &str, secret: bool) -> String {
    if value.contains("://") {
        redacted_url(value)
    } else if secret && !value.is_empty() && value != "unset" {
        "***".to_owned()
    } else {
        value.to_owned()
    }
}

/// `url` with only its scheme, host and port: the path (where PlugIt's API secret
/// is) and any user information are hidden.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let hidden = if rest.len() > authority.len() + 1 {
        "/***"
    } else {
        "/"
    };
    if scheme.is_empty() {
        format!("{host}{hidden}")
    } else {
        format!("{scheme}://{host}{hidden}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn urls_are_logged_without_path_or_credentials() {
        assert_eq!(
            redacted_url("https://manager.example/plugIt/S3cret/"),
            "https://manager.example/***"
        );
        assert_eq!(
            redacted_url("http://user:pw@127.0.0.1:8000/x?k=S3cret"),
            "http://127.0.0.1:8000/***"
        );
        assert_eq!(
            redacted_url("http://127.0.0.1:8000/"),
            "http://127.0.0.1:8000/"
        );
        assert_eq!(redacted_url("http://h"), "http://h/");
    }

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, env = "DEMO_HOST", default_value = "127.0.0.1")]
        host: String,
        #[arg(
            long,
            env = "DEMO_PASSWORD",
            default_value = "guest",
            hide_env_values = true
        )]
        password: String,
        #[arg(long, env = "DEMO_KEY", hide_env_values = true)]
        key: Option<String>,
        #[arg(long, env = "DEMO_API_URL")]
        api_url: Option<String>,
        #[arg(long, env = "DEMO_IPS", value_delimiter = ',', default_value = "a,b")]
        ips: Vec<String>,
        #[arg(long)]
        plain: Option<u16>,
        #[command(flatten)]
        log: LogArgs,
    }

    fn settings(args: &[&str]) -> String {
        let matches = Demo::command()
            .try_get_matches_from(args)
            .expect("valid arguments");
        effective_settings(&Demo::command(), &matches)
    }

    #[test]
    fn every_setting_is_listed_and_secrets_are_masked() {
        let s = settings(&[
            "demo",
            "--password",
            "Hunter2",
            "--key",
            "K3y",
            "--api-url",
            "https://u:pw@api.example/plugIt/S3cret/",
            "--plain",
            "7",
        ]);
        assert_eq!(
            s,
            "DEMO_HOST=127.0.0.1 DEMO_PASSWORD=*** DEMO_KEY=*** \
             DEMO_API_URL=https://api.example/*** DEMO_IPS=a,b --plain=7 \
             RADIOVIS_LOG_FORMAT=text"
        );
    }

    #[test]
    fn unset_and_default_values_are_shown_as_they_are() {
        let s = settings(&["demo"]);
        assert!(s.contains("DEMO_KEY=unset"), "{s}");
        assert!(s.contains("DEMO_API_URL=unset"), "{s}");
        assert!(s.contains("--plain=unset"), "{s}");
        // The default password is masked too: whether it is the default is no secret,
        // but the rule stays simple.
        assert!(s.contains("DEMO_PASSWORD=***"), "{s}");
    }
}
