//! Configuration -> backends: the one place that chooses and builds concrete backends
//! (PlugIt, memcached, RabbitMQ, or their in-process stand-ins) from the arguments, and
//! logs which ones are in use. The binaries get trait objects back. Needs the features
//! `plugit` and `memcached` (and `rabbitmq` for the bus), which the binaries enable.

use std::path::Path;
use std::sync::Arc;

use super::args::{DirectoryArgs, RabbitArgs};
use super::error::ConfigError;
use super::logging::redacted_url;
use crate::backend::memory::{MemoryCache, MemoryLogStore, StaticDirectory};
use crate::backend::{Cache, DirectoryApi, LogStore};

/// The demo directory used when no directory is configured and the binary runs from a
/// checkout, so that a first standalone run has stations to log in with.
const DEMO_DIRECTORY: &str = "examples/directory.toml";

/// The directory, message log and shared cache a binary runs on.
pub struct DirectoryBackends {
    /// Stations, channels and CC -> GCC conversions.
    pub directory: Arc<dyn DirectoryApi>,
    /// Where every message is logged (the watchdog reads it back).
    pub log: Arc<dyn LogStore>,
    /// The cache shared between instances.
    pub cache: Arc<dyn Cache>,
}

impl DirectoryBackends {
    /// The same backends, with every directory and cache call timed into `metrics`
    /// (docs/protocol.md#metrics).
    pub fn timed(self, metrics: &crate::metrics::Metrics) -> DirectoryBackends {
        use crate::metrics::Timed;
        DirectoryBackends {
            directory: Arc::new(Timed::new(self.directory, metrics.directory().clone())),
            log: self.log,
            cache: Arc::new(Timed::new(self.cache, metrics.cache().clone())),
        }
    }
}

impl DirectoryArgs {
    /// Chooses the backends: PlugIt (directory and message log) when
    /// `RADIODNS_API_URL` is set, else a directory file (`RADIOVIS_DIRECTORY`, else the
    /// demo `examples/directory.toml` when present, else an empty directory) with an
    /// in-memory log; memcached when `MEMCACHED_HOST` is set, else an in-memory cache.
    /// Logs which one is in use.
    pub fn backends(&self) -> Result<DirectoryBackends, ConfigError> {
        let (directory, log): (Arc<dyn DirectoryApi>, Arc<dyn LogStore>) = match &self
            .radiodns_api_url
        {
            Some(url) => {
                let plugit = Arc::new(self.plugit_directory(url)?);
                // The PlugIt API secret is a segment of the URL's path: log the host only.
                tracing::info!(backend = "plugit", url = %redacted_url(plugit.base_url()), "directory and message log");
                (plugit.clone(), plugit)
            }
            None => (
                Arc::new(self.file_directory()?),
                Arc::new(MemoryLogStore::default()),
            ),
        };
        Ok(DirectoryBackends {
            directory,
            log,
            cache: self.shared_cache()?,
        })
    }

    /// The PlugIt directory (and log store) at `RADIODNS_API_URL` (`url`), with these
    /// timeouts and method.
    pub fn plugit_directory(
        &self,
        url: &str,
    ) -> Result<crate::backend::plugit::PlugitDirectory, ConfigError> {
        crate::backend::plugit::PlugitDirectory::new(self.plugit_config(url)?)
            .map_err(|e| ConfigError::invalid("RADIODNS_API_URL", e))
    }

