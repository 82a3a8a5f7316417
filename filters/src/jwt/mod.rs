//! Istio `RequestAuthentication`: JWT extraction and verification.
//!
//! The rules of every policy that selects the workload are compiled into one
//! [`Authenticator`]. A request without any token passes unauthenticated (`Ok(None)`: RBAC
//! decides); a request with a token that does not verify is refused ([`AuthnError`], 401).
//! Signatures are checked with `ring` (RS256/384/512, PS256/384/512, ES256/384, EdDSA);
//! `none` and HMAC are refused. Keys are inline or fetched by a [`JwksStore`] that the proxy
//! keeps for its whole life, so fetched keys survive configuration changes.

mod error;
mod extract;
mod fetch;
mod filter;
mod jwks;
mod store;
mod token;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halyard_xds::{JwtRule, RequestAuthentication};
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use serde_json::Value;

use crate::attrs::Authenticated;

pub use error::{AuthnError, JwtError};
pub use extract::MAX_TOKENS;
pub use jwks::{MAX_JWKS_LEN, MAX_KEYS};
pub use store::{JwksStatus, JwksStore, JwksStoreOptions};
pub use token::{Alg, CLOCK_SKEW_SECS, MAX_TOKEN_LEN};

use extract::{Found, Location};
use jwks::KeySet;
use store::{Source, Target};

/// Timeout of key fetches when a rule sets none.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a rule's keys come from.
enum Keys {
    Inline(KeySet),
    Remote(Arc<Source>),
}

/// One compiled `JwtRule`.
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
}

/// The JWT rules that apply to a workload, compiled; cheap to evaluate per request.
pub struct Authenticator {
    rules: Vec<Rule>,
    /// Every distinct token location, in the order the rules name them.
    locations: Vec<Location>,
    /// For each location, the rules (indexes) that accept tokens there.
    by_location: Vec<Vec<usize>>,
    /// Headers the rules write: removed from every request first so they cannot be forged.
    output_headers: Vec<HeaderName>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.rules.iter().map(|r| r.issuer.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .field("locations", &self.locations)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Compiles the rules of `policies` (merged); remote keys are registered with `store`,
    /// which starts fetching them. Inline JWKS are parsed here.
    pub fn compile(
        policies: &[RequestAuthentication],
        store: &Arc<JwksStore>,
    ) -> Result<Authenticator, JwtError> {
        let mut auth = Authenticator {
            rules: Vec::new(),
            locations: Vec::new(),
            by_location: Vec::new(),
            output_headers: Vec::new(),
        };
        for policy in policies {
            for rule in &policy.jwt_rules {
                let fail = |reason: String| JwtError::Rule {
                    policy: policy.name.clone(),
                    issuer: rule.issuer.clone(),
                    reason,
                };
                let (compiled, locations) = compile_rule(rule, store).map_err(|e| match e {
                    RuleError::Invalid(reason) => fail(reason),
                    RuleError::Store(e) => e,
                })?;
                auth.add(compiled, locations);
            }
        }
        Ok(auth)
    }

    fn add(&mut self, rule: Rule, locations: Vec<Location>) {
        let index = self.rules.len();
        for location in locations {
            match self.locations.iter().position(|l| *l == location) {
                Some(i) => self.by_location[i].push(index),
                None => {
                    self.locations.push(location);
                    self.by_location.push(vec![index]);
                }
            }
        }
        let outputs = rule
            .payload_header
            .iter()
            .chain(rule.claim_headers.iter().map(|(h, _)| h));
        for header in outputs {
            if !self.output_headers.contains(header) {
                self.output_headers.push(header.clone());
            }
        }
        self.rules.push(rule);
    }

    /// Whether no rule applies (the proxy then skips authentication).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Finds and verifies the request's tokens. `Ok(None)`: no token anywhere. Every token
    /// found must verify; the first one's identity is returned. On success the tokens are
    /// removed (unless a rule forwards them) and the rules' output headers are set.
    pub async fn authenticate(
        &self,
        parts: &mut Parts,
    ) -> Result<Option<Authenticated>, AuthnError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.authenticate_at(parts, now).await
    }

