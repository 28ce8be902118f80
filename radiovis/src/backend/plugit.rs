//! The PlugIt HTTP API as directory and message log (docs/protocol.md#directory).
//!
//! Every action is `<RADIODNS_API_URL><action>` with its parameters form-urlencoded in
//! the request body (`content-type: application/x-www-form-urlencoded`) and a JSON
//! answer. The original server sent them with `requests.get(url, data=params)`: a GET
//! whose *body* is the form, which the PlugIt side reads as form fields. That is the
//! default ([`PlugitMethod::Get`]); [`PlugitMethod::Post`] sends the same form as a POST,
//! for deployments behind proxies that drop GET bodies. Parameters are never put in the
//! query string, so the password of `check_auth` never appears in a URL (access logs,
//! proxies) nor in any error or log line of this module.
//!
//! One pooled keep-alive client (hyper-util's legacy client) serves every call, over
//! `http://` or `https://` (rustls with the `ring` provider and the webpki root
//! certificates, no system dependency). Every call is bounded by
//! [`PlugitConfig::connect_timeout`] for the TCP (and TLS) connection and by
//! [`PlugitConfig::timeout`] for the whole exchange, body included.

use std::error::Error as _;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use self::answer::Action;
use super::{
    ChannelDefault, ChannelRef, DirectoryApi, DirectoryError, LogEntry, LogError, LogStore, Reason,
};

pub mod answer;
mod pyjson;

/// Largest answer body accepted (the channel lists of a big directory fit easily).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How the form parameters are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlugitMethod {
    /// `GET` with the form in the body, exactly as the original Python server did.
    #[default]
    Get,
    /// `POST` with the form in the body.
    Post,
}

impl std::str::FromStr for PlugitMethod {
    type Err = String;

    /// `GET` or `POST`, any case.
    fn from_str(s: &str) -> Result<PlugitMethod, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "GET" => Ok(PlugitMethod::Get),
            "POST" => Ok(PlugitMethod::Post),
            other => Err(format!("unknown HTTP method {other:?} (GET or POST)")),
        }
    }
}

/// Configuration of a [`PlugitDirectory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugitConfig {
    /// `RADIODNS_API_URL`: `http://` or `https://` base URL; a missing final `/` is added.
    pub base_url: String,
    /// Bound on a whole call: connection, request, answer body (default 5 s).
    pub timeout: Duration,
    /// Bound on establishing a connection (default 5 s).
    pub connect_timeout: Duration,
    /// How the parameters are sent (default: GET with a form body, as the original).
    pub method: PlugitMethod,
}

