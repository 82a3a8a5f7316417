//! Storage of the four HTTP families: per label set, one shard per recording thread, which
//! only that thread writes (plain loads and stores, no atomic read-modify-write), summed into
//! the families when Prometheus scrapes.
//!
//! The request counter is the duration histogram's count: every request records one duration,
//! so the two can never disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::cache::LabelSets;
use super::{ENVOY_BUCKETS, HTTP_LABELS};

/// Buckets of one histogram: Envoy's bounds, then everything above the last.
const SLOTS: usize = ENVOY_BUCKETS.len() + 1;

/// Tells recording threads apart; ids are never reused.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's id. A `u64` has no destructor, so it stays readable while the thread's
    /// other thread-locals are torn down (a request can end then), unlike `thread::current`.
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter only the calling thread writes: readers on other threads see every
/// value whole, and no locked instruction is needed.
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// One histogram's share of one thread.
struct Hist {
    buckets: [AtomicU64; SLOTS],
    /// `f64` bits.
    sum: AtomicU64,
}

impl Hist {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, v: f64) {
        // Prometheus buckets are inclusive upper bounds.
        let i = ENVOY_BUCKETS
            .iter()
            .position(|&bound| v <= bound)
            .unwrap_or(ENVOY_BUCKETS.len());
        if let Some(cell) = self.buckets.get(i) {
            bump(cell, 1);
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// One label set's share of one thread.
pub(super) struct HttpShard {
    duration: Hist,
    request_bytes: Hist,
    response_bytes: Hist,
}

impl HttpShard {
    fn new() -> Self {
        Self {
            duration: Hist::new(),
            request_bytes: Hist::new(),
            response_bytes: Hist::new(),
        }
    }

    /// Records one request. Only the thread this shard was handed to may call it.
    pub(super) fn record(&self, millis: f64, request_bytes: u64, response_bytes: u64) {
        self.duration.observe(millis);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// A histogram summed over shards.
#[derive(Default)]
struct Totals {
    buckets: [u64; SLOTS],
    sum: f64,
}

impl Totals {
    fn add(&mut self, h: &Hist) {
        for (t, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *t = t.wrapping_add(b.load(Ordering::Relaxed));
        }
        self.sum += f64::from_bits(h.sum.load(Ordering::Relaxed));
    }

    fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    fn proto(&self) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        h.set_sample_count(self.count());
        h.set_sample_sum(self.sum);
        let mut cumulative = 0u64;
        let buckets = ENVOY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, &n)| {
                cumulative = cumulative.wrapping_add(n);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h
    }
}

/// One HTTP label set: its values and the shards of the threads that recorded it.
pub(super) struct HttpSet {
    /// Name/value pairs, sorted by name as the `prometheus` crate's own vectors expose them.
    labels: Vec<LabelPair>,
    shards: Mutex<Vec<(u64, Arc<HttpShard>)>>,
}

impl HttpSet {
    /// A label set with the values of [`HTTP_LABELS`], in order.
    pub(super) fn new(values: [String; HTTP_LABELS.len()]) -> Self {
        let mut labels: Vec<LabelPair> = HTTP_LABELS
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value);
                pair
            })
            .collect();
        labels.sort_unstable_by(|a, b| a.name().cmp(b.name()));
        Self {
            labels,
            shards: Mutex::new(Vec::new()),
        }
    }

    /// The calling thread's shard, made on its first request with these labels.
    pub(super) fn shard(&self) -> Arc<HttpShard> {
        // Never fails for a destructor-less value; 0 would only share a shard (still atomic
        // values, at worst a lost increment), never corrupt one.
        let me = THREAD.try_with(|t| *t).unwrap_or(0);
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, shard)) = shards.iter().find(|(id, _)| *id == me) {
            return shard.clone();
        }
        let shard = Arc::new(HttpShard::new());
        shards.push((me, shard.clone()));
        shard
    }

    /// Duration, request size and response size, summed over the shards.
    fn totals(&self) -> [Totals; 3] {
        let mut t: [Totals; 3] = Default::default();
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, s) in shards.iter() {
            t[0].add(&s.duration);
            t[1].add(&s.request_bytes);
            t[2].add(&s.response_bytes);
        }
        t
    }
}

/// Name and help of the four HTTP families, in the order [`HttpCollector`] reports them.
const FAMILIES: [(&str, &str); 4] = [
    (
        "istio_requests_total",
        "Requests handled by this proxy (Istio standard metric).",
    ),
    (
        "istio_request_duration_milliseconds",
        "Request duration in milliseconds (Istio standard metric).",
    ),
    (
        "istio_request_bytes",
        "Request size in bytes (Istio standard metric).",
    ),
    (
        "istio_response_bytes",
        "Response size in bytes (Istio standard metric).",
    ),
];

/// The four HTTP families as a Prometheus collector over the label sets.
pub(super) struct HttpCollector {
    descs: Vec<Desc>,
    sets: Arc<LabelSets<HttpSet>>,
}

impl HttpCollector {
    pub(super) fn new(sets: Arc<LabelSets<HttpSet>>) -> Result<Self, prometheus::Error> {
        let labels: Vec<String> = HTTP_LABELS.iter().map(|l| l.to_string()).collect();
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.clone(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { descs, sets })
    }
}

impl Collector for HttpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sets = self.sets.all();
        let mut metrics: [Vec<proto::Metric>; 4] =
            std::array::from_fn(|_| Vec::with_capacity(sets.len()));
        for set in &sets {
            let [duration, request_bytes, response_bytes] = set.totals();
            let metric = || proto::Metric::from_label(set.labels.clone());
            let mut requests = metric();
            let mut counter = proto::Counter::default();
            counter.set_value(duration.count() as f64);
            requests.set_counter(counter);
            metrics[0].push(requests);
            for (i, totals) in [(1, duration), (2, request_bytes), (3, response_bytes)] {
                let mut m = metric();
                m.set_histogram(totals.proto());
                if let Some(family) = metrics.get_mut(i) {
                    family.push(m);
                }
            }
        }
        FAMILIES
            .iter()
            .zip(metrics)
            .enumerate()
            .map(|(i, ((name, help), metrics))| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(if i == 0 {
                    MetricType::COUNTER
                } else {
                    MetricType::HISTOGRAM
                });
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}
