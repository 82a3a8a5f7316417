//! The fuzz targets' bodies (`certs/fuzz/src/lib.rs`, compiled in here) run on stable and
//! deterministically: over the committed seed corpus, over every truncation of a real CSR and
//! certificate, over a few thousand seeded byte mutations, and over hand-made CSRs that try to
//! slip another identity or a CA flag past the CA. Any panic fails with the input in hex; so
//! does a signed CSR that names someone else or asks for a CA (the harness checks every signed
//! CSR with x509-parser, independently of rcgen, which the CA parses with).
//!
//! `cargo test -p halyard-certs --test fuzz_inputs -- --ignored write_seed_corpus` rewrites the
//! seed corpus in `certs/fuzz/corpus/`.
#![forbid(unsafe_code)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use halyard_certs::{CaPolicy, CertificateAuthority, SignError, SpiffeId, WorkloadKey};
use rcgen::{
    Attribute, BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair, SanType,
};

use harness::{fixture, CALLER};

/// Runs `f` on `input`, turning a panic into a failure that shows the input.
fn guarded<T>(what: &str, input: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(input))) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("?");
            panic!(
                "{what}: panicked ({msg}) on the {}-byte input {}",
                input.len(),
                hex(input)
            )
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// xorshift64*: a fixed seed gives the same mutations on every run and machine.
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
        // Bias towards the values that move DER lengths and tags.
        const SPECIAL: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0xff, 0x30];
        if self.below(4) == 0 {
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

fn csr_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p
}

/// A CSR (DER) signed with a fresh P-256 key, with extra PKCS#10 attributes.
fn csr_der(params: &CertificateParams, attrs: Vec<Attribute>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    params
        .serialize_request_with_attributes(&key, attrs)
        .unwrap()
        .der()
        .to_vec()
}

fn pem_of(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    match n {
        0..0x80 => out.push(n as u8),
        0x80..0x100 => out.extend([0x81, n as u8]),
        _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// An X.509 extension: `oid` is the encoded OID body.
fn extension(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let crit: &[u8] = if critical { &[0x01, 0x01, 0xff] } else { &[] };
    tlv(
        0x30,
        &[tlv(0x06, oid), crit.to_vec(), tlv(0x04, value)].concat(),
    )
}

const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const PKCS9_EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];

fn ca_true() -> Vec<u8> {
    extension(OID_BASIC_CONSTRAINTS, true, &tlv(0x30, &[0x01, 0x01, 0xff]))
}

fn san_uri(uri: &str) -> Vec<u8> {
    extension(OID_SAN, false, &tlv(0x30, &tlv(0x86, uri.as_bytes())))
}

/// A second extensionRequest attribute holding `exts`.
fn extension_request(exts: &[Vec<u8>]) -> Attribute {
    Attribute {
        oid: PKCS9_EXTENSION_REQUEST,
        values: tlv(0x31, &tlv(0x30, &exts.concat())),
    }
}

/// CSRs, with whether the CA must sign them for CALLER, as the seed corpus holds them.
fn csr_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let me = SpiffeId::parse(CALLER).unwrap();
    let other = SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/backend").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ca_flag = csr_params(&[CALLER]);
    ca_flag.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    vec![
        (
            "seed-valid-frontend.pem",
            key.csr_pem(&me).unwrap().into_bytes(),
        ),
        (
            "seed-valid-frontend-p384.der",
            csr_params(&[CALLER])
                .serialize_request(&p384)
                .unwrap()
                .der()
                .to_vec(),
        ),
        (
            "seed-refused-other-identity.pem",
            key.csr_pem(&other).unwrap().into_bytes(),
        ),
        (
            "seed-refused-ca-flag.pem",
            pem_of("CERTIFICATE REQUEST", &csr_der(&ca_flag, vec![])).into_bytes(),
        ),
        ("seed-refused-hidden-ca.der", hidden_ca_duplicate()),
    ]
}

/// CA:TRUE then CA:FALSE in one extension request (rcgen keeps the last one it reads).
fn hidden_ca_duplicate() -> Vec<u8> {
    let mut p = csr_params(&[CALLER]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        tlv(0x30, &[]),
    )];
    csr_der(&p, vec![])
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new("fuzz/corpus").join(target)
}

