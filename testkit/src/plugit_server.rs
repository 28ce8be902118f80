//! A small PlugIt API for tests: the actions of docs/protocol.md#directory over HTTP/1.1 on
//! 127.0.0.1, fixed data, calls counted per action, requests recorded, switchable faults.
//!
//! Parameters are read from the form body (any method, as PlugIt reads form fields) and
//! from the query string, so both what the original server sent (GET with a form body)
//! and a POST are understood.
//!
//! Data: login `1.radio1` / [`PASSWORD`] (any ip) is accepted; station `1` has
//! [`CHANNELS`]; `ch` -> `4e1`, `xx` -> null, `yy` -> no `gcc` key; channels `7`
//! (numeric id, has a default) and `8` (string id, none).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The password the server accepts for `1.radio1` (with characters that need encoding).
pub const PASSWORD: &str = "s3cr&t p=ss%w0rd";

/// The channels of station `1`.
pub const CHANNELS: [&str; 2] = ["/topic/fm/4e1/4001/09580/", "/topic/dab/4e1/4001/4001/0/"];

/// A fault the server can be switched to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers normally.
    None,
    /// Waits this long before answering.
    Slow(Duration),
    /// Answers HTTP 500.
    Status500,
    /// Answers 200 with a body that is not JSON.
    InvalidJson,
    /// Answers HTTP 400 to `add_log` when the entry's message contains this text;
    /// everything else is answered normally (one entry PlugIt will never take).
    RefuseLogContaining(&'static str),
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub action: String,
    pub method: String,
    pub content_type: Option<String>,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Parameters from the form body.
    pub form: Vec<(String, String)>,
}

impl Recorded {
    /// A form parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct State {
    calls: Mutex<HashMap<String, usize>>,
    requests: Mutex<Vec<Recorded>>,
    fault: Mutex<Fault>,
    connections: AtomicUsize,
}

/// A running test PlugIt server. Dropping it (or [`PlugitServer::stop`]) closes the
/// listener and every connection.
pub struct PlugitServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PlugitServer {
    /// Starts a server on 127.0.0.1 on a free port.
    pub async fn start() -> PlugitServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test PlugIt server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            calls: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            connections: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops them all.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        PlugitServer {
            addr,
            state,
            task: Some(task),
        }
    }

    /// The base URL (`http://127.0.0.1:<port>/api/`).
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().expect("lock") = fault;
    }

    /// How many times `action` was called.
    pub fn calls(&self, action: &str) -> usize {
        self.state
            .calls
            .lock()
            .expect("lock")
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The last request to `action`.
    pub fn last(&self, action: &str) -> Option<Recorded> {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.action == action)
    }

    /// Stops the server: the port refuses connections, open connections are closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for PlugitServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let action = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let form: Vec<(String, String)> = if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    let mut params = form.clone();
    if let Some(q) = &query {
        params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    *state
        .calls
        .lock()
        .expect("lock")
        .entry(action.clone())
        .or_default() += 1;
    state.requests.lock().expect("lock").push(Recorded {
        action: action.clone(),
        method,
        content_type,
        query,
        form,
    });

    let fault = *state.fault.lock().expect("lock");
    match fault {
        Fault::None => {}
        Fault::Slow(d) => tokio::time::sleep(d).await,
        Fault::Status500 => return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "oops")),
        Fault::InvalidJson => return Ok(reply(StatusCode::OK, "<html>not json")),
        Fault::RefuseLogContaining(text) => {
            if action == "add_log" && param(&params, "message").is_some_and(|m| m.contains(text)) {
                return Ok(reply(StatusCode::BAD_REQUEST, "refused"));
            }
        }
    }

    let p = |name: &str| param(&params, name);
    let answer = match action.as_str() {
        "check_auth" => {
            if p("username") == Some("1.radio1") && p("password") == Some(PASSWORD) {
                json!({"result": true, "error": ""})
            } else {
                json!({"result": false, "error": "Wrong credentials"})
            }
        }
        "get_channels" => match p("station_id") {
            Some("1") => json!({ "list": CHANNELS }),
            _ => json!({"list": []}),
        },
        "get_gcc" => match p("cc") {
            Some("ch") => json!({"gcc": "4e1"}),
            Some("yy") => json!({}),
            _ => json!({"gcc": null}),
        },
        "get_all_channels" => json!({"list": [[CHANNELS[0], 7], [CHANNELS[1], "8"]]}),
        "get_all_vis_channels" => json!({"list": [[CHANNELS[0], 7]]}),
        "get_channel_default" => match p("id") {
            Some("7") => json!({"info": {
                "filename": "r1.png",
                "radiotext": "Radio One",
                "radiolink": "http://radio1.example/",
                "public_url": "http://img.example/r1.png",
                "other": 3
            }}),
            _ => json!({"info": null}),
        },
        "add_log" | "cleanup_logs" => json!({}),
        _ => return Ok(reply(StatusCode::NOT_FOUND, "no such action")),
    };
    Ok(reply(StatusCode::OK, &answer.to_string()))
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}
