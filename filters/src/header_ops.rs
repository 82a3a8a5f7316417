//! Header operations of routes and their weighted destinations (VirtualService `headers`):
//! set replaces, add appends, remove deletes, on the request and on the response.

use halyard_xds as xds;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{response, HeaderMap};

use crate::filter::{Ctx, Filter, Flow, Notes};

/// A header name or value that is not valid HTTP.
#[derive(Debug, thiserror::Error)]
#[error("header `{0}`: not a valid header name or value")]
pub struct HeaderError(pub String);

/// Changes to one header map.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HeaderError> {
    let n = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| HeaderError(name.to_string()))?;
    let v = HeaderValue::from_str(value).map_err(|_| HeaderError(name.to_string()))?;
    Ok((n, v))
}

impl HeaderOps {
    /// Compiles the changes (none when absent).
    pub fn compile(ops: Option<&xds::HeaderOps>) -> Result<Self, HeaderError> {
        let Some(ops) = ops else {
            return Ok(Self::default());
        };
        let mut out = Self::default();
        for (k, v) in &ops.set {
            out.set.push(header(k, v)?);
        }
        for (k, v) in &ops.add {
            out.add.push(header(k, v)?);
        }
        for k in &ops.remove {
            out.remove.push(header(k, "")?.0);
        }
        Ok(out)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes: remove, then set, then add (Envoy's order).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// The changes of one route or destination, both ways.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// To the request.
    pub request: HeaderOps,
    /// To the response.
    pub response: HeaderOps,
}

impl Headers {
    /// Compiles a route's or destination's `headers`.
    pub fn compile(
        request: Option<&xds::HeaderOps>,
        response: Option<&xds::HeaderOps>,
    ) -> Result<Self, HeaderError> {
        Ok(Self {
            request: HeaderOps::compile(request)?,
            response: HeaderOps::compile(response)?,
        })
    }
}

/// The header operations a forwarded request gets: its weighted destination's, then its
/// route's, both ways (Envoy's order: the more specific level first).
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteHeaders<'a> {
    /// The weighted destination's changes.
    pub dest: Option<&'a Headers>,
    /// The route's changes.
    pub route: Option<&'a Headers>,
}

impl Filter for RouteHeaders<'_> {
    async fn on_request(&self, req: &mut Parts, _cx: &mut Ctx<'_>) -> Flow {
        for h in [self.dest, self.route].into_iter().flatten() {
            h.request.apply(&mut req.headers);
        }
        Flow::Continue
    }

    fn on_response(&self, resp: &mut response::Parts, _notes: &mut Notes) {
        for h in [self.dest, self.route].into_iter().flatten() {
            h.response.apply(&mut resp.headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> xds::HeaderOps {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        xds::HeaderOps {
            set: pairs(set),
            add: pairs(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn applies_remove_set_add_dest_then_route() {
        let dest = Headers::compile(
            Some(&ops(&[("x-a", "dest")], &[], &[])),
            Some(&ops(&[], &[("x-r", "dest")], &[])),
        )
        .unwrap();
        let route = Headers::compile(
            Some(&ops(&[("x-a", "route")], &[("x-b", "1")], &["x-gone"])),
            Some(&ops(&[], &[("x-r", "route")], &[])),
        )
        .unwrap();
        let chain = RouteHeaders {
            dest: Some(&dest),
            route: Some(&route),
        };
        let mut req = http::Request::builder()
            .header("x-gone", "1")
            .header("x-b", "0")
            .body(())
            .unwrap();
        let (mut parts, ()) = std::mem::take(&mut req).into_parts();
        let (flow, mut notes, _) = crate::filter::run_on(&chain, &mut parts);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(parts.headers["x-a"], "route", "the route's set comes last");
        assert!(parts.headers.get("x-gone").is_none());
        let b: Vec<_> = parts.headers.get_all("x-b").iter().collect();
        assert_eq!(b, ["0", "1"]);

        let (mut resp, ()) = http::Response::new(()).into_parts();
        chain.on_response(&mut resp, &mut notes);
        let r: Vec<_> = resp.headers.get_all("x-r").iter().collect();
        assert_eq!(r, ["dest", "route"]);
    }

    #[test]
    fn refuses_invalid_headers() {
        let bad = ops(&[("bad name", "v")], &[], &[]);
        assert_eq!(
            HeaderOps::compile(Some(&bad)).unwrap_err().to_string(),
            "header `bad name`: not a valid header name or value"
        );
    }
}
