//! Endpoint selection: power of two choices over in-flight load, round robin, random.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use halyard_xds::LoadBalancer;

use super::Upstream;

/// Picks an endpoint, avoiding `exclude` (an endpoint that just failed) when another exists.
pub fn pick<'a>(
    endpoints: &'a [Arc<Upstream>],
    lb: LoadBalancer,
    rr: &AtomicUsize,
    exclude: Option<&Arc<Upstream>>,
) -> Option<&'a Arc<Upstream>> {
    let n = endpoints.len();
    match n {
        0 => return None,
        1 => return endpoints.first(),
        _ => {}
    }
    let usable = |i: usize| exclude.is_none_or(|x| !Arc::ptr_eq(x, &endpoints[i]));
    let first = match lb {
        LoadBalancer::RoundRobin => rr.fetch_add(1, Ordering::Relaxed) % n,
        LoadBalancer::Random => fastrand::usize(..n),
        LoadBalancer::LeastRequest => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            match (usable(a), usable(b)) {
                (true, true) => {
                    if endpoints[b].load() < endpoints[a].load() {
                        b
                    } else {
                        a
                    }
                }
                (true, false) => a,
                (false, _) => b,
            }
        }
    };
    // Skip the excluded endpoint by moving to the next one.
    let i = if usable(first) {
        first
    } else {
        (first + 1) % n
    };
    endpoints.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn round_robin_cycles() {
        let e = ups(3);
        let rr = AtomicUsize::new(0);
        let picked: Vec<u16> = (0..6)
            .map(|_| {
                pick(&e, LoadBalancer::RoundRobin, &rr, None)
                    .unwrap()
                    .key()
                    .port
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
            assert_eq!(
                pick(&e, LoadBalancer::LeastRequest, &rr, None)
                    .unwrap()
                    .key()
                    .port,
                1001
            );
        }
    }

    #[test]
    fn exclusion_avoids_failed_endpoint() {
        let e = ups(3);
        let rr = AtomicUsize::new(0);
        for lb in [
            LoadBalancer::RoundRobin,
            LoadBalancer::Random,
            LoadBalancer::LeastRequest,
        ] {
            for _ in 0..100 {
                let p = pick(&e, lb, &rr, Some(&e[1])).unwrap();
                assert!(!Arc::ptr_eq(p, &e[1]));
            }
        }
    }
}
