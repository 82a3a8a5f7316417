//! Outlier detection with Envoy/Istio semantics: consecutive 5xx / gateway-error detectors,
//! ejection for a growing time, the max-ejection-percent and min-health guards, and decay of
//! the ejection multiplier.
//!
//! All state is atomics in [`Health`], updated on every response; there is no background
//! timer: returning from ejection is a time comparison and the multiplier decays lazily in
//! [`Health::record`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Decay interval when the config leaves it unset (or zero).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Base ejection time when the config leaves it unset (or zero).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Max ejection percent when the config leaves it unset.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Longest ejection (Envoy's `max_ejection_time` default), unless the base time is longer.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Outlier-detection settings resolved from config (defaults filled: interval 10s, base
/// ejection 30s, max ejection percent 10, max ejection time 300s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 5xx (and local failures) in a row that eject; 0 turns this detector off.
    pub consecutive_5xx: u32,
    /// 502/503/504 (and local failures) in a row that eject; 0 turns this detector off.
    pub consecutive_gateway: u32,
    /// Each full interval without ejection lowers the ejection multiplier by one.
    pub interval: Duration,
    /// Ejection time for the first ejection; later ones last a multiple of it.
    pub base_ejection: Duration,
    /// Share of the cluster's endpoints that may be ejected at once (one always may), 0-100.
    pub max_ejection_percent: u32,
    /// Nothing is ejected while fewer than this percent of endpoints are healthy, 0-100.
    pub min_health_percent: u32,
}

impl Default for OutlierConfig {
    /// Both detectors off, other settings at their defaults.
    fn default() -> Self {
        Self::from_xds(&halyard_xds::OutlierDetection::default())
    }
}

impl OutlierConfig {
    /// Resolves the config message, filling defaults for unset or zero durations and clamping
    /// percentages to 100.
    pub fn from_xds(o: &halyard_xds::OutlierDetection) -> Self {
        // A zero interval would divide by zero in the decay and a zero base time would make
        // ejection a no-op; treat both as unset like the other "0 = default" fields.
        let nonzero = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
        Self {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: nonzero(
                halyard_xds::duration_or(o.interval.as_ref(), DEFAULT_INTERVAL),
                DEFAULT_INTERVAL,
            ),
            base_ejection: nonzero(
                halyard_xds::duration_or(o.base_ejection_time.as_ref(), DEFAULT_BASE_EJECTION),
                DEFAULT_BASE_EJECTION,
            ),
            max_ejection_percent: o
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
                .min(100),
            min_health_percent: o.min_health_percent.min(100),
        }
    }

    /// Whether any detector is on.
    pub fn enabled(&self) -> bool {
        self.consecutive_5xx > 0 || self.consecutive_gateway > 0
    }
}

/// What one request to an endpoint ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection or stream was reset before a response.
    Reset,
    /// No response within the timeout.
    Timeout,
}

impl Outcome {
    /// Counts for the consecutive-5xx detector: locally originated failures count as 5xx, as
    /// in Envoy with `split_external_local_origin_errors` off.
    fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => (500..=599).contains(&s),
            _ => true,
        }
    }

    /// Counts for the consecutive-gateway-error detector.
    fn is_gateway(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            _ => true,
        }
    }
}

