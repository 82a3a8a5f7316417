//! The bodies of halyard-certs' fuzz targets, with the properties they check.
//!
//! Each function takes arbitrary bytes, drives the certs crate through its public API only and
//! panics if and only if it finds a bug: a panic inside the crate, or a result that breaks a
//! property stated here (a signed CSR that names someone else or asks for a CA, a verified
//! certificate whose identity differs from its SAN, a SPIFFE ID that does not round-trip).
//!
//! The fuzz targets in `fuzz_targets/` call these; `certs/tests/fuzz_inputs.rs` compiles this
//! same file (`#[path]`) and runs it on stable over the seed corpus, truncations and seeded
//! mutations, so `cargo test` checks the same properties.
#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::time::Duration;

use halyard_certs::verify::{self, Usage};
use halyard_certs::{CaPolicy, CertificateAuthority, SpiffeId, TrustBundle, VerifyError};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The trust domain of the fixture CA.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The identity the CSR target's caller has proved (its credential), and the fixture leaf's.
pub const CALLER: &str = "spiffe://cluster.local/ns/demo/sa/frontend";
/// The lifetime asked for with the DER presentation of a CSR (the PEM one asks for none).
pub const TTL: Duration = Duration::from_secs(3600);

/// A CA made once per process, its bundle, and a leaf it issued for [`CALLER`].
pub struct Fixture {
    /// A self-signed root for [`TRUST_DOMAIN`].
    pub ca: CertificateAuthority,
    /// [`CALLER`], parsed.
    pub caller: SpiffeId,
    /// The CA's roots.
    pub bundle: TrustBundle,
    /// A certificate the CA issued for [`CALLER`], DER.
    pub leaf: CertificateDer<'static>,
}

/// The process-wide fixture (created on first use).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = CertificateAuthority::self_signed(TRUST_DOMAIN, CaPolicy::default())
            .expect("self-signed CA");
        let caller = SpiffeId::parse(CALLER).expect("caller ID");
        let bundle = TrustBundle::new(ca.roots().to_vec()).expect("bundle");
        let (_key, chain) = ca.issue(&caller, TTL).expect("issue a leaf");
        let leaf = halyard_certs::pem::certs_from_pem(&chain[0])
            .expect("leaf PEM")
            .remove(0);
        Fixture {
            ca,
            caller,
            bundle,
            leaf,
        }
    })
}

/// `data` as the CSR PEM text (lossy UTF-8) and as CSR DER in a PEM envelope, signed by the
/// fixture CA for [`CALLER`]. Returns how many of the two were signed (0, 1 or 2).
///
/// Refusals must be typed errors; whatever is signed must be a CSR that asks for exactly
/// [`CALLER`] and no CA, and the chain must be a non-CA leaf for [`CALLER`] that certifies the
/// CSR's key, verifies against the bundle, and ends with the root.
pub fn csr(data: &[u8]) -> usize {
    let f = fixture();
    let text = String::from_utf8_lossy(data);
    let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    let mut signed = 0;
    for (pem_text, ttl) in [(text.as_ref(), None), (wrapped.as_str(), Some(TTL))] {
        // Err is any SignError: the type is the contract, the variant depends on the input.
        if let Ok(chain) = f.ca.sign_csr(pem_text, &f.caller, ttl) {
            let der = pem::parse(pem_text)
                .expect("the CA signed text that is not PEM")
                .into_contents();
            check_signed(f, &der, &chain);
            signed += 1;
        }
    }
    signed
}

/// What a signed CSR must have asked for, read with x509-parser independently of rcgen (which
/// the CA parses with): every extension request, not only the first.
fn check_signed(f: &Fixture, csr_der: &[u8], chain: &[String]) {
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .expect("the CA signed a CSR x509-parser cannot parse");
    assert!(
        csr.verify_signature().is_ok(),
        "the CA signed a CSR whose signature does not verify"
    );
    let mut uris = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(!bc.ca, "the CA signed a CSR asking for a CA certificate")
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push(u.to_string()),
                            other => panic!("the CA signed a CSR with the extra SAN {other:?}"),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        uris,
        [CALLER],
        "the CA signed a CSR for another identity than the caller's"
    );

    let certs: Vec<_> = chain
        .iter()
        .map(|p| {
            let mut c = halyard_certs::pem::certs_from_pem(p).expect("issued chain is PEM");
            assert_eq!(c.len(), 1, "one certificate per chain entry");
            c.remove(0)
        })
        .collect();
    assert_eq!(certs.len(), 2, "leaf then root");
    assert_eq!(&certs[1..], f.ca.roots(), "the chain ends with the root");
    let leaf = &certs[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).expect("issued leaf parses");
    assert_eq!(
        parsed.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the leaf certifies another key than the CSR's"
    );
    match parsed.basic_constraints() {
        Ok(Some(bc)) => assert!(!bc.value.ca, "the CA issued a CA certificate"),
        other => panic!("issued leaf without a single basicConstraints: {other:?}"),
    }
    for usage in [Usage::Client, Usage::Server] {
        let id = f
            .bundle
            .verify(leaf, &[], UnixTime::now(), usage)
            .expect("issued leaf verifies");
        assert_eq!(id, f.caller);
    }
    let info = verify::cert_info(leaf).expect("issued leaf info");
    assert_eq!(info.identity.as_ref(), Some(&f.caller));
    assert!(info.not_after > info.not_before);
}