impl PlugitConfig {
    /// The default configuration for this base URL: 5 s timeouts, GET with a form body.
    pub fn new(base_url: impl Into<String>) -> PlugitConfig {
        PlugitConfig {
            base_url: base_url.into(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            method: PlugitMethod::Get,
        }
    }
}

/// Why a [`PlugitDirectory`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlugitSetupError {
    /// `RADIODNS_API_URL` is not an `http(s)://` URL ending with `/`.
    #[error("invalid PlugIt API URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client (system roots) could not be set up.
    #[error("cannot set up TLS for the PlugIt API: {0}")]
    Tls(#[source] Reason),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The PlugIt API client: a [`DirectoryApi`] and a [`LogStore`]. Cheap to share behind an
/// `Arc`; all calls share one connection pool.
pub struct PlugitDirectory {
    client: HttpsClient,
    /// Base URL, ending with `/`.
    base: String,
    timeout: Duration,
    connect_timeout: Duration,
    method: PlugitMethod,
}

impl std::fmt::Debug for PlugitDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlugitDirectory")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl PlugitDirectory {
    /// A client for this configuration. Fails on a URL that is not `http(s)://host/...`.
    pub fn new(config: PlugitConfig) -> Result<PlugitDirectory, PlugitSetupError> {
        let mut base = config.base_url.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let invalid = |reason: &str| PlugitSetupError::InvalidUrl {
            url: config.base_url.clone(),
            reason: reason.to_owned(),
        };
        let uri: Uri = base
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(invalid("the scheme must be http or https")),
        }
        match uri.authority() {
            None => return Err(invalid("no host")),
            Some(a) if a.as_str().contains('@') => {
                // Never echo credentials.
                return Err(PlugitSetupError::InvalidUrl {
                    url: "<redacted>".into(),
                    reason: "credentials in the URL are not supported".into(),
                });
            }
            Some(_) => {}
        }
        if uri.query().is_some() {
            return Err(invalid(
                "a query string cannot be followed by an action name",
            ));
        }

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| PlugitSetupError::Tls(Reason::caused_by(e.to_string(), e)))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(https);
        Ok(PlugitDirectory {
            client,
            base,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            method: config.method,
        })
    }

    /// The base URL in use (with its final `/`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The URL of an action.
    fn action_uri(&self, action: &str) -> Result<Uri, DirectoryError> {
        format!("{}{}", self.base, action)
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| {
                DirectoryError::BadAnswer(Reason::caused_by(
                    format!("{action}: invalid URL: {e}"),
                    e,
                ))
            })
    }

    /// Calls `action` with these parameters and returns the body of its 2xx answer, for
    /// [`answer`] to decode. Errors name the action, never the parameters.
    async fn call(&self, action: Action, params: &[(&str, &str)]) -> Result<Bytes, DirectoryError> {
        let action = action.name();
        let result = tokio::time::timeout(self.timeout, self.exchange(action, params)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(DirectoryError::Timeout(self.timeout)),
        };
        if let Err(e) = &result {
            tracing::debug!(action, error = %e, "PlugIt API call failed");
        }
        result
    }

    async fn exchange(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<Bytes, DirectoryError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let method = match self.method {
            PlugitMethod::Get => Method::GET,
            PlugitMethod::Post => Method::POST,
        };
        let mut request = Request::new(Full::new(Bytes::from(form)));
        *request.method_mut() = method;
        *request.uri_mut() = self.action_uri(action)?;
        request.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));

        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.transport_error(action, e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    DirectoryError::BadAnswer(Reason::caused_by(
                        format!("{action}: answer larger than {MAX_ANSWER_BYTES} bytes"),
                        e,
                    ))
                } else {
                    DirectoryError::Unreachable(Reason::caused_by(
                        format!("{action}: reading answer: {e}"),
                        e,
                    ))
                }
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(DirectoryError::Status(status.as_u16()));
        }
        Ok(body)
    }

    /// Maps a client error: a connect timeout is a [`DirectoryError::Timeout`], anything
    /// else [`DirectoryError::Unreachable`] with the error chain (which names neither the
    /// URL nor the parameters).
    fn transport_error(
        &self,
        action: &str,
        e: hyper_util::client::legacy::Error,
    ) -> DirectoryError {
        let mut text = e.to_string();
        let mut source = e.source();
        let mut timed_out = false;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            }
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if timed_out || text.contains("connect timeout") {
            DirectoryError::Timeout(self.connect_timeout)
        } else {
            DirectoryError::Unreachable(Reason::caused_by(format!("{action}: {text}"), e))
        }
    }
}

#[async_trait]
impl DirectoryApi for PlugitDirectory {
    async fn check_auth(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<bool, DirectoryError> {
        let ip = ip.to_string();
        let body = self
            .call(
                Action::CheckAuth,
                &[("username", username), ("password", password), ("ip", &ip)],
            )
            .await?;
        let answer = answer::check_auth(&body)?;
        if let (false, Some(error)) = (answer.ok, &answer.error) {
            tracing::debug!(username, error, "PlugIt refused the login");
        }
        Ok(answer.ok)
    }

    async fn get_channels(&self, station_id: &str) -> Result<Vec<String>, DirectoryError> {
        let body = self
            .call(Action::GetChannels, &[("station_id", station_id)])
            .await?;
        answer::get_channels(&body)
    }

    async fn get_gcc(&self, cc: &str) -> Result<Option<String>, DirectoryError> {
        let body = self.call(Action::GetGcc, &[("cc", cc)]).await?;
        answer::get_gcc(&body)
    }

    async fn get_all_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        let body = self.call(Action::GetAllChannels, &[]).await?;
        answer::channel_list(Action::GetAllChannels, &body)
    }

    async fn get_all_vis_channels(&self) -> Result<Vec<ChannelRef>, DirectoryError> {
        let body = self.call(Action::GetAllVisChannels, &[]).await?;
        answer::channel_list(Action::GetAllVisChannels, &body)
    }

    async fn get_channel_default(
        &self,
        id: &str,
    ) -> Result<Option<ChannelDefault>, DirectoryError> {
        let body = self.call(Action::GetChannelDefault, &[("id", id)]).await?;
        answer::get_channel_default(&body)
    }
}

