//! `security.istio.io` kinds: `PeerAuthentication`, `AuthorizationPolicy` and
//! `RequestAuthentication`, with Istio's field names and types (`security/v1beta1/*.proto`,
//! served as `v1` and `v1beta1`), and the checks that need only one document.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{Cx, FieldPath};
use super::networking::is_header_name;
use super::values::{check_cidr, check_labels, Duration, LabelSelector, PolicyTargetReference};

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

/// `PeerAuthentication`: whether workloads accept plaintext, mutual TLS, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Workloads it applies to; none means the namespace (or the mesh, in the root namespace).
    pub selector: Option<LabelSelector>,
    /// The mode for all ports.
    pub mtls: Option<MutualTls>,
    /// Per-port modes (needs a selector). Keys are port numbers.
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode (default `UNSET`: inherit).
    pub mode: Option<MtlsMode>,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (mesh default: PERMISSIVE).
    Unset,
    /// Plaintext only.
    Disable,
    /// Plaintext and mutual TLS.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl PeerAuthentication {
    /// Whether the policy applies to a whole namespace (or the mesh): no selector labels.
    pub fn is_namespace_wide(&self) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    }

    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if let Some(sel) = &self.selector {
            check_labels(cx, &spec.f("selector").f("matchLabels"), &sel.match_labels);
        }
        if !self.port_level_mtls.is_empty() && self.is_namespace_wide() {
            cx.error(
                &spec.f("portLevelMtls"),
                "portLevelMtls needs a selector (mesh- and namespace-wide policies cannot set port-level modes)",
            );
        }
        for port in self.port_level_mtls.keys() {
            let p = spec.f("portLevelMtls").k(port);
            match port.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => {}
                _ => cx.error(&p, format!("`{port}` is not a port number (1-65535)")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy

/// `AuthorizationPolicy`: who may call which workloads, with what.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Workloads it applies to; none means the namespace (or the mesh, in the root namespace).
    pub selector: Option<LabelSelector>,
    /// Attach to a Gateway/Service (unsupported).
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to Gateways/Services (unsupported).
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules; a request matching any rule matches the policy. No rules: matches nothing.
    pub rules: Vec<Rule>,
    /// What to do on a match (default `ALLOW`).
    pub action: Option<Action>,
    /// The external authorizer of `CUSTOM` (unsupported).
    pub provider: Option<ExtensionProvider>,
}

/// `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests (and, once any ALLOW policy applies, only those).
    Allow,
    /// Deny matching requests.
    Deny,
    /// Log matching requests.
    Audit,
    /// Ask an external authorizer (unsupported).
    Custom,
}

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// Name of a provider in the mesh config.
    pub name: String,
}

/// `Rule`: all of `from`, `to` and `when` must match (each list: any element).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Sources.
    pub from: Vec<RuleFrom>,
    /// Operations.
    pub to: Vec<RuleTo>,
    /// Further conditions.
    pub when: Vec<Condition>,
}

/// `Rule.From`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source (required).
    pub source: Option<Source>,
}

/// `Rule.To`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation (required).
    pub operation: Option<Operation>,
}

