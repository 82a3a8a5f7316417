//! DestinationRule traffic policies → the proxy's balancing, circuit breakers and outlier
//! detection, with Istio's defaults filled in, and subsets with their merged policies.

use halyard_xds::{
    consistent_hash, ConnectionPool, ConsistentHash, Endpoint, LoadBalancer, OutlierDetection,
    Subset, TrafficPolicy,
};

use super::services::duration;
use crate::model::networking::{
    self as istio, ConnectionPoolSettings, ConsistentHashLb, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, SimpleLb, TlsMode,
};
use crate::model::Doc;

/// The blocks of an Istio traffic policy that the proxy applies. Istio merges a subset's
/// policy over the rule's block by block: a block the subset sets replaces the rule's.
#[derive(Debug, Clone, Copy, Default)]
struct Blocks<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    connection_pool: Option<&'a ConnectionPoolSettings>,
    outlier_detection: Option<&'a istio::OutlierDetection>,
}

impl<'a> Blocks<'a> {
    /// The blocks a policy sets.
    fn of(tp: Option<&'a istio::TrafficPolicy>) -> Self {
        tp.map_or_else(Self::default, |tp| Blocks {
            load_balancer: tp.load_balancer.as_ref(),
            connection_pool: tp.connection_pool.as_ref(),
            outlier_detection: tp.outlier_detection.as_ref(),
        })
    }

    /// These blocks over `parent`'s (Istio's subset merge).
    fn over(self, parent: Self) -> Self {
        Blocks {
            load_balancer: self.load_balancer.or(parent.load_balancer),
            connection_pool: self.connection_pool.or(parent.connection_pool),
            outlier_detection: self.outlier_detection.or(parent.outlier_detection),
        }
    }

    fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
    }
}

/// The proxy's form of a policy; `endpoints` is how many endpoints it balances over (for the
/// ring size of consistent hashing).
fn traffic_policy(b: Blocks<'_>, endpoints: usize) -> TrafficPolicy {
    let pool = b.connection_pool;
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    TrafficPolicy {
        load_balancer: load_balancer(b.load_balancer) as i32,
        consistent_hash: b
            .load_balancer
            .and_then(|lb| lb.consistent_hash.as_ref())
            .and_then(|ch| consistent_hash(ch, endpoints)),
        connection_pool: pool.and_then(connection_pool),
        outlier_detection: b.outlier_detection.map(outlier_detection),
        connect_timeout: duration(tcp.and_then(|t| t.connect_timeout.as_ref())),
        idle_timeout: duration(http.and_then(|h| h.idle_timeout.as_ref())),
        tcp_idle_timeout: duration(tcp.and_then(|t| t.idle_timeout.as_ref())),
        // TLS origination is filled in by services::origin_tls.
        ..Default::default()
    }
}

/// `simple`: LEAST_CONN is Istio's old name of LEAST_REQUEST, the default.
fn load_balancer(lb: Option<&LoadBalancerSettings>) -> LoadBalancer {
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
        Some(SimpleLb::Random) => LoadBalancer::Random,
        _ => LoadBalancer::LeastRequest,
    }
}

/// Most ring points per endpoint the control server asks for.
const MAX_POINTS_PER_ENDPOINT: u64 = 10_000;

fn consistent_hash(ch: &ConsistentHashLb, endpoints: usize) -> Option<ConsistentHash> {
    let key = if let Some(h) = &ch.http_header_name {
        consistent_hash::Key::Header(h.to_ascii_lowercase())
    } else if let Some(c) = &ch.http_cookie {
        consistent_hash::Key::Cookie(consistent_hash::Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: duration(c.ttl.as_ref()),
        })
    } else if ch.use_source_ip == Some(true) {
        consistent_hash::Key::SourceIp(true)
    } else if let Some(q) = &ch.http_query_parameter_name {
        consistent_hash::Key::QueryParameter(q.clone())
    } else {
        return None;
    };
    // Istio sizes the whole ring; the proxy counts points per endpoint.
    let ring = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size)
        .filter(|n| *n > 0);
    let points_per_endpoint = ring.map_or(0, |n| {
        let per = n
            .div_ceil(u64::try_from(endpoints.max(1)).unwrap_or(1))
            .clamp(1, MAX_POINTS_PER_ENDPOINT);
        u32::try_from(per).unwrap_or(0)
    });
    Some(ConsistentHash {
        key: Some(key),
        points_per_endpoint,
    })
}

