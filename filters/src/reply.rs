//! Answers the proxy gives itself instead of forwarding: status, response flags, a short
//! reason and optional headers, decided anywhere on the request path (a filter, a plan, the
//! executor) and rendered by the proxy in one place.

use std::borrow::Cow;

use http::{HeaderMap, StatusCode};

use crate::flags::Flags;

/// An answer given locally: status, response flags, a short reason and optional headers.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Status to send.
    pub status: StatusCode,
    /// Flags for the access log.
    pub flags: Flags,
    /// Body text (none when empty).
    pub reason: Cow<'static, str>,
    /// Headers to send with it (a challenge, a `Location`).
    pub headers: Option<Box<HeaderMap>>,
    /// How it is rendered for the caller.
    pub form: Form,
}

/// How a local reply is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// gRPC's trailers-only form for a gRPC request (status from the HTTP status), plain
    /// text otherwise.
    Auto,
    /// Always the HTTP status with the reason as text, even to gRPC callers (redirects).
    Plain,
    /// Always gRPC's form with this `grpc-status` (an injected gRPC abort).
    Grpc(u32),
}

impl LocalReply {
    /// No service for the destination.
    pub const NO_ROUTE: LocalReply = LocalReply::new(
        StatusCode::BAD_GATEWAY,
        Flags::NR,
        "no route to destination (NR)",
    );
    /// The service has no endpoints.
    pub const NO_HEALTHY: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UH,
        "no healthy upstream (UH)",
    );
    /// Timeout before the response started.
    pub const TIMEOUT: LocalReply = LocalReply::new(
        StatusCode::GATEWAY_TIMEOUT,
        Flags::UT,
        "upstream request timeout (UT)",
    );
    /// The upstream closed or reset the exchange.
    pub const UPSTREAM_RESET: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UC,
        "upstream connect error or disconnect/reset before headers (UC)",
    );
    /// The request lacks what is needed to route it.
    pub const BAD_REQUEST: LocalReply = LocalReply::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: missing or invalid authority",
    );
    /// An authorization policy denied the request (Envoy's body, so clients and tests that
    /// look for it keep working).
    pub const FORBIDDEN: LocalReply =
        LocalReply::new(StatusCode::FORBIDDEN, Flags::RBAC, "RBAC: access denied");
    /// The path cannot be normalised safely for policy matching (bad percent-encoding, NUL).
    pub const BAD_PATH: LocalReply = LocalReply::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: invalid path",
    );
    /// A circuit breaker refused the request (connection-pool limits).
    pub const OVERFLOW: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Flags::UO,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow (UO)",
    );
    /// The request body broke HTTP's framing (a malformed chunk size, say).
    pub const BAD_BODY: LocalReply = LocalReply::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: malformed request body",
    );
    /// The client stopped sending its request body (it closed or reset the stream).
    pub const DOWNSTREAM_GONE: LocalReply = LocalReply::new(
        StatusCode::BAD_REQUEST,
        Flags::DC,
        "downstream closed the request body (DC)",
    );
    /// Method not supported in this form.
    pub const NOT_ALLOWED: LocalReply = LocalReply::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Flags::DPE,
        "method not supported here",
    );

    /// A local response.
    pub const fn new(status: StatusCode, flags: Flags, reason: &'static str) -> Self {
        Self {
            status,
            flags,
            reason: Cow::Borrowed(reason),
            headers: None,
            form: Form::Auto,
        }
    }

    /// This reply with `name: value` added to its headers.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Default::default)
            .append(name, value);
        self
    }

    /// This reply rendered in `form`.
    pub fn in_form(mut self, form: Form) -> Self {
        self.form = form;
        self
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
}

/// The gRPC status for an HTTP status (gRPC's HTTP-to-gRPC mapping, which Envoy uses for its
/// local replies).
pub fn grpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}
