//! The fuzz targets' bodies (`filters/fuzz/src/lib.rs`, compiled in here) run on stable and
//! deterministically: over the committed seed corpus, every truncation of each seed, seeded
//! byte mutations, and inputs assembled from the tokens that matter (separators, dots, escapes
//! of them, wildcards, brackets, JSON scalars and lists). Any panic fails with the input shown.
//!
//! `cargo test -p halyard-filters --test fuzz_inputs -- --ignored write_seed_corpus` rewrites the
//! seed corpus in `filters/fuzz/corpus/`.
#![forbid(unsafe_code)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use harness::{claim_match, path_normalize, SEEDS};

/// Runs a target on `input`, turning a panic into a failure that shows the input.
fn guarded(what: &str, input: &[u8], f: fn(&[u8])) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("?");
        panic!(
            "{what}: panicked ({msg}) on {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

fn target(name: &str) -> fn(&[u8]) {
    match name {
        "path_normalize" => path_normalize,
        "claim_match" => claim_match,
        other => panic!("no target {other}"),
    }
}

/// xorshift64*: a fixed seed gives the same inputs on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        // Bias towards the bytes that steer both parsers.
        const SPECIAL: &[u8] = b"%/\\.?#*[]\n\"{}:,0aAfF2eE5cC\x00\x7f\xc3\xff";
        if self.below(3) > 0 {
            SPECIAL[self.below(SPECIAL.len())]
        } else {
            self.next() as u8
        }
    }
}

/// One to four byte flips, overwrites, inserts or deletions.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = rng.byte(),
            2 if at < v.len() => {
                v.remove(at);
            }
            _ => {
                let b = rng.byte();
                v.insert(at, b);
            }
        }
    }
    v
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new("fuzz/corpus").join(target)
}

#[test]
fn seed_corpus() {
    for name in ["path_normalize", "claim_match"] {
        let dir = corpus_dir(name);
        let mut n = 0;
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("seed-"))
            {
                let data = std::fs::read(&path).unwrap();
                guarded(&path.display().to_string(), &data, target(name));
                n += 1;
            }
        }
        let expected = SEEDS.iter().filter(|(t, _, _)| *t == name).count();
        assert_eq!(n, expected, "{}: seed corpus out of date", dir.display());
    }
}

#[test]
fn truncations_and_mutations_of_the_seeds() {
    let mut rng = Rng(0x5eed_f11e_7e55_0001);
    for (name, file, seed) in SEEDS {
        let f = target(name);
        for len in 0..=seed.len() {
            guarded(&format!("{name} {file} truncated"), &seed[..len], f);
        }
        for _ in 0..2_000 {
            let input = mutate(&mut rng, seed);
            guarded(&format!("{name} {file} mutated"), &input, f);
        }
    }
}

#[test]
fn paths_from_tokens() {
    const TOKENS: &[&str] = &[
        "/", "/", "\\", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "a", "admin", "%",
        "%4", "%41", "%7e", "%3a", "%25", "?", "#", "%00", "%0a", "\u{e9}", "//", " ", "*", "~",
        "%zz", ";", "=",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut p = String::new();
        for _ in 0..1 + rng.below(10) {
            p.push_str(TOKENS[rng.below(TOKENS.len())]);
        }
        guarded("path_normalize", p.as_bytes(), path_normalize);
    }
}

#[test]
fn claims_from_tokens() {
    const PATTERNS: &[&str] = &[
        "admin", "*", "adm*", "*min", "", "1", "true", "1.5", "**", "a*b",
    ];
    const NAMES: &[&str] = &["groups", "a.b", "a.b.c", "x", "", ".", "a[b", "n"];
    const VALUES: &[&str] = &[
        r#""admin""#,
        r#"["dev", "admin"]"#,
        r#"[["admin"]]"#,
        "true",
        "false",
        "1",
        "1.5",
        "1e3",
        "-0",
        "null",
        r#"{"b": "admin"}"#,
        r#"{"b": {"c": ["x", true, 1]}}"#,
        "",
        "[",
        r#""""#,
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..5_000 {
        let name = NAMES[rng.below(NAMES.len())];
        let top = name
            .split('.')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("c");
        let value = VALUES[rng.below(VALUES.len())];
        let json = if rng.below(2) == 0 {
            format!(r#"{{"{top}": {value}}}"#)
        } else {
            value.to_string()
        };
        let input = format!("{}\n{name}\n{json}", PATTERNS[rng.below(PATTERNS.len())]);
        guarded("claim_match", input.as_bytes(), claim_match);
    }
}

/// Regenerates `filters/fuzz/corpus/*/seed-*` from [`SEEDS`].
#[test]
#[ignore = "rewrites the committed seed corpus"]
fn write_seed_corpus() {
    for (name, file, data) in SEEDS {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), data).unwrap();
    }
}
