//! The counters the filters keep, registered once per proxy (they outlive configurations)
//! and handed to every chain run through [`crate::filter::Ctx`].

use prometheus::{IntCounterVec, Opts, Registry};

/// Every filter's counters.
#[derive(Clone)]
pub struct FilterMetrics {
    /// `halyard_rbac_decisions_total{action,policy,result}`: authorization decisions, audits
    /// and dry-run (shadow) results.
    pub rbac_decisions: IntCounterVec,
    /// `halyard_jwt_authn_total{result}`: requests by JWT authentication outcome.
    pub jwt_authn: IntCounterVec,
    /// `halyard_fault_injected_total{kind}`: injected delays and aborts.
    pub faults: IntCounterVec,
}

impl FilterMetrics {
    /// The counters, registered in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered();
        registry.register(Box::new(m.rbac_decisions.clone()))?;
        registry.register(Box::new(m.jwt_authn.clone()))?;
        registry.register(Box::new(m.faults.clone()))?;
        Ok(m)
    }

    /// The counters, in no registry (tests and benches).
    pub fn unregistered() -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("constant metric `{name}` is valid: {e}"))
        };
        Self {
            rbac_decisions: vec(
                "halyard_rbac_decisions_total",
                "Authorization decisions by deciding action and policy, with audit and dry-run (shadow) results.",
                &["action", "policy", "result"],
            ),
            jwt_authn: vec(
                "halyard_jwt_authn_total",
                "Requests by JWT authentication outcome (verified, no_token, rejected).",
                &["result"],
            ),
            faults: vec(
                "halyard_fault_injected_total",
                "Injected faults by kind (delay, abort).",
                &["kind"],
            ),
        }
    }
}