/// `Source`: who sends the request. Values may use a `*` prefix or suffix wildcard.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`<trust domain>/ns/<namespace>/sa/<service account>`), from mTLS.
    pub principals: Vec<String>,
    /// Negated `principals`.
    pub not_principals: Vec<String>,
    /// JWT principals (`<iss>/<sub>`).
    pub request_principals: Vec<String>,
    /// Negated `requestPrincipals`.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces, from mTLS.
    pub namespaces: Vec<String>,
    /// Negated `namespaces`.
    pub not_namespaces: Vec<String>,
    /// Peer service accounts (`<namespace>/<service account>` or a name in the policy's
    /// namespace), from mTLS.
    pub service_accounts: Vec<String>,
    /// Negated `serviceAccounts`.
    pub not_service_accounts: Vec<String>,
    /// Peer IPs or CIDRs.
    pub ip_blocks: Vec<String>,
    /// Negated `ipBlocks`.
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs or CIDRs (X-Forwarded-For / PROXY protocol).
    pub remote_ip_blocks: Vec<String>,
    /// Negated `remoteIpBlocks`.
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`: what the request does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Hosts (`Host` header).
    pub hosts: Vec<String>,
    /// Negated `hosts`.
    pub not_hosts: Vec<String>,
    /// Destination ports (as strings).
    pub ports: Vec<String>,
    /// Negated `ports`.
    pub not_ports: Vec<String>,
    /// HTTP methods.
    pub methods: Vec<String>,
    /// Negated `methods`.
    pub not_methods: Vec<String>,
    /// Paths, with `*` prefix/suffix wildcards or `{*}`/`{**}` templates.
    pub paths: Vec<String>,
    /// Negated `paths`.
    pub not_paths: Vec<String>,
}

/// `Condition`: a key from Istio's list of authorization conditions, with values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute (required), e.g. `request.auth.claims[groups]`.
    pub key: String,
    /// Values, any of which matches.
    pub values: Vec<String>,
    /// Values, none of which may match.
    pub not_values: Vec<String>,
}

/// The kind of value a condition key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Text,
    IpOrCidr,
    Port,
}

/// Istio's documented condition keys ("Authorization Policy Conditions"): the bracketed ones
/// need a name inside `[]`.
fn condition_kind(key: &str) -> Result<ValueKind, String> {
    const PLAIN: &[(&str, ValueKind)] = &[
        ("source.ip", ValueKind::IpOrCidr),
        ("remote.ip", ValueKind::IpOrCidr),
        ("source.namespace", ValueKind::Text),
        ("source.principal", ValueKind::Text),
        ("request.auth.principal", ValueKind::Text),
        ("request.auth.audiences", ValueKind::Text),
        ("request.auth.presenter", ValueKind::Text),
        ("destination.ip", ValueKind::IpOrCidr),
        ("destination.port", ValueKind::Port),
        ("connection.sni", ValueKind::Text),
    ];
    if let Some((_, kind)) = PLAIN.iter().find(|(k, _)| *k == key) {
        return Ok(*kind);
    }
    for prefix in ["request.headers", "request.auth.claims"] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let name = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
            return match name {
                Some(n) if !n.is_empty() => {
                    if prefix == "request.headers" && !is_header_name(n) {
                        Err(format!("`{key}`: invalid header name `{n}`"))
                    } else {
                        Ok(ValueKind::Text)
                    }
                }
                _ => Err(format!(
                    "`{key}`: write the name in brackets, e.g. `{prefix}[name]`"
                )),
            };
        }
    }
    if key.starts_with("experimental.envoy.filters.") {
        return Err(format!("unsupported: condition key `{key}`"));
    }
    Err(format!(
        "unknown condition key `{key}` (Istio's keys: request.headers[...], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], destination.ip, destination.port, connection.sni)"
    ))
}

/// Checks the wildcard rule shared by most string fields: `*` alone, or one `*` at the start
/// or at the end.
fn check_wildcard(cx: &mut Cx<'_>, path: &FieldPath, v: &str) -> bool {
    if v.is_empty() {
        cx.error(path, "value must not be empty");
        return false;
    }
    let stars = v.matches('*').count();
    let ok = stars == 0 || (stars == 1 && (v.starts_with('*') || v.ends_with('*')));
    if !ok {
        cx.error(
            path,
            format!("`{v}`: `*` is allowed only alone, as a prefix or as a suffix"),
        );
    }
    ok
}

/// Checks a peer principal: `*`, a prefix/suffix wildcard, or exactly
/// `<trust domain>/ns/<namespace>/sa/<service account>`.
fn check_principal(cx: &mut Cx<'_>, path: &FieldPath, v: &str) {
    if let Some(rest) = v.strip_prefix("spiffe://") {
        cx.error(
            path,
            format!("`{v}`: write principals without `spiffe://` (`{rest}`)"),
        );
        return;
    }
    if !check_wildcard(cx, path, v) || v.contains('*') {
        return;
    }
    let parts: Vec<&str> = v.split('/').collect();
    let ok = parts.len() == 5
        && parts[1] == "ns"
        && parts[3] == "sa"
        && parts.iter().all(|p| !p.is_empty());
    if !ok {
        cx.error(
            path,
            format!("malformed principal `{v}`: want <trust domain>/ns/<namespace>/sa/<service account>"),
        );
    }
}

/// Checks a port given as a string (1-65535).
fn check_port_str(cx: &mut Cx<'_>, path: &FieldPath, v: &str) {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => {}
        _ => cx.error(path, format!("`{v}` is not a port number (1-65535)")),
    }
}

/// Checks a path value: wildcards, or `{*}`/`{**}` templates, and a leading `/`.
fn check_path_value(cx: &mut Cx<'_>, path: &FieldPath, v: &str) {
    if v.contains('{') {
        let ok = v.starts_with('/')
            && v.split('/')
                .skip(1)
                .all(|seg| !seg.contains(['{', '}', '*']) || seg == "{*}" || seg == "{**}");
        if !ok {
            cx.error(
                path,
                format!("`{v}`: path templates take whole segments `{{*}}` or `{{**}}`"),
            );
        }
        return;
    }
    if check_wildcard(cx, path, v) && v != "*" && !v.starts_with('/') && !v.starts_with('*') {
        cx.error(path, format!("path `{v}` must start with `/`"));
    }
}

