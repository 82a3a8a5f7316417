//! A compiled authorization rule and how it matches a connection or a request: `from`, `to`
//! and `when` must all hold; any source and any operation may match; inside a source or an
//! operation every field that is set must match (any of its values, none of its `not`
//! values).

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;

use super::matcher::{
    cidr_contains, claim_at, claim_matches, host_matches, strip_port, PathMatch, RequestPrincipal,
    StrMatch,
};
use crate::attrs::{Authenticated, Connection, Request};

/// One field of a source, operation or condition: `values` (any may match; none given means
/// "no constraint") and `not_values` (none may match). An absent attribute matches no value,
/// so it fails `values` and passes `not_values`.
#[derive(Debug, Clone)]
pub(crate) struct Field<M> {
    pub(crate) values: Box<[M]>,
    pub(crate) not_values: Box<[M]>,
}

impl<M> Default for Field<M> {
    fn default() -> Self {
        Field {
            values: Box::new([]),
            not_values: Box::new([]),
        }
    }
}

impl<M> Field<M> {
    /// Neither values nor not-values: the field is not set.
    pub(crate) fn is_unset(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Applies the field with `m` telling whether one pattern matches the attribute.
    #[inline]
    pub(crate) fn check(&self, mut m: impl FnMut(&M) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&mut m)) && !self.not_values.iter().any(m)
    }

    /// The exact values every match must take, when `values` are all exact.
    pub(crate) fn exact_values<'s, K>(
        &'s self,
        exact: impl Fn(&'s M) -> Option<K>,
    ) -> Option<Vec<K>> {
        if self.values.is_empty() {
            return None;
        }
        self.values.iter().map(exact).collect()
    }
}

/// Who sends the request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Source {
    pub(crate) principals: Field<StrMatch>,
    pub(crate) request_principals: Field<RequestPrincipal>,
    pub(crate) namespaces: Field<StrMatch>,
    pub(crate) ip_blocks: Field<IpNet>,
    pub(crate) remote_ip_blocks: Field<IpNet>,
}

/// What the request does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Operation {
    /// Lower-cased patterns.
    pub(crate) hosts: Field<StrMatch>,
    pub(crate) ports: Field<u16>,
    pub(crate) methods: Field<StrMatch>,
    pub(crate) paths: Field<PathMatch>,
}

/// Which header a `request.headers[...]` condition reads.
#[derive(Debug, Clone)]
pub(crate) enum HeaderTarget {
    /// A regular header.
    Named(HeaderName),
    /// `:authority` or `host`.
    Authority,
    /// `:method`.
    Method,
    /// `:path` (the normalised path, like every path matcher here).
    Path,
}

/// A `when` condition, by key.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Header(HeaderTarget, Field<StrMatch>),
    SourceIp(Field<IpNet>),
    RemoteIp(Field<IpNet>),
    SourceNamespace(Field<StrMatch>),
    SourcePrincipal(Field<StrMatch>),
    RequestPrincipal(Field<RequestPrincipal>),
    Audiences(Field<StrMatch>),
    Presenter(Field<StrMatch>),
    Claim(Box<[Box<str>]>, Field<StrMatch>),
    DestinationIp(Field<IpNet>),
    DestinationPort(Field<u16>),
    Sni(Field<StrMatch>),
}

impl Cond {
    /// Whether the condition can only be evaluated on an HTTP request.
    pub(crate) fn http_only(&self) -> bool {
        matches!(
            self,
            Cond::Header(..)
                | Cond::RequestPrincipal(_)
                | Cond::Audiences(_)
                | Cond::Presenter(_)
                | Cond::Claim(..)
        )
    }
}

/// A compiled rule of a policy.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Index of the policy in the engine.
    pub(crate) policy: u32,
    /// Any may match; empty matches every source.
    pub(crate) from: Box<[Source]>,
    /// Any may match; empty matches every operation.
    pub(crate) to: Box<[Operation]>,
    /// All must hold.
    pub(crate) when: Box<[Cond]>,
}

/// What a decision looks at, prepared once per connection or request.
pub(crate) struct Ctx<'c> {
    pub(crate) source_ip: IpAddr,
    pub(crate) remote_ip: IpAddr,
    pub(crate) destination_ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) principal: Option<&'c str>,
    pub(crate) namespace: Option<&'c str>,
    pub(crate) sni: Option<&'c str>,
    pub(crate) http: Option<HttpCtx<'c>>,
}

/// The HTTP part of [`Ctx`].
pub(crate) struct HttpCtx<'c> {
    pub(crate) method: &'c str,
    pub(crate) path: &'c str,
    pub(crate) host: &'c str,
    pub(crate) host_without_port: Option<&'c str>,
    pub(crate) headers: &'c http::HeaderMap,
    pub(crate) auth: Option<&'c Authenticated>,
    pub(crate) iss_sub: Option<(&'c str, &'c str)>,
}

impl<'c> Ctx<'c> {
    /// The context of an L4 decision.
    pub(crate) fn tcp(conn: &'c Connection<'c>) -> Self {
        Ctx {
            source_ip: conn.source_ip,
            remote_ip: conn.remote_ip,
            destination_ip: conn.destination_ip,
            port: conn.destination_port,
            principal: conn.principal,
            namespace: conn.namespace(),
            sni: conn.sni,
            http: None,
        }
    }