/// The committed seeds of `target`, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{}: seed corpus missing", dir.display());
    out
}

/// Regenerates `certs/fuzz/corpus/*/seed-*` (CSRs and IDs do not expire; the certificates do,
/// which only moves where verification fails).
#[test]
#[ignore = "rewrites the committed seed corpus"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    for (name, data) in csr_seeds() {
        write("csr", name, &data);
    }

    let root = CertificateAuthority::self_signed("cluster.local", CaPolicy::default()).unwrap();
    let (cert, key, chain) = root.new_intermediate("Halyard intermediate").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
    w("ca-cert.pem", &cert);
    w("ca-key.pem", &key);
    w("cert-chain.pem", &chain);
    w("root-cert.pem", &root.roots_pem().concat());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let inter =
        CertificateAuthority::from_cacerts(dir.path(), "cluster.local", CaPolicy::default())
            .unwrap();
    let me = SpiffeId::parse(CALLER).unwrap();
    let (_, issued) = inter.issue(&me, Duration::from_secs(3600)).unwrap();
    let leaf = halyard_certs::pem::certs_from_pem(&issued[0]).unwrap();
    write("cert", "seed-leaf.der", &leaf[0]);
    write("cert", "seed-chain.pem", issued.concat().as_bytes());
    write(
        "cert",
        "seed-root.pem",
        root.roots_pem().concat().as_bytes(),
    );

    for (name, id) in [
        ("seed-valid-istio.txt", CALLER),
        ("seed-valid-trust-domain.txt", "spiffe://example.org"),
        (
            "seed-valid-path.txt",
            "spiffe://prod.example-1.org/workloads/a_b.c-D",
        ),
        (
            "seed-invalid-dotdot.txt",
            "spiffe://cluster.local/ns/../sa/b",
        ),
        ("seed-invalid-port.txt", "spiffe://cluster.local:8080/ns/a"),
    ] {
        write("spiffe", name, id.as_bytes());
    }
}

#[test]
fn seed_corpus_means_what_its_names_say() {
    for (name, data) in seeds("csr") {
        let signed = guarded(&format!("csr {name}"), &data, harness::csr);
        if name.starts_with("seed-valid-") {
            assert_eq!(signed, 1, "{name} should be signed (as PEM or as DER)");
        } else {
            assert!(name.starts_with("seed-refused-"), "{name}");
            assert_eq!(signed, 0, "{name} was signed");
        }
    }
    for (name, data) in seeds("cert") {
        let readable = guarded(&format!("cert {name}"), &data, harness::cert);
        assert!(readable >= 1, "{name}: no readable certificate");
    }
    for (name, data) in seeds("spiffe") {
        let parsed = guarded(&format!("spiffe {name}"), &data, harness::spiffe);
        assert_eq!(parsed, name.starts_with("seed-valid-"), "{name}");
    }
}

#[test]
fn every_truncation() {
    let me = SpiffeId::parse(CALLER).unwrap();
    let pem = WorkloadKey::generate().unwrap().csr_pem(&me).unwrap();
    let der = pem::parse(&pem).unwrap().into_contents();
    for n in 0..=pem.len() {
        let cut = &pem.as_bytes()[..n];
        let signed = guarded("csr PEM truncation", cut, harness::csr);
        // Only the trailing newline may go.
        assert!(
            signed == 0 || pem[..n].trim_end() == pem.trim_end(),
            "signed {n} of {} bytes",
            pem.len()
        );
    }
    for n in 0..=der.len() {
        let signed = guarded("csr DER truncation", &der[..n], harness::csr);
        assert_eq!(
            signed,
            usize::from(n == der.len()),
            "{n} of {} bytes",
            der.len()
        );
    }

    let f = fixture();
    let leaf = f.leaf.as_ref();
    for n in 0..=leaf.len() {
        let readable = guarded("cert DER truncation", &leaf[..n], harness::cert);
        assert_eq!(
            readable,
            usize::from(n == leaf.len()),
            "{n} of {}",
            leaf.len()
        );
    }
    let (_, chain) = f.ca.issue(&me, Duration::from_secs(600)).unwrap();
    let chain = chain.concat();
    for n in (0..=chain.len()).step_by(7) {
        guarded("cert PEM truncation", &chain.as_bytes()[..n], harness::cert);
    }

    let long = "spiffe://a-b.c_d.example/ns/demo/sa/front.end-1_x";
    for n in 0..=long.len() {
        guarded("spiffe truncation", &long.as_bytes()[..n], harness::spiffe);
    }
}