impl AuthorizationPolicy {
    /// The action, `ALLOW` when not given.
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }

    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if let Some(sel) = &self.selector {
            check_labels(cx, &spec.f("selector").f("matchLabels"), &sel.match_labels);
        }
        if self.target_ref.is_some() {
            cx.unsupported(&spec.f("targetRef"), "targetRef (use selector)");
        }
        if !self.target_refs.is_empty() {
            cx.unsupported(&spec.f("targetRefs"), "targetRefs (use selector)");
        }
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            cx.error(
                &spec.f("selector"),
                "only one of selector or targetRef(s) may be set",
            );
        }
        match self.action() {
            Action::Custom => {
                cx.unsupported(&spec.f("action"), "action CUSTOM (external authorization)");
                if self.provider.is_none() {
                    cx.required(&spec.f("provider"));
                }
            }
            _ if self.provider.is_some() => {
                cx.error(
                    &spec.f("provider"),
                    "provider applies only to action CUSTOM",
                );
            }
            _ => {}
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let rp = spec.f("rules").i(i);
            for (j, from) in rule.from.iter().enumerate() {
                let fp = rp.f("from").i(j);
                match &from.source {
                    None => cx.required(&fp.f("source")),
                    Some(s) => check_source(cx, &fp.f("source"), s),
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let tp = rp.f("to").i(j);
                match &to.operation {
                    None => cx.required(&tp.f("operation")),
                    Some(op) => check_operation(cx, &tp.f("operation"), op),
                }
            }
            for (j, cond) in rule.when.iter().enumerate() {
                check_condition(cx, &rp.f("when").i(j), cond);
            }
        }
    }
}

fn check_source(cx: &mut Cx<'_>, p: &FieldPath, s: &Source) {
    let lists: [(&str, &Vec<String>); 12] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        cx.error(p, "a source needs at least one field");
    }
    for (field, list) in lists {
        for (k, v) in list.iter().enumerate() {
            let vp = p.f(field).i(k);
            match field {
                "principals" | "notPrincipals" => check_principal(cx, &vp, v),
                "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                    check_cidr(cx, &vp, v)
                }
                "serviceAccounts" | "notServiceAccounts" => {
                    if v.is_empty() || v.contains('*') || v.split('/').count() > 2 {
                        cx.error(
                            &vp,
                            format!("`{v}`: want <namespace>/<service account> or a service account name, without wildcards"),
                        );
                    }
                }
                _ => {
                    check_wildcard(cx, &vp, v);
                }
            }
        }
    }
    let has_service_accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_principals = !s.principals.is_empty() || !s.not_principals.is_empty();
    if has_service_accounts && has_principals {
        cx.error(
            &p.f("serviceAccounts"),
            "serviceAccounts cannot be combined with principals",
        );
    }
}

fn check_operation(cx: &mut Cx<'_>, p: &FieldPath, op: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        cx.error(p, "an operation needs at least one field");
    }
    for (field, list) in lists {
        for (k, v) in list.iter().enumerate() {
            let vp = p.f(field).i(k);
            match field {
                "ports" | "notPorts" => check_port_str(cx, &vp, v),
                "paths" | "notPaths" => check_path_value(cx, &vp, v),
                _ => {
                    check_wildcard(cx, &vp, v);
                }
            }
        }
    }
}

