//! The applied configuration, compiled for the request path. Immutable; a reload builds a
//! new one (reusing endpoint state and pools from the previous) and swaps it in. It is made of
//! sections, each compiled from its own resources: `outbound` (services, routes), `inbound`
//! (the workload's ports) and `settings` (with the local workload).

use std::sync::Arc;
use std::time::SystemTime;

use halyard_filters::jwt::{JwksStore, JwtError};
use halyard_filters::rbac::RbacError;
use halyard_xds::ProxyConfig;

use crate::routes::RouteError;

mod chains;
mod cluster;
mod inbound;
mod outbound;
mod reuse;
mod settings;
#[cfg(test)]
mod tests;

pub use chains::InboundChain;
pub use cluster::{Cluster, ClusterPort, HashOn};
pub use inbound::{Inbound, InboundTarget};
pub use outbound::Outbound;
pub use settings::{LocalWorkload, Settings};

/// Defaults for what the config leaves out.
pub mod defaults {
    use std::time::Duration;
    /// Upstream TCP connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Idle pooled upstream connections.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Idle opaque TCP connections.
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Waiting for the first client bytes.
    pub const DETECTION_TIMEOUT: Duration = Duration::from_millis(100);
    /// Idle downstream HTTP connections.
    pub const DOWNSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Request header bytes.
    pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;
    /// Concurrent downstream connections per listener.
    pub const MAX_CONNECTIONS: usize = 100_000;
}

/// The next snapshot's generation.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The compiled, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Version from the config.
    pub version: String,
    /// Which build this is, unique in the process (what was decided under it is known by it).
    pub generation: u64,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// The source resources, for `/config_dump`.
    pub config: ProxyConfig,
    /// Services, routes and the policy for unknown destinations.
    pub outbound: Outbound,
    /// The local workload's ports.
    pub inbound: Inbound,
    /// Settings.
    pub settings: Settings,
    /// Who this proxy's workload is, for metrics and peer metadata exchange.
    pub local: Arc<LocalWorkload>,
    /// The inbound listener's filters; `None` when the workload has no policies.
    pub inbound_chain: Option<InboundChain>,
    /// Every endpoint and breaker, for reuse by the next snapshot and for pool sweeping.
    pools: reuse::Pools,
}

/// Why a validated config could still not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An authorization policy could not be compiled.
    #[error(transparent)]
    Rbac(#[from] RbacError),
    /// JWT rules could not be compiled (e.g. an inline JWKS without usable keys).
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A route could not be compiled.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// TLS origination settings are unusable (a missing or invalid PEM file...).
    #[error("{at}.{source}")]
    Tls {
        /// The settings' config path, e.g. `services[0].tls`.
        at: String,
        /// What is wrong.
        source: crate::upstream::OriginError,
    },
    /// An endpoint identity is not a valid SPIFFE ID.
    #[error("service {service}: endpoint identity: {reason}")]
    Identity {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

impl Snapshot {
    /// Compiles `config`; endpoint state (pools, load) is carried over from `previous`; JWT
    /// key sets come from (and are fetched by) `jwks`, which outlives snapshots.
    pub fn build(
        config: ProxyConfig,
        previous: Option<&Snapshot>,
        jwks: &Arc<JwksStore>,
    ) -> Result<Self, BuildError> {
        let inbound_chain = InboundChain::compile(&config, jwks)?;
        let mut reuse = reuse::Reuse::new(previous.map(|p| &p.pools));
        let outbound = Outbound::build(&config, &mut reuse)?;
        let inbound = Inbound::build(&config, &mut reuse);
        let (settings, local) = settings::build(&config);
        Ok(Self {
            local: Arc::new(local),
            version: config.version.clone(),
            applied_at: SystemTime::now(),
            outbound,
            inbound,
            settings,
            inbound_chain,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pools: reuse.finish(),
            config,
        })
    }

    /// Drops expired idle connections of every endpoint.
    pub fn sweep_pools(&self) {
        self.pools.sweep();
    }
}
