//! The engine: policies compiled into two indexed rule sets (HTTP and plain TCP) and the
//! decision procedure over them.

use halyard_xds::authorization_policy::Action;
use halyard_xds::AuthorizationPolicy;

use super::compile::{self, RbacError};
use super::index::{Index, Lookup, PHASES};
use super::rule::{Ctx, Rule};
use super::{Decision, Reason, Verdict};
use crate::attrs::{Connection, Request};

/// Evaluation phases: where a rule's policy takes part in a decision.
const DENY: usize = 0;
const ALLOW: usize = 1;
const AUDIT: usize = 2;
const DRY_DENY: usize = 3;
const DRY_ALLOW: usize = 4;

fn phase(action: Action, dry_run: bool) -> Option<u8> {
    let p = match (action, dry_run) {
        (Action::Deny, false) => DENY,
        (Action::Allow, false) => ALLOW,
        (Action::Audit, false) => AUDIT,
        (Action::Deny, true) => DRY_DENY,
        (Action::Allow, true) => DRY_ALLOW,
        // A dry-run AUDIT policy would change nothing even if enforced.
        (Action::Audit, true) => return None,
    };
    Some(p as u8)
}

/// Rules in policy order (rule ids are positions), their phases and their index.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Box<[Rule]>,
    /// Each rule's phase (the index keeps its own copy; this one serves the reference
    /// evaluation in tests).
    #[cfg_attr(not(test), allow(dead_code))]
    phases: Box<[u8]>,
    index: Index,
    /// Whether each phase has any rule, so empty phases cost nothing.
    present: [bool; PHASES],
}

impl RuleSet {
    fn new(rules: Vec<(u8, Rule)>) -> Self {
        let mut present = [false; PHASES];
        for (p, _) in &rules {
            present[usize::from(*p)] = true;
        }
        let (phases, rules): (Vec<u8>, Vec<Rule>) = rules.into_iter().unzip();
        let index = Index::build(&rules, &phases);
        RuleSet {
            rules: rules.into(),
            phases: phases.into(),
            index,
            present,
        }
    }
}

/// The compiled authorization policies of one workload; [`Engine::default`] has none and
/// allows everything.
#[derive(Debug, Default)]
pub struct Engine {
    names: Box<[Box<str>]>,
    http: RuleSet,
    tcp: RuleSet,
    /// An enforced ALLOW policy exists (then a request must match one).
    has_allow: bool,
    /// A dry-run ALLOW policy exists.
    has_dry_allow: bool,
    /// A dry-run policy exists (then decisions carry a shadow verdict).
    has_dry_run: bool,
}

