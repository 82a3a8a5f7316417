//! A node's inbound policy: the AuthorizationPolicies and RequestAuthentications that select
//! its workload, in the proxies' form (selectors resolved, `serviceAccounts` turned into
//! principals, the dry-run annotation read).

use halyard_xds::{
    authorization_policy, AuthorizationCondition, AuthorizationOperation, AuthorizationPolicy,
    AuthorizationRule, AuthorizationSource, ClaimToHeader, JwtHeader, JwtRule,
    RequestAuthentication,
};

use crate::model::security::{self, Action};
use crate::model::values::LabelSelector;
use crate::model::{selects, Doc, Model, WorkloadEntry};

/// Istio's annotation that makes an AuthorizationPolicy report without enforcing.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Istio's default trust domain: principals written with it also name the mesh's own trust
/// domain, so policies copied from Istio's docs keep working under another trust domain.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Whether a policy in `policy_ns` with `selector` applies to a workload: a policy in the
/// root namespace applies mesh-wide, otherwise only in its own namespace; no selector (or an
/// empty one) means every workload of that scope.
fn applies(
    model: &Model,
    policy_ns: &str,
    selector: Option<&LabelSelector>,
    we: &Doc<WorkloadEntry>,
) -> bool {
    let in_scope = policy_ns == model.mesh.root_namespace() || policy_ns == we.meta.namespace;
    in_scope && selector.is_none_or(|s| selects(&s.match_labels, &we.spec.labels))
}

/// The authorization policies for a workload, in file order (their order does not change
/// decisions; it keeps translation deterministic).
pub(super) fn authorization(model: &Model, we: &Doc<WorkloadEntry>) -> Vec<AuthorizationPolicy> {
    let td = model.mesh.trust_domain();
    model
        .authorization_policies
        .iter()
        .filter(|p| p.spec.action() != Action::Custom)
        .filter(|p| applies(model, &p.meta.namespace, p.spec.selector.as_ref(), we))
        .map(|p| AuthorizationPolicy {
            name: format!("{}/{}", p.meta.namespace, p.meta.name),
            action: match p.spec.action() {
                Action::Deny => authorization_policy::Action::Deny,
                Action::Audit => authorization_policy::Action::Audit,
                Action::Allow | Action::Custom => authorization_policy::Action::Allow,
            } as i32,
            rules: p
                .spec
                .rules
                .iter()
                .map(|r| rule(r, td, &p.meta.namespace))
                .collect(),
            dry_run: p
                .meta
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
        .collect()
}

fn rule(r: &security::Rule, td: &str, policy_ns: &str) -> AuthorizationRule {
    AuthorizationRule {
        from: r
            .from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .map(|s| source(s, td, policy_ns))
            .collect(),
        to: r
            .to
            .iter()
            .filter_map(|t| t.operation.as_ref())
            .map(operation)
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| AuthorizationCondition {
                key: c.key.clone(),
                values: principal_values(&c.key, &c.values, td),
                not_values: principal_values(&c.key, &c.not_values, td),
            })
            .collect(),
    }
}

fn source(s: &security::Source, td: &str, policy_ns: &str) -> AuthorizationSource {
    let mut principals = principals_of(&s.principals, td);
    let mut not_principals = principals_of(&s.not_principals, td);
    principals.extend(service_accounts(&s.service_accounts, td, policy_ns));
    not_principals.extend(service_accounts(&s.not_service_accounts, td, policy_ns));
    AuthorizationSource {
        principals,
        not_principals,
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
    }
}

fn operation(o: &security::Operation) -> AuthorizationOperation {
    // Ports were checked to be numbers when the model loaded.
    let ports = |v: &[String]| v.iter().filter_map(|p| p.parse().ok()).collect();
    AuthorizationOperation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

/// Principals as written, plus the mesh's trust domain for those written with Istio's default.
fn principals_of(list: &[String], td: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        out.push(p.clone());
        if td != DEFAULT_TRUST_DOMAIN {
            if let Some(rest) = p.strip_prefix(DEFAULT_TRUST_DOMAIN) {
                if rest.starts_with('/') {
                    out.push(format!("{td}{rest}"));
                }
            }
        }
    }
    out
}

/// `source.principal` condition values get the same trust-domain treatment as principals.
fn principal_values(key: &str, values: &[String], td: &str) -> Vec<String> {
    if key == "source.principal" {
        principals_of(values, td)
    } else {
        values.to_vec()
    }
}

/// `serviceAccounts` (`<namespace>/<sa>`, or `<sa>` in the policy's namespace) as principals.
fn service_accounts(list: &[String], td: &str, policy_ns: &str) -> Vec<String> {
    list.iter()
        .map(|sa| match sa.split_once('/') {
            Some((ns, name)) => format!("{td}/ns/{ns}/sa/{name}"),
            None => format!("{td}/ns/{policy_ns}/sa/{sa}"),
        })
        .collect()
}

/// The JWT rules for a workload: every RequestAuthentication that selects it.
pub(super) fn authentication(model: &Model, we: &Doc<WorkloadEntry>) -> Vec<RequestAuthentication> {
    model
        .request_authentications
        .iter()
        .filter(|r| applies(model, &r.meta.namespace, r.spec.selector.as_ref(), we))
        .map(|r| RequestAuthentication {
            name: format!("{}/{}", r.meta.namespace, r.meta.name),
            jwt_rules: r.spec.jwt_rules.iter().map(jwt_rule).collect(),
        })
        .collect()
}

fn jwt_rule(j: &security::JwtRule) -> JwtRule {
    JwtRule {
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        jwks_uri: j.jwks_uri.clone().unwrap_or_default(),
        jwks: j.jwks.clone().unwrap_or_default(),
        from_headers: j
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: j.from_params.clone(),
        output_payload_to_header: j.output_payload_to_header.clone().unwrap_or_default(),
        from_cookies: j.from_cookies.clone(),
        forward_original_token: j.forward_original_token.unwrap_or(false),
        output_claim_to_headers: j
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
        timeout: super::services::duration(j.timeout.as_ref()),
    }
}