#[test]
fn seeded_mutations() {
    let mut rng = Rng(0x5eed_0fca_5eed_0001);
    let me = SpiffeId::parse(CALLER).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let valid_pem = key.csr_pem(&me).unwrap();
    let valid_der = pem::parse(&valid_pem).unwrap().into_contents();
    let seeds = csr_seeds();
    let refused = seeds
        .iter()
        .filter(|(n, _)| n.starts_with("seed-refused-"))
        .map(|(_, d)| match pem::parse(d) {
            Ok(p) => p.into_contents(),
            Err(_) => d.clone(),
        });

    // Mutated CSRs for someone else or asking for a CA: never signed, in either presentation.
    let mut cases = 0;
    for base in refused {
        for _ in 0..1000 {
            let m = mutate(&mut rng, &base);
            assert_eq!(guarded("mutated refused CSR", &m, harness::csr), 0);
            cases += 1;
        }
    }
    // Mutated good CSRs: whatever gets signed passes the harness's checks.
    for base in [valid_der.as_slice(), valid_pem.as_bytes()] {
        for _ in 0..1000 {
            let m = mutate(&mut rng, base);
            guarded("mutated CSR", &m, harness::csr);
            cases += 1;
        }
    }

    let f = fixture();
    let (_, chain) = f.ca.issue(&me, Duration::from_secs(600)).unwrap();
    let chain = chain.concat();
    let mut readable = 0;
    for base in [f.leaf.as_ref(), f.ca.roots()[0].as_ref(), chain.as_bytes()] {
        for _ in 0..1000 {
            let m = mutate(&mut rng, base);
            readable += guarded("mutated certificate", &m, harness::cert);
            cases += 1;
        }
    }
    // Many mutations of a certificate still parse (those that land in a key, a signature or
    // a string), so the checks behind parsing ran too.
    assert!(
        readable > 400,
        "only {readable} mutated certificates parsed"
    );

    let mut parsed = 0;
    for base in [
        CALLER,
        "spiffe://example.org",
        "spiffe://a.b/c/d/e",
        "spiffe://cluster.local/ns/x/sa/y/extra",
    ] {
        for _ in 0..500 {
            let m = mutate(&mut rng, base.as_bytes());
            parsed += usize::from(guarded("mutated SPIFFE ID", &m, harness::spiffe));
            cases += 1;
        }
    }
    assert!(parsed > 200, "only {parsed} mutated IDs parsed");
    assert!(cases >= 10_000, "{cases}");
}