impl Engine {
    /// Compiles the policies that select this workload (their order only decides which policy
    /// is reported when several match).
    pub fn compile(policies: &[AuthorizationPolicy]) -> Result<Engine, RbacError> {
        let mut names = Vec::with_capacity(policies.len());
        let mut http = Vec::new();
        let mut tcp = Vec::new();
        let mut engine = Engine::default();
        for (i, p) in policies.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| RbacError {
                policy: p.name.clone(),
                field: String::new(),
                problem: "too many policies".into(),
            })?;
            let c = compile::policy(p, index)?;
            names.push(c.name);
            engine.has_dry_run |= c.dry_run;
            match (c.action, c.dry_run) {
                (Action::Allow, false) => engine.has_allow = true,
                (Action::Allow, true) => engine.has_dry_allow = true,
                _ => {}
            }
            let Some(ph) = phase(c.action, c.dry_run) else {
                continue;
            };
            for r in c.rules {
                // Plain TCP has no HTTP attributes. Istio's documented behaviour (task "TCP
                // Traffic", istio.io/latest/docs/tasks/security/authorization/authz-tcp/): a
                // rule of an ALLOW policy that uses an HTTP-only field is ignored entirely
                // (it can never allow), while for a DENY policy only the HTTP-only fields are
                // ignored, so the rest of the rule still denies — the safe reading, which is
                // what Istio's generator does for AUDIT policies too. The ALLOW policy still
                // counts as an ALLOW policy, so a connection matching nothing is denied.
                if !r.http_only() {
                    tcp.push((ph, r.clone()));
                } else if c.action != Action::Allow {
                    tcp.push((ph, r.without_http_fields()));
                }
                http.push((ph, r));
            }
        }
        engine.names = names.into();
        engine.http = RuleSet::new(http);
        engine.tcp = RuleSet::new(tcp);
        Ok(engine)
    }

    /// How many policies were compiled.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no policy (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether a dry-run policy exists, i.e. whether decisions carry a shadow verdict.
    pub fn has_dry_run(&self) -> bool {
        self.has_dry_run
    }

    /// Decides an HTTP request (its path already normalised by [`crate::path::normalize`]).
    pub fn evaluate_http(&self, conn: &Connection<'_>, req: &Request<'_>) -> Decision<'_> {
        let ctx = Ctx::http(conn, req);
        self.decide(&self.http, &ctx)
    }

    /// Decides a plain TCP connection (see [`Engine::compile`] for HTTP-only fields).
    pub fn evaluate_tcp(&self, conn: &Connection<'_>) -> Decision<'_> {
        let ctx = Ctx::tcp(conn);
        self.decide(&self.tcp, &ctx)
    }

    fn decide(&self, set: &RuleSet, ctx: &Ctx<'_>) -> Decision<'_> {
        let look: Lookup<'_> = set.index.lookup(ctx);
        self.decide_with(set, |p| {
            if set.present[p] {
                look.first(p, &set.rules, ctx)
            } else {
                None
            }
        })
    }

    /// The decision procedure, given the first matching rule of each phase.
    fn decide_with(&self, set: &RuleSet, first: impl Fn(usize) -> Option<u32>) -> Decision<'_> {
        let name = |id: u32| -> Option<&str> {
            let r = set.rules.get(id as usize)?;
            self.names.get(r.policy as usize).map(|n| &**n)
        };
        let verdict = |deny: Option<u32>, allow: Option<u32>, any_allow: bool| match (deny, allow) {
            (Some(d), _) => Verdict {
                reason: Reason::DenyMatched,
                policy: name(d),
            },
            (None, Some(a)) => Verdict {
                reason: Reason::AllowMatched,
                policy: name(a),
            },
            (None, None) => Verdict {
                reason: if any_allow {
                    Reason::NoAllowMatched
                } else {
                    Reason::NoPolicy
                },
                policy: None,
            },
        };
        let deny = first(DENY);
        let allow = if deny.is_none() && self.has_allow {
            first(ALLOW)
        } else {
            None
        };
        let enforced = verdict(deny, allow, self.has_allow);
        let audit = first(AUDIT).and_then(name);
        let shadow = self.has_dry_run.then(|| {
            // As if the dry-run policies were enforced alongside the others: the first
            // matching DENY of either kind, else the first matching ALLOW of either kind.
            let deny = min(deny, first(DRY_DENY));
            let any_allow = self.has_allow || self.has_dry_allow;
            let allow = if deny.is_none() && any_allow {
                // No DENY matched at all, so the enforced ALLOW phase was evaluated above.
                min(allow, first(DRY_ALLOW))
            } else {
                None
            };
            verdict(deny, allow, any_allow)
        });
        Decision {
            enforced,
            audit,
            shadow,
        }
    }

    /// The same decision without the index: every rule checked in order (for tests).
    #[cfg(test)]
    pub(crate) fn evaluate_naive<'e>(
        &'e self,
        conn: &Connection<'_>,
        req: Option<&Request<'_>>,
    ) -> Decision<'e> {
        let (set, ctx) = match req {
            Some(r) => (&self.http, Ctx::http(conn, r)),
            None => (&self.tcp, Ctx::tcp(conn)),
        };
        self.decide_with(set, |p| {
            (0..set.rules.len())
                .find(|&i| usize::from(set.phases[i]) == p && set.rules[i].matches(&ctx))
                .map(|i| i as u32)
        })
    }
}

fn min(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
