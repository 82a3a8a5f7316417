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
    /// The request body broke HTTP's framing (a malformed chunk size, say).
    pub const BAD_BODY: Local = Local::new(
        StatusCode::BAD_REQUEST,
        Flags::DPE,
        "bad request: malformed request body",
    );
    /// The client stopped sending its request body (it closed or reset the stream).
    pub const DOWNSTREAM_GONE: Local = Local::new(
        StatusCode::BAD_REQUEST,
        Flags::DC,
        "downstream closed the request body (DC)",
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

    /// The response in the caller's form: for a gRPC request the trailers-only gRPC answer
    /// Envoy gives (HTTP 200, `grpc-status` from the HTTP status, `grpc-message` the reason).
    pub fn response_for(&self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            grpc_reply(grpc_code(self.status), self.reason)
        } else {
            self.response()
        }
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

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, the status and
/// the percent-encoded message in the headers, no body.
pub fn grpc_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Empty);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` as is.
fn grpc_message(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_form_of_local_replies() {
        let r = Local::NO_HEALTHY.response_for(true);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream (UH)");
        assert_eq!(
            Local::FORBIDDEN.response_for(true).headers()["grpc-status"],
            "7"
        );
        assert_eq!(
            Local::BAD_REQUEST.response_for(true).headers()["grpc-status"],
            "13"
        );
        assert_eq!(
            Local::TIMEOUT.response_for(true).headers()["grpc-status"],
            "14"
        );
        let plain = Local::NO_HEALTHY.response_for(false);
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(plain.headers().get("grpc-status").is_none());
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b"), "a b");
        assert_eq!(grpc_message("100% é\n"), "100%25 %C3%A9%0A");
    }
}