    /// The directory file of standalone use: `RADIOVIS_DIRECTORY`, else the demo file
    /// when present, else an empty directory (anonymous radios only).
    fn file_directory(&self) -> Result<StaticDirectory, ConfigError> {
        let demo = Path::new(DEMO_DIRECTORY);
        let (dir, path) = match &self.directory {
            Some(path) => (
                StaticDirectory::from_file(path).map_err(|source| ConfigError::DirectoryFile {
                    var: "RADIOVIS_DIRECTORY",
                    source,
                })?,
                Some(path.as_path()),
            ),
            None if demo.exists() => {
                tracing::warn!(
                    path = DEMO_DIRECTORY,
                    mode = "demo directory",
                    "no directory configured (RADIODNS_API_URL and RADIOVIS_DIRECTORY are not set): using the demo directory {DEMO_DIRECTORY} (demo logins, any address may log in); it is for trying the server out: set RADIOVIS_DIRECTORY or RADIODNS_API_URL in production"
                );
                (
                    StaticDirectory::from_file(demo).map_err(ConfigError::DemoDirectoryFile)?,
                    Some(demo),
                )
            }
            None => (StaticDirectory::default(), None),
        };
        match path {
            Some(p) => tracing::info!(
                backend = "file",
                path = %p.display(),
                stations = dir.data().stations.len(),
                channels = dir.data().channels.len(),
                "directory (message log in memory)"
            ),
            None => tracing::warn!(
                mode = "standalone",
                "no directory file: no station can log in, anonymous radios only (RADIODNS_API_URL and RADIOVIS_DIRECTORY are not set)"
            ),
        }
        Ok(dir)
    }

    /// memcached at `MEMCACHED_HOST` when set, else a cache in this process.
    fn shared_cache(&self) -> Result<Arc<dyn Cache>, ConfigError> {
        Ok(match &self.memcached_host {
            Some(host) => {
                let c = crate::backend::memcached::MemcachedCache::from_host(host)
                    .map_err(|e| ConfigError::invalid("MEMCACHED_HOST", e))?;
                tracing::info!(backend = "memcached", host = %host, "shared cache");
                Arc::new(c)
            }
            None => {
                // The original defaulted MEMCACHED_HOST to 127.0.0.1: an operator who
                // relied on that must hear that this process shares no cache
                // (docs/protocol.md#configuration).
                tracing::warn!(
                    backend = "in-process",
                    mode = "standalone",
                    "shared cache in this process only: MEMCACHED_HOST is not set (the original Python server defaulted it to 127.0.0.1; radiovis does not), so conversions, channel lists and defaults are not shared with other processes; set MEMCACHED_HOST to share them"
                );
                Arc::new(MemoryCache::new())
            }
        })
    }
}

impl RabbitArgs {
    /// The message bus of radiovis-server: RabbitMQ (each instance with its own
    /// exclusive queue on the shared exchange) when `RABBITMQ_HOST` or `RABBITMQ_URL`
    /// is set, else a bus in this process. An unreachable broker is not an error: the
    /// bus retries in the background while the server already serves clients.
    #[cfg(feature = "rabbitmq")]
    pub async fn server_bus(&self) -> Result<Arc<dyn crate::backend::MessageBus>, ConfigError> {
        use crate::backend::memory::LocalBus;
        use crate::backend::rabbitmq::{QueueKind, RabbitBus};
        if !self.configured() {
            // The original defaulted RABBITMQ_HOST to 127.0.0.1: instances swapped in
            // for it would no longer share messages, and nothing else would say so
            // (docs/protocol.md#configuration).
            tracing::warn!(
                backend = "in-process",
                mode = "standalone",
                "message bus in this process only: neither RABBITMQ_HOST nor RABBITMQ_URL is set (the original Python server defaulted RABBITMQ_HOST to 127.0.0.1; radiovis does not), so this instance shares messages with no other instance or watchdog; set RABBITMQ_HOST to join a fleet"
            );
            return Ok(Arc::new(LocalBus::default()));
        }
        let config = self.rabbit_config(QueueKind::Instance)?;
        tracing::info!(backend = "rabbitmq", host = %config.host, port = config.port, vhost = %config.vhost, exchange = %config.exchange, "message bus");
        let bus = RabbitBus::connect(config)
            .await
            .map_err(|e| ConfigError::MessageBus { source: e.into() })?;
        if !bus.is_connected() {
            tracing::warn!(
                "RabbitMQ not reachable yet: serving STOMP clients and retrying in the background"
            );
        }
        Ok(Arc::new(bus))
    }
}
