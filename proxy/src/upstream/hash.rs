//! Consistent-hash ring for sticky balancing (`ConsistentHash` in the config).
//!
//! Each endpoint owns many pseudo-random points on a 64-bit circle; a request key is hashed
//! onto the circle and served by the owner of the first point clockwise. Removing one of N
//! endpoints only moves the keys that landed on its points (about 1/N), because every other
//! endpoint's points are derived from its own identity alone.
//!
//! Points are keyed by a string identity rather than a `SocketAddr` (unlike pingora-ketama)
//! because endpoints may be DNS names. The hash is our own XXH64 so that positions are the
//! same on every platform and across restarts and upgrades: sidecars of different versions
//! must agree on where a key goes, which rules out `RandomState` and `DefaultHasher`, whose
//! algorithm std does not promise to keep.

/// Points per endpoint of weight 1 when the config says 0 (Envoy's ring-hash default).
pub const DEFAULT_POINTS_PER_ENDPOINT: u32 = 160;

/// Upper bound on the points of one ring, so that a huge config (many endpoints, big weights,
/// big `points_per_endpoint`) cannot blow up memory: 100k points are 1.6 MB.
pub const MAX_POINTS: u64 = 100_000;

/// A consistent-hash ring over endpoint indices.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (position, endpoint index), sorted by position then index so ties are deterministic.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds a ring where endpoint `i` (identity `ids[i]`, e.g. "10.0.0.1:8080") gets
    /// `points_per_endpoint * weights[i]` points (0 points per endpoint means 160; a missing or
    /// 0 weight counts as 1), scaled down proportionally if the total would exceed
    /// [`MAX_POINTS`], but never below one point per endpoint. Identities should be unique: two
    /// endpoints with the same identity get the same points and the later one gets no keys.
    pub fn new(ids: &[&str], weights: &[u32], points_per_endpoint: u32) -> Ring {
        let per_weight = match points_per_endpoint {
            0 => DEFAULT_POINTS_PER_ENDPOINT,
            n => n,
        };
        // Indices are stored as u32 to keep points at 16 bytes; a cluster never has 4 billion
        // endpoints, so endpoints past that are left out rather than failing the whole ring.
        let n = ids.len().min(u32::MAX as usize);
        let wanted = |i: usize| -> u64 {
            let w = weights.get(i).copied().unwrap_or(1).max(1);
            u64::from(per_weight) * u64::from(w)
        };
        // u128 because a few endpoints with u32::MAX points and weight overflow u64 (and
        // want * MAX_POINTS below would, too); a u128 sum cannot overflow for 2^32 endpoints.
        let total: u128 = (0..n).map(|i| u128::from(wanted(i))).sum();
        let count = |i: usize| -> u64 {
            let want = wanted(i);
            if total <= u128::from(MAX_POINTS) {
                want
            } else {
                let scaled = u128::from(want) * u128::from(MAX_POINTS) / total;
                u64::try_from(scaled).unwrap_or(MAX_POINTS).max(1)
            }
        };
        let capacity = (0..n).fold(0u64, |sum, i| sum.saturating_add(count(i)));
        let mut points = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        for (i, id) in ids.iter().take(n).enumerate() {
            let Ok(index) = u32::try_from(i) else { break };
            // The point number is the hash seed: independent positions per point without
            // formatting "id-k" strings.
            points.extend((0..count(i)).map(|k| (xxh64(id.as_bytes(), k), index)));
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint for a key hash: the first point clockwise from `key` whose endpoint
    /// `usable(i)` accepts (so ejected endpoints are skipped and their keys spread over their
    /// neighbours); None if the ring is empty or no endpoint is usable.
    pub fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(p, _)| p < key);
        let (before, after) = self.points.split_at(start);
        // Walk clockwise from the key's position, wrapping around once.
        after
            .iter()
            .chain(before)
            .map(|&(_, i)| i as usize)
            .find(|&i| usable(i))
    }

    /// Whether the ring has no points (no endpoints).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Hashes a request key (header value, cookie, IP bytes...) to a ring position.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

// XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md). Written out here
// rather than pulled in as a crate because it is 50 lines and its output must never change;
// the tests pin it to the reference test vectors.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

fn lane(stripe: &[u8; 32], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&stripe[i * 8..i * 8 + 8]);
    u64::from_le_bytes(b)
}

