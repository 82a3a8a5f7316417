//! Endpoint selection: power of two choices over in-flight load, round robin, random, and
//! consistent hashing — each skipping endpoints that are ejected or were already tried by
//! this request, unless nothing else is left (then, like Envoy's panic mode, any will do).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use halyard_xds::LoadBalancer;

use super::hash::Ring;
use super::Upstream;

/// What a pick must avoid.
#[derive(Clone, Copy)]
pub struct Avoid<'a> {
    /// Endpoints this request already tried.
    pub tried: &'a [Arc<Upstream>],
    /// Now, for ejection checks.
    pub now: Instant,
}

impl Avoid<'_> {
    /// Nothing to avoid but ejected endpoints.
    pub fn none(now: Instant) -> Avoid<'static> {
        Avoid { tried: &[], now }
    }

    fn usable(&self, u: &Arc<Upstream>, strict: bool) -> bool {
        !u.health.is_ejected(self.now) && (!strict || !self.tried.iter().any(|t| Arc::ptr_eq(t, u)))
    }
}

/// Picks an endpoint by `lb` (or by `hash` on `ring` when consistent hashing applies).
pub fn pick<'a>(
    endpoints: &'a [Arc<Upstream>],
    lb: LoadBalancer,
    rr: &AtomicUsize,
    hash: Option<(&Ring, u64)>,
    avoid: Avoid<'_>,
) -> Option<&'a Arc<Upstream>> {
    // First choice: neither ejected nor tried; then: not ejected; then anything.
    for level in 0..3 {
        let ok = |u: &Arc<Upstream>| match level {
            0 => avoid.usable(u, true),
            1 => avoid.usable(u, false),
            _ => true,
        };
        let found = match hash {
            Some((ring, key)) => ring
                .pick(key, |i| endpoints.get(i).is_some_and(ok))
                .and_then(|i| endpoints.get(i)),
            None => pick_by(endpoints, lb, rr, ok),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn pick_by<'a>(
    endpoints: &'a [Arc<Upstream>],
    lb: LoadBalancer,
    rr: &AtomicUsize,
    ok: impl Fn(&Arc<Upstream>) -> bool,
) -> Option<&'a Arc<Upstream>> {
    let n = endpoints.len();
    match n {
        0 => return None,
        1 => return endpoints.first().filter(|u| ok(u)),
        _ => {}
    }
    let start = match lb {
        LoadBalancer::RoundRobin => rr.fetch_add(1, Ordering::Relaxed) % n,
        LoadBalancer::Random => fastrand::usize(..n),
        LoadBalancer::LeastRequest => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (ua, ub) = (&endpoints[a], &endpoints[b]);
            match (ok(ua), ok(ub)) {
                (true, true) => return Some(if ub.load() < ua.load() { ub } else { ua }),
                (true, false) => return Some(ua),
                (false, true) => return Some(ub),
                (false, false) => a,
            }
        }
    };
    // Walk on from the starting point to the first acceptable endpoint.
    (0..n).map(|i| &endpoints[(start + i) % n]).find(|u| ok(u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::outlier::{Outcome, OutlierConfig};
    use crate::upstream::UpstreamKey;
    use std::time::Duration;

    fn ups(n: usize) -> Vec<Arc<Upstream>> {
        (0..n)
            .map(|i| {
                Arc::new(Upstream::new(UpstreamKey::plain(
                    "127.0.0.1".into(),
                    1000 + i as u16,
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                )))
            })
            .collect()
    }

    fn port(u: Option<&Arc<Upstream>>) -> u16 {
        u.unwrap().key().port
    }

    #[test]
    fn round_robin_cycles() {
        let e = ups(3);
        let rr = AtomicUsize::new(0);
        let now = Instant::now();
        let picked: Vec<u16> = (0..6)
            .map(|_| {
                port(pick(
                    &e,
                    LoadBalancer::RoundRobin,
                    &rr,
                    None,
                    Avoid::none(now),
                ))
            })
            .collect();
        assert_eq!(picked, vec![1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn p2c_prefers_less_loaded() {
        let e = ups(2);
        let _busy: Vec<_> = (0..5).map(|_| e[0].begin()).collect();
        let rr = AtomicUsize::new(0);
        for _ in 0..50 {
            let p = pick(
                &e,
                LoadBalancer::LeastRequest,
                &rr,
                None,
                Avoid::none(Instant::now()),
            );
            assert_eq!(port(p), 1001);
        }
    }

    #[test]
    fn tried_endpoints_are_avoided_until_none_is_left() {
        let e = ups(3);
        let rr = AtomicUsize::new(0);
        let now = Instant::now();
        for lb in [
            LoadBalancer::RoundRobin,
            LoadBalancer::Random,
            LoadBalancer::LeastRequest,
        ] {
            for _ in 0..100 {
                let tried = [e[1].clone()];
                let avoid = Avoid { tried: &tried, now };
                let p = pick(&e, lb, &rr, None, avoid).unwrap();
                assert!(!Arc::ptr_eq(p, &e[1]));
                let tried = [e[0].clone(), e[1].clone(), e[2].clone()];
                let avoid = Avoid { tried: &tried, now };
                assert!(pick(&e, lb, &rr, None, avoid).is_some());
            }
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped() {
        let e = ups(3);
        let cfg = OutlierConfig::from_xds(&halyard_xds::OutlierDetection {
            consecutive_5xx: 1,
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let now = Instant::now();
        let all: Vec<_> = e.iter().map(|u| &u.health).collect();
        assert!(e[2]
            .health
            .record(&cfg, Outcome::Status(503), now, all.iter().copied()));
        let rr = AtomicUsize::new(0);
        for lb in [
            LoadBalancer::RoundRobin,
            LoadBalancer::Random,
            LoadBalancer::LeastRequest,
        ] {
            for _ in 0..100 {
                assert_ne!(port(pick(&e, lb, &rr, None, Avoid::none(now))), 1002);
            }
        }
        // All ejected: panic mode still picks one.
        assert!(e[0]
            .health
            .record(&cfg, Outcome::Status(503), now, all.iter().copied()));
        assert!(e[1]
            .health
            .record(&cfg, Outcome::Status(503), now, all.iter().copied()));
        assert!(pick(&e, LoadBalancer::RoundRobin, &rr, None, Avoid::none(now)).is_some());
    }

    #[test]
    fn hashing_is_sticky_and_skips_tried() {
        let e = ups(5);
        let ids: Vec<String> = e.iter().map(|u| u.authority.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ring = Ring::new(&ids, &[1; 5], 0);
        let rr = AtomicUsize::new(0);
        let now = Instant::now();
        let key = crate::upstream::hash::hash_key(b"user-42");
        let first = pick(
            &e,
            LoadBalancer::LeastRequest,
            &rr,
            Some((&ring, key)),
            Avoid::none(now),
        )
        .unwrap()
        .clone();
        for _ in 0..20 {
            let p = pick(
                &e,
                LoadBalancer::LeastRequest,
                &rr,
                Some((&ring, key)),
                Avoid::none(now),
            )
            .unwrap();
            assert!(Arc::ptr_eq(p, &first));
        }
        let tried = [first.clone()];
        let p = pick(
            &e,
            LoadBalancer::LeastRequest,
            &rr,
            Some((&ring, key)),
            Avoid { tried: &tried, now },
        )
        .unwrap();
        assert!(!Arc::ptr_eq(p, &first));
    }
}
