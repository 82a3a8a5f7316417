//! Configuration from the control server: the proxy's resources, received over xDS, assembled
//! into one `ProxyConfig` and applied atomically (or refused, keeping the last good one).

use halyard_xds::ads::{
    State, AUTHORIZATION_POLICY_TYPE, MESH_SETTINGS_TYPE, REQUEST_AUTHENTICATION_TYPE,
    SERVICE_TYPE, VIRTUAL_HOST_TYPE, WORKLOAD_TYPE,
};
use halyard_xds::{
    AuthorizationPolicy, MeshSettings, ProxyConfig, RequestAuthentication, Service, VirtualHost,
    Workload,
};

/// The resource types a sidecar subscribes to.
pub const SIDECAR_TYPES: [&str; 6] = [
    WORKLOAD_TYPE,
    SERVICE_TYPE,
    VIRTUAL_HOST_TYPE,
    MESH_SETTINGS_TYPE,
    AUTHORIZATION_POLICY_TYPE,
    REQUEST_AUTHENTICATION_TYPE,
];

/// Builds the proxy's configuration from the xDS state: its workload (the resource named by
/// `node_id`), every service and virtual host, and the mesh settings. The version names each
/// type's resource versions, so `/config_dump` shows what the control server sent.
pub fn assemble(state: &State, node_id: &str) -> Result<ProxyConfig, String> {
    let mut config = ProxyConfig::default();
    let empty = Default::default();
    let of = |t: &str| state.get(t).unwrap_or(&empty);
    let decode_err =
        |t: &str, name: &str, e: &dyn std::fmt::Display| format!("{t} resource `{name}`: {e}");

    let workloads = of(WORKLOAD_TYPE);
    if let Some(r) = workloads.get(node_id) {
        let w: Workload = r
            .decode()
            .map_err(|e| decode_err(WORKLOAD_TYPE, node_id, &e))?;
        config.workload = Some(w);
    } else if let Some(other) = workloads.keys().next() {
        return Err(format!(
            "workload resource `{other}` is not this proxy's (node id `{node_id}`)"
        ));
    }
    for (name, r) in of(SERVICE_TYPE) {
        let s: Service = r.decode().map_err(|e| decode_err(SERVICE_TYPE, name, &e))?;
        config.services.push(s);
    }
    for (name, r) in of(VIRTUAL_HOST_TYPE) {
        let v: VirtualHost = r
            .decode()
            .map_err(|e| decode_err(VIRTUAL_HOST_TYPE, name, &e))?;
        config.virtual_hosts.push(v);
    }
    for (name, r) in of(AUTHORIZATION_POLICY_TYPE) {
        let p: AuthorizationPolicy = r
            .decode()
            .map_err(|e| decode_err(AUTHORIZATION_POLICY_TYPE, name, &e))?;
        config.authorization_policies.push(p);
    }
    for (name, r) in of(REQUEST_AUTHENTICATION_TYPE) {
        let p: RequestAuthentication = r
            .decode()
            .map_err(|e| decode_err(REQUEST_AUTHENTICATION_TYPE, name, &e))?;
        config.request_authentications.push(p);
    }
    if let Some((name, r)) = of(MESH_SETTINGS_TYPE).iter().next() {
        let m: MeshSettings = r
            .decode()
            .map_err(|e| decode_err(MESH_SETTINGS_TYPE, name, &e))?;
        config.outbound_traffic_policy = m.outbound_traffic_policy;
        config.settings = m.settings;
    }
    config.version = version_of(state);
    Ok(config)
}

/// `workload=V,service=V,...`: the set versions of each type, short type names.
fn version_of(state: &State) -> String {
    let mut parts = Vec::with_capacity(SIDECAR_TYPES.len());
    for t in SIDECAR_TYPES {
        let short = t.rsplit('.').next().unwrap_or(t).to_ascii_lowercase();
        let v = state
            .get(t)
            .map(|m| halyard_xds::ads::types::set_version(m.values()))
            .unwrap_or_default();
        parts.push(format!("{short}={v}"));
    }
    parts.join(",")
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
    let config = ClientConfig::new(node, SIDECAR_TYPES, mode);
    let identity = shared.identity.clone();
    let addr = opts.addr.clone();
    let shutdown = shared.shutdown.clone();
    let connect = move || {
        let identity = identity.clone();
        let addr = addr.clone();
        let shutdown = shutdown.clone();
        async move {
            // Over TLS the control server knows us by our certificate: wait for it.
            if let Some(id) = identity
                .as_ref()
                .filter(|i| i.options.ca_root_file.is_some())
            {
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
        if !live_shared.live.has_config() && SIDECAR_TYPES.iter().any(|t| !state.contains_key(*t)) {
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