/// Hand-made CSRs, correctly self-signed, that ask for more than the caller may have.
#[test]
fn csrs_smuggling_a_ca_flag_or_another_identity_are_refused() {
    let f = fixture();
    let backend = "spiffe://cluster.local/ns/demo/sa/backend-with-a-longer-name";
    // A long extension sorts after rcgen's own extension request in the DER SET OF.
    let padding = extension(OID_SKI, false, &tlv(0x04, &[0xab; 64]));

    let mut ca_then_dup = csr_params(&[CALLER]);
    ca_then_dup.is_ca = IsCa::ExplicitNoCa;
    ca_then_dup.custom_extensions = vec![CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        tlv(0x30, &[0x01, 0x01, 0xff]),
    )];

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CA:TRUE then CA:FALSE", hidden_ca_duplicate()),
        ("CA:FALSE then CA:TRUE", csr_der(&ca_then_dup, vec![])),
        (
            "CA:TRUE in a second extension request (sorted first)",
            csr_der(
                &csr_params(&[CALLER]),
                vec![extension_request(&[ca_true()])],
            ),
        ),
        (
            "CA:TRUE in a second extension request (sorted last)",
            csr_der(
                &csr_params(&[CALLER]),
                vec![extension_request(&[ca_true(), padding.clone()])],
            ),
        ),
        (
            "another URI in a second extension request",
            csr_der(
                &csr_params(&[CALLER]),
                vec![extension_request(&[san_uri(backend), padding.clone()])],
            ),
        ),
        (
            "only a second extension request names the caller",
            csr_der(
                &csr_params(&[backend]),
                vec![extension_request(&[san_uri(CALLER)])],
            ),
        ),
        (
            "CA:TRUE as a second value of the extension request",
            csr_der(
                &CertificateParams::default(),
                vec![Attribute {
                    oid: PKCS9_EXTENSION_REQUEST,
                    values: tlv(
                        0x31,
                        &[
                            tlv(0x30, &san_uri(CALLER)),
                            tlv(0x30, &[ca_true(), padding.clone()].concat()),
                        ]
                        .concat(),
                    ),
                }],
            ),
        ),
        (
            "the caller twice",
            csr_der(&csr_params(&[CALLER, CALLER]), vec![]),
        ),
        (
            "the caller and another",
            csr_der(&csr_params(&[CALLER, backend]), vec![]),
        ),
        (
            "upper-case caller",
            csr_der(&csr_params(&[&CALLER.to_uppercase()]), vec![]),
        ),
        ("no SAN", csr_der(&CertificateParams::default(), vec![])),
    ];
    let mut signed = Vec::new();
    for (what, der) in cases {
        let pem = pem_of("CERTIFICATE REQUEST", &der);
        match f.ca.sign_csr(&pem, &f.caller, None) {
            Err(
                SignError::CaRequested
                | SignError::IdentityMismatch { .. }
                | SignError::InvalidCsr(_),
            ) => {}
            other => signed.push(format!("{what}: {:?}", other.map(|_| "signed"))),
        }
        let harness = catch_unwind(AssertUnwindSafe(|| harness::csr(&der)));
        if !matches!(harness, Ok(0)) {
            signed.push(format!("{what}: the harness failed or signed it"));
        }
    }
    assert!(signed.is_empty(), "{signed:#?}");

    // Without the smuggled part the same requests are signed: the refusals above are for it.
    let plain = csr_der(&csr_params(&[CALLER]), vec![]);
    assert_eq!(guarded("plain", &plain, harness::csr), 1);
    let mut not_ca = csr_params(&[CALLER]);
    not_ca.is_ca = IsCa::ExplicitNoCa;
    let not_ca = csr_der(&not_ca, vec![]);
    assert_eq!(guarded("CA:FALSE", &not_ca, harness::csr), 1);
}

#[test]
fn spiffe_edge_cases() {
    for (s, ok) in [
        ("spiffe://a", true),
        ("spiffe://a/b", true),
        ("spiffe://a/ns/x/sa/y", true),
        ("spiffe://a/ns/x/sa", true),
        ("spiffe://a/ns/x/sa/y/z", true),
        ("spiffe://a/", false),
        ("spiffe://a//", false),
        ("spiffe://", false),
        ("spiffe:///", false),
        ("spiffe://a/é", false),
        ("spiffe://é/a", false),
        ("spiffe://a:/b", false),
        ("spiffe://[::1]/b", false),
        ("spiffe://a/b%2F", false),
        ("spiffe://a/./b", false),
        ("spiffe://a/.../b", true),
        ("", false),
    ] {
        assert_eq!(guarded(s, s.as_bytes(), harness::spiffe), ok, "{s}");
    }
    let long_td = format!("spiffe://{}", "a".repeat(255));
    assert!(guarded(
        "255-byte trust domain",
        long_td.as_bytes(),
        harness::spiffe
    ));
    let too_long_td = format!("spiffe://{}", "a".repeat(256));
    assert!(!guarded(
        "256-byte trust domain",
        too_long_td.as_bytes(),
        harness::spiffe
    ));
    let at_limit = format!("spiffe://a/{}", "x".repeat(2048 - "spiffe://a/".len()));
    assert!(guarded("2048 bytes", at_limit.as_bytes(), harness::spiffe));
    let over = format!("{at_limit}x");
    assert!(!guarded("2049 bytes", over.as_bytes(), harness::spiffe));
    assert!(!guarded("not UTF-8", b"spiffe://a/\xff", harness::spiffe));
}
