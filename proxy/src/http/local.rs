//! Responses the proxy makes itself when it cannot forward a request.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::http::body::ProxyBody;
use crate::telemetry::flags::Flags;

/// A failure answered locally: status, response flags and a short reason.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// Status to send.
    pub status: StatusCode,
    /// Flags for the access log.
    pub flags: Flags,
    /// Body text.
    pub reason: &'static str,
}

impl Local {
    /// No service for the destination.
    pub const NO_ROUTE: Local = Local::new(
        StatusCode::BAD_GATEWAY,
        Flags::NR,
        "no route to destination (NR)",
    );
    /// The service has no endpoints.
    pub const NO_HEALTHY: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UH,
        "no healthy upstream (UH)",
    );
    /// Timeout before the response started.
    pub const TIMEOUT: Local = Local::new(
        StatusCode::GATEWAY_TIMEOUT,
        Flags::UT,
        "upstream request timeout (UT)",
    );
    /// The upstream closed or reset the exchange.
    pub const UPSTREAM_RESET: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UC,
        "upstream connect error or disconnect/reset before headers (UC)",
    );
    /// The request lacks what is needed to route it.
    pub const BAD_REQUEST: Local = Local::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: missing or invalid authority",
    );
    /// An authorization policy denied the request (Envoy's body, so clients and tests that
    /// look for it keep working).
    pub const FORBIDDEN: Local =
        Local::new(StatusCode::FORBIDDEN, Flags::RBAC, "RBAC: access denied");
    /// The path cannot be normalised safely for policy matching (bad percent-encoding, NUL).
    pub const BAD_PATH: Local = Local::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: invalid path",
    );
    /// A circuit breaker refused the request (connection-pool limits).
    pub const OVERFLOW: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UO,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow (UO)",
    );
    /// Method not supported in this form.
    pub const NOT_ALLOWED: Local = Local::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Flags::DPE,
        "method not supported here",
    );

    /// A local response.
    pub const fn new(status: StatusCode, flags: Flags, reason: &'static str) -> Self {
        Self {
            status,
            flags,
            reason,
        }
    }

    /// Connect failed (`retried`: after retries).
    pub fn connect_failed(retried: bool) -> Self {
        let mut flags = Flags::UF;
        if retried {
            flags.set(Flags::URX);
        }
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            flags,
            "upstream connect error (UF)",
        )
    }

    /// Builds the HTTP response.
    pub fn response(&self) -> Response<ProxyBody> {
        let mut text = String::with_capacity(self.reason.len() + 1);
        text.push_str(self.reason);
        text.push('\n');
        let mut resp = Response::new(ProxyBody::full(Bytes::from(text)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}
