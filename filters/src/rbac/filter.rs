//! Authorization as a filter: the workload's policies decide each request (403 when they
//! deny it) and each connection that carries no HTTP; every decision is counted.

use http::request::Parts;

use super::{Decision, Engine, Verdict};
use crate::attrs::{Connection, Request};
use crate::filter::{Ctx, Filter, Flow};
use crate::metrics::FilterMetrics;
use crate::reply::LocalReply;

impl Filter for Engine {
    async fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        if self.is_empty() {
            return Flow::Continue;
        }
        let path = req.uri.path();
        let host = crate::attrs::host_of(req);
        let attrs = Request {
            method: req.method.as_str(),
            path,
            host,
            headers: &req.headers,
            auth: cx.notes.auth.as_deref(),
        };
        let decision = self.evaluate_http(&cx.conn, &attrs);
        record(cx.metrics, &decision);
        if decision.allowed() {
            return Flow::Continue;
        }
        let policy = decision.policy_label();
        tracing::debug!(
            peer = %cx.conn.source_ip,
            policy,
            reason = decision.reason().as_str(),
            method = %req.method,
            path,
            "request denied by authorization policy"
        );
        if !policy.is_empty() {
            cx.notes.denied_by = Some(policy.into());
        }
        Flow::Respond(LocalReply::FORBIDDEN)
    }
}

impl Engine {
    /// Decides a connection that carries no HTTP (only L4 attributes), counting the decision.
    pub fn allows_connection(&self, conn: &Connection<'_>, metrics: &FilterMetrics) -> bool {
        if self.is_empty() {
            return true;
        }
        let decision = self.evaluate_tcp(conn);
        record(metrics, &decision);
        if !decision.allowed() {
            tracing::debug!(
                peer = %conn.source_ip,
                policy = decision.policy_label(),
                reason = decision.reason().as_str(),
                "connection denied by authorization policy"
            );
        }
        decision.allowed()
    }
}

impl Engine {
    /// Decides a request again (what it opened outlives the first decision), counting it.
    pub fn allows_request(
        &self,
        conn: &Connection<'_>,
        req: &Request<'_>,
        metrics: &FilterMetrics,
    ) -> bool {
        if self.is_empty() {
            return true;
        }
        let decision = self.evaluate_http(conn, req);
        record(metrics, &decision);
        decision.allowed()
    }
}

/// Counts a decision: the enforced verdict, the matching AUDIT policy, the shadow verdict.
fn record(metrics: &FilterMetrics, d: &Decision<'_>) {
    let count = |action: &str, policy: &str, result: &str| {
        let policy = if policy.is_empty() { "none" } else { policy };
        metrics
            .rbac_decisions
            .with_label_values(&[action, policy, result])
            .inc();
    };
    let v: &Verdict<'_> = &d.enforced;
    count(v.action_label(), v.policy_label(), v.result_label());
    if let Some(audit) = d.audit {
        count("AUDIT", audit, "audited");
    }
    if let Some(s) = &d.shadow {
        let result = if s.allowed() {
            "shadow_allowed"
        } else {
            "shadow_denied"
        };
        count(s.action_label(), s.policy_label(), result);
    }
}
