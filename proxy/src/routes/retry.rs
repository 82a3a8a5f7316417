//! Retry policies: which failures are retried, how many times, with what backoff.

use std::time::Duration;

use halyard_xds as xds;

/// Retry conditions as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    /// Any 5xx, and failures to get a response at all.
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// 502, 503, 504, and failures to get a response at all.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// Resets and disconnects before the response.
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// Failed connects.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    /// HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    /// The listed status codes.
    pub const STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// gRPC CANCELLED (1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    /// gRPC DEADLINE_EXCEEDED (4).
    pub const GRPC_DEADLINE: RetryOn = RetryOn(1 << 8);
    /// gRPC INTERNAL (13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    /// gRPC RESOURCE_EXHAUSTED (8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    /// gRPC UNAVAILABLE (14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    /// Whether any of `other` is set.
    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    fn set(&mut self, other: RetryOn) {
        self.0 |= other.0;
    }

    fn parse(name: &str) -> Option<RetryOn> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::STATUS_CODES,
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE,
            "internal" => Self::GRPC_INTERNAL,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            _ => return None,
        })
    }
}

/// A route's retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Limit per try up to the response headers.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Status codes for `retriable-status-codes`.
    pub statuses: Vec<u16>,
    /// First backoff (doubling, at most 10×, jittered).
    pub backoff: Duration,
}

/// Envoy's default base backoff.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

impl Default for RetryPolicy {
    /// Istio's default for routes without `retries`.
    fn default() -> Self {
        let mut on = RetryOn::CONNECT_FAILURE;
        for c in [
            RetryOn::REFUSED_STREAM,
            RetryOn::GRPC_UNAVAILABLE,
            RetryOn::GRPC_CANCELLED,
            RetryOn::STATUS_CODES,
        ] {
            on.set(c);
        }
        Self {
            attempts: 2,
            per_try_timeout: None,
            on,
            statuses: vec![503],
            backoff: DEFAULT_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub const fn none() -> Self {
        Self {
            attempts: 0,
            per_try_timeout: None,
            on: RetryOn(0),
            statuses: Vec::new(),
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Compiles a policy (Istio's default when absent). Unknown conditions were rejected by
    /// validation and are ignored here.
    pub fn compile(p: Option<&xds::RetryPolicy>) -> Self {
        let Some(p) = p else {
            return Self::default();
        };
        let mut on = RetryOn::default();
        let mut statuses = Vec::new();
        for c in &p.retry_on {
            let c = c.trim();
            if let Ok(code) = c.parse::<u16>() {
                statuses.push(code);
                on.set(RetryOn::STATUS_CODES);
            } else if let Some(bit) = RetryOn::parse(c) {
                on.set(bit);
            }
        }
        if p.retry_on.is_empty() {
            // Istio's default conditions when only attempts are given.
            let istio = Self::default();
            on = istio.on;
            statuses = istio.statuses;
        }
        Self {
            attempts: p.attempts,
            per_try_timeout: p
                .per_try_timeout
                .as_ref()
                .map(xds::to_std_duration)
                .filter(|d| !d.is_zero()),
            on,
            statuses,
            backoff: p
                .backoff
                .as_ref()
                .map(xds::to_std_duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_BACKOFF),
        }
    }

    /// Whether a response with this status (and gRPC status, if any) should be retried.
    pub fn retry_status(&self, status: u16, grpc: Option<u32>) -> bool {
        (self.on.any(RetryOn::FIVE_XX) && (500..600).contains(&status))
            || (self.on.any(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (self.on.any(RetryOn::RETRIABLE_4XX) && status == 409)
            || (self.on.any(RetryOn::STATUS_CODES) && self.statuses.contains(&status))
            || grpc.is_some_and(|g| {
                (g == 1 && self.on.any(RetryOn::GRPC_CANCELLED))
                    || (g == 4 && self.on.any(RetryOn::GRPC_DEADLINE))
                    || (g == 8 && self.on.any(RetryOn::GRPC_RESOURCE_EXHAUSTED))
                    || (g == 13 && self.on.any(RetryOn::GRPC_INTERNAL))
                    || (g == 14 && self.on.any(RetryOn::GRPC_UNAVAILABLE))
            })
    }

    /// Whether a failed connect should be retried.
    pub fn retry_connect_failure(&self) -> bool {
        self.on.any(RetryOn::CONNECT_FAILURE)
            || self.on.any(RetryOn::FIVE_XX)
            || self.on.any(RetryOn::GATEWAY_ERROR)
    }

    /// Whether a reset/disconnect before the response (or a refused stream) should be retried.
    pub fn retry_reset(&self, refused: bool) -> bool {
        self.on.any(RetryOn::RESET)
            || self.on.any(RetryOn::FIVE_XX)
            || (refused && self.on.any(RetryOn::REFUSED_STREAM))
    }

    /// Whether a try that timed out should be retried.
    pub fn retry_timeout(&self) -> bool {
        self.on.any(RetryOn::FIVE_XX)
            || self.on.any(RetryOn::GATEWAY_ERROR)
            || self.on.any(RetryOn::RESET)
    }

    /// The wait before retry number `n` (1-based): full jitter over an exponential window.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.backoff.as_millis().max(1) as u64;
        let window = base
            .saturating_mul(1 << n.saturating_sub(1).min(10))
            .min(base * 10);
        Duration::from_millis(fastrand::u64(base / 2..=window.max(base / 2 + 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions() {
        let d = RetryPolicy::default();
        assert_eq!(d.attempts, 2);
        assert!(d.retry_status(503, None) && !d.retry_status(500, None));
        assert!(d.retry_status(200, Some(14)) && !d.retry_status(200, Some(4)));
        assert!(d.retry_connect_failure() && !d.retry_timeout());
        let p = RetryPolicy::compile(Some(&xds::RetryPolicy {
            attempts: 3,
            retry_on: vec![
                "gateway-error".into(),
                " 418".into(),
                "deadline-exceeded".into(),
            ],
            ..Default::default()
        }));
        assert!(p.retry_status(502, None) && p.retry_status(418, None));
        assert!(!p.retry_status(500, None) && p.retry_status(200, Some(4)));
        assert!(p.retry_timeout() && p.retry_connect_failure() && !p.retry_reset(false));
        for n in 1..20 {
            let b = p.backoff(n);
            assert!(
                b >= Duration::from_millis(12) && b <= Duration::from_millis(250),
                "{b:?}"
            );
        }
    }
}
