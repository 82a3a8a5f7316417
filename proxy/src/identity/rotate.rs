//! Certificate renewal: at about half the lifetime (with jitter so a fleet does not renew in
//! step), retrying with capped exponential backoff; the old certificate serves meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halyard_certs::WorkloadKey;
use tokio_util::sync::CancellationToken;

use super::{files, CaClient, Identity, IdentitySource};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delay from `received` (when the certificate arrived, Unix seconds) until its renewal:
/// 50 % ± 5 % of the remaining lifetime (`jitter` in `[0, 1)`), at least 100 ms. Measured
/// from arrival, not `not_before`, because CAs backdate `not_before` for clock skew.
pub fn refresh_delay(not_after: i64, received: f64, jitter: f64) -> Duration {
    let remaining = (not_after as f64 - received).max(0.0);
    let fraction = 0.45 + 0.10 * jitter.clamp(0.0, 1.0);
    Duration::from_secs_f64((remaining * fraction).max(0.1))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Fetches the first certificate and renews it until `shutdown` (from the CA), or installs
/// the certificate files again whenever they change (from files, checked every few seconds).
pub async fn run_rotation(
    identity: Arc<Identity>,
    expiry: prometheus::Gauge,
    renewals: prometheus::IntCounterVec,
    shutdown: CancellationToken,
) {
    if let IdentitySource::Files(f) = &identity.source {
        let (f, seen) = (f.clone(), identity.loaded.unwrap_or_default());
        return files::watch(identity, f, seen, files::POLL, expiry, renewals, shutdown).await;
    }
    let client = CaClient::new(identity.clone());
    let mut backoff = MIN_BACKOFF;
    loop {
        let wait = match renew(&identity, &client).await {
            Ok((_not_before, not_after)) => {
                expiry.set(not_after as f64);
                renewals.with_label_values(&["ok"]).inc();
                backoff = MIN_BACKOFF;
                refresh_delay(not_after, now_secs(), fastrand::f64())
            }
            Err(e) => {
                renewals.with_label_values(&["error"]).inc();
                let has_cert = identity.ready();
                tracing::warn!(error = %e, retry_in = ?backoff, has_cert, "certificate request failed");
                let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One renewal: a fresh key, a CSR, the CA's answer installed. Returns the new validity.
async fn renew(identity: &Identity, client: &CaClient) -> Result<(i64, i64), String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key.csr_pem(identity.id()).map_err(|e| e.to_string())?;
    let chain = client.create_certificate(csr).await?;
    if !identity.control_over_tls() {
        // Development mode: trust the root the CA reports (the last certificate).
        if let Some(root) = chain.last() {
            let bundle = halyard_certs::TrustBundle::from_pem(root).map_err(|e| e.to_string())?;
            identity.store.set_bundle(bundle);
        }
    }
    let leaf = identity
        .store
        .install(&key, &chain)
        .map_err(|e| e.to_string())?;
    Ok((leaf.info.not_before, leaf.info.not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_around_half_life() {
        assert_eq!(refresh_delay(2000, 1000.0, 0.5), Duration::from_secs(500));
        assert_eq!(refresh_delay(2000, 1000.0, 0.0), Duration::from_secs(450));
        assert_eq!(refresh_delay(2000, 1000.0, 0.999_999).as_secs(), 549);
        // Expired already: at once (100 ms), not never.
        assert_eq!(refresh_delay(2000, 2500.0, 0.5), Duration::from_millis(100));
    }
}
