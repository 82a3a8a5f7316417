//! From the xDS `AuthorizationPolicy` to compiled rules: every pattern parsed, every CIDR,
//! port and condition key checked once. An error names the policy and the field, in Istio's
//! spelling (`rules[0].when[1].key`).

use halyard_xds::authorization_policy::Action;
use halyard_xds::{
    AuthorizationCondition, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource,
};
use http::HeaderName;
use ipnet::IpNet;

use super::matcher::{parse_cidr, PathMatch, RequestPrincipal, StrMatch};
use super::rule::{Cond, Field, HeaderTarget, Operation, Rule, Source};

/// A policy that cannot be compiled (the proxy refuses the configuration that carries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorization policy {policy:?}: {field}: {problem}")]
pub struct RbacError {
    /// The policy's name (`namespace/name`).
    pub policy: String,
    /// Where in the policy, e.g. `rules[0].from[1].ipBlocks[2]`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// A policy's compiled form, before indexing.
pub(crate) struct CompiledPolicy {
    pub(crate) name: Box<str>,
    pub(crate) action: Action,
    pub(crate) dry_run: bool,
    pub(crate) rules: Vec<Rule>,
}

/// Compiles one policy; `index` is its position in the engine.
pub(crate) fn policy(p: &AuthorizationPolicy, index: u32) -> Result<CompiledPolicy, RbacError> {
    let err = |field: String, problem: String| RbacError {
        policy: p.name.clone(),
        field,
        problem,
    };
    let action = Action::try_from(p.action)
        .map_err(|_| err("action".into(), format!("unknown action {}", p.action)))?;
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, index).map_err(|(f, e)| err(format!("rules[{i}].{f}"), e)))
        .collect::<Result<_, _>>()?;
    Ok(CompiledPolicy {
        name: p.name.as_str().into(),
        action,
        dry_run: p.dry_run,
        rules,
    })
}

/// A field path and a problem, before the policy name is added.
type FieldError = (String, String);

fn rule(r: &AuthorizationRule, policy: u32) -> Result<Rule, FieldError> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| source(s).map_err(|(f, e)| (format!("from[{i}].source.{f}"), e)))
        .collect::<Result<_, _>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, o)| operation(o).map_err(|(f, e)| (format!("to[{i}].operation.{f}"), e)))
            .collect::<Result<_, _>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| condition(c).map_err(|(f, e)| (format!("when[{i}].{f}"), e)))
        .collect::<Result<_, _>>()?;
    Ok(Rule {
        policy,
        from,
        to,
        when,
    })
}

/// Builds a [`Field`] from `values`/`not_values` with a fallible parser; `name` and `not_name`
/// are the fields' names for errors.
fn field<M>(
    (name, values): (&str, &[String]),
    (not_name, not_values): (&str, &[String]),
    parse: impl Fn(&str) -> Result<M, String>,
) -> Result<Field<M>, FieldError> {
    let list = |name: &str, vs: &[String]| -> Result<Box<[M]>, FieldError> {
        vs.iter()
            .enumerate()
            .map(|(i, v)| parse(v).map_err(|e| (format!("{name}[{i}]"), e)))
            .collect()
    };
    Ok(Field {
        values: list(name, values)?,
        not_values: list(not_name, not_values)?,
    })
}

fn ok<M>(f: impl Fn(&str) -> M) -> impl Fn(&str) -> Result<M, String> {
    move |v| Ok(f(v))
}

fn cidr(v: &str) -> Result<IpNet, String> {
    parse_cidr(v)
}

fn source(s: &AuthorizationSource) -> Result<Source, FieldError> {
    Ok(Source {
        principals: field(
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ok(StrMatch::parse),
        )?,
        request_principals: field(
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ok(RequestPrincipal::parse),
        )?,
        namespaces: field(
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ok(StrMatch::parse),
        )?,
        ip_blocks: field(
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            cidr,
        )?,
        remote_ip_blocks: field(
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            cidr,
        )?,
    })
}

fn port(p: u32) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("port {p} is out of range"))
}

fn ports(name: &str, not_name: &str, ps: &[u32], not_ps: &[u32]) -> Result<Field<u16>, FieldError> {
    let list = |name: &str, ps: &[u32]| -> Result<Box<[u16]>, FieldError> {
        ps.iter()
            .enumerate()
            .map(|(i, &p)| port(p).map_err(|e| (format!("{name}[{i}]"), e)))
            .collect()
    };
    Ok(Field {
        values: list(name, ps)?,
        not_values: list(not_name, not_ps)?,
    })
}

fn operation(o: &AuthorizationOperation) -> Result<Operation, FieldError> {
    Ok(Operation {
        hosts: field(
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ok(StrMatch::parse_lowercase),
        )?,
        ports: ports("ports", "notPorts", &o.ports, &o.not_ports)?,
        methods: field(
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ok(StrMatch::parse),
        )?,
        paths: field(
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
            PathMatch::parse,
        )?,
    })
}

/// `[a][b]` → `["a", "b"]`: Istio's bracketed names (each non-empty, no nested brackets).
fn bracketed(s: &str) -> Option<Vec<Box<str>>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.into());
        rest = after;
    }
    (!out.is_empty()).then_some(out)
}

fn header_target(name: &str) -> Result<HeaderTarget, String> {
    match name.to_ascii_lowercase().as_str() {
        ":authority" | "host" => Ok(HeaderTarget::Authority),
        ":method" => Ok(HeaderTarget::Method),
        ":path" => Ok(HeaderTarget::Path),
        n if n.starts_with(':') => Err(format!("pseudo-header {name:?} is not supported")),
        _ => HeaderName::from_bytes(name.as_bytes())
            .map(HeaderTarget::Named)
            .map_err(|_| format!("{name:?} is not a valid header name")),
    }
}