    /// The context of an HTTP decision.
    pub(crate) fn http(conn: &'c Connection<'c>, req: &'c Request<'c>) -> Self {
        let mut ctx = Self::tcp(conn);
        ctx.http = Some(HttpCtx {
            method: req.method,
            path: req.path,
            host: req.host,
            host_without_port: strip_port(req.host),
            headers: req.headers,
            auth: req.auth,
            iss_sub: req.auth.and_then(Authenticated::issuer_subject),
        });
        ctx
    }
}

fn opt_matches(m: &StrMatch, v: Option<&str>) -> bool {
    v.is_some_and(|v| m.matches(v))
}

impl Source {
    fn matches(&self, c: &Ctx<'_>) -> bool {
        self.principals.check(|m| opt_matches(m, c.principal))
            && self.namespaces.check(|m| opt_matches(m, c.namespace))
            && self.ip_blocks.check(|n| cidr_contains(n, c.source_ip))
            && self
                .remote_ip_blocks
                .check(|n| cidr_contains(n, c.remote_ip))
            && (self.request_principals.is_unset() || {
                let iss_sub = c.http.as_ref().and_then(|h| h.iss_sub);
                self.request_principals.check(|m| m.matches(iss_sub))
            })
    }

    /// Whether an HTTP-only field is set.
    pub(crate) fn http_only(&self) -> bool {
        !self.request_principals.is_unset()
    }
}

impl Operation {
    fn matches(&self, c: &Ctx<'_>) -> bool {
        if !self.ports.check(|&p| p == c.port) {
            return false;
        }
        if !self.http_only() {
            return true;
        }
        let Some(h) = &c.http else {
            // HTTP-only fields never match without a request (the L4 rules never carry
            // them; see compile.rs).
            return false;
        };
        self.methods
            .check(|m| m.matches_present(h.method.as_bytes()))
            && self.paths.check(|m| m.matches(h.path))
            && self
                .hosts
                .check(|m| host_matches(m, h.host, h.host_without_port))
    }

    /// Whether an HTTP-only field is set.
    pub(crate) fn http_only(&self) -> bool {
        !(self.hosts.is_unset() && self.methods.is_unset() && self.paths.is_unset())
    }
}

impl Cond {
    fn matches(&self, c: &Ctx<'_>) -> bool {
        match self {
            Cond::SourceIp(f) => f.check(|n| cidr_contains(n, c.source_ip)),
            Cond::RemoteIp(f) => f.check(|n| cidr_contains(n, c.remote_ip)),
            Cond::DestinationIp(f) => f.check(|n| cidr_contains(n, c.destination_ip)),
            Cond::DestinationPort(f) => f.check(|&p| p == c.port),
            Cond::SourceNamespace(f) => f.check(|m| opt_matches(m, c.namespace)),
            Cond::SourcePrincipal(f) => f.check(|m| opt_matches(m, c.principal)),
            Cond::Sni(f) => f.check(|m| opt_matches(m, c.sni)),
            _ => match &c.http {
                Some(h) => self.matches_http(h),
                None => false,
            },
        }
    }

    fn matches_http(&self, h: &HttpCtx<'_>) -> bool {
        match self {
            Cond::Header(target, f) => match target {
                HeaderTarget::Named(name) => {
                    // Any value of the header may match; an absent header matches no value.
                    f.check(|m| {
                        h.headers
                            .get_all(name)
                            .iter()
                            .any(|v| m.matches_present(v.as_bytes()))
                    })
                }
                HeaderTarget::Authority => f.check(|m| m.matches_present(h.host.as_bytes())),
                HeaderTarget::Method => f.check(|m| m.matches_present(h.method.as_bytes())),
                HeaderTarget::Path => f.check(|m| m.matches_present(h.path.as_bytes())),
            },
            Cond::RequestPrincipal(f) => f.check(|m| m.matches(h.iss_sub)),
            Cond::Audiences(f) => f.check(|m| {
                h.auth
                    .is_some_and(|a| a.audiences.iter().any(|aud| m.matches(aud)))
            }),
            Cond::Presenter(f) => {
                f.check(|m| opt_matches(m, h.auth.and_then(|a| a.presenter.as_deref())))
            }
            Cond::Claim(path, f) => {
                let v = h.auth.and_then(|a| claim_at(&a.claims, path));
                f.check(|m| v.is_some_and(|v| claim_matches(m, v)))
            }
            _ => false,
        }
    }
}

impl Rule {
    /// Whether the rule matches.
    pub(crate) fn matches(&self, c: &Ctx<'_>) -> bool {
        self.when.iter().all(|w| w.matches(c))
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(c)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(c)))
    }

    /// Whether any part of the rule needs an HTTP request.
    pub(crate) fn http_only(&self) -> bool {
        self.from.iter().any(Source::http_only)
            || self.to.iter().any(Operation::http_only)
            || self.when.iter().any(Cond::http_only)
    }

    /// The rule as Istio applies it to plain TCP when its policy is DENY or AUDIT: every
    /// HTTP-only field and condition removed, so the rest of the rule decides (wider, never
    /// narrower, than on HTTP).
    pub(crate) fn without_http_fields(&self) -> Rule {
        Rule {
            policy: self.policy,
            from: self
                .from
                .iter()
                .map(|s| Source {
                    request_principals: Field::default(),
                    ..s.clone()
                })
                .collect(),
            to: self
                .to
                .iter()
                .map(|o| Operation {
                    hosts: Field::default(),
                    methods: Field::default(),
                    paths: Field::default(),
                    ports: o.ports.clone(),
                })
                .collect(),
            when: self
                .when
                .iter()
                .filter(|w| !w.http_only())
                .cloned()
                .collect(),
        }
    }
}
