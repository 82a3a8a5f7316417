//! Configuration from the control server: the proxy's resources, received over xDS, assembled
//! into one `ProxyConfig` and applied atomically (or refused, keeping the last good one).

use halyard_xds::ads::{ProxyResources, State};
use halyard_xds::ProxyConfig;

/// Builds the proxy's configuration from the xDS state: the decoded [`ProxyResources`] (its
/// workload is the one named by `node_id`; another node's is refused) and a version naming
/// each type's set version, so `/config_dump` shows what the control server sent.
pub fn assemble(state: &State, node_id: &str) -> Result<ProxyConfig, String> {
    let r = ProxyResources::from_state(state, node_id).map_err(|e| e.to_string())?;
    let mesh = r.mesh_settings.unwrap_or_default();
    Ok(ProxyConfig {
        version: ProxyResources::version_of(state),
        workload: r.workload,
        services: std::sync::Arc::unwrap_or_clone(r.services),
        virtual_hosts: std::sync::Arc::unwrap_or_clone(r.virtual_hosts),
        outbound_traffic_policy: mesh.outbound_traffic_policy,
        settings: mesh.settings,
        authorization_policies: r.authorization_policies,
        request_authentications: r.request_authentications,
        ..Default::default()
    })
}

/// How the proxy reaches the control server for its configuration.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// The control server's gRPC address (`host:port`).
    pub addr: String,
    /// This proxy's node id, `namespace/workload-name`.
    pub node_id: String,
    /// Incremental (delta) or state-of-the-world streams.
    pub delta: bool,
}

/// Keeps the configuration in sync with the control server until shutdown: every response is
/// assembled and applied atomically (ACK) or refused with the reason (NACK), keeping the last
/// good configuration; on disconnect the proxy keeps serving and reconnects with backoff.
pub async fn run(shared: std::sync::Arc<crate::shared::Shared>, opts: XdsOptions) {
    use halyard_xds::ads::{AdsClient, ClientConfig, Mode, Node};
    let node = Node {
        id: opts.node_id.clone(),
        user_agent_name: "halyard".into(),
        ..Default::default()
    };
    let mode = if opts.delta { Mode::Delta } else { Mode::Sotw };
    let config = ClientConfig::new(node, ProxyResources::TYPE_URLS.iter().copied(), mode);
    let identity = shared.identity.clone();
    let addr = opts.addr.clone();
    let shutdown = shared.shutdown.clone();
    let connect = move || {
        let identity = identity.clone();
        let addr = addr.clone();
        let shutdown = shutdown.clone();
        async move {
            // Over TLS the control server knows us by our certificate: wait for it.
            if let Some(id) = identity.as_ref().filter(|i| i.control_over_tls()) {
                while !id.ready() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err("shutting down".to_string()),
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
            }
            crate::identity::control_channel(identity.as_deref(), &addr, None).await
        }
    };
    let client = AdsClient::new(config, connect);
    let _ = shared.xds_status.set(client.status());
    let node_id = opts.node_id;
    let live_shared = shared.clone();
    let applier = move |state: &State| -> Result<(), String> {
        // Delta streams deliver each type on its own: apply once all have arrived, so the
        // proxy never serves a half-built configuration (a workload without its services).
        let partial = ProxyResources::TYPE_URLS
            .iter()
            .any(|t| !state.contains_key(*t));
        if !live_shared.live.has_config() && partial {
            return Ok(());
        }
        let cfg = assemble(state, &node_id)?;
        let version = cfg.version.clone();
        match live_shared.live.apply(cfg) {
            Ok(()) => {
                live_shared.metrics.reloads.with_label_values(&["ok"]).inc();
                Ok(())
            }
            Err(e) => {
                live_shared
                    .metrics
                    .reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(%version, "configuration from the control server refused: {e}");
                Err(e.to_string())
            }
        }
    };
    client.run(applier, shared.shutdown.clone()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use halyard_xds::{
        outbound_traffic_policy, AuthorizationPolicy, MeshSettings, OutboundTrafficPolicy,
        RequestAuthentication, Service, Settings, VirtualHost, Workload,
    };

    use super::*;

    #[test]
    fn assemble_maps_every_resource_to_its_place_in_the_config() {
        let mode = outbound_traffic_policy::Mode::RegistryOnly as i32;
        let resources = ProxyResources {
            workload: Some(Workload {
                name: "cart".into(),
                ..Default::default()
            }),
            services: Arc::new(vec![Service {
                name: "payments".into(),
                ..Default::default()
            }]),
            virtual_hosts: Arc::new(vec![VirtualHost {
                name: "payments".into(),
                ..Default::default()
            }]),
            mesh_settings: Some(MeshSettings {
                outbound_traffic_policy: Some(OutboundTrafficPolicy { mode }),
                settings: Some(Settings {
                    access_log: Some(false),
                    ..Default::default()
                }),
            }),
            authorization_policies: vec![AuthorizationPolicy {
                name: "shop/deny".into(),
                ..Default::default()
            }],
            request_authentications: vec![RequestAuthentication {
                name: "shop/jwt".into(),
                ..Default::default()
            }],
        };
        let state = resources.to_state("shop/cart");
        let cfg = assemble(&state, "shop/cart").expect("assembles");
        assert_eq!(cfg.workload, resources.workload);
        assert_eq!(cfg.services, *resources.services);
        assert_eq!(cfg.virtual_hosts, *resources.virtual_hosts);
        assert_eq!(cfg.outbound_traffic_policy.map(|p| p.mode), Some(mode));
        assert_eq!(cfg.settings.and_then(|s| s.access_log), Some(false));
        assert_eq!(cfg.authorization_policies, resources.authorization_policies);
        assert_eq!(
            cfg.request_authentications,
            resources.request_authentications
        );
        assert_eq!(cfg.version, ProxyResources::version_of(&state));
        assert!(cfg.version.starts_with("workload="), "{}", cfg.version);

        let err = assemble(&state, "shop/other").expect_err("another node's workload");
        assert_eq!(
            err,
            "workload resource `shop/cart` is not this proxy's (node id `shop/other`)"
        );
    }
}