/// XXH64 of `input` with `seed`.
fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut h = if input.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while let Some((stripe, tail)) = rest.split_first_chunk::<32>() {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, lane(stripe, i));
            }
            rest = tail;
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u64);
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        h ^= round(0, u64::from_le_bytes(*word));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = tail;
    }
    if let Some((word, tail)) = rest.split_first_chunk::<4>() {
        h ^= u64::from(u32::from_le_bytes(*word)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = tail;
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: u64 = 100_000;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
    }

    fn ring(ids: &[String], weights: &[u32]) -> Ring {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ring::new(&refs, weights, 0)
    }

    /// Key k's endpoint for all test keys, with every endpoint usable.
    fn assign(ring: &Ring) -> Vec<usize> {
        (0..KEYS)
            .map(|k| ring.pick(hash_key(&k.to_le_bytes()), |_| true).unwrap())
            .collect()
    }

    fn counts(assigned: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in assigned {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn xxh64_matches_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn deterministic() {
        let ids = ids(5);
        let a = ring(&ids, &[]);
        let b = ring(&ids, &[]);
        assert_eq!(a.points, b.points);
        assert_eq!(a.points.len(), 5 * 160);
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
        assert_eq!(assign(&a), assign(&b));
    }

    #[test]
    fn empty_ring_and_nothing_usable() {
        let empty = Ring::new(&[], &[], 0);
        assert!(empty.is_empty());
        assert_eq!(empty.pick(123, |_| true), None);
        let r = ring(&ids(3), &[]);
        assert!(!r.is_empty());
        assert_eq!(r.pick(123, |_| false), None);
        // Keys past the last point wrap around to the first.
        assert_eq!(r.pick(u64::MAX, |_| true), Some(r.points[0].1 as usize));
    }

    #[test]
    fn distribution_is_roughly_even() {
        let r = ring(&ids(10), &[]);
        let c = counts(&assign(&r), 10);
        let ideal = KEYS as f64 / 10.0;
        for (i, &n) in c.iter().enumerate() {
            let dev = (n as f64 - ideal).abs() / ideal;
            assert!(dev <= 0.25, "endpoint {i} got {n} keys: {c:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let all = ids(10);
        let before = assign(&ring(&all, &[]));
        let removed = 3;
        let rest: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, s)| s.clone())
            .collect();
        let after = assign(&ring(&rest, &[]));
        // Map the new indices back to the old ones.
        let old = |j: usize| if j >= removed { j + 1 } else { j };
        let (mut kept_others, mut others, mut kept) = (0, 0, 0);
        for (b, a) in before.iter().zip(&after) {
            let same = *b == old(*a);
            if *b != removed {
                others += 1;
                kept_others += usize::from(same);
            }
            kept += usize::from(same);
        }
        assert!(kept_others * 100 >= others * 95, "{kept_others}/{others}");
        assert!(kept * 100 >= KEYS as usize * 88, "{kept}/{KEYS}");
    }

    #[test]
    fn weights_skew_the_distribution() {
        let r = ring(&ids(2), &[1, 3]);
        assert_eq!(r.points.len(), 4 * 160);
        let c = counts(&assign(&r), 2);
        let share = c[1] as f64 / KEYS as f64;
        assert!((0.65..=0.85).contains(&share), "{c:?}");
        // A zero weight counts as 1.
        let z = ring(&ids(2), &[0, 1]);
        assert_eq!(z.points.len(), 2 * 160);
    }

    #[test]
    fn unusable_endpoint_moves_only_its_keys() {
        let r = ring(&ids(10), &[]);
        let before = assign(&r);
        let skipped = 7;
        let mut moved_to = vec![0; 10];
        for (k, &b) in before.iter().enumerate() {
            let a = r
                .pick(hash_key(&(k as u64).to_le_bytes()), |i| i != skipped)
                .unwrap();
            if b == skipped {
                assert_ne!(a, skipped);
                moved_to[a] += 1;
            } else {
                assert_eq!(a, b, "key {k} moved though its endpoint is usable");
            }
        }
        // The skipped endpoint's keys spread over several others, not just one neighbour.
        assert!(
            moved_to.iter().filter(|&&n| n > 0).count() >= 5,
            "{moved_to:?}"
        );
    }

    #[test]
    fn points_are_capped() {
        let ids = ids(10);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let r = Ring::new(&refs, &[u32::MAX; 10], u32::MAX);
        assert!(r.points.len() as u64 <= MAX_POINTS);
        assert!(r.points.len() as u64 >= MAX_POINTS - 10);
        // Scaling keeps the proportions of the weights.
        let r = Ring::new(&refs[..2], &[1, 3], 50_000);
        let c = counts(
            &r.points.iter().map(|p| p.1 as usize).collect::<Vec<_>>(),
            2,
        );
        assert_eq!(c, vec![25_000, 75_000]);
    }
}
