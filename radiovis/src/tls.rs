//! TLS for the listeners (feature `tls`): a certificate chain and private key read from
//! PEM files, served through rustls (ring provider), and reloaded on demand (the
//! binaries reload on SIGHUP) without dropping a connection: a handshake after a
//! reload presents the new certificate, one before it keeps the old. A reload that
//! fails (file missing, not PEM, key not matching the certificate) keeps the
//! certificate in use. See docs/protocol.md#tls.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
pub use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a TLS handshake may take before the connection is dropped (a client that
/// opens the port and sends nothing must not hold a connection slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key could not be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, no permission).
    #[error("cannot read {kind} file {path}")]
    Read {
        /// `certificate` or `private key`.
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or holds nothing of the expected kind.
    #[error("{path} holds no PEM {kind}")]
    NotPem {
        /// `certificate` or `private key`.
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's complaint, when it had one.
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// rustls refused the pair: most often a key that does not belong to the
    /// certificate, or a key type it does not support.
    #[error("certificate {cert} and key {key} cannot be used together")]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// Where the certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`TLS_CERT_FILE`).
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`TLS_KEY_FILE`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files: the certificate chain and a key that matches it.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(certs, key, &provider)
            .map(Arc::new)
            .map_err(|source| TlsError::Rejected {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })
    }
}

fn read_file(kind: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        kind,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const KIND: &str = "certificate";
    let pem = read_file(KIND, path)?;
    let not_pem = |source| TlsError::NotPem {
        kind: KIND,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(Some(e)))?;
    if certs.is_empty() {
        return Err(not_pem(None));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KIND: &str = "private key";
    let pem = read_file(KIND, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NotPem {
        kind: KIND,
        path: path.to_owned(),
        source: match e {
            rustls::pki_types::pem::Error::NoItemsFound => None,
            other => Some(other),
        },
    })
}

/// The certificate in use, swapped by [`TlsReloader::reload`].
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// A TLS acceptor whose certificate can be replaced while it serves. Cheap to clone
/// (all clones share the certificate).
#[derive(Clone)]
pub struct TlsReloader {
    files: TlsFiles,
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads `files` (an error names the file at fault) and builds the acceptor:
    /// TLS 1.2 and 1.3, no client certificates, ALPN `alpn` (empty: none).
    pub fn new(files: TlsFiles, alpn: &[&[u8]]) -> Result<TlsReloader, TlsError> {
        let current = Arc::new(CurrentCert(RwLock::new(files.load()?)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rejected {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsReloader {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The files it serves.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again: on success later handshakes present the new
    /// certificate; on error the one in use stays (the caller logs the error).
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.files.load()?;
        *self.current.0.write() = fresh;
        Ok(())
    }

    /// The TLS handshake on an accepted stream, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Most TLS handshakes in progress per listener: the accept loop waits (the kernel's
/// backlog holds the next clients) rather than start more, so a reconnect storm or a
/// flood of silent clients costs bounded memory and CPU.
pub const MAX_HANDSHAKES: usize = 512;

/// Accepts TCP connections on `listener` until `shutdown`, performs the TLS handshake
/// (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]) and runs
/// `serve` on each TLS stream, e.g. a STOMP session
/// ([`StompHub::serve_stream`](crate::StompHub::serve_stream)) or an HTTP connection.
/// `what` names the listener in the logs (`STOMP over TLS`, `HTTPS`). A failed
/// handshake is logged at debug level (scanners and clients that do not trust the
/// certificate are common) and costs nothing else. On shutdown it stops accepting and
/// waits at most 5 s for the connections it runs.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: TlsReloader,
    what: &'static str,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TlsStream<TcpStream>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening for {what} connections");
    }
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = handshakes.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait, do not spin.
                    tracing::warn!(error = %e, "{what} accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        let (tls, serve, shutdown) = (tls.clone(), serve.clone(), shutdown.clone());
        tracker.spawn(async move {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tls.accept(stream) => r,
            };
            drop(permit);
            match accepted {
                Ok(stream) => serve(stream, peer).await,
                Err(e) => tracing::debug!(%peer, error = %e, "{what} handshake failed"),
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("{what}: shutdown grace elapsed with connections still open");
    }
}

/// Reloads `tls` on every SIGHUP until `stop` (Unix; elsewhere it only waits for
/// `stop`). Each reload is logged: `info` when the new certificate is in use, `error`
/// (with the reason) when the old one is kept. Run it even with nothing to reload:
/// SIGHUP would otherwise end the process (its default action), and `systemctl
/// reload` sends it.
pub async fn reload_on_sighup(tls: Vec<TlsReloader>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: certificates will not reload");
                stop.cancelled().await;
                return;
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            if tls.is_empty() {
                tracing::info!("SIGHUP: no TLS certificate to reload");
            }
            for t in &tls {
                match t.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %t.files.cert.display(), "SIGHUP: TLS certificate reloaded")
                    }
                    Err(e) => tracing::error!(
                        error = %crate::tls::error_text(&e),
                        "SIGHUP: TLS certificate not reloaded, the previous one stays in use"
                    ),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        stop.cancelled().await;
    }
}

/// `error: cause: ...` for a log line.
fn error_text(e: &TlsError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests;
