//! Value types shared by several kinds (durations, percentages, string matches, selectors)
//! and the checks for plain values (names, hosts, ports, addresses, CIDRs).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use super::error::{Cx, FieldPath};

/// A duration as Istio writes it: Go-style (`500ms`, `1m30s`, `5s`), kept as text and parsed
/// by [`Duration::to_std`] (`halyard_xds::parse_duration`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The parsed duration, or why it is not one.
    pub fn to_std(&self) -> Result<std::time::Duration, String> {
        halyard_xds::parse_duration(&self.0)
    }

    /// Reports a value that is not a duration, or shorter than `min`.
    pub(crate) fn check(&self, cx: &mut Cx<'_>, path: &FieldPath, min: std::time::Duration) {
        match self.to_std() {
            Err(e) => cx.error(path, format!("invalid duration: {e}")),
            Ok(d) if d < min => cx.error(
                path,
                format!("duration `{}` is shorter than the minimum {min:?}", self.0),
            ),
            Ok(_) => {}
        }
    }
}

/// Istio's `Percent`: a percentage in `[0.0, 100.0]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

impl Percent {
    pub(crate) fn check(&self, cx: &mut Cx<'_>, path: &FieldPath) {
        check_percentage(cx, &path.f("value"), self.value);
    }
}

/// Reports a percentage outside `[0, 100]`.
pub(crate) fn check_percentage(cx: &mut Cx<'_>, path: &FieldPath, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        cx.error(path, format!("percentage {value} is outside 0-100"));
    }
}

/// Istio's `StringMatch`: one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    /// Exact string match.
    pub exact: Option<String>,
    /// Prefix match.
    pub prefix: Option<String>,
    /// RE2-style regular expression that must match the whole value.
    pub regex: Option<String>,
}

impl StringMatch {
    /// How many of the alternatives are set.
    fn count(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Checks the match: at most one alternative (exactly one unless `empty_ok`), a regex that
    /// compiles, and no `prefix` unless `prefix_ok`.
    pub(crate) fn check(&self, cx: &mut Cx<'_>, path: &FieldPath, empty_ok: bool, prefix_ok: bool) {
        match self.count() {
            0 if !empty_ok => cx.error(path, "one of exact, prefix or regex is required"),
            0 | 1 => {}
            _ => cx.error(path, "only one of exact, prefix or regex may be set"),
        }
        if let Some(re) = &self.regex {
            check_regex(cx, &path.f("regex"), re);
        }
        if self.prefix.is_some() && !prefix_ok {
            cx.error(
                &path.f("prefix"),
                "prefix matching is not supported here (use exact or regex)",
            );
        }
    }
}

/// Reports a regular expression that does not compile (Rust's `regex`, which follows RE2).
pub(crate) fn check_regex(cx: &mut Cx<'_>, path: &FieldPath, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        let first = e.to_string();
        let last = first.lines().last().unwrap_or("").trim();
        let detail = last.strip_prefix("error: ").unwrap_or(last).to_string();
        cx.error(path, format!("invalid regex `{re}`: {detail}"));
    }
}

/// Istio's `WorkloadSelector` for networking kinds (ServiceEntry, DestinationRule):
/// `labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must carry (all of them).
    pub labels: BTreeMap<String, String>,
}

/// Istio's `istio.type.v1beta1.WorkloadSelector` for security kinds: `matchLabels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels a workload must carry (all of them).
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's `PolicyTargetReference` (`targetRef`/`targetRefs`), parsed to be refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target.
    pub group: String,
    /// Kind of the target.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target.
    pub namespace: String,
}

/// Treats an explicit `null` like an absent value (Kubernetes does the same).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Whether `s` is a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters):
/// what Kubernetes requires of namespaces, and Istio of subset and port names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain: dot-separated labels, at most 253 characters
/// (what Kubernetes requires of resource names).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks a host name as Istio's `hosts` fields take it: a DNS name, optionally with a `*.`
/// wildcard prefix (`*` alone only when `bare_wildcard_ok`). Short names (`reviews`) are fine.
pub(crate) fn check_host(cx: &mut Cx<'_>, path: &FieldPath, host: &str, bare_wildcard_ok: bool) {
    if host.is_empty() {
        cx.error(path, "host must not be empty");
        return;
    }
    if host == "*" {
        if !bare_wildcard_ok {
            cx.error(path, "the wildcard host `*` is not allowed here");
        }
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        cx.error(
            path,
            format!("invalid host `{host}`: want a DNS name, optionally with a `*.` prefix"),
        );
    }
}

