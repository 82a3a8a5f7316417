//! Local replies rendered as responses, in the caller's form (plain text, or gRPC's
//! trailers-only answer).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};

use super::body::ProxyBody;
use crate::ctx::{grpc_code, Form, LocalReply};

/// Renders a local reply as a response.
pub trait Render {
    /// The response in the caller's form: for a gRPC request the trailers-only gRPC answer
    /// Envoy gives (HTTP 200, `grpc-status` from the HTTP status, `grpc-message` the reason),
    /// unless the reply fixes its form; its headers are added either way.
    fn response_for(self, grpc: bool) -> Response<ProxyBody>;
}

impl Render for LocalReply {
    fn response_for(self, grpc: bool) -> Response<ProxyBody> {
        let mut resp = match self.form {
            Form::Grpc(code) => grpc_reply(code, &self.reason),
            Form::Auto if grpc => grpc_reply(grpc_code(self.status), &self.reason),
            Form::Auto | Form::Plain => plain(&self),
        };
        if let Some(extra) = self.headers {
            resp.headers_mut().extend(*extra);
        }
        resp
    }
}

/// The HTTP status with the reason as text (no body when there is no reason).
fn plain(reply: &LocalReply) -> Response<ProxyBody> {
    if reply.reason.is_empty() {
        let mut resp = Response::new(ProxyBody::Empty);
        *resp.status_mut() = reply.status;
        return resp;
    }
    let mut text = String::with_capacity(reply.reason.len() + 1);
    text.push_str(&reply.reason);
    text.push('\n');
    let mut resp = Response::new(ProxyBody::full(Bytes::from(text)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
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
    put_grpc_status(h, code, message);
    r
}

/// The trailers that end a gRPC response already under way with `reply`'s status.
pub fn grpc_trailers(reply: &LocalReply) -> HeaderMap {
    let code = match reply.form {
        Form::Grpc(code) => code,
        Form::Auto | Form::Plain => grpc_code(reply.status),
    };
    let mut h = HeaderMap::with_capacity(2);
    put_grpc_status(&mut h, code, &reply.reason);
    h
}

fn put_grpc_status(h: &mut HeaderMap, code: u32, message: &str) {
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(message)) {
        h.insert("grpc-message", v);
    }
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
    use http::StatusCode;

    #[test]
    fn grpc_form_of_local_replies() {
        let r = LocalReply::NO_HEALTHY.response_for(true);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream (UH)");
        assert_eq!(
            LocalReply::FORBIDDEN.response_for(true).headers()["grpc-status"],
            "7"
        );
        assert_eq!(
            LocalReply::BAD_REQUEST.response_for(true).headers()["grpc-status"],
            "13"
        );
        assert_eq!(
            LocalReply::TIMEOUT.response_for(true).headers()["grpc-status"],
            "14"
        );
        let plain = LocalReply::NO_HEALTHY.response_for(false);
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(plain.headers().get("grpc-status").is_none());
    }

    #[test]
    fn grpc_trailers_carry_the_replys_status() {
        let t = grpc_trailers(&LocalReply::FORBIDDEN);
        assert_eq!(t["grpc-status"], "7");
        assert_eq!(t["grpc-message"], "RBAC: access denied");
        assert_eq!(t.len(), 2);
        let mut fixed = LocalReply::FORBIDDEN;
        fixed.form = Form::Grpc(16);
        assert_eq!(grpc_trailers(&fixed)["grpc-status"], "16");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b"), "a b");
        assert_eq!(grpc_message("100% é\n"), "100%25 %C3%A9%0A");
    }
}
