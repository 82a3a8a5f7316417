//! Inbound connections and streams that outlive the authorization decision that let them in
//! (opaque TCP, TLS passthrough, CONNECT tunnels, upgraded HTTP connections such as WebSocket;
//! gRPC calls in flight). Each is registered while open; whenever the snapshot changes every
//! one is decided again against the policy in force, and one whose peer certificate has
//! expired or that the policy now denies is closed. Nothing here runs per byte: a relay or a
//! response body only watches its token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use halyard_filters::attrs::OwnedRequest;
use halyard_filters::metrics::FilterMetrics;
use tokio_util::sync::CancellationToken;

use http::StatusCode;

use crate::ctx::{ConnInfo, Flags, LocalReply};
use crate::snapshot::Snapshot;

/// Why an open connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The authorization policy in force now denies it.
    Policy,
    /// The peer's certificate expired.
    CertificateExpired,
}

impl Revoked {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::CertificateExpired => "certificate_expired",
        }
    }

    /// The access log's response flag.
    pub fn flag(self) -> Flags {
        match self {
            Self::Policy => Flags::RBAC,
            Self::CertificateExpired => Flags::PCE,
        }
    }

    /// The answer a request in flight gets instead (gRPC: PERMISSION_DENIED).
    pub fn reply(self) -> LocalReply {
        match self {
            Self::Policy => LocalReply::FORBIDDEN,
            Self::CertificateExpired => LocalReply::new(
                StatusCode::FORBIDDEN,
                Flags::PCE,
                "peer certificate expired",
            ),
        }
    }
}

/// What is watched: a connection is closed, a stream (one request) is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection relayed as bytes.
    Connection,
    /// One request in flight on an HTTP connection.
    Stream,
}

/// One open connection as it is decided again.
pub struct Watched {
    kind: Kind,
    conn: Arc<ConnInfo>,
    port: u16,
    request: Option<OwnedRequest>,
    closed: CancellationToken,
    why: OnceLock<Revoked>,
    /// The generation of the snapshot it was last decided under.
    decided: AtomicU64,
}

impl Watched {
    /// Cancelled when the connection must close.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Why it was closed, once it was.
    pub fn why(&self) -> Option<Revoked> {
        self.why.get().copied()
    }

    fn revoke(&self, why: Revoked) -> bool {
        if self.why.set(why).is_err() {
            return false;
        }
        self.closed.cancel();
        true
    }

    /// Whether `snap`'s policy still allows it (counted as a decision).
    fn allowed(&self, snap: &Snapshot, metrics: &FilterMetrics) -> bool {
        let Some(chain) = &snap.inbound_chain else {
            return true;
        };
        let attrs = self.conn.attrs(self.port);
        match &self.request {
            Some(r) => chain.rbac.allows_request(&attrs, &r.view(), metrics),
            None => chain.rbac.allows_connection(&attrs, metrics),
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        let not_after = self.conn.peer_cert.as_ref().and_then(|p| p.not_after);
        not_after.is_some_and(|t| t <= now)
    }
}

/// How many of one kind a re-check closed, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// The policy now denies them.
    pub policy: usize,
    /// Their peer certificate expired.
    pub expired: usize,
}

impl Counts {
    /// The counts with their reasons.
    pub fn by_reason(self) -> [(Revoked, usize); 2] {
        [
            (Revoked::Policy, self.policy),
            (Revoked::CertificateExpired, self.expired),
        ]
    }

    fn add(&mut self, why: Revoked) {
        match why {
            Revoked::Policy => self.policy += 1,
            Revoked::CertificateExpired => self.expired += 1,
        }
    }
}

/// What one re-check closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Connections closed.
    pub connections: Counts,
    /// Streams ended.
    pub streams: Counts,
}

impl Closed {
    fn add(&mut self, kind: Kind, why: Revoked) {
        match kind {
            Kind::Connection => self.connections.add(why),
            Kind::Stream => self.streams.add(why),
        }
    }
}

/// The open inbound connections.
#[derive(Default)]
pub struct OpenConns {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Watched>>>,
}

/// A connection's place among the open ones, given up when dropped.
pub struct Registration {
    conns: Arc<OpenConns>,
    id: u64,
    watched: Arc<Watched>,
}

impl Registration {
    /// The connection as it is watched.
    pub fn watched(&self) -> &Watched {
        &self.watched
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl OpenConns {
    /// Watches `conn` (meant for workload port `port`, allowed under the snapshot of
    /// generation `decided`) until the registration is dropped; `request` is the request
    /// that opened it, when one did.
    pub fn register(
        self: &Arc<Self>,
        conn: Arc<ConnInfo>,
        port: u16,
        request: Option<OwnedRequest>,
        decided: u64,
    ) -> Registration {
        self.insert(Kind::Connection, conn, port, request, decided)
    }

    /// Watches one request in flight on `conn`, as [`Self::register`] does a connection.
    pub fn register_stream(
        self: &Arc<Self>,
        conn: Arc<ConnInfo>,
        port: u16,
        request: OwnedRequest,
        decided: u64,
    ) -> Registration {
        self.insert(Kind::Stream, conn, port, Some(request), decided)
    }

    fn insert(
        self: &Arc<Self>,
        kind: Kind,
        conn: Arc<ConnInfo>,
        port: u16,
        request: Option<OwnedRequest>,
        decided: u64,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let watched = Arc::new(Watched {
            kind,
            conn,
            port,
            request,
            closed: CancellationToken::new(),
            why: OnceLock::new(),
            decided: AtomicU64::new(decided),
        });
        self.lock().insert(id, watched.clone());
        Registration {
            conns: self.clone(),
            id,
            watched,
        }
    }

    /// How many connections are watched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A poisoned map is still a consistent map: entries are only inserted and removed.
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Watched>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connections, copied out so that deciding them holds no lock that opening or
    /// closing a connection waits for.
    fn all(&self) -> Vec<Arc<Watched>> {
        self.lock().values().cloned().collect()
    }

    /// Decides again, under `snap`, every open connection and stream decided under another
    /// snapshot, and closes those it denies and those whose peer certificate expired by `now`.
    pub fn recheck(&self, snap: &Snapshot, metrics: &FilterMetrics, now: SystemTime) -> Closed {
        let mut closed = Closed::default();
        for w in self.all() {
            if w.why().is_some() {
                continue;
            }
            if w.expired(now) {
                if w.revoke(Revoked::CertificateExpired) {
                    closed.add(w.kind, Revoked::CertificateExpired);
                }
                continue;
            }
            if w.decided.swap(snap.generation, Ordering::Relaxed) == snap.generation {
                continue;
            }
            if !w.allowed(snap, metrics) && w.revoke(Revoked::Policy) {
                closed.add(w.kind, Revoked::Policy);
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests;
