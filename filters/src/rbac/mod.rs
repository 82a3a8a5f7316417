//! Istio AuthorizationPolicy evaluation.
//!
//! [`Engine::compile`] turns the policies that select a workload into an indexed engine once
//! per configuration; [`Engine::evaluate_http`] and [`Engine::evaluate_tcp`] decide without
//! locks or allocation, returning a [`Decision`] that borrows policy names from the engine.
//!
//! Semantics are Istio's (istio.io "Authorization Policy" reference, "Authorization policy
//! conditions", the "Dry Run" and "TCP Traffic" tasks):
//!
//! - DENY policies first: any match denies. Then, if any ALLOW policy exists, the request must
//!   match one; with no ALLOW policy it is allowed. AUDIT policies never change the decision;
//!   the first matching one is reported.
//! - A policy with no rules matches nothing (an ALLOW policy with no rules is "allow-nothing");
//!   an empty rule matches everything (`rules: [{}]` in a DENY policy is "deny-all").
//! - In a rule, `from`, `to` and `when` must all hold; any source and any operation may match;
//!   inside a source or an operation every set field must match; a field matches when any of
//!   its values matches and none of its `not` values does. An absent attribute (no peer
//!   principal, no JWT, no such header) matches no value: `principals: ["*"]` needs a peer
//!   identity, `notPrincipals: ["*"]` matches only requests without one.
//! - Strings take `*`, `prefix*`, `*suffix`; `*` alone needs a non-empty value, except for
//!   headers, methods and hosts where it means "present". Hosts compare case-insensitively and
//!   also match the host with its port removed. Paths are matched after normalisation
//!   ([`crate::path`]) and may be Envoy URI templates (`{*}` one segment, `{**}` the rest).
//!   JWT principals (`<iss>/<sub>`) are split at the last `/` and each side matched on its own.
//! - `request.headers[name]` matches if any value of the header matches (each header line on its
//!   own; `host`/`:authority`, `:method` and `:path` read the request's own fields).
//!   `request.auth.claims[a][b]` matches a string claim, any string in a list claim, and a
//!   boolean or number claim by its JSON text (`true`, `42`).
//! - Plain TCP: see [`Engine::compile`] — ALLOW rules with HTTP-only fields are dropped, DENY
//!   and AUDIT rules lose their HTTP-only fields (safer: they deny more, never less).
//! - Dry-run policies never change the enforced verdict; when at least one exists, a decision
//!   also carries the shadow verdict: what would be decided if they were enforced too.
//!
//! When several policies match, the one listed first is reported.

mod compile;
mod engine;
mod filter;
mod index;
mod matcher;
mod rule;

#[cfg(test)]
mod equivalence;

pub use compile::RbacError;
pub use engine::Engine;

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A DENY policy matched: denied.
    DenyMatched,
    /// No DENY policy matched and an ALLOW policy did: allowed.
    AllowMatched,
    /// ALLOW policies exist and none matched: denied.
    NoAllowMatched,
    /// No DENY policy matched and there is no ALLOW policy: allowed.
    NoPolicy,
}

impl Reason {
    /// Whether the request may proceed.
    pub fn allowed(self) -> bool {
        matches!(self, Reason::AllowMatched | Reason::NoPolicy)
    }

    /// `allowed` or `denied`: the `result` label of `halyard_rbac_decisions_total`.
    pub fn result_label(self) -> &'static str {
        if self.allowed() {
            "allowed"
        } else {
            "denied"
        }
    }

    /// The kind of policy that decided: `DENY`, `ALLOW` (matched, or none of them did), or
    /// `NONE`: the `action` label of `halyard_rbac_decisions_total`.
    pub fn action_label(self) -> &'static str {
        match self {
            Reason::DenyMatched => "DENY",
            Reason::AllowMatched | Reason::NoAllowMatched => "ALLOW",
            Reason::NoPolicy => "NONE",
        }
    }

    /// A short name for logs: `deny_matched`, `allow_matched`, `no_allow_matched`, `no_policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DenyMatched => "deny_matched",
            Reason::AllowMatched => "allow_matched",
            Reason::NoAllowMatched => "no_allow_matched",
            Reason::NoPolicy => "no_policy",
        }
    }
}

/// An outcome: why, and which policy decided (for [`Reason::DenyMatched`] and
/// [`Reason::AllowMatched`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'e> {
    /// Why.
    pub reason: Reason,
    /// The deciding policy's name (`namespace/name`).
    pub policy: Option<&'e str>,
}

impl<'e> Verdict<'e> {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.reason.allowed()
    }

    /// See [`Reason::result_label`].
    pub fn result_label(&self) -> &'static str {
        self.reason.result_label()
    }

    /// See [`Reason::action_label`].
    pub fn action_label(&self) -> &'static str {
        self.reason.action_label()
    }

    /// The deciding policy's name, or `""`: the `policy` label of
    /// `halyard_rbac_decisions_total`.
    pub fn policy_label(&self) -> &'e str {
        self.policy.unwrap_or("")
    }
}

/// A decision: the enforced verdict, the first matching AUDIT policy, and the dry-run
/// (shadow) verdict when dry-run policies exist. Borrows names from the [`Engine`]; `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'e> {
    /// What is enforced.
    pub enforced: Verdict<'e>,
    /// The first AUDIT policy that matched (not dry-run ones).
    pub audit: Option<&'e str>,
    /// The verdict if dry-run policies were enforced too; `None` when there are none.
    pub shadow: Option<Verdict<'e>>,
}

impl<'e> Decision<'e> {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.enforced.allowed()
    }

    /// Why the enforced verdict was reached.
    pub fn reason(&self) -> Reason {
        self.enforced.reason
    }

    /// The deciding policy, if a policy matched.
    pub fn policy(&self) -> Option<&'e str> {
        self.enforced.policy
    }

    /// `allowed`/`denied` for metrics.
    pub fn result_label(&self) -> &'static str {
        self.enforced.result_label()
    }

    /// `DENY`/`ALLOW`/`NONE` for metrics.
    pub fn action_label(&self) -> &'static str {
        self.enforced.action_label()
    }

    /// The deciding policy or `""` for metrics.
    pub fn policy_label(&self) -> &'e str {
        self.enforced.policy_label()
    }

    /// The shadow verdict's `allowed`/`denied`, when there is one.
    pub fn shadow_result_label(&self) -> Option<&'static str> {
        self.shadow.map(|s| s.result_label())
    }
}
