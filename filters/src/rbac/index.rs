//! The candidate index: a decision evaluates only the rules that can possibly match.
//!
//! At compile time each rule gets at most one *key*: a value every request it matches must
//! carry, e.g. "the path is exactly `/api/v1/users`" when all its operations list exact paths,
//! or "the peer principal is one of …" when all its sources list exact principals. Among the
//! keys a rule offers (exact path, peer principal, JWT principal, host, first path segment,
//! exact header value, port, method), the one whose values are shared by the fewest rules is
//! chosen. Rules with no key are *residual* and always evaluated.
//!
//! Buckets are found by a seeded 64-bit hash of the key, so a lookup needs no allocation (hosts
//! are hashed lower-cased on the fly); a collision only adds candidates, which are checked in
//! full, so the answer never depends on the index. Candidates are kept per phase (DENY, ALLOW,
//! …) in rule order, so the first matching rule of a phase is found by scanning each bucket
//! only until a match or a rule after the best one so far.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use http::HeaderName;

use super::matcher::{first_segment, PathMatch, StrMatch};
use super::rule::{Cond, Ctx, HeaderTarget, Operation, Rule, Source};

/// How many evaluation phases there are (see `engine.rs`).
pub(crate) const PHASES: usize = 5;

/// The kinds of keys, in the order ties are broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Path = 0,
    Principal,
    RequestPrincipal,
    Host,
    Segment,
    Header,
    Port,
    Method,
}

/// How many header buckets one request may draw from before the index falls back to every
/// header-keyed rule.
const MAX_HEADER_BUCKETS: usize = 8;
/// Fixed lookup slots: residual, principal, port, path, segment, host ×2, method, JWT principal.
const SLOTS: usize = 9;

/// A bucket: rule ids grouped by phase, ascending within a phase.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    ids: Box<[u32]>,
    ends: [u32; PHASES],
}

impl Bucket {
    fn build(mut entries: Vec<(u8, u32)>) -> Self {
        entries.sort_unstable();
        entries.dedup();
        let mut ends = [0u32; PHASES];
        for (phase, end) in ends.iter_mut().enumerate() {
            *end = entries.partition_point(|&(p, _)| usize::from(p) <= phase) as u32;
        }
        Bucket {
            ids: entries.into_iter().map(|(_, id)| id).collect(),
            ends,
        }
    }

    fn phase(&self, phase: usize) -> &[u32] {
        let start = phase.checked_sub(1).map_or(0, |p| self.ends[p]) as usize;
        self.ids
            .get(start..self.ends[phase] as usize)
            .unwrap_or(&[])
    }
}

/// The keys' hash: FxHash-style over 8-byte words, seeded per engine, with a final mix.
#[derive(Debug, Clone, Copy)]
struct KeyHash {
    seed: u64,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

impl KeyHash {
    fn start(self, kind: Kind) -> u64 {
        self.seed ^ (kind as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn word(h: u64, w: u64) -> u64 {
        (h.rotate_left(5) ^ w).wrapping_mul(K)
    }

    fn feed(mut h: u64, bytes: &[u8], lower: bool) -> u64 {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            if lower {
                a.make_ascii_lowercase();
            }
            h = Self::word(h, u64::from_le_bytes(a));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut a = [0u8; 8];
            a[..rem.len()].copy_from_slice(rem);
            if lower {
                a.make_ascii_lowercase();
            }
            h = Self::word(h, u64::from_le_bytes(a));
        }
        Self::word(h, bytes.len() as u64)
    }

    fn finish(mut h: u64) -> u64 {
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }

    fn str(self, kind: Kind, s: &str) -> u64 {
        Self::finish(Self::feed(
            self.start(kind),
            s.as_bytes(),
            kind == Kind::Host,
        ))
    }

    fn pair(self, kind: Kind, a: &[u8], b: &[u8]) -> u64 {
        let h = Self::feed(self.start(kind), a, false);
        Self::finish(Self::feed(h, b, false))
    }

    fn port(self, p: u16) -> u64 {
        Self::finish(Self::feed(self.start(Kind::Port), &p.to_le_bytes(), false))
    }
}

/// The map's hasher: keys are already well-mixed hashes.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The index of one rule set (HTTP or TCP).
#[derive(Debug)]
pub(crate) struct Index {
    hash: KeyHash,
    map: HashMap<u64, Bucket, BuildHasherDefault<Identity>>,
    residual: Bucket,
    /// The header names some rule is keyed by.
    header_names: Box<[HeaderName]>,
    /// Every header-keyed rule: the candidates when a request hits too many header buckets.
    header_all: Bucket,
    /// Which kinds have buckets (bit per [`Kind`]), so lookups skip the others.
    kinds: u8,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            hash: KeyHash { seed: 0 },
            map: HashMap::default(),
            residual: Bucket::default(),
            header_names: Box::new([]),
            header_all: Bucket::default(),
            kinds: 0,
        }
    }
}

