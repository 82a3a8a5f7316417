//! Circuit breakers with Envoy/Istio `connectionPool` semantics: a cap on requests in flight,
//! a bounded queue of pending requests past it, and a cap (or budget) on retries in flight.
//! Past a limit the caller fails fast with 503 and response flag `UO`.
//!
//! The counters live in one [`Breaker`] per cluster that outlives config reloads, while the
//! limits come from the current config on each call, so a reload applies at once without
//! losing track of what is in flight.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Retries always allowed in flight by the default retry budget (Envoy's `min_retry_concurrency`).
pub const MIN_RETRY_CONCURRENCY: usize = 3;
/// Percent of outstanding (active + pending) requests that the default retry budget lets retry.
pub const RETRY_BUDGET_PERCENT: usize = 20;

/// Connection-pool limits resolved from config; 0 in config = unlimited (usize::MAX here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections to the service's endpoints at once (HTTP/1.1: requests in flight).
    pub max_connections: usize,
    /// Requests waiting for a slot at once.
    pub max_pending: usize,
    /// Requests in flight at once.
    pub max_requests: usize,
    /// Requests per upstream connection before it is closed.
    pub max_requests_per_connection: usize,
    /// Retries in flight at once; None = the retry budget (20 % of active, at least 3).
    pub max_retries: Option<usize>,
}

impl Default for Limits {
    /// Everything unlimited, retries under the default budget.
    fn default() -> Self {
        Self::from_xds(None)
    }
}

impl Limits {
    /// Resolves the config message (None when the service sets no connection pool).
    pub fn from_xds(c: Option<&halyard_xds::ConnectionPool>) -> Self {
        let c = c.copied().unwrap_or_default();
        let limit = |n: u32| match n {
            0 => usize::MAX,
            n => n as usize,
        };
        Self {
            max_connections: limit(c.max_connections),
            max_pending: limit(c.max_pending_requests),
            max_requests: limit(c.max_requests),
            max_requests_per_connection: limit(c.max_requests_per_connection),
            max_retries: match c.max_retries {
                0 => None,
                n => Some(n as usize),
            },
        }
    }

    /// The concurrency cap for a request: HTTP/1.1 services min(max_connections,
    /// max_requests), HTTP/2 services max_requests.
    pub fn concurrency(&self, http1: bool) -> usize {
        // An HTTP/1.1 connection carries one request at a time, so the connection limit
        // is a request limit too, even though sidecars multiplex over HTTP/2 between them.
        if http1 {
            self.max_connections.min(self.max_requests)
        } else {
            self.max_requests
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// The pending queue is full.
    #[error("too many pending requests")]
    Pending,
    /// The retry limit or budget is used up.
    #[error("too many retries in flight")]
    Retries,
}

/// Live counters of one cluster; survives config reloads (the caller keeps it in an Arc).
#[derive(Debug, Default)]
pub struct Breaker {
    active: AtomicUsize,
    pending: AtomicUsize,
    retries: AtomicUsize,
    /// Wakes pending requests when an active one finishes.
    released: Notify,
}

impl Breaker {
    /// Admits a request: immediately when fewer than `cap` are active; otherwise it waits as
    /// pending (woken when an active one finishes) unless `max_pending` requests already wait,
    /// in which case Err(Overflow::Pending) at once. The caller bounds the wait with its own
    /// timeout; dropping the future gives the pending slot back.
    pub async fn admit(
        self: &Arc<Self>,
        cap: usize,
        max_pending: usize,
    ) -> Result<Active, Overflow> {
        if cap == usize::MAX {
            // Unlimited: one atomic add (plus the Arc clone), no CAS loop.
            self.active.fetch_add(1, Ordering::SeqCst);
            return Ok(Active(self.clone()));
        }
        if self.try_acquire(cap) {
            return Ok(Active(self.clone()));
        }
        self.wait(cap, max_pending).await
    }

    async fn wait(self: &Arc<Self>, cap: usize, max_pending: usize) -> Result<Active, Overflow> {
        let reserved = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < max_pending).then_some(p + 1)
            });
        if reserved.is_err() {
            return Err(Overflow::Pending);
        }
        // Gives the pending slot back however this future ends: admitted, or dropped by the
        // caller's timeout or cancellation.
        let pending = PendingGuard(self);
        loop {
            let mut notified = pin!(self.released.notified());
            // Register as a waiter before checking, so that a release between the check and
            // the await still wakes this future (no lost wakeup).
            notified.as_mut().enable();
            if self.try_acquire(cap) {
                drop(pending);
                // If there is still room (the cap was raised by a reload, or several slots
                // freed at once), pass the wakeup on instead of leaving waiters asleep until
                // the next release.
                if self.pending.load(Ordering::SeqCst) > 0
                    && self.active.load(Ordering::SeqCst) < cap
                {
                    self.released.notify_one();
                }
                return Ok(Active(self.clone()));
            }
            notified.await;
        }
    }

    /// Takes one active slot if fewer than `cap` are taken; the CAS loop makes sure racing
    /// callers never push the count past the cap.
    fn try_acquire(&self, cap: usize) -> bool {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                (a < cap).then_some(a + 1)
            })
            .is_ok()
    }

    /// Takes a retry slot: allowed while retries in flight < max_retries, or, when unset,
    /// < max(3, 20 % of active + pending requests) (Envoy's retry budget); the slot is held
    /// until the guard drops.
    pub fn try_retry(self: &Arc<Self>, max_retries: Option<usize>) -> Result<RetrySlot, Overflow> {
        let limit = match max_retries {
            Some(usize::MAX) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                return Ok(RetrySlot(self.clone()));
            }
            Some(n) => n,
            None => {
                // Envoy's budget counts the requests waiting for a slot as outstanding too.
                let outstanding = self
                    .active
                    .load(Ordering::Relaxed)
                    .saturating_add(self.pending.load(Ordering::Relaxed));
                (outstanding.saturating_mul(RETRY_BUDGET_PERCENT) / 100).max(MIN_RETRY_CONCURRENCY)
            }
        };
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r < limit).then_some(r + 1)
            })
            .map(|_| RetrySlot(self.clone()))
            .map_err(|_| Overflow::Retries)
    }

    /// Requests active now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Retries in flight now.
    pub fn retries(&self) -> usize {
        self.retries.load(Ordering::Relaxed)
    }
}