/// The headers of a log entry as the original sends them: the JSON text of an array of
/// `[name, value]` pairs, in the message's order (the first of repeated names wins, as
/// in STOMP), written as Python's `json.dumps` writes it (docs/protocol.md#directory).
fn headers_json(headers: &[(String, String)]) -> String {
    let mut seen = std::collections::HashSet::with_capacity(headers.len());
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| seen.insert(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pyjson::dumps(&pairs)
}

/// A failed log call. A 4xx answer is PlugIt refusing this entry: sending it again gets
/// the same answer, so it is [`LogError::Refused`] (the writer drops it instead of
/// holding up the entries behind it), except 408 and 429, which say "later". Anything
/// else (5xx, timeouts, connection errors, an answer not understood) is
/// [`LogError::Unavailable`], with the directory error as the cause.
fn log_error(e: DirectoryError) -> LogError {
    match e {
        DirectoryError::Status(status @ 400..=499) if status != 408 && status != 429 => {
            let reason = hyper::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("client error")
                .to_owned();
            LogError::Refused { status, reason }
        }
        e => LogError::Unavailable(Reason::caused_by(e.to_string(), e)),
    }
}

#[async_trait]
impl LogStore for PlugitDirectory {
    async fn add_log(&self, entry: LogEntry) -> Result<(), LogError> {
        let headers = headers_json(&entry.headers);
        let timestamp = entry.timestamp.to_string();
        self.call(
            Action::AddLog,
            &[
                ("topic", &entry.topic),
                ("message", &entry.message),
                ("headers", &headers),
                ("timestamp", &timestamp),
            ],
        )
        .await
        .and_then(|body| answer::json(Action::AddLog, &body))
        .map(drop)
        .map_err(log_error)
    }

    async fn cleanup_logs(&self, max_age: Duration) -> Result<(), LogError> {
        let max_age = max_age.as_secs().to_string();
        self.call(Action::CleanupLogs, &[("max_age", &max_age)])
            .await
            .and_then(|body| answer::json(Action::CleanupLogs, &body))
            .map(drop)
            .map_err(log_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_its_slash() {
        let d = PlugitDirectory::new(PlugitConfig::new("http://127.0.0.1:1/api")).expect("ok");
        assert_eq!(d.base_url(), "http://127.0.0.1:1/api/");
        let d = PlugitDirectory::new(PlugitConfig::new("https://example.org/plugit/")).expect("ok");
        assert_eq!(d.base_url(), "https://example.org/plugit/");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "example.org/api",
            "ftp://example.org/",
            "http://exa mple/",
        ] {
            assert!(
                PlugitDirectory::new(PlugitConfig::new(url)).is_err(),
                "{url:?} accepted"
            );
        }
    }

    #[test]
    fn method_parses() {
        assert_eq!("get".parse::<PlugitMethod>(), Ok(PlugitMethod::Get));
        assert_eq!(" POST ".parse::<PlugitMethod>(), Ok(PlugitMethod::Post));
        assert!("PUT".parse::<PlugitMethod>().is_err());
    }

    #[test]
    fn client_errors_are_refusals_the_rest_retried() {
        assert_eq!(
            log_error(DirectoryError::Status(400)),
            LogError::Refused {
                status: 400,
                reason: "Bad Request".into()
            }
        );
        assert!(log_error(DirectoryError::Status(403)).is_permanent());
        assert!(log_error(DirectoryError::Status(499)).is_permanent());
        for transient in [
            DirectoryError::Status(408),
            DirectoryError::Status(429),
            DirectoryError::Status(500),
            DirectoryError::Status(503),
            DirectoryError::Timeout(Duration::from_secs(5)),
            DirectoryError::Unreachable("connection refused".into()),
            DirectoryError::BadAnswer("invalid JSON".into()),
        ] {
            let e = log_error(transient.clone());
            assert!(
                matches!(e, LogError::Unavailable(_)),
                "{transient:?} -> {e:?}"
            );
        }
    }

    #[test]
    fn headers_become_a_json_array_of_pairs_first_wins() {
        let h = vec![
            ("link".to_string(), "a".to_string()),
            ("link".to_string(), "b".to_string()),
            ("trigger-time".to_string(), "NOW".to_string()),
        ];
        assert_eq!(
            headers_json(&h),
            r#"[["link", "a"], ["trigger-time", "NOW"]]"#
        );
    }
}
