//! JWT authentication as a filter: a request whose tokens verify goes on with its identity
//! noted for authorization; one whose token does not verify is answered 401 with a challenge.

use http::request::Parts;
use http::{header, StatusCode, Uri};

use super::{realm_url, Authenticator};
use crate::filter::{Ctx, Filter, Flow};
use crate::flags::Flags;
use crate::reply::LocalReply;

impl Filter for Authenticator {
    async fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        if self.is_empty() {
            return Flow::Continue;
        }
        let before = req.uri.clone();
        match self.authenticate(req).await {
            Ok(auth) => {
                if req.uri != before {
                    cx.notes.redacted_uri = Some(req.uri.clone());
                }
                let result = if auth.is_some() {
                    "verified"
                } else {
                    "no_token"
                };
                cx.metrics.jwt_authn.with_label_values(&[result]).inc();
                cx.notes.auth = auth.map(Box::new);
                Flow::Continue
            }
            Err(e) => {
                cx.metrics.jwt_authn.with_label_values(&["rejected"]).inc();
                // The URI may still hold the token; the reason never does.
                cx.notes.redacted_uri = Some(strip_query(&req.uri));
                let scheme = if cx.conn.principal.is_some() {
                    "https"
                } else {
                    "http"
                };
                tracing::debug!(peer = %cx.conn.source_ip, reason = %e, "JWT authentication failed");
                let challenge = e.www_authenticate(&realm_url(req, scheme));
                let mut reply = LocalReply::new(StatusCode::UNAUTHORIZED, Flags::default(), "")
                    .with_header(header::WWW_AUTHENTICATE, challenge);
                reply.reason = e.to_string().into();
                Flow::Respond(reply)
            }
        }
    }
}

/// The URI without its query (a refused token may sit there).
fn strip_query(uri: &Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    if let Some(pq) = &parts.path_and_query {
        parts.path_and_query = pq.path().parse().ok();
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}
