//! The small operations endpoints (docs/protocol.md#operations) `GET /metrics`,
//! `GET /healthz`, `GET /readyz`, and what every operations handler shares: whole
//! responses, JSON errors, HTTP Basic credentials.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Response, StatusCode};
use serde_json::json;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// The body of every operations response (the listener's).
pub type OpsBody = super::Body;

/// A whole response with this status, content type and body.
pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<OpsBody> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<OpsBody> {
    respond(status, "application/json", value.to_string())
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub fn metrics(metrics: &Metrics) -> Response<OpsBody> {
    respond(StatusCode::OK, CONTENT_TYPE, metrics.encode())
}

/// `GET /healthz`: the process answers (liveness).
pub fn healthz() -> Response<OpsBody> {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}

/// What `/readyz` says: ready or not, why not, and the parts it looked at.
#[derive(Debug, Clone)]
pub struct ReadyReport {
    /// Whether the process should get traffic.
    pub ready: bool,
    /// Why not (`None` when ready).
    pub reason: Option<String>,
    /// Each part and its state (`"bus": "connected"`, ...).
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// `GET /readyz`: 200 when ready, else 503; a short JSON reason either way.
pub fn readyz(report: &ReadyReport) -> Response<OpsBody> {
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if report.ready { "ready" } else { "not ready" },
        "checks": report.checks,
    });
    if let Some(reason) = &report.reason {
        body["reason"] = json!(reason);
    }
    json_response(status, &body)
}

/// How a process reports its readiness (the server: listening, bus, directory; the
/// watchdog: bus).
pub type ReadyCheck = Arc<dyn Fn() -> ReadyReport + Send + Sync>;

/// The admin credentials of the status page (`RADIOVIS_ADMIN_USER` /
/// `RADIOVIS_ADMIN_PASSWORD`); no admin part without them.
#[derive(Clone)]
pub struct AdminCredentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl AdminCredentials {
    /// Admin credentials; `None` when either is empty (admin parts off).
    pub fn new(user: &str, password: &str) -> Option<AdminCredentials> {
        (!user.is_empty() && !password.is_empty()).then(|| AdminCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Whether an `Authorization` header carries these credentials (compared in
    /// constant time).
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let Some((user, password)) = basic_credentials(authorization) else {
            return false;
        };
        let user_ok = user.as_bytes().ct_eq(self.user.as_bytes());
        let password_ok = password.as_bytes().ct_eq(self.password.as_bytes());
        bool::from(user_ok & password_ok)
    }
}

/// The user and password of an `Authorization: Basic ...` header.
pub fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    use base64::Engine;
    let value = authorization?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// 401 asking for HTTP Basic credentials.
pub fn unauthorized(message: &str) -> Response<OpsBody> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, &json!({"error": message}));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"radiovis\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        // "1.radio1:s3cret:with:colons"
        use base64::Engine;
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("1.radio1:s3cret:with:colons")
        );
        assert_eq!(
            basic_credentials(Some(&header)),
            Some(("1.radio1".into(), "s3cret:with:colons".into()))
        );
        assert_eq!(basic_credentials(Some("Bearer abc")), None);
        assert_eq!(basic_credentials(Some("Basic !!!")), None);
        assert_eq!(basic_credentials(None), None);
        let admin = AdminCredentials::new("admin", "pw").expect("set");
        let good = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:pw")
        );
        assert!(admin.accepts(Some(&good)));
        assert!(!admin.accepts(Some(&header)));
        assert!(AdminCredentials::new("admin", "").is_none());
    }
}
