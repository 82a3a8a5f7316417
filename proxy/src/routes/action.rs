//! What a matched route does: where it sends the request (weighted destinations), or the
//! redirect it answers with; the rewrite, header changes, retries, faults and mirrors on
//! the way.

use std::time::Duration;

use super::retry::RetryPolicy;

use halyard_filters::fault::share;
pub use halyard_filters::fault::{Abort, Fault};
pub use halyard_filters::header_ops::{HeaderError, Headers};
use halyard_xds as xds;
use http::header::HeaderValue;

/// Why an action could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A header name or value is not valid HTTP.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The rewritten authority is not a valid header value.
    #[error("rewrite authority: not a valid header value")]
    Authority,
    /// A destination names an unknown service or subset.
    #[error("unknown destination `{0}`")]
    Destination(String),
}

/// One weighted destination of a route.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Index of the cluster (service, or service subset) in the snapshot.
    pub cluster: usize,
    /// Service port, when the route names one.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
    /// Header changes for this destination.
    pub headers: Headers,
}

impl Destination {
    /// Compiles one destination; `cluster_of(service, subset)` finds the cluster.
    pub fn compile(
        d: &xds::RouteDestination,
        cluster_of: &impl Fn(&str, &str) -> Option<usize>,
    ) -> Result<Self, ActionError> {
        let cluster = cluster_of(&d.service, &d.subset).ok_or_else(|| {
            ActionError::Destination(if d.subset.is_empty() {
                d.service.clone()
            } else {
                format!("{} subset {}", d.service, d.subset)
            })
        })?;
        Ok(Self {
            cluster,
            port: u16::try_from(d.port).ok().filter(|p| *p != 0),
            weight: d.weight,
            headers: Headers::compile(d.request_headers.as_ref(), d.response_headers.as_ref())?,
        })
    }
}

/// Weighted choice among destinations.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// The destinations.
    pub destinations: Vec<Destination>,
    /// Running sums of the weights, for a binary search (empty with one destination).
    cumulative: Vec<u64>,
}

impl Split {
    /// Builds a split; all-zero weights count as equal.
    pub fn new(destinations: Vec<Destination>) -> Self {
        let all_zero = destinations.iter().all(|d| d.weight == 0);
        let mut sum = 0u64;
        let cumulative = if destinations.len() > 1 {
            destinations
                .iter()
                .map(|d| {
                    sum += if all_zero { 1 } else { u64::from(d.weight) };
                    sum
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            destinations,
            cumulative,
        }
    }

    /// Picks a destination with probability proportional to its weight.
    pub fn pick(&self) -> Option<&Destination> {
        self.pick_at(fastrand::u64(..))
    }

    /// The destination that a uniformly random `roll` (any `u64`) falls on, by weight.
    pub fn pick_at(&self, roll: u64) -> Option<&Destination> {
        let total = match self.cumulative.last() {
            None => return self.destinations.first(),
            Some(&t) => t,
        };
        let r = roll % total;
        let i = self.cumulative.partition_point(|&c| c <= r);
        self.destinations.get(i)
    }
}

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// New path and query, if replaced.
    pub uri: Option<Box<str>>,
    /// New host, if replaced.
    pub authority: Option<Box<str>>,
    /// New port, if replaced.
    pub port: Option<u16>,
    /// New scheme, if replaced.
    pub scheme: Option<Box<str>>,
    /// Status code.
    pub code: http::StatusCode,
}

impl Redirect {
    fn compile(r: &xds::Redirect) -> Self {
        let s = |v: &str| (!v.is_empty()).then(|| Box::<str>::from(v));
        Self {
            uri: s(&r.uri),
            authority: s(&r.authority),
            port: u16::try_from(r.port).ok().filter(|p| *p != 0),
            scheme: s(&r.scheme),
            code: http::StatusCode::from_u16(if r.code == 0 { 301 } else { r.code as u16 })
                .unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
        }
    }

    /// The `Location` for a request: its scheme, host, port and path unless replaced.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        port: Option<u16>,
        path_and_query: &str,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.authority.as_deref().unwrap_or(host);
        let port = self
            .port
            .or(port)
            .filter(|p| !((scheme == "http" && *p == 80) || (scheme == "https" && *p == 443)));
        let pq = self.uri.as_deref().unwrap_or(path_and_query);
        match port {
            Some(p) => format!("{scheme}://{host}:{p}{pq}"),
            None => format!("{scheme}://{host}{pq}"),
        }
    }
}

/// What a route does with a matching request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to one of the destinations.
    Forward(Split),
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// Path and authority rewrite.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path without a prefix match).
    pub uri: Option<Box<str>>,
    /// Replaces the authority / Host.
    pub authority: Option<HeaderValue>,
}