/// Istio's positive limit; 0 or unset is the default, unlimited.
fn limit(n: Option<i32>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// Circuit-breaker limits; `None` when the block sets none.
fn connection_pool(p: &ConnectionPoolSettings) -> Option<ConnectionPool> {
    let tcp = p.tcp.as_ref();
    let http = p.http.as_ref();
    let pool = ConnectionPool {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: limit(http.and_then(|h| h.max_requests_per_connection)),
        max_retries: limit(http.and_then(|h| h.max_retries)),
    };
    (pool != ConnectionPool::default()).then_some(pool)
}

fn seconds(s: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

/// Outlier detection with Istio's defaults: 5 consecutive 5xx, gateway errors not counted,
/// 10s interval, 30s base ejection, at most 10 % ejected (also for an explicit 0, as Istio),
/// no minimum of healthy endpoints. The deprecated `consecutiveErrors` counts gateway errors
/// (502, 503, 504) and turns the 5xx default off, as in Istio.
fn outlier_detection(o: &istio::OutlierDetection) -> OutlierDetection {
    let legacy = o
        .consecutive_errors
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0);
    OutlierDetection {
        consecutive_5xx: o
            .consecutive_5xx_errors
            .unwrap_or(if legacy.is_some() { 0 } else { 5 }),
        consecutive_gateway_errors: o.consecutive_gateway_errors.or(legacy).unwrap_or(0),
        interval: duration(o.interval.as_ref()).or_else(|| seconds(10)),
        base_ejection_time: duration(o.base_ejection_time.as_ref()).or_else(|| seconds(30)),
        max_ejection_percent: Some(
            o.max_ejection_percent
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or(10),
        ),
        min_health_percent: limit(o.min_health_percent),
    }
}

/// Whether a policy turns mutual TLS to the endpoints off.
pub(super) fn mtls_off(tp: Option<&istio::TrafficPolicy>) -> bool {
    tp.and_then(|p| p.tls.as_ref())
        .and_then(|t| t.mode)
        .is_some_and(|m| m == TlsMode::Disable)
}

/// Notes for the parts of a policy the proxy does not apply; `what` names the policy.
fn unapplied(tp: &istio::TrafficPolicy, what: &str, notes: &mut Vec<String>) {
    let port_blocks = tp.port_level_settings.iter().any(|p| {
        p.load_balancer.is_some() || p.connection_pool.is_some() || p.outlier_detection.is_some()
    });
    if port_blocks {
        notes.push(format!(
            "{what}: portLevelSettings not applied yet (the proxy has no per-port policy; the policy for all ports applies)"
        ));
    }
    let pool = tp.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let parts = [
        (
            "connectionPool.tcp.maxConnectionDuration",
            tcp.is_some_and(|t| t.max_connection_duration.is_some()),
        ),
        (
            "connectionPool.http.h2UpgradePolicy DO_NOT_UPGRADE (sidecars speak HTTP/2 to each other)",
            http.is_some_and(|h| h.h2_upgrade_policy == Some(H2UpgradePolicy::DoNotUpgrade)),
        ),
        (
            "connectionPool.http.useClientProtocol",
            http.is_some_and(|h| h.use_client_protocol == Some(true)),
        ),
        (
            "connectionPool.http.maxConcurrentStreams",
            http.is_some_and(|h| h.max_concurrent_streams.is_some()),
        ),
    ];
    for (part, set) in parts {
        if set {
            notes.push(format!("{what}: {part} not applied yet"));
        }
    }
}

/// A service's policy (the rule's top level, in the proxy's form) and its subsets, from the
/// DestinationRule that applies to it, if any; notes for what the proxy cannot apply.
pub(super) fn for_rule(
    dr: Option<&Doc<DestinationRule>>,
    endpoints: &[Endpoint],
    notes: &mut Vec<String>,
) -> (TrafficPolicy, Vec<Subset>) {
    let Some(dr) = dr else {
        return (
            traffic_policy(Blocks::default(), endpoints.len()),
            Vec::new(),
        );
    };
    let what = format!("DestinationRule {}/{}", dr.meta.namespace, dr.meta.name);
    let rule = &dr.spec;
    if let Some(tp) = &rule.traffic_policy {
        unapplied(tp, &what, notes);
    }
    let policy = traffic_policy(Blocks::of(rule.traffic_policy.as_ref()), endpoints.len());
    (policy, subsets(rule, endpoints, &what, notes))
}

/// The rule's subsets, each with its policy merged over the rule's (`None` when the subset
/// sets no policy block of its own).
fn subsets(
    dr: &DestinationRule,
    endpoints: &[Endpoint],
    what: &str,
    notes: &mut Vec<String>,
) -> Vec<Subset> {
    let parent = Blocks::of(dr.traffic_policy.as_ref());
    let service_mtls_off = mtls_off(dr.traffic_policy.as_ref());
    let mut out = Vec::with_capacity(dr.subsets.len());
    for s in &dr.subsets {
        let sub_what = format!("{what}, subset `{}`", s.name);
        let own_tp = s.traffic_policy.as_ref();
        if let Some(tp) = own_tp {
            unapplied(tp, &sub_what, notes);
            let mesh_mode = tp
                .tls
                .as_ref()
                .and_then(|t| t.mode)
                .is_some_and(|m| matches!(m, TlsMode::Disable | TlsMode::IstioMutual));
            if mesh_mode && mtls_off(own_tp) != service_mtls_off {
                notes.push(format!(
                    "{sub_what}: a tls mode other than the service's is not applied yet (the service's applies)"
                ));
            }
        }
        let own = Blocks::of(own_tp);
        let members = endpoints
            .iter()
            .filter(|e| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .count();
        out.push(Subset {
            name: s.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            traffic_policy: (!own.is_empty()).then(|| traffic_policy(own.over(parent), members)),
        });
    }
    out
}