fn condition(c: &AuthorizationCondition) -> Result<Cond, FieldError> {
    let key = c.key.as_str();
    let values = ("values", c.values.as_slice());
    let not_values = ("notValues", c.not_values.as_slice());
    let strings = || field(values, not_values, ok(StrMatch::parse));
    let ips = || field(values, not_values, cidr);
    let key_err = |problem: String| ("key".to_string(), problem);
    Ok(match key {
        "source.ip" => Cond::SourceIp(ips()?),
        "remote.ip" => Cond::RemoteIp(ips()?),
        "destination.ip" => Cond::DestinationIp(ips()?),
        "source.namespace" => Cond::SourceNamespace(strings()?),
        "source.principal" => Cond::SourcePrincipal(strings()?),
        "request.auth.principal" => {
            Cond::RequestPrincipal(field(values, not_values, ok(RequestPrincipal::parse))?)
        }
        "request.auth.audiences" => Cond::Audiences(strings()?),
        "request.auth.presenter" => Cond::Presenter(strings()?),
        "connection.sni" => Cond::Sni(strings()?),
        "destination.port" => Cond::DestinationPort(field(values, not_values, |v| {
            v.parse::<u16>()
                .map_err(|_| format!("{v:?} is not a port (0-65535)"))
        })?),
        _ => {
            if let Some(rest) = key.strip_prefix("request.headers") {
                let name = bracketed(rest)
                    .filter(|n| n.len() == 1)
                    .ok_or_else(|| key_err(format!("{key:?}: expected request.headers[<name>]")))?;
                let target = header_target(&name[0]).map_err(key_err)?;
                Cond::Header(target, strings()?)
            } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                let path = bracketed(rest).ok_or_else(|| {
                    key_err(format!(
                        "{key:?}: expected request.auth.claims[<name>] or [<name>][<nested>]…"
                    ))
                })?;
                Cond::Claim(path.into(), strings()?)
            } else if key.starts_with("experimental.envoy.filters.") {
                return Err(key_err(format!(
                    "{key:?}: Envoy metadata keys are not supported"
                )));
            } else {
                return Err(key_err(format!("unknown condition key {key:?}")));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(key: &str, values: &[&str]) -> Result<Cond, FieldError> {
        condition(&AuthorizationCondition {
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            not_values: vec![],
        })
    }

    #[test]
    fn condition_keys() {
        for key in ["source.ip", "remote.ip", "destination.ip"] {
            assert!(cond(key, &["10.0.0.0/8", "::1"]).is_ok(), "{key}");
            assert!(cond(key, &["nope"]).is_err(), "{key}");
        }
        for key in [
            "source.namespace",
            "source.principal",
            "request.auth.principal",
            "request.auth.audiences",
            "request.auth.presenter",
            "connection.sni",
            "request.headers[User-Agent]",
            "request.headers[:authority]",
            "request.auth.claims[groups]",
            "request.auth.claims[a][b]",
        ] {
            assert!(cond(key, &["x"]).is_ok(), "{key}");
        }
        assert!(matches!(
            cond("request.headers[User-Agent]", &[]),
            Ok(Cond::Header(HeaderTarget::Named(n), _)) if n == "user-agent"
        ));
        assert!(cond("destination.port", &["8080"]).is_ok());
        for (key, vals) in [
            ("destination.port", &["65536"][..]),
            ("destination.port", &["http"][..]),
            ("request.headers", &[][..]),
            ("request.headers[]", &[][..]),
            ("request.headers[a][b]", &[][..]),
            ("request.headers[bad header]", &[][..]),
            ("request.headers[:scheme]", &[][..]),
            ("request.auth.claims", &[][..]),
            ("request.auth.claims[a]b", &[][..]),
            ("request.auth.claims[a", &[][..]),
            ("request.auth.claims[[a]]", &[][..]),
            ("experimental.envoy.filters.a.b[c]", &[][..]),
            ("source.user", &[][..]),
            ("", &[][..]),
        ] {
            assert!(cond(key, vals).is_err(), "{key} {vals:?}");
        }
    }

    #[test]
    fn errors_name_policy_and_field() {
        let p = AuthorizationPolicy {
            name: "foo/bad".into(),
            rules: vec![
                AuthorizationRule::default(),
                AuthorizationRule {
                    from: vec![AuthorizationSource {
                        not_ip_blocks: vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let e = policy(&p, 0).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "authorization policy \"foo/bad\": rules[1].from[0].source.notIpBlocks[1]: \
                 \"10.0.0.0/40\" is neither an IP address nor a CIDR"
            )
        );
        let p = AuthorizationPolicy {
            name: "foo/bad".into(),
            rules: vec![AuthorizationRule {
                to: vec![AuthorizationOperation {
                    ports: vec![70000],
                    ..Default::default()
                }],
                when: vec![AuthorizationCondition {
                    key: "request.foo".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = policy(&p, 0).err();
        assert_eq!(
            e.as_ref().map(|e| e.field.as_str()),
            Some("rules[0].to[0].operation.ports[0]")
        );
        let p = AuthorizationPolicy {
            name: "foo/bad".into(),
            action: 7,
            ..Default::default()
        };
        assert_eq!(
            policy(&p, 0).err().map(|e| e.field),
            Some("action".to_string())
        );
    }
}
