//! HTTP/2 connections to a mesh endpoint's sidecar that carry CONNECT tunnels. A tunnel holds
//! its stream for as long as it lives, so one connection would cap the open tunnels at the
//! peer's stream limit and queue the rest forever: each connection takes a bounded number,
//! and more tunnels open more connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::client::conn::http2;

use super::pool::{connect_h2, ConnectError};
use super::Upstream;
use crate::io::body::ProxyBody;
use crate::mtls::MeshTls;

/// Tunnels one connection carries at most: below the 1,024 concurrent streams a Halyard
/// sidecar accepts per connection.
pub const TUNNELS_PER_CONNECTION: usize = 1000;

/// One connection and the tunnels open on it.
struct Carrier {
    sender: http2::SendRequest<ProxyBody>,
    open: Arc<AtomicUsize>,
    /// The certificate this proxy presented when it was made.
    cert: Option<i64>,
}

/// A tunnel's place on its connection, given back when dropped.
pub struct TunnelSlot(Arc<AtomicUsize>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tunnel-carrying connections of one endpoint.
#[derive(Default)]
pub(super) struct Tunnels {
    carriers: Mutex<Vec<Carrier>>,
    /// Serialises connects so that a burst of tunnels fills one new connection at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Tunnels {
    fn lock(&self) -> MutexGuard<'_, Vec<Carrier>> {
        self.carriers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place on a live connection made with `cert` that has room, if there is one.
    /// Connections that closed, or were made with a replaced certificate, are let go: their
    /// open tunnels keep their streams, new ones go elsewhere.
    fn place(&self, cert: Option<i64>) -> Option<(http2::SendRequest<ProxyBody>, TunnelSlot)> {
        let mut carriers = self.lock();
        carriers.retain(|c| !c.sender.is_closed() && c.cert == cert);
        let c = carriers
            .iter()
            .find(|c| c.open.load(Ordering::Relaxed) < TUNNELS_PER_CONNECTION)?;
        c.open.fetch_add(1, Ordering::Relaxed);
        Some((c.sender.clone(), TunnelSlot(c.open.clone())))
    }

    /// A connection with room for one more tunnel: an open one, or a new one.
    pub(super) async fn checkout(
        &self,
        up: &Upstream,
        tls: Option<&MeshTls>,
    ) -> Result<(http2::SendRequest<ProxyBody>, TunnelSlot), ConnectError> {
        let cert = tls.filter(|_| up.mtls()).and_then(MeshTls::certificate);
        if let Some(p) = self.place(cert) {
            return Ok(p);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(p) = self.place(cert) {
            return Ok(p);
        }
        let sender = connect_h2(up, tls).await?;
        let open = Arc::new(AtomicUsize::new(1));
        self.lock().push(Carrier {
            sender: sender.clone(),
            open: open.clone(),
            cert,
        });
        Ok((sender, TunnelSlot(open)))
    }

    /// Lets go of closed connections, and of idle ones but the first.
    pub(super) fn sweep(&self) {
        let mut carriers = self.lock();
        carriers.retain(|c| !c.sender.is_closed());
        let mut kept_idle = false;
        carriers.retain(|c| {
            if c.open.load(Ordering::Relaxed) > 0 {
                return true;
            }
            !std::mem::replace(&mut kept_idle, true)
        });
    }
}