/// The buckets one request draws candidates from.
pub(crate) struct Lookup<'i> {
    buckets: [Option<&'i Bucket>; SLOTS + MAX_HEADER_BUCKETS],
}

/// A key a rule offers: its kind, its hashed values, and the header for [`Kind::Header`].
struct Opt {
    kind: Kind,
    keys: Vec<u64>,
    header: Option<HeaderName>,
}

fn all_ops<'r, T>(rule: &'r Rule, f: impl Fn(&'r Operation) -> Option<Vec<T>>) -> Option<Vec<T>> {
    if rule.to.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for o in rule.to.iter() {
        out.extend(f(o)?);
    }
    Some(out)
}

fn all_sources<'r, T>(rule: &'r Rule, f: impl Fn(&'r Source) -> Option<Vec<T>>) -> Option<Vec<T>> {
    if rule.from.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for s in rule.from.iter() {
        out.extend(f(s)?);
    }
    Some(out)
}

fn options(h: KeyHash, rule: &Rule) -> Vec<Opt> {
    let mut out: Vec<Opt> = Vec::new();
    let mut push_header = |kind: Kind, mut keys: Vec<u64>, header: Option<HeaderName>| {
        keys.sort_unstable();
        keys.dedup();
        out.push(Opt { kind, keys, header });
    };
    let mut push = |kind: Kind, keys: Vec<u64>| push_header(kind, keys, None);
    let strs = |kind: Kind, v: Vec<&str>| v.into_iter().map(|s| h.str(kind, s)).collect();

    if let Some(v) = all_sources(rule, |s| s.principals.exact_values(StrMatch::exact)) {
        push(Kind::Principal, strs(Kind::Principal, v));
    }
    if let Some(v) = all_sources(rule, |s| s.request_principals.exact_values(|m| m.exact())) {
        push(
            Kind::RequestPrincipal,
            v.iter()
                .map(|(i, s)| h.pair(Kind::RequestPrincipal, i.as_bytes(), s.as_bytes()))
                .collect(),
        );
    }
    if let Some(v) = all_ops(rule, |o| {
        o.paths.exact_values(|p| match p {
            PathMatch::Str(StrMatch::Exact(e)) => Some(&**e),
            _ => None,
        })
    }) {
        push(Kind::Path, strs(Kind::Path, v));
    }
    if let Some(v) = all_ops(rule, |o| o.paths.exact_values(PathMatch::first_segment)) {
        push(Kind::Segment, strs(Kind::Segment, v));
    }
    if let Some(v) = all_ops(rule, |o| o.hosts.exact_values(StrMatch::exact)) {
        push(Kind::Host, strs(Kind::Host, v));
    }
    if let Some(v) = all_ops(rule, |o| o.methods.exact_values(StrMatch::exact)) {
        push(Kind::Method, strs(Kind::Method, v));
    }
    if let Some(v) = all_ops(rule, |o| o.ports.exact_values(|&p| Some(p))) {
        push(Kind::Port, v.into_iter().map(|p| h.port(p)).collect());
    }
    for c in rule.when.iter() {
        match c {
            Cond::SourcePrincipal(f) => {
                if let Some(v) = f.exact_values(StrMatch::exact) {
                    push(Kind::Principal, strs(Kind::Principal, v));
                }
            }
            Cond::RequestPrincipal(f) => {
                if let Some(v) = f.exact_values(|m| m.exact()) {
                    push(
                        Kind::RequestPrincipal,
                        v.iter()
                            .map(|(i, s)| {
                                h.pair(Kind::RequestPrincipal, i.as_bytes(), s.as_bytes())
                            })
                            .collect(),
                    );
                }
            }
            Cond::DestinationPort(f) => {
                if let Some(v) = f.exact_values(|&p| Some(p)) {
                    push(Kind::Port, v.into_iter().map(|p| h.port(p)).collect());
                }
            }
            _ => {}
        }
    }
    // Exact header values (`*`, prefixes and suffixes cannot be looked up).
    for c in rule.when.iter() {
        if let Cond::Header(HeaderTarget::Named(name), f) = c {
            if let Some(v) = f.exact_values(StrMatch::exact) {
                let n = name.as_str().as_bytes();
                let keys = v
                    .into_iter()
                    .map(|v| h.pair(Kind::Header, n, v.as_bytes()))
                    .collect();
                push_header(Kind::Header, keys, Some(name.clone()));
            }
        }
    }
    out
}