    /// [`Self::authenticate`] at `now` (Unix seconds).
    pub(crate) async fn authenticate_at(
        &self,
        parts: &mut Parts,
        now: i64,
    ) -> Result<Option<Authenticated>, AuthnError> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        for header in &self.output_headers {
            parts.headers.remove(header);
        }
        let found = extract::find(&self.locations, parts)?;
        let mut verified = Vec::with_capacity(found.len());
        for f in &found {
            verified.push(self.verify(f, now).await?);
        }
        let mut identity = None;
        for (f, (rule, auth)) in found.iter().zip(verified) {
            let rule = &self.rules[rule];
            if !rule.forward {
                extract::remove(parts, &self.locations[f.location], &f.token);
            }
            set_outputs(rule, &f.token, &auth, parts);
            identity.get_or_insert(auth);
        }
        Ok(identity)
    }

    /// Verifies one token against the rules of its location and issuer.
    async fn verify(&self, f: &Found, now: i64) -> Result<(usize, Authenticated), AuthnError> {
        let token = token::parse(&f.token)?;
        let issuer = token.issuer()?;
        let mut candidates = self.by_location[f.location]
            .iter()
            .copied()
            .filter(|&i| self.rules[i].issuer == issuer)
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthnError::UnknownIssuer);
        }
        token.check_time(now)?;
        let audiences = token.audiences()?;
        let mut error = AuthnError::UnknownIssuer;
        for i in candidates {
            let rule = &self.rules[i];
            if !rule.audiences.is_empty() && !audiences.iter().any(|a| rule.audiences.contains(a)) {
                error = AuthnError::AudienceNotAllowed;
                continue;
            }
            let message = token.signing_input.as_bytes();
            let kid = token.kid.as_deref();
            let result = match &rule.keys {
                Keys::Inline(keys) => keys
                    .verify(token.alg, kid, message, &token.signature)
                    .map_err(AuthnError::from),
                Keys::Remote(source) => {
                    source
                        .verify(token.alg, kid, message, &token.signature)
                        .await
                }
            };
            match result {
                Ok(()) => {
                    let principal = token
                        .string_claim("sub")
                        .map(|sub| format!("{issuer}/{sub}"))
                        .unwrap_or_default();
                    let presenter = token.string_claim("azp").map(str::to_owned);
                    return Ok((
                        i,
                        Authenticated {
                            principal,
                            audiences,
                            presenter,
                            claims: token.claims,
                        },
                    ));
                }
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

/// Writes the rule's payload and claim headers for a verified token.
fn set_outputs(rule: &Rule, token: &str, auth: &Authenticated, parts: &mut Parts) {
    if let Some(header) = &rule.payload_header {
        let payload = token.split('.').nth(1).unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(payload) {
            parts.headers.insert(header.clone(), value);
        }
    }
    for (header, claim) in &rule.claim_headers {
        let value = match claim_value(&auth.claims, claim) {
            Some(Value::String(s)) => HeaderValue::from_str(s).ok(),
            Some(Value::Number(n)) => HeaderValue::from_str(&n.to_string()).ok(),
            Some(Value::Bool(b)) => {
                Some(HeaderValue::from_static(if *b { "true" } else { "false" }))
            }
            _ => None,
        };
        match value {
            Some(value) => {
                parts.headers.insert(header.clone(), value);
            }
            None => tracing::debug!(%header, %claim, "claim absent or not a header value"),
        }
    }
}

/// A claim by name; a name with dots that is not a top-level claim walks nested objects.
fn claim_value<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The realm of a 401 answer: `<scheme>://<host><path>`, never the query (it may carry the
/// token). `scheme` is what the client used (`http` or `https`).
pub fn realm_url(parts: &Parts, scheme: &str) -> String {
    let host = crate::attrs::host_of(parts);
    format!("{scheme}://{host}{}", parts.uri.path())
}

enum RuleError {
    Invalid(String),
    Store(JwtError),
}

impl From<String> for RuleError {
    fn from(reason: String) -> Self {
        RuleError::Invalid(reason)
    }
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{what} {name:?} is not a header name"))
}

/// A header a rule may write: not one that frames or routes the request.
fn output_header(name: &str, what: &str) -> Result<HeaderName, String> {
    let header = header_name(name, what)?;
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ];
    if RESERVED.contains(&header.as_str()) {
        return Err(format!("{what} may not write {name:?}"));
    }
    Ok(header)
}

fn compile_rule(
    rule: &JwtRule,
    store: &Arc<JwksStore>,
) -> Result<(Rule, Vec<Location>), RuleError> {
    if rule.issuer.is_empty() {
        return Err(RuleError::Invalid("issuer is empty".to_owned()));
    }
    let timeout = match &rule.timeout {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            return Err(RuleError::Invalid("timeout is negative".to_owned()))
        }
        Some(d) if d.seconds == 0 && d.nanos == 0 => DEFAULT_FETCH_TIMEOUT,
        Some(d) => Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs()),
    };
    let keys = match (rule.jwks.is_empty(), rule.jwks_uri.is_empty()) {
        (false, false) => return Err("set either jwks or jwks_uri, not both".to_owned().into()),
        (false, true) => Keys::Inline(
            KeySet::parse(rule.jwks.as_bytes(), true).map_err(|e| format!("inline jwks: {e}"))?,
        ),
        (true, false) => {
            if !fetch::is_http_url(&rule.jwks_uri) {
                return Err(format!("jwks_uri {:?} is not an http(s) URL", rule.jwks_uri).into());
            }
            let target = Target::Jwks(rule.jwks_uri.clone());
            Keys::Remote(store.source(target, timeout).map_err(RuleError::Store)?)
        }
        (true, true) => {
            if !fetch::is_http_url(&rule.issuer) {
                return Err(
                    "no jwks or jwks_uri, and the issuer is not an http(s) URL for \
                     OpenID Connect discovery"
                        .to_owned()
                        .into(),
                );
            }
            let target = Target::Discovery(rule.issuer.clone());
            Keys::Remote(store.source(target, timeout).map_err(RuleError::Store)?)
        }
    };
    let mut locations = Vec::new();
    for h in &rule.from_headers {
        locations.push(Location::Header {
            name: header_name(&h.name, "from_headers")?,
            prefix: h.prefix.clone(),
        });
    }
    for (list, make) in [
        (&rule.from_params, Location::Param as fn(String) -> Location),
        (&rule.from_cookies, Location::Cookie),
    ] {
        for name in list {
            if name.is_empty() {
                return Err("empty from_params or from_cookies name".to_owned().into());
            }
            locations.push(make(name.clone()));
        }
    }
    if locations.is_empty() {
        locations = vec![
            Location::bearer(),
            Location::Param("access_token".to_owned()),
        ];
    }
    let payload_header = match rule.output_payload_to_header.as_str() {
        "" => None,
        name => Some(output_header(name, "output_payload_to_header")?),
    };
    let mut claim_headers = Vec::new();
    for c in &rule.output_claim_to_headers {
        if c.claim.is_empty() {
            return Err(format!("output_claim_to_headers {:?} names no claim", c.header).into());
        }
        claim_headers.push((
            output_header(&c.header, "output_claim_to_headers")?,
            c.claim.clone(),
        ));
    }
    let rule = Rule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        forward: rule.forward_original_token,
        payload_header,
        claim_headers,
    };
    Ok((rule, locations))
}
