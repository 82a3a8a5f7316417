//! Endpoint state a snapshot carries over to the next: each endpoint (with its pools, load and
//! outlier state) by key, and each cluster's circuit-breaker counters by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::upstream::breaker::Breaker;
use crate::upstream::{Upstream, UpstreamKey};

/// Every endpoint and circuit breaker of a snapshot.
#[derive(Debug, Default)]
pub(super) struct Pools {
    /// Every endpoint, outbound and inbound.
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    /// Circuit-breaker counters by cluster name.
    breakers: HashMap<Arc<str>, Arc<Breaker>>,
}

impl Pools {
    /// Drops expired idle connections of every endpoint.
    pub(super) fn sweep(&self) {
        for u in self.upstreams.values() {
            u.sweep();
        }
    }
}

/// The pools of a snapshot being built, taken from the previous snapshot where it had them.
pub(super) struct Reuse<'a> {
    previous: Option<&'a Pools>,
    next: Pools,
}

impl<'a> Reuse<'a> {
    /// Starts collecting, reusing what `previous` has.
    pub(super) fn new(previous: Option<&'a Pools>) -> Self {
        Self {
            previous,
            next: Pools::default(),
        }
    }

    /// The endpoint for `key`: this snapshot's if already used, else the previous one's,
    /// else a new one.
    pub(super) fn upstream(&mut self, key: UpstreamKey) -> Arc<Upstream> {
        if let Some(u) = self.next.upstreams.get(&key) {
            return u.clone();
        }
        let u = self
            .previous
            .and_then(|p| p.upstreams.get(&key).cloned())
            .unwrap_or_else(|| Arc::new(Upstream::new(key.clone())));
        self.next.upstreams.insert(key, u.clone());
        u
    }

    /// The circuit-breaker counters of cluster `name`: the previous snapshot's, else new.
    pub(super) fn breaker(&mut self, name: &Arc<str>) -> Arc<Breaker> {
        let breaker = self
            .previous
            .and_then(|p| p.breakers.get(name).cloned())
            .unwrap_or_default();
        self.next.breakers.insert(name.clone(), breaker.clone());
        breaker
    }

    /// The pools collected, for the snapshot being built.
    pub(super) fn finish(self) -> Pools {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::defaults;

    fn key(port: u16) -> UpstreamKey {
        UpstreamKey::plain(
            "127.0.0.1".into(),
            port,
            defaults::CONNECT_TIMEOUT,
            defaults::IDLE_TIMEOUT,
        )
    }

    #[test]
    fn upstreams_are_shared_within_and_carried_across_snapshots() {
        let mut first = Reuse::new(None);
        let a = first.upstream(key(1));
        assert!(Arc::ptr_eq(&a, &first.upstream(key(1))));
        assert!(!Arc::ptr_eq(&a, &first.upstream(key(2))));
        let pools = first.finish();
        let mut second = Reuse::new(Some(&pools));
        assert!(Arc::ptr_eq(&a, &second.upstream(key(1))));
        // Only what the new snapshot uses is kept for the one after it.
        let kept = second.finish();
        assert_eq!(kept.upstreams.len(), 1);
    }

    #[test]
    fn breakers_are_carried_across_snapshots_by_cluster_name() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut first = Reuse::new(None);
        let ba = first.breaker(&a);
        let pools = first.finish();
        let mut second = Reuse::new(Some(&pools));
        assert!(Arc::ptr_eq(&ba, &second.breaker(&a)));
        assert!(!Arc::ptr_eq(&ba, &second.breaker(&b)));
    }
}
