//! What an Istio HTTP route does to a request besides choosing its destination: redirect,
//! rewrite, header operations, retries and injected faults, with Istio's defaults.

use halyard_xds::{fault, HeaderOps, Redirect, RetryPolicy, Rewrite, RETRY_CONDITIONS};

use super::services::duration;
use crate::model::networking::{
    HeaderOperations, Headers, HttpFaultInjection, HttpRedirect, HttpRetry, HttpRewrite,
};

/// Istio's retry conditions when a route sets `retries` without `retryOn` (and the proxy's
/// when a route sets no `retries` at all).
pub(super) const ISTIO_DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "503",
];

/// The code of a gRPC status given by name (any case) or number.
pub(super) fn grpc_code(status: &str) -> Option<u32> {
    let status = status.trim();
    if let Ok(n) = status.parse::<u32>() {
        return (n <= 16).then_some(n);
    }
    crate::model::networking::GRPC_STATUS
        .iter()
        .position(|s| s.eq_ignore_ascii_case(status))
        .and_then(|i| u32::try_from(i).ok())
}

/// Istio header operations in the proxy's form (header names lowercased).
fn header_ops(ops: &HeaderOperations) -> HeaderOps {
    let lower = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    HeaderOps {
        set: lower(&ops.set),
        add: lower(&ops.add),
        remove: ops.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

/// `headers` of a route or destination: (request operations, response operations).
pub(super) fn headers(h: Option<&Headers>) -> (Option<HeaderOps>, Option<HeaderOps>) {
    let Some(h) = h else {
        return (None, None);
    };
    (
        h.request.as_ref().map(header_ops),
        h.response.as_ref().map(header_ops),
    )
}

/// An Istio redirect; the code is Istio's default 301 unless `redirectCode` says otherwise.
pub(super) fn redirect(r: &HttpRedirect) -> Redirect {
    Redirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        port: r.port.unwrap_or(0),
        scheme: r.scheme.clone().unwrap_or_default(),
        code: r.redirect_code.unwrap_or(301),
    }
}

/// An Istio rewrite (`uri`, `authority`); `uriRegexRewrite` has no proxy equivalent.
pub(super) fn rewrite(r: &HttpRewrite, note: &mut dyn FnMut(String)) -> Option<Rewrite> {
    if r.uri_regex_rewrite.is_some() {
        note("rewrite.uriRegexRewrite is not supported; the path is not rewritten".into());
    }
    if r.uri.is_none() && r.authority.is_none() {
        return None;
    }
    Some(Rewrite {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
    })
}

/// Istio's retry semantics: no `retries` leaves the proxy's default (Istio's); `attempts: 0`
/// disables retries; otherwise `retryOn` (comma-separated) or Istio's default conditions.
pub(super) fn retries(r: Option<&HttpRetry>, note: &mut dyn FnMut(String)) -> Option<RetryPolicy> {
    let r = r?;
    let attempts = u32::try_from(r.attempts.unwrap_or(0)).unwrap_or(0);
    if attempts == 0 {
        return Some(RetryPolicy::default());
    }
    let mut retry_on = Vec::new();
    match r
        .retry_on
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => retry_on.extend(ISTIO_DEFAULT_RETRY_ON.iter().map(ToString::to_string)),
        Some(on) => {
            for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let status = cond.parse::<u16>().is_ok_and(|s| (100..600).contains(&s));
                if status || RETRY_CONDITIONS.contains(&cond) {
                    retry_on.push(cond.to_string());
                } else {
                    note(format!("retry condition `{cond}` is not applied yet"));
                }
            }
            if retry_on.is_empty() {
                note("no retry condition the proxy applies is left; retries are disabled".into());
                return Some(RetryPolicy::default());
            }
        }
    }
    if r.retry_remote_localities.is_some() || r.retry_ignore_previous_hosts.is_some() {
        note(
            "retries.retryRemoteLocalities and retryIgnorePreviousHosts are not applied yet".into(),
        );
    }
    Some(RetryPolicy {
        attempts,
        per_try_timeout: duration(r.per_try_timeout.as_ref()),
        retry_on,
        backoff: duration(r.backoff.as_ref()),
    })
}

/// Istio fault injection. As in Istio, a delay or abort without a percentage applies to no
/// request; the deprecated integer `percent` of a delay counts when `percentage` is unset.
pub(super) fn fault(f: Option<&HttpFaultInjection>) -> Option<halyard_xds::Fault> {
    let f = f?;
    let delay = f.delay.as_ref().and_then(|d| {
        let percent = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(0.0);
        Some(fault::Delay {
            fixed_delay: Some(duration(d.fixed_delay.as_ref())?),
            percent: Some(percent),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => fault::abort::Error::HttpStatus(u32::try_from(s).ok()?),
            (None, Some(g)) => fault::abort::Error::GrpcStatus(grpc_code(g)?),
            (None, None) => return None,
        };
        Some(fault::Abort {
            error: Some(error),
            percent: Some(a.percentage.as_ref().map_or(0.0, |p| p.value)),
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(halyard_xds::Fault { delay, abort })
}
