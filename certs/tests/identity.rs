//! The CA, CSRs, verification and TLS handshakes through the crate's public API.

use std::sync::Arc;
use std::time::Duration;

use halyard_certs::tls::{client_config, peer_identity, server_config, ClientAuth, ALPN_H2};
use halyard_certs::verify::Usage;
use halyard_certs::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn ca(td: &str) -> CertificateAuthority {
    CertificateAuthority::self_signed(td, CaPolicy::default()).unwrap()
}

fn bundle(ca: &CertificateAuthority) -> TrustBundle {
    TrustBundle::new(ca.roots().to_vec()).unwrap()
}

fn der_chain(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .flat_map(|p| halyard_certs::pem::certs_from_pem(p).unwrap())
        .collect()
}

fn at(offset_secs: i64) -> UnixTime {
    let now = UnixTime::now().as_secs() as i64;
    UnixTime::since_unix_epoch(Duration::from_secs((now + offset_secs) as u64))
}

/// A CSR made with rcgen directly, for requests our own key type would never make.
fn raw_csr(f: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    f(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn signs_a_csr_for_the_caller_and_the_chain_verifies() {
    let ca = ca("cluster.local");
    let me = id("spiffe://cluster.local/ns/demo/sa/frontend");
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_pem(&me).unwrap(),
            &me,
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let der = der_chain(&chain);
    let b = bundle(&ca);
    assert_eq!(
        b.verify(&der[0], &[], UnixTime::now(), Usage::Client)
            .unwrap(),
        me
    );
    assert_eq!(
        b.verify(&der[0], &[], UnixTime::now(), Usage::Server)
            .unwrap(),
        me
    );
    let info = verify::cert_info(&der[0]).unwrap();
    let life = info.not_after - info.not_before;
    assert!((3600..=3600 + 120).contains(&life), "lifetime {life}");
    // Expired and not yet valid.
    assert!(matches!(
        b.verify(&der[0], &[], at(2 * 3600), Usage::Client),
        Err(VerifyError::Chain(_))
    ));
    assert!(matches!(
        b.verify(&der[0], &[], at(-3600), Usage::Client),
        Err(VerifyError::Chain(_))
    ));
    // Another CA's bundle does not trust it.
    let other = ca_other();
    assert!(matches!(
        other.verify(&der[0], &[], UnixTime::now(), Usage::Client),
        Err(VerifyError::Chain(_))
    ));
}

fn ca_other() -> TrustBundle {
    bundle(&ca("cluster.local"))
}

#[test]
fn refuses_what_the_caller_may_not_have() {
    let ca = ca("cluster.local");
    let me = id("spiffe://cluster.local/ns/demo/sa/frontend");
    let other = id("spiffe://cluster.local/ns/demo/sa/backend");
    let key = WorkloadKey::generate().unwrap();

    // Another identity.
    let err = ca
        .sign_csr(&key.csr_pem(&other).unwrap(), &me, None)
        .unwrap_err();
    assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");

    // Extra SANs beside our own.
    let csr = raw_csr(|p| {
        p.subject_alt_names = vec![
            SanType::URI(me.as_str().try_into().unwrap()),
            SanType::DnsName("backend.demo.svc".try_into().unwrap()),
        ]
    });
    let err = ca.sign_csr(&csr, &me, None).unwrap_err();
    assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");

    // No SAN at all.
    let err = ca.sign_csr(&raw_csr(|_| {}), &me, None).unwrap_err();
    assert!(matches!(err, SignError::InvalidCsr(_)), "{err}");

    // A CA certificate.
    let csr = raw_csr(|p| {
        p.subject_alt_names = vec![SanType::URI(me.as_str().try_into().unwrap())];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    });
    assert!(matches!(
        ca.sign_csr(&csr, &me, None),
        Err(SignError::CaRequested)
    ));

    // A tampered CSR (signature no longer matches).
    let good = key.csr_pem(&me).unwrap();
    let mut der = rustls::pki_types::pem::PemObject::from_pem_slice(good.as_bytes())
        .map(|d: rustls::pki_types::CertificateSigningRequestDer<'static>| d.as_ref().to_vec())
        .unwrap();
    let n = der.len();
    der[n - 10] ^= 0x55;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = ca.sign_csr(&tampered, &me, None).unwrap_err();
    assert!(matches!(err, SignError::InvalidCsr(_)), "{err}");

    // Garbage.
    assert!(matches!(
        ca.sign_csr("hello", &me, None),
        Err(SignError::InvalidCsr(_))
    ));

    // Too long a lifetime.
    let err = ca
        .sign_csr(&good, &me, Some(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_err();
    assert!(matches!(err, SignError::TtlTooLong { .. }), "{err}");

    // Another trust domain than the CA's.
    let foreign = id("spiffe://evil.org/ns/demo/sa/frontend");
    let err = ca
        .sign_csr(&key.csr_pem(&foreign).unwrap(), &foreign, None)
        .unwrap_err();
    assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");
}

#[test]
fn root_is_kept_on_disk_with_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = CertificateAuthority::load_or_create(dir.path(), "cluster.local", CaPolicy::default())
        .unwrap();
    let mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let b = CertificateAuthority::load_or_create(dir.path(), "cluster.local", CaPolicy::default())
        .unwrap();
    assert_eq!(a.roots(), b.roots(), "the second start reuses the root");

    // A certificate from the reloaded CA verifies against the first one's bundle.
    let me = id("spiffe://cluster.local/ns/a/sa/b");
    let (_, chain) = b.issue(&me, Duration::from_secs(60)).unwrap();
    let der = der_chain(&chain);
    assert_eq!(
        bundle(&a)
            .verify(&der[0], &[], UnixTime::now(), Usage::Client)
            .unwrap(),
        me
    );

    // A key others can read is refused.
    std::fs::set_permissions(
        dir.path().join("root-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err =
        CertificateAuthority::load_or_create(dir.path(), "cluster.local", CaPolicy::default())
            .unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn intermediate_from_cacerts_files() {
    let root = ca("cluster.local");
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
    let me = id("spiffe://cluster.local/ns/a/sa/b");
    let (_, issued) = inter.issue(&me, Duration::from_secs(60)).unwrap();
    assert_eq!(issued.len(), 3, "leaf, intermediate, root");
    let der = der_chain(&issued);
    let b = bundle(&root);
    assert_eq!(
        b.verify(&der[0], &der[1..2], UnixTime::now(), Usage::Server)
            .unwrap(),
        me
    );
    // Without the intermediate the leaf does not verify.
    assert!(b
        .verify(&der[0], &[], UnixTime::now(), Usage::Server)
        .is_err());

    // A key that does not match the certificate is refused.
    let (_, other_key, _) = root.new_intermediate("other").unwrap();
    w("ca-key.pem", &other_key);
    let err = CertificateAuthority::from_cacerts(dir.path(), "cluster.local", CaPolicy::default())
        .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

/// Drives a TLS handshake in memory; returns the server connection or the first error.
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<rustls::ServerConnection, rustls::Error> {
    let mut c = rustls::ClientConnection::new(client, ServerName::try_from("mesh.local").unwrap())?;
    let mut s = rustls::ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s);
        }
    }
    panic!("handshake did not finish");
}

fn store_for(ca: &CertificateAuthority, who: &SpiffeId) -> Arc<CertStore> {
    let store = CertStore::new(who.clone(), bundle(ca));
    let key = WorkloadKey::generate().unwrap();
    let chain = ca.sign_csr(&key.csr_pem(who).unwrap(), who, None).unwrap();
    store.install(&key, &chain).unwrap();
    store
}

#[test]
fn mutual_tls_checks_both_identities() {
    let ca = ca("cluster.local");
    let client_id = id("spiffe://cluster.local/ns/demo/sa/frontend");
    let server_id = id("spiffe://cluster.local/ns/demo/sa/backend");
    let cs = store_for(&ca, &client_id);
    let ss = store_for(&ca, &server_id);
    let server = server_config(ss.clone(), ClientAuth::Required, &[ALPN_H2]).unwrap();

    let ok = handshake(
        client_config(cs.clone(), server_id.clone(), &[ALPN_H2]).unwrap(),
        server.clone(),
    )
    .unwrap();
    assert_eq!(peer_identity(&ok), Some(client_id.clone()));
    assert_eq!(ok.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        ok.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // The client expects someone else: refused.
    let err = handshake(
        client_config(cs.clone(), id("spiffe://cluster.local/ns/demo/sa/db"), &[]).unwrap(),
        server.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("want: SpiffeId(spiffe://cluster.local/ns/demo/sa/db)"),
        "{err}"
    );

    // A client with no certificate: refused by a STRICT server.
    let empty = CertStore::new(client_id.clone(), bundle(&ca));
    let err = handshake(
        client_config(empty.clone(), server_id.clone(), &[]).unwrap(),
        server.clone(),
    );
    assert!(err.is_err());
    // ... but accepted where client certificates are optional.
    let optional = server_config(ss.clone(), ClientAuth::Optional, &[]).unwrap();
    let s = handshake(
        client_config(empty, server_id.clone(), &[]).unwrap(),
        optional,
    )
    .unwrap();
    assert_eq!(peer_identity(&s), None);

    // A client from another CA: refused.
    let foreign = store_for(&self::ca("cluster.local"), &client_id);
    let err = handshake(
        client_config(foreign, server_id.clone(), &[]).unwrap(),
        server.clone(),
    );
    assert!(err.is_err());

    // A client from another trust domain signed by a CA we trust (a shared root): refused.
    let other_td = CertificateAuthority::self_signed("other.domain", CaPolicy::default()).unwrap();
    let stranger = id("spiffe://other.domain/ns/demo/sa/frontend");
    let both = TrustBundle::new([ca.roots(), other_td.roots()].concat()).unwrap();
    let mixed = CertStore::new(stranger.clone(), both.clone());
    let key = WorkloadKey::generate().unwrap();
    let chain = other_td
        .sign_csr(&key.csr_pem(&stranger).unwrap(), &stranger, None)
        .unwrap();
    mixed.install(&key, &chain).unwrap();
    ss.set_bundle(both);
    let err = handshake(
        client_config(mixed, server_id.clone(), &[]).unwrap(),
        server,
    )
    .unwrap_err();
    assert!(err.to_string().contains("TrustDomain"), "{err}");
}

#[test]
fn renewal_swaps_the_certificate_for_new_handshakes() {
    let ca = ca("cluster.local");
    let me = id("spiffe://cluster.local/ns/a/sa/b");
    let store = store_for(&ca, &me);
    let first = store.current().unwrap().info.serial.clone();
    let key = WorkloadKey::generate().unwrap();
    store
        .install(
            &key,
            &ca.sign_csr(&key.csr_pem(&me).unwrap(), &me, None).unwrap(),
        )
        .unwrap();
    let second = store.current().unwrap().info.serial.clone();
    assert_ne!(first, second);

    // A chain for another identity, or one that does not match the key, is refused and the
    // current certificate stays.
    let other = id("spiffe://cluster.local/ns/a/sa/c");
    let k2 = WorkloadKey::generate().unwrap();
    let wrong = ca
        .sign_csr(&k2.csr_pem(&other).unwrap(), &other, None)
        .unwrap();
    assert!(store.install(&k2, &wrong).is_err());
    let mismatched = ca.sign_csr(&k2.csr_pem(&me).unwrap(), &me, None).unwrap();
    assert!(store.install(&key, &mismatched).is_err());
    assert_eq!(store.current().unwrap().info.serial, second);
}

/// A key made with rcgen (as another tool would write it) and a CSR for `who` signed by it.
fn pem_key_and_csr(who: &SpiffeId) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(who.as_str().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

#[test]
fn a_key_from_pem_text_installs_and_errors_never_quote_it() {
    let ca = ca("cluster.local");
    let me = id("spiffe://cluster.local/ns/a/sa/files");
    let store = CertStore::new(me.clone(), bundle(&ca));
    let (key, csr) = pem_key_and_csr(&me);
    let chain = ca.sign_csr(&csr, &me, None).unwrap();
    // PKCS#8 (`BEGIN PRIVATE KEY`).
    let leaf = store
        .install_key_pem(key.serialize_pem().as_bytes(), &chain)
        .unwrap();
    assert_eq!(leaf.info.identity.as_ref(), Some(&me));
    // SEC1 (`BEGIN EC PRIVATE KEY`), as older openssl writes EC keys: the same key in the
    // other container; rustls reads both.
    let sec1 = ::pem::Pem::new("EC PRIVATE KEY", sec1_of(&key.serialize_der()));
    let again = store
        .install_key_pem(::pem::encode(&sec1).as_bytes(), &chain)
        .unwrap();
    assert_eq!(again.info.serial, leaf.info.serial);

    // Another key than the certificate's, no key, and garbage: refused, the certificate in
    // service stays, and no message repeats the input.
    let (other, _) = pem_key_and_csr(&me);
    let secret = other.serialize_pem();
    let e = store
        .install_key_pem(secret.as_bytes(), &chain)
        .unwrap_err()
        .to_string();
    assert!(!e.contains(&secret[30..60]), "{e}");
    let body: String = secret.lines().nth(1).unwrap().into();
    for bad in [
        String::new(),
        format!("-----BEGIN PRIVATE KEY-----\n{body}!!\n-----END PRIVATE KEY-----\n"),
    ] {
        let e = store
            .install_key_pem(bad.as_bytes(), &chain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key"), "{e}");
        assert!(!e.contains(&body[..20]), "{e}");
    }
    assert_eq!(store.current().unwrap().info.serial, leaf.info.serial);
}

/// The SEC1 `ECPrivateKey` inside a P-256 PKCS#8 document (its `privateKey` OCTET STRING).
fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
    // PKCS#8: SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING { ECPrivateKey } }.
    let (_, doc) = x509_parser::der_parser::der::parse_der_sequence(pkcs8).unwrap();
    let items = doc.as_sequence().unwrap();
    items[2].as_slice().unwrap().to_vec()
}