impl Index {
    /// Indexes `rules`; `phase[i]` is rule `i`'s phase.
    pub(crate) fn build(rules: &[Rule], phase: &[u8]) -> Index {
        let hash = KeyHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        };
        let opts: Vec<Vec<Opt>> = rules.iter().map(|r| options(hash, r)).collect();
        // How many rules offer each key value: the expected size of its bucket.
        let mut freq: HashMap<u64, u32, BuildHasherDefault<Identity>> = HashMap::default();
        for o in opts.iter().flatten() {
            for &k in &o.keys {
                *freq.entry(k).or_default() += 1;
            }
        }
        let mut entries: HashMap<u64, Vec<(u8, u32)>, BuildHasherDefault<Identity>> =
            HashMap::default();
        let mut residual = Vec::new();
        let mut header_names: Vec<HeaderName> = Vec::new();
        let mut header_all = Vec::new();
        let mut kinds = 0u8;
        for (id, o) in opts.iter().enumerate() {
            let entry = (phase[id], id as u32);
            let cost = |keys: &[u64]| {
                keys.iter()
                    .map(|k| u64::from(freq.get(k).copied().unwrap_or(0)))
                    .sum::<u64>()
            };
            let best = o.iter().min_by_key(|o| (cost(&o.keys), o.kind as u8));
            match best {
                Some(best) => {
                    kinds |= 1 << best.kind as u8;
                    for &k in &best.keys {
                        entries.entry(k).or_default().push(entry);
                    }
                    if let Some(name) = &best.header {
                        header_all.push(entry);
                        if !header_names.contains(name) {
                            header_names.push(name.clone());
                        }
                    }
                }
                None => residual.push(entry),
            }
        }
        Index {
            hash,
            map: entries
                .into_iter()
                .map(|(k, v)| (k, Bucket::build(v)))
                .collect(),
            residual: Bucket::build(residual),
            header_names: header_names.into(),
            header_all: Bucket::build(header_all),
            kinds,
        }
    }

    fn has(&self, kind: Kind) -> bool {
        self.kinds & (1 << kind as u8) != 0
    }

    fn get(&self, kind: Kind, key: impl FnOnce(KeyHash) -> u64) -> Option<&Bucket> {
        if self.has(kind) {
            self.map.get(&key(self.hash))
        } else {
            None
        }
    }

    /// The buckets a request or connection draws candidates from.
    pub(crate) fn lookup(&self, c: &Ctx<'_>) -> Lookup<'_> {
        let mut b: [Option<&Bucket>; SLOTS + MAX_HEADER_BUCKETS] =
            [None; SLOTS + MAX_HEADER_BUCKETS];
        b[0] = Some(&self.residual);
        if let Some(p) = c.principal {
            b[1] = self.get(Kind::Principal, |h| h.str(Kind::Principal, p));
        }
        b[2] = self.get(Kind::Port, |h| h.port(c.port));
        if let Some(r) = &c.http {
            b[3] = self.get(Kind::Path, |h| h.str(Kind::Path, r.path));
            if let Some(seg) = first_segment(r.path) {
                b[4] = self.get(Kind::Segment, |h| h.str(Kind::Segment, seg));
            }
            b[5] = self.get(Kind::Host, |h| h.str(Kind::Host, r.host));
            if let Some(host) = r.host_without_port {
                b[6] = self.get(Kind::Host, |h| h.str(Kind::Host, host));
            }
            b[7] = self.get(Kind::Method, |h| h.str(Kind::Method, r.method));
            if let Some((iss, sub)) = r.iss_sub {
                b[8] = self.get(Kind::RequestPrincipal, |h| {
                    h.pair(Kind::RequestPrincipal, iss.as_bytes(), sub.as_bytes())
                });
            }
            self.header_buckets(r.headers, &mut b[SLOTS..]);
        }
        Lookup { buckets: b }
    }

    /// Fills `slots` with the buckets of the request's values of the keyed headers, or, when
    /// there are more than `slots` can hold, with the bucket of every header-keyed rule.
    fn header_buckets<'i>(&'i self, headers: &http::HeaderMap, slots: &mut [Option<&'i Bucket>]) {
        let mut n = 0;
        for name in self.header_names.iter() {
            for v in headers.get_all(name) {
                let key = self
                    .hash
                    .pair(Kind::Header, name.as_str().as_bytes(), v.as_bytes());
                if let Some(bucket) = self.map.get(&key) {
                    if n == slots.len() {
                        slots.fill(None);
                        slots[0] = Some(&self.header_all);
                        return;
                    }
                    slots[n] = Some(bucket);
                    n += 1;
                }
            }
        }
    }
}