/// `data` as a PEM trust bundle, and (the raw bytes, and every PEM `CERTIFICATE` block in them)
/// as DER for `cert_info`, `spiffe_id_of` and `TrustBundle::verify`, as end entity and as
/// intermediate. Returns how many DER certificates `cert_info` could read.
///
/// `cert_info` and `spiffe_id_of` must agree; a verified certificate's identity is its
/// `spiffe_id_of`; an unusable intermediate must not break the fixture leaf's good chain; a
/// bundle that trusts the fixture leaf returns [`CALLER`].
pub fn cert(data: &[u8]) -> usize {
    let f = fixture();
    let now = UnixTime::now();
    let text = String::from_utf8_lossy(data);

    if let Ok(bundle) = TrustBundle::from_pem(&text) {
        assert!(!bundle.roots().is_empty(), "a bundle with no roots");
        for fp in bundle.fingerprints() {
            assert_eq!(fp.len(), 95, "fingerprint {fp}");
        }
        if let Ok(id) = bundle.verify(&f.leaf, &[], now, Usage::Client) {
            assert_eq!(id, f.caller);
        }
        // Each root as an end entity of its own bundle: goes through webpki's path building
        // with the anchors the input made.
        for root in bundle.roots() {
            if let Ok(id) = bundle.verify(root, &[], now, Usage::Server) {
                assert_eq!(
                    Ok(id),
                    verify::spiffe_id_of(root).map_err(|e| e.to_string())
                );
            }
        }
    }

    let mut ders = halyard_certs::pem::certs_from_pem(&text).unwrap_or_default();
    ders.push(CertificateDer::from(data.to_vec()));
    let mut readable = 0;
    for der in &ders {
        readable += usize::from(check_der(f, der, now));
    }
    readable
}

fn check_der(f: &Fixture, der: &CertificateDer<'static>, now: UnixTime) -> bool {
    let id = verify::spiffe_id_of(der);
    let info = verify::cert_info(der);
    match &info {
        Ok(info) => {
            assert_eq!(info.identity, id.as_ref().ok().cloned(), "cert_info");
            assert_eq!(info.fingerprint, verify::fingerprint(der));
            assert_eq!(info.fingerprint.len(), 95);
        }
        Err(_) => assert!(
            matches!(id, Err(VerifyError::Parse(_))),
            "cert_info cannot parse what spiffe_id_of reads: {id:?}"
        ),
    }
    for usage in [Usage::Client, Usage::Server] {
        if let Ok(got) = f.bundle.verify(der, &[], now, usage) {
            assert_eq!(Some(&got), id.as_ref().ok(), "verified identity");
        }
    }
    // As an intermediate beside a leaf the root signed directly: never in the way.
    let with = f
        .bundle
        .verify(&f.leaf, std::slice::from_ref(der), now, Usage::Client);
    assert_eq!(
        with.map_err(|e| e.to_string()),
        Ok(f.caller.clone()),
        "an extra intermediate broke a good chain"
    );
    // As the end entity with the fixture leaf offered as its intermediate.
    if let Ok(got) = f
        .bundle
        .verify(der, std::slice::from_ref(&f.leaf), now, Usage::Server)
    {
        assert_eq!(Some(&got), id.as_ref().ok(), "verified identity");
    }
    info.is_ok()
}

/// `data` (if UTF-8) as a SPIFFE ID. Returns whether it parsed.
///
/// `parse` and `FromStr` agree; a parsed ID displays as the input, and the display parses back
/// to an equal ID; its parts put back together give the input; an Istio-style ID is what
/// `SpiffeId::workload` builds from its parts.
pub fn spiffe(data: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = SpiffeId::parse(s);
    assert_eq!(parsed, s.parse::<SpiffeId>(), "parse and FromStr differ");
    let Ok(id) = parsed else {
        return false;
    };
    let shown = id.to_string();
    assert_eq!(shown, s, "Display is not the input");
    let again = SpiffeId::parse(&shown).expect("Display output does not parse");
    assert_eq!(again, id, "Display -> parse is not the same ID");
    assert_eq!(again.as_str(), id.as_str());
    assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
    assert!(halyard_certs::spiffe::check_trust_domain(id.trust_domain()).is_ok());
    assert!(id.path().is_empty() || id.path().starts_with('/'));
    match (id.namespace(), id.service_account()) {
        (Some(ns), Some(sa)) => assert_eq!(
            SpiffeId::workload(id.trust_domain(), ns, sa).as_ref(),
            Ok(&id),
            "workload() from the parts"
        ),
        (None, None) => {}
        parts => panic!("half an Istio identity: {parts:?}"),
    }
    true
}