/// Holds one pending slot while a request waits.
struct PendingGuard<'a>(&'a Breaker);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An admitted request; dropping it frees the slot and wakes one pending request.
#[derive(Debug)]
pub struct Active(Arc<Breaker>);

impl Drop for Active {
    fn drop(&mut self) {
        let b = &self.0;
        b.active.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides: either this load sees a waiter's pending increment, or that
        // waiter's re-check (after the increment) sees the freed slot. Skipping the notify
        // when nobody waits keeps unlimited and uncontended clusters at two atomic ops.
        if b.pending.load(Ordering::SeqCst) > 0 {
            b.released.notify_one();
        }
    }
}

/// A held retry slot.
#[derive(Debug)]
pub struct RetrySlot(Arc<Breaker>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const MAX: usize = usize::MAX;

    /// Lets spawned tasks run until they block.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[test]
    fn limits_from_xds() {
        let l = Limits::from_xds(None);
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_connections, MAX);
        assert_eq!(l.max_pending, MAX);
        assert_eq!(l.max_requests, MAX);
        assert_eq!(l.max_requests_per_connection, MAX);
        assert_eq!(l.max_retries, None);
        assert_eq!(l.concurrency(true), MAX);
        let l = Limits::from_xds(Some(&halyard_xds::ConnectionPool {
            max_connections: 10,
            max_pending_requests: 5,
            max_requests: 100,
            max_requests_per_connection: 0,
            max_retries: 2,
        }));
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.max_pending, 5);
        assert_eq!(l.max_requests_per_connection, MAX);
        assert_eq!(l.max_retries, Some(2));
        assert_eq!(l.concurrency(true), 10);
        assert_eq!(l.concurrency(false), 100);
        let l = Limits::from_xds(Some(&halyard_xds::ConnectionPool {
            max_requests: 7,
            ..Default::default()
        }));
        assert_eq!(l.concurrency(true), 7);
        assert_eq!(l.concurrency(false), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cap_is_respected_under_concurrency() {
        let b = Arc::new(Breaker::default());
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                tokio::spawn(async move {
                    let slot = b.admit(10, MAX).await.unwrap();
                    peak.fetch_max(b.active(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    assert!(b.active() <= 10);
                    drop(slot);
                })
            })
            .collect();
        for t in tasks {
            timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 10);
        assert_eq!(peak.load(Ordering::SeqCst), 10, "the cap was never reached");
        assert_eq!((b.active(), b.pending()), (0, 0));
    }

    #[tokio::test]
    async fn unlimited_admits_everything() {
        let b = Arc::new(Breaker::default());
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(b.admit(MAX, 0).await.unwrap());
        }
        assert_eq!(b.active(), 1000);
        drop(held);
        assert_eq!(b.active(), 0);
    }

    #[tokio::test]
    async fn pending_overflow_fails_fast_and_pending_are_served_in_turn() {
        let b = Arc::new(Breaker::default());
        let first = b.admit(1, 2).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (b, tx) = (b.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = b.admit(1, 2).await.unwrap();
                tx.send((i, slot)).unwrap();
            }));
            settle().await;
        }
        assert_eq!(b.pending(), 2);
        // The queue is full: refused at once, without waiting.
        let refused = timeout(Duration::from_millis(100), b.admit(1, 2)).await;
        assert_eq!(refused.unwrap().unwrap_err(), Overflow::Pending);
        assert_eq!(b.pending(), 2);

        drop(first);
        let (i, slot) = timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i, 0, "served in arrival order");
        settle().await;
        assert!(rx.try_recv().is_err(), "the second must wait for the first");
        assert_eq!((b.active(), b.pending()), (1, 1));
        drop(slot);
        let (i, slot) = timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i, 1);
        drop(slot);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!((b.active(), b.pending()), (0, 0));
    }

    #[tokio::test]
    async fn cancelled_waiter_frees_its_pending_slot() {
        let b = Arc::new(Breaker::default());
        let held = b.admit(1, 1).await.unwrap();
        // The caller's timeout drops the waiting future.
        let r = timeout(Duration::from_millis(20), b.admit(1, 1)).await;
        assert!(r.is_err());
        assert_eq!(b.pending(), 0);
        // So another request may wait again, and gets the slot when it frees.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.admit(1, 1).await.map(drop) });
        settle().await;
        assert_eq!(b.pending(), 1);
        drop(held);
        timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((b.active(), b.pending()), (0, 0));
    }

    #[tokio::test]
    async fn changing_caps_do_not_deadlock() {
        let b = Arc::new(Breaker::default());
        let a = b.admit(1, MAX).await.unwrap();
        // A waiter under the old cap of 1, then a reload raises the cap to 3.
        let b1 = b.clone();
        let old = tokio::spawn(async move { b1.admit(1, MAX).await.map(drop) });
        settle().await;
        let c = b.admit(3, MAX).await.unwrap();
        let b2 = b.clone();
        let new = tokio::spawn(async move { b2.admit(3, MAX).await.map(drop) });
        timeout(Duration::from_secs(5), new)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // And lowered again: the old waiter still gets in once the others finish.
        drop((a, c));
        timeout(Duration::from_secs(5), old)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((b.active(), b.pending()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_waiters_all_get_served() {
        // Stress for lost wakeups: cap 2, everyone else queues, each holds briefly.
        let b = Arc::new(Breaker::default());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    let slot = b.admit(2, MAX).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(slot);
                })
            })
            .collect();
        for t in tasks {
            timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        }
        assert_eq!((b.active(), b.pending()), (0, 0));
    }

    #[tokio::test]
    async fn retry_budget_min_3_and_20_percent() {
        let b = Arc::new(Breaker::default());
        // Nothing active: the floor of 3.
        let slots: Vec<_> = (0..3).map(|_| b.try_retry(None).unwrap()).collect();
        assert_eq!(b.try_retry(None).unwrap_err(), Overflow::Retries);
        assert_eq!(b.retries(), 3);
        drop(slots);
        assert_eq!(b.retries(), 0);
        // 50 active: 20 % is 10.
        let mut active = Vec::new();
        for _ in 0..50 {
            active.push(b.admit(MAX, MAX).await.unwrap());
        }
        let slots: Vec<_> = (0..10).map(|_| b.try_retry(None).unwrap()).collect();
        assert!(b.try_retry(None).is_err());
        // 19 active: 20 % is 3.8, so the floor of 3 still applies.
        active.truncate(19);
        drop(slots);
        let slots: Vec<_> = (0..3).map(|_| b.try_retry(None).unwrap()).collect();
        assert!(b.try_retry(None).is_err());
        drop(slots);
        // A freed slot can be taken again.
        active.truncate(0);
        let s = b.try_retry(None).unwrap();
        drop(s);
        assert_eq!(b.retries(), 0);
    }

    #[tokio::test]
    async fn explicit_max_retries() {
        let b = Arc::new(Breaker::default());
        let mut active = Vec::new();
        for _ in 0..100 {
            active.push(b.admit(MAX, MAX).await.unwrap());
        }
        // An explicit limit replaces the budget, even when lower than its floor.
        let one = b.try_retry(Some(1)).unwrap();
        assert_eq!(b.try_retry(Some(1)).unwrap_err(), Overflow::Retries);
        drop(one);
        let many: Vec<_> = (0..50).map(|_| b.try_retry(Some(50)).unwrap()).collect();
        assert!(b.try_retry(Some(50)).is_err());
        assert!(b.try_retry(Some(MAX)).is_ok());
        drop(many);
        assert_eq!(b.retries(), 0);
    }
}