impl Rewrite {
    /// The new path and query for `path` (`matched_prefix`: the prefix the route matched).
    pub fn path(
        &self,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> Option<String> {
        let new = self.uri.as_deref()?;
        let rest = match matched_prefix {
            Some(p) if path.len() >= p.len() => &path[p.len()..],
            _ => "",
        };
        let mut out =
            String::with_capacity(new.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str(new);
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// A mirror target and the share of requests copied to it.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests, 0..=1.
    pub share: f64,
}

/// Everything a route does besides matching.
#[derive(Debug, Clone)]
pub struct RouteAction {
    /// Forward or redirect.
    pub action: Action,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Path/authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// Header changes.
    pub headers: Headers,
    /// Injected failures.
    pub fault: Option<Fault>,
    /// Copies of the request.
    pub mirrors: Vec<Mirror>,
}

impl RouteAction {
    /// Forwards everything to one cluster with defaults (implicit per-service routes).
    pub fn to_cluster(cluster: usize) -> Self {
        Self {
            action: Action::Forward(Split::new(vec![Destination {
                cluster,
                port: None,
                weight: 1,
                headers: Headers::default(),
            }])),
            timeout: None,
            retry: RetryPolicy::default(),
            rewrite: None,
            headers: Headers::default(),
            fault: None,
            mirrors: Vec::new(),
        }
    }

    /// Compiles a route's action.
    pub fn compile(
        r: &xds::HttpRoute,
        cluster_of: &impl Fn(&str, &str) -> Option<usize>,
    ) -> Result<Self, ActionError> {
        let action = match &r.redirect {
            Some(redirect) => Action::Redirect(Redirect::compile(redirect)),
            None => {
                let mut dests = Vec::with_capacity(r.destinations.len().max(1));
                if r.destinations.is_empty() {
                    if let Some(d) = &r.route {
                        dests.push(Destination::compile(d, cluster_of)?);
                    }
                }
                for d in &r.destinations {
                    dests.push(Destination::compile(d, cluster_of)?);
                }
                if dests.is_empty() {
                    return Err(ActionError::Destination("(none)".into()));
                }
                Action::Forward(Split::new(dests))
            }
        };
        let rewrite = match &r.rewrite {
            Some(rw) if !rw.uri.is_empty() || !rw.authority.is_empty() => Some(Rewrite {
                uri: (!rw.uri.is_empty()).then(|| rw.uri.as_str().into()),
                authority: if rw.authority.is_empty() {
                    None
                } else {
                    Some(HeaderValue::from_str(&rw.authority).map_err(|_| ActionError::Authority)?)
                },
            }),
            _ => None,
        };
        let mut mirrors = Vec::with_capacity(r.mirrors.len());
        for m in &r.mirrors {
            if let Some(d) = &m.destination {
                mirrors.push(Mirror {
                    destination: Destination::compile(d, cluster_of)?,
                    share: share(m.percent),
                });
            }
        }
        Ok(Self {
            action,
            timeout: r
                .timeout
                .as_ref()
                .map(xds::to_std_duration)
                .filter(|d| !d.is_zero()),
            retry: RetryPolicy::compile(r.retries.as_ref()),
            rewrite,
            headers: Headers::compile(r.request_headers.as_ref(), r.response_headers.as_ref())?,
            fault: r.fault.as_ref().and_then(Fault::compile),
            mirrors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(cluster: usize, weight: u32) -> Destination {
        Destination {
            cluster,
            port: None,
            weight,
            headers: Headers::default(),
        }
    }

    #[test]
    fn split_follows_weights() {
        let s = Split::new(vec![dest(0, 90), dest(1, 10)]);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[s.pick().unwrap().cluster] += 1;
        }
        let share = f64::from(counts[1]) / 100_000.0;
        assert!((0.09..0.11).contains(&share), "{counts:?}");
        let s = Split::new(vec![dest(0, 0), dest(1, 100)]);
        assert!((0..1000).all(|_| s.pick().unwrap().cluster == 1));
        let s = Split::new(vec![dest(0, 0), dest(1, 0)]);
        let ones = (0..10_000)
            .filter(|_| s.pick().unwrap().cluster == 1)
            .count();
        assert!((4000..6000).contains(&ones), "{ones}");
    }

    #[test]
    fn redirect_and_rewrite() {
        let r = Redirect::compile(&xds::Redirect {
            uri: "/new".into(),
            scheme: "https".into(),
            ..Default::default()
        });
        assert_eq!(
            r.location("http", "a.local", Some(8080), "/old?x"),
            "https://a.local:8080/new"
        );
        assert_eq!(r.code, 301);
        let r = Redirect::compile(&xds::Redirect {
            authority: "b.local".into(),
            port: 443,
            scheme: "https".into(),
            code: 308,
            ..Default::default()
        });
        assert_eq!(
            r.location("http", "a.local", None, "/p?q=1"),
            "https://b.local/p?q=1"
        );
        let rw = Rewrite {
            uri: Some("/v2/".into()),
            authority: None,
        };
        assert_eq!(
            rw.path("/api/x/y", Some("a=1"), Some("/api/")).unwrap(),
            "/v2/x/y?a=1"
        );
        assert_eq!(rw.path("/whole", None, None).unwrap(), "/v2/");
        let rw = Rewrite {
            uri: Some("".into()),
            authority: None,
        };
        assert_eq!(rw.path("/api", None, Some("/api")).unwrap(), "/");
    }
}