/// Checks a port number (1-65535).
pub(crate) fn check_port(cx: &mut Cx<'_>, path: &FieldPath, port: u32) {
    if !(1..=65535).contains(&port) {
        cx.error(path, format!("port {port} is outside 1-65535"));
    }
}

/// An IP address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `10.1.2.3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (32/128 for a single address).
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Parses an address or `address/prefix`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "`{s}`: the prefix length must be a number from 0 to {max}"
                    ))
                }
            },
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Reports a value that is not an IP address or CIDR block.
pub(crate) fn check_cidr(cx: &mut Cx<'_>, path: &FieldPath, s: &str) {
    if let Err(e) = Cidr::parse(s) {
        cx.error(path, e);
    }
}

/// Checks `exportTo`: each entry `.`, `*` or a namespace name, no duplicates, and `*` alone.
pub(crate) fn check_export_to(cx: &mut Cx<'_>, path: &FieldPath, export_to: &[String]) {
    for (i, ns) in export_to.iter().enumerate() {
        let p = path.i(i);
        if ns != "." && ns != "*" && !is_dns_label(ns) {
            cx.error(&p, format!("`{ns}` is not `.`, `*` or a namespace name"));
        }
        if export_to[..i].contains(ns) {
            cx.error(&p, format!("`{ns}` is listed twice"));
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|n| n == "*") {
        cx.error(
            path,
            "`*` exports everywhere and cannot be combined with other entries",
        );
    }
}

/// Whether a resource in `owner_ns` exported with `export_to` is visible from `from_ns`.
pub(crate) fn exported_to(export_to: &[String], owner_ns: &str, from_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && owner_ns == from_ns) || e == from_ns)
}

/// Checks label keys and values the way Kubernetes does (a qualified name key, a value of at
/// most 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric).
pub(crate) fn check_labels(cx: &mut Cx<'_>, path: &FieldPath, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let p = path.k(k);
        let (prefix, name) = match k.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, k.as_str()),
        };
        let name_ok = is_label_value(name) && !name.is_empty();
        let prefix_ok = prefix.is_none_or(is_dns_subdomain);
        if !name_ok || !prefix_ok {
            cx.error(&p, format!("invalid label key `{k}`"));
        }
        if !is_label_value(v) {
            cx.error(&p, format!("invalid label value `{v}`"));
        }
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Whether all `selector` labels are present with the same values in `labels`.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(Cidr::parse("10.0.0.0/8").map(|c| c.prefix), Ok(8));
        assert_eq!(Cidr::parse("10.1.2.3").map(|c| c.prefix), Ok(32));
        assert_eq!(Cidr::parse("2001:db8::/32").map(|c| c.prefix), Ok(32));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "foo",
            "10.0.0.0/",
            "::1/129",
            "1.2.3.4/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let c = Cidr::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains("10.1.200.3".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!c.contains("10.2.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        let all = Cidr::parse("0.0.0.0/0").unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains("192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"))));
    }

    #[test]
    fn names() {
        assert!(is_dns_label("bookinfo"));
        assert!(is_dns_label("v1-2"));
        assert!(!is_dns_label("Bookinfo"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(is_dns_subdomain("reviews.v1"));
        assert!(!is_dns_subdomain("reviews..v1"));
    }

    #[test]
    fn export_visibility() {
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(exported_to(&["b".into()], "a", "b"));
        assert!(exported_to(&["*".into()], "a", "c"));
    }

    #[test]
    fn durations() {
        assert_eq!(
            Duration("1m30s".into()).to_std(),
            Ok(std::time::Duration::from_secs(90))
        );
        assert!(Duration("soon".into()).to_std().is_err());
    }
}