/// Process-wide origin of the millisecond timestamps kept in atomics.
static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds from [`START`] to `t` (0 for instants before it).
fn millis(t: Instant) -> u64 {
    let start = *START.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Per-endpoint health, all atomics (shared by every cluster using the endpoint).
#[derive(Debug, Default)]
pub struct Health {
    /// Failures in a row counted by the 5xx detector.
    consecutive_5xx: AtomicU32,
    /// Failures in a row counted by the gateway-error detector.
    consecutive_gateway: AtomicU32,
    /// Ejected while `millis(now)` is below this; 0 = never ejected.
    ejected_until: AtomicU64,
    /// The ejection multiplier: ejections so far, less decay.
    ejections: AtomicU32,
    /// Decay has been applied for the time up to this millisecond.
    decayed_to: AtomicU64,
}

impl Health {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_at(millis(now))
    }

    fn ejected_at(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now_ms
    }

    /// Times this endpoint has been ejected (current multiplier), as of the last `record`.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an outcome; returns true when this call ejected the endpoint. `cluster` lists
    /// every endpoint health of the cluster, this one included (to enforce
    /// max_ejection_percent / min_health_percent).
    pub fn record<'h>(
        &self,
        cfg: &OutlierConfig,
        outcome: Outcome,
        now: Instant,
        cluster: impl IntoIterator<Item = &'h Health>,
    ) -> bool {
        if !cfg.enabled() {
            return false;
        }
        let now_ms = millis(now);
        self.decay(cfg, now_ms);
        if !outcome.is_5xx() {
            // Load before store: successes are the common case and a plain load keeps the
            // cache line shared between cores.
            for c in [&self.consecutive_5xx, &self.consecutive_gateway] {
                if c.load(Ordering::Relaxed) != 0 {
                    c.store(0, Ordering::Relaxed);
                }
            }
            return false;
        }
        // Like Envoy, failures of requests that were in flight when the endpoint got ejected
        // neither count nor extend the ejection.
        if self.ejected_at(now_ms) {
            return false;
        }
        let tripped_5xx = Self::count(&self.consecutive_5xx, cfg.consecutive_5xx);
        let tripped_gw = if outcome.is_gateway() {
            Self::count(&self.consecutive_gateway, cfg.consecutive_gateway)
        } else {
            // A 500 breaks a run of gateway errors (as in Envoy): they must be consecutive.
            if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            false
        };
        if !(tripped_5xx || tripped_gw) {
            return false;
        }
        let ejected = self.try_eject(cfg, now_ms, cluster);
        if ejected {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        ejected
    }

    /// Counts one failure for a detector with `threshold` (0 = off); true when this call
    /// reached the threshold. The counter is reset then, ejected or not, as Envoy does: a
    /// refused ejection (max percent) is retried after another `threshold` failures instead of
    /// scanning the cluster on every failure.
    fn count(counter: &AtomicU32, threshold: u32) -> bool {
        if threshold == 0 {
            return false;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        // `>=` rather than `==` so a threshold lowered by a config reload still trips; the
        // swap makes exactly one of several racing callers the one that trips.
        n >= threshold && counter.swap(0, Ordering::Relaxed) >= threshold
    }

    /// Lowers the multiplier by one per full interval since the last ejection ended (or since
    /// the last decay), unless ejected now.
    fn decay(&self, cfg: &OutlierConfig, now_ms: u64) {
        if self.ejections.load(Ordering::Relaxed) == 0 || self.ejected_at(now_ms) {
            return;
        }
        let interval = duration_millis(cfg.interval).max(1);
        let from = self.decayed_to.load(Ordering::Relaxed);
        let steps = now_ms.saturating_sub(from) / interval;
        if steps == 0 {
            return;
        }
        // Whoever moves `decayed_to` applies these steps; a racing caller that loses the
        // exchange must not apply them again.
        let to = from.saturating_add(steps.saturating_mul(interval));
        if self
            .decayed_to
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let steps = u32::try_from(steps).unwrap_or(u32::MAX);
            let _ = self
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                    Some(e.saturating_sub(steps))
                });
        }
    }

    /// Ejects this endpoint if the cluster's guards allow it; true when this call did.
    fn try_eject<'h>(
        &self,
        cfg: &OutlierConfig,
        now_ms: u64,
        cluster: impl IntoIterator<Item = &'h Health>,
    ) -> bool {
        // One pass over the cluster, and only when a detector tripped (rare).
        let (mut total, mut ejected) = (0usize, 0usize);
        for h in cluster {
            total += 1;
            if !std::ptr::eq(h, self) && h.ejected_at(now_ms) {
                ejected += 1;
            }
        }
        let total = total.max(1);
        // Envoy's rule, with the proto's promise that one endpoint may always be ejected
        // (otherwise the default 10 % would never eject anything in clusters under 10).
        let max_percent = cfg.max_ejection_percent as usize;
        if ejected > 0 && ejected * 100 / total >= max_percent {
            return false;
        }
        let healthy = total.saturating_sub(ejected);
        if healthy * 100 < cfg.min_health_percent as usize * total {
            return false;
        }

        let base = duration_millis(cfg.base_ejection).max(1);
        let cap = duration_millis(MAX_EJECTION).max(base);
        // The multiplier stops growing once the time hits the cap, so that decay brings a
        // flapping endpoint back to short ejections in a bounded number of intervals.
        let max_multiplier = u32::try_from(cap.div_ceil(base)).unwrap_or(u32::MAX);
        let multiplier = self
            .ejections
            .load(Ordering::Relaxed)
            .saturating_add(1)
            .min(max_multiplier);
        let until = now_ms
            .saturating_add(base.saturating_mul(u64::from(multiplier)).min(cap))
            // 0 means "never ejected", and the endpoint must be ejected right now.
            .max(now_ms.saturating_add(1));

        let current = self.ejected_until.load(Ordering::Acquire);
        if current > now_ms {
            return false;
        }
        // Only one of several racing callers wins the exchange, so an endpoint is ejected
        // once and the multiplier grows once.
        if self
            .ejected_until
            .compare_exchange(current, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.ejections.store(multiplier, Ordering::Relaxed);
        self.decayed_to.store(until, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cfg(c5xx: u32, cgw: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: c5xx,
            consecutive_gateway: cgw,
            ..OutlierConfig::default()
        }
    }

    /// A start instant no earlier than the process-wide origin, so offsets are exact.
    fn t0() -> Instant {
        millis(Instant::now());
        Instant::now()
    }

    fn secs(t: Instant, s: u64) -> Instant {
        t + Duration::from_secs(s)
    }

    fn cluster(n: usize) -> Vec<Health> {
        (0..n).map(|_| Health::default()).collect()
    }

    /// Records `n` outcomes; returns whether the last one ejected.
    fn fail(
        h: &Health,
        cfg: &OutlierConfig,
        o: Outcome,
        n: u32,
        now: Instant,
        c: &[Health],
    ) -> bool {
        (0..n).fold(false, |_, _| h.record(cfg, o, now, c))
    }

    #[test]
    fn from_xds_fills_defaults() {
        let c = OutlierConfig::from_xds(&halyard_xds::OutlierDetection {
            consecutive_5xx: 5,
            ..Default::default()
        });
        assert_eq!(c.consecutive_5xx, 5);
        assert_eq!(c.consecutive_gateway, 0);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.base_ejection, Duration::from_secs(30));
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(c.min_health_percent, 0);
        let mut o = halyard_xds::OutlierDetection {
            max_ejection_percent: Some(150),
            min_health_percent: 50,
            ..Default::default()
        };
        o.base_ejection_time
            .get_or_insert_with(Default::default)
            .seconds = 5;
        // An explicit zero interval falls back to the default.
        o.interval.get_or_insert_with(Default::default);
        let c = OutlierConfig::from_xds(&o);
        assert_eq!(c.base_ejection, Duration::from_secs(5));
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.max_ejection_percent, 100);
        assert_eq!(c.min_health_percent, 50);
        assert!(!OutlierConfig::default().enabled());
    }

    #[test]
    fn ejects_after_consecutive_5xx_and_returns_after_the_time() {
        let cfg = cfg(3, 0);
        let c = cluster(2);
        let h = &c[0];
        let t = t0();
        assert!(!h.record(&cfg, Outcome::Status(500), t, c.iter()));
        assert!(!h.record(&cfg, Outcome::ConnectFailure, t, c.iter()));
        assert!(!h.is_ejected(t));
        assert!(h.record(&cfg, Outcome::Status(503), t, c.iter()));
        assert!(h.is_ejected(t));
        assert_eq!(h.ejections(), 1);
        assert!(h.is_ejected(secs(t, 29)));
        assert!(!h.is_ejected(secs(t, 30)));
    }

    #[test]
    fn success_resets_the_counter() {
        let cfg = cfg(3, 3);
        let c = cluster(1);
        let h = &c[0];
        let t = t0();
        for _ in 0..5 {
            assert!(!fail(h, &cfg, Outcome::Status(502), 2, t, &c));
            assert!(!h.record(&cfg, Outcome::Status(200), t, c.iter()));
            // A 4xx is the endpoint working, too.
            assert!(!fail(h, &cfg, Outcome::Reset, 2, t, &c));
            assert!(!h.record(&cfg, Outcome::Status(404), t, c.iter()));
        }
        assert!(!h.is_ejected(t));
        assert!(fail(h, &cfg, Outcome::Timeout, 3, t, &c));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let cfg = cfg(1, 0);
        let c = cluster(1);
        let h = &c[0];
        let mut t = t0();
        for n in 1..=12u64 {
            assert!(
                h.record(&cfg, Outcome::Status(500), t, c.iter()),
                "ejection {n}"
            );
            let expected = (30 * n).min(300);
            assert!(h.is_ejected(secs(t, expected) - Duration::from_millis(1)));
            assert!(!h.is_ejected(secs(t, expected)));
            // Fail again right after it returns: no full interval passed, so no decay.
            t = secs(t, expected);
        }
        // The multiplier stopped at the cap instead of growing without bound.
        assert_eq!(h.ejections(), 10);
    }

    #[test]
    fn multiplier_decays_per_interval_without_ejection() {
        let cfg = cfg(1, 0);
        let c = cluster(1);
        let h = &c[0];
        let t = t0();
        assert!(h.record(&cfg, Outcome::Status(500), t, c.iter()));
        assert!(h.record(&cfg, Outcome::Status(500), secs(t, 30), c.iter()));
        assert_eq!(h.ejections(), 2);
        // Ejected until t+90; two full intervals later (t+110) the multiplier is down by 2.
        let later = secs(t, 90 + 19);
        assert!(!h.record(&cfg, Outcome::Status(200), later, c.iter()));
        assert_eq!(h.ejections(), 1);
        let later = secs(t, 90 + 20);
        assert!(!h.record(&cfg, Outcome::Status(200), later, c.iter()));
        assert_eq!(h.ejections(), 0);
        // Back to the base time.
        assert!(h.record(&cfg, Outcome::Status(500), later, c.iter()));
        assert!(!h.is_ejected(secs(later, 30)));
    }

    #[test]
    fn failures_while_ejected_do_not_count() {
        let cfg = cfg(2, 0);
        let c = cluster(1);
        let h = &c[0];
        let t = t0();
        assert!(fail(h, &cfg, Outcome::Status(500), 2, t, &c));
        assert!(!fail(h, &cfg, Outcome::Status(500), 5, secs(t, 1), &c));
        assert_eq!(h.ejections(), 1);
        assert!(!h.is_ejected(secs(t, 30)));
    }

    #[test]
    fn gateway_only_mode() {
        let cfg = cfg(0, 2);
        let c = cluster(1);
        let h = &c[0];
        let t = t0();
        // Plain 500s are not gateway errors and the 5xx detector is off.
        assert!(!fail(h, &cfg, Outcome::Status(500), 10, t, &c));
        // A success or a non-gateway 5xx breaks a run of gateway errors.
        assert!(!h.record(&cfg, Outcome::Status(502), t, c.iter()));
        assert!(!h.record(&cfg, Outcome::Status(200), t, c.iter()));
        assert!(!h.record(&cfg, Outcome::Status(504), t, c.iter()));
        assert!(!h.record(&cfg, Outcome::Status(500), t, c.iter()));
        assert!(!h.record(&cfg, Outcome::Status(503), t, c.iter()));
        assert!(h.record(&cfg, Outcome::ConnectFailure, t, c.iter()));
        assert!(h.is_ejected(t));
        assert_eq!(h.ejections(), 1);
    }

    #[test]
    fn disabled_detectors_never_eject() {
        let cfg = cfg(0, 0);
        let c = cluster(1);
        assert!(!fail(&c[0], &cfg, Outcome::ConnectFailure, 100, t0(), &c));
    }

    /// Fails every endpoint `threshold` times; returns how many got ejected.
    fn eject_all(n: usize, max_percent: u32) -> usize {
        let cfg = OutlierConfig {
            max_ejection_percent: max_percent,
            ..cfg(1, 0)
        };
        let c = cluster(n);
        let t = t0();
        c.iter()
            .filter(|h| h.record(&cfg, Outcome::Status(500), t, c.iter()))
            .count()
    }

    #[test]
    fn max_ejection_percent() {
        // With the default 10 % one endpoint may always be ejected, and only one.
        assert_eq!(eject_all(2, 10), 1);
        assert_eq!(eject_all(3, 10), 1);
        assert_eq!(eject_all(10, 10), 1);
        // 0 ejected < 20 %, 10 % < 20 %, 20 % is not.
        assert_eq!(eject_all(10, 20), 2);
        // 0 % < 50 %, then 33 % < 50 %, then 66 % is not.
        assert_eq!(eject_all(3, 50), 2);
        assert_eq!(eject_all(2, 50), 1);
        assert_eq!(eject_all(2, 100), 2);
        assert_eq!(eject_all(10, 100), 10);
    }

    #[test]
    fn refused_ejection_is_retried_after_another_run() {
        let cfg = cfg(2, 0);
        let c = cluster(2);
        let t = t0();
        assert!(fail(&c[0], &cfg, Outcome::Status(500), 2, t, &c));
        assert!(!fail(&c[1], &cfg, Outcome::Status(500), 2, t, &c));
        // Once the first returns, the second's next run of failures ejects it.
        let later = secs(t, 30);
        assert!(!c[1].record(&cfg, Outcome::Status(500), later, c.iter()));
        assert!(c[1].record(&cfg, Outcome::Status(500), later, c.iter()));
    }

    #[test]
    fn min_health_percent() {
        let cfg = OutlierConfig {
            max_ejection_percent: 100,
            min_health_percent: 60,
            ..cfg(1, 0)
        };
        let c = cluster(5);
        let t = t0();
        let ejected = c
            .iter()
            .filter(|h| h.record(&cfg, Outcome::Status(500), t, c.iter()))
            .count();
        // 100 %, 80 %, 60 % healthy allow one more ejection each; at 40 % nothing is ejected.
        assert_eq!(ejected, 3);
    }

    #[test]
    fn racing_failures_eject_once() {
        let cfg = Arc::new(cfg(5, 0));
        let c: Arc<Vec<Health>> = Arc::new(cluster(10));
        let t = t0();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cfg, c) = (cfg.clone(), c.clone());
                std::thread::spawn(move || {
                    let r = c.iter();
                    (0..1000)
                        .filter(|i| c[i % 10].record(&cfg, Outcome::Status(503), t, r.clone()))
                        .count()
                })
            })
            .collect();
        let ejections: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let ejected = c.iter().filter(|h| h.is_ejected(t)).count();
        assert_eq!(ejections, ejected, "an endpoint was ejected twice");
        // 10 % of 10 is one. The guard reads the other endpoints' state without a cluster
        // lock, so threads racing on different endpoints may each slip one through, but no
        // more than one per racing thread.
        assert!((1..=8).contains(&ejected), "{ejected} ejected");
        assert!(c.iter().all(|h| h.ejections() <= 1));
    }
}