impl Lookup<'_> {
    /// The first rule of `phase` (lowest id) that matches.
    pub(crate) fn first(&self, phase: usize, rules: &[Rule], c: &Ctx<'_>) -> Option<u32> {
        let mut best = u32::MAX;
        for b in self.buckets.iter().flatten() {
            for &id in b.phase(phase) {
                if id >= best {
                    break;
                }
                if rules.get(id as usize).is_some_and(|r| r.matches(c)) {
                    best = id;
                    break;
                }
            }
        }
        (best != u32::MAX).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_phase() {
        let b = Bucket::build(vec![(1, 7), (0, 3), (4, 1), (1, 2), (0, 3)]);
        assert_eq!(b.phase(0), &[3]);
        assert_eq!(b.phase(1), &[2, 7]);
        assert_eq!(b.phase(2), &[] as &[u32]);
        assert_eq!(b.phase(3), &[] as &[u32]);
        assert_eq!(b.phase(4), &[1]);
    }

    #[test]
    fn host_keys_ignore_case_and_pairs_are_unambiguous() {
        let h = KeyHash { seed: 42 };
        assert_eq!(
            h.str(Kind::Host, "Example.COM"),
            h.str(Kind::Host, "example.com")
        );
        assert_ne!(h.str(Kind::Path, "/A"), h.str(Kind::Path, "/a"));
        assert_ne!(h.str(Kind::Path, "/a"), h.str(Kind::Method, "/a"));
        let k = Kind::RequestPrincipal;
        assert_ne!(h.pair(k, b"a/b", b"c"), h.pair(k, b"a", b"b/c"));
        assert_ne!(
            h.str(Kind::Path, "abcdefgh"),
            h.str(Kind::Path, "abcdefgh\0")
        );
    }
}