fn check_condition(cx: &mut Cx<'_>, p: &FieldPath, cond: &Condition) {
    if cond.key.is_empty() {
        cx.required(&p.f("key"));
        return;
    }
    let kind = match condition_kind(&cond.key) {
        Ok(kind) => kind,
        Err(msg) => {
            cx.error(&p.f("key"), msg);
            return;
        }
    };
    if cond.values.is_empty() && cond.not_values.is_empty() {
        cx.error(p, "a condition needs values or notValues");
    }
    for (field, list) in [("values", &cond.values), ("notValues", &cond.not_values)] {
        for (k, v) in list.iter().enumerate() {
            let vp = p.f(field).i(k);
            match kind {
                ValueKind::IpOrCidr => check_cidr(cx, &vp, v),
                ValueKind::Port => check_port_str(cx, &vp, v),
                ValueKind::Text => {
                    if cond.key == "source.principal" {
                        check_principal(cx, &vp, v);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication

/// `RequestAuthentication`: which JWTs a workload accepts (a request with an invalid token is
/// refused; one without a token passes, unauthenticated, to authorization).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// Workloads it applies to.
    pub selector: Option<LabelSelector>,
    /// Attach to a Gateway/Service (unsupported).
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to Gateways/Services (unsupported).
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted issuers and how to verify their tokens.
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// The `iss` claim (required).
    pub issuer: String,
    /// Accepted `aud` values (any).
    pub audiences: Vec<String>,
    /// URL of the issuer's JWKS.
    pub jwks_uri: Option<String>,
    /// The JWKS inline (JSON).
    pub jwks: Option<String>,
    /// Headers that may carry the token.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters that may carry the token.
    pub from_params: Vec<String>,
    /// Header to receive the verified payload (base64url JSON).
    pub output_payload_to_header: Option<String>,
    /// Cookies that may carry the token.
    pub from_cookies: Vec<String>,
    /// Keep the token in the forwarded request.
    pub forward_original_token: Option<bool>,
    /// Claims to copy into request headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout of JWKS fetches.
    pub timeout: Option<Duration>,
}

/// `JWTHeader`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// Header name (required).
    pub name: String,
    /// Prefix before the token, e.g. `Bearer `.
    pub prefix: Option<String>,
}

/// `ClaimToHeader`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Header name (required).
    pub header: String,
    /// Claim name (required).
    pub claim: String,
}

impl RequestAuthentication {
    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if let Some(sel) = &self.selector {
            check_labels(cx, &spec.f("selector").f("matchLabels"), &sel.match_labels);
        }
        if self.target_ref.is_some() {
            cx.unsupported(&spec.f("targetRef"), "targetRef (use selector)");
        }
        if !self.target_refs.is_empty() {
            cx.unsupported(&spec.f("targetRefs"), "targetRefs (use selector)");
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            let p = spec.f("jwtRules").i(i);
            if rule.issuer.is_empty() {
                cx.error(&p.f("issuer"), "a JWT rule needs an issuer");
            } else if self.jwt_rules[..i].iter().any(|o| o.issuer == rule.issuer) {
                cx.error(
                    &p.f("issuer"),
                    format!("issuer `{}` has two rules", rule.issuer),
                );
            }
            if let Some(uri) = &rule.jwks_uri {
                let ok = ["https://", "http://"].iter().any(|s| {
                    uri.strip_prefix(s)
                        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
                });
                if !ok {
                    cx.error(&p.f("jwksUri"), format!("`{uri}` is not an http(s) URL"));
                }
            }
            if let Some(jwks) = &rule.jwks {
                match serde_json::from_str::<serde_json::Value>(jwks) {
                    Ok(v) if v.get("keys").is_some_and(|k| k.is_array()) => {}
                    Ok(_) => cx.error(&p.f("jwks"), "a JWKS is a JSON object with a `keys` list"),
                    Err(e) => cx.error(&p.f("jwks"), format!("jwks is not JSON: {e}")),
                }
                if rule.jwks_uri.is_some() {
                    cx.error(&p.f("jwks"), "only one of jwks or jwksUri may be set");
                }
            }
            for (j, h) in rule.from_headers.iter().enumerate() {
                let hp = p.f("fromHeaders").i(j);
                if h.name.is_empty() {
                    cx.required(&hp.f("name"));
                } else if !is_header_name(&h.name) {
                    cx.error(&hp.f("name"), format!("invalid header name `{}`", h.name));
                }
            }
            for (j, q) in rule.from_params.iter().enumerate() {
                if q.is_empty() {
                    cx.error(&p.f("fromParams").i(j), "value must not be empty");
                }
            }
            for (j, c) in rule.from_cookies.iter().enumerate() {
                if c.is_empty() {
                    cx.error(&p.f("fromCookies").i(j), "value must not be empty");
                }
            }
            if let Some(h) = &rule.output_payload_to_header {
                if !is_header_name(h) {
                    cx.error(
                        &p.f("outputPayloadToHeader"),
                        format!("invalid header name `{h}`"),
                    );
                }
            }
            for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
                let cp = p.f("outputClaimToHeaders").i(j);
                if c.header.is_empty() {
                    cx.required(&cp.f("header"));
                } else if !is_header_name(&c.header) {
                    cx.error(
                        &cp.f("header"),
                        format!("invalid header name `{}`", c.header),
                    );
                }
                if c.claim.is_empty() {
                    cx.required(&cp.f("claim"));
                }
            }
            if let Some(t) = &rule.timeout {
                t.check(cx, &p.f("timeout"), std::time::Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys() {
        assert_eq!(condition_kind("source.ip"), Ok(ValueKind::IpOrCidr));
        assert_eq!(condition_kind("destination.port"), Ok(ValueKind::Port));
        assert_eq!(
            condition_kind("request.auth.claims[groups]"),
            Ok(ValueKind::Text)
        );
        assert_eq!(
            condition_kind("request.auth.claims[nested.key]"),
            Ok(ValueKind::Text)
        );
        assert_eq!(
            condition_kind("request.headers[User-Agent]"),
            Ok(ValueKind::Text)
        );
        assert!(condition_kind("request.headers").is_err());
        assert!(condition_kind("request.auth.claims[]").is_err());
        assert!(condition_kind("request.header[x]").is_err());
        assert!(condition_kind("source.user").is_err());
        assert!(condition_kind("experimental.envoy.filters.a[b]")
            .is_err_and(|e| e.starts_with("unsupported: ")));
    }
}
