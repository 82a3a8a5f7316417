//! The workload's current certificate and trust bundle, swapped atomically on renewal.
//!
//! rustls asks the store for the certificate at each handshake, so a renewal takes effect
//! for new connections at once while open connections keep the one they started with.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::pem::certs_from_pem;
use crate::verify::{cert_info, CertInfo, TrustBundle, Usage};
use crate::{Error, SpiffeId, WorkloadKey};

/// A certificate in service: the rustls key and what `/certs` shows.
#[derive(Debug)]
pub struct Leaf {
    /// Chain and signing key for rustls.
    pub certified: Arc<CertifiedKey>,
    /// Facts about the leaf certificate.
    pub info: CertInfo,
    /// Facts about the rest of the chain (intermediates, root).
    pub chain_info: Vec<CertInfo>,
}

/// The workload's identity material.
#[derive(Debug)]
pub struct CertStore {
    identity: SpiffeId,
    current: ArcSwapOption<Leaf>,
    bundle: ArcSwap<TrustBundle>,
}

impl CertStore {
    /// A store for `identity` trusting `bundle`, with no certificate yet.
    pub fn new(identity: SpiffeId, bundle: TrustBundle) -> Arc<Self> {
        Arc::new(CertStore {
            identity,
            current: ArcSwapOption::empty(),
            bundle: ArcSwap::from_pointee(bundle),
        })
    }

    /// The identity this store holds certificates for.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Installs a certificate chain (PEM, leaf first) for `key` after checking that it is
    /// for this identity, matches the key and verifies against the trust bundle.
    pub fn install(&self, key: &WorkloadKey, chain_pem: &[String]) -> Result<Arc<Leaf>, Error> {
        self.install_der(key.private_der(), chain_pem)
    }

    /// As [`install`](Self::install), with the private key as PEM text (PKCS#8, SEC1 or
    /// PKCS#1), as certificate files written by another tool hold it. The key goes straight
    /// into the rustls signing key; no error message quotes it.
    pub fn install_key_pem(
        &self,
        key_pem: &[u8],
        chain_pem: &[String],
    ) -> Result<Arc<Leaf>, Error> {
        use rustls::pki_types::pem::PemObject;
        // The parser's messages may quote a line or byte of the input: say only what failed.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            Error::Invalid(match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no private key (a PKCS#8, SEC1 or PKCS#1 PEM block)".into()
                }
                _ => "malformed PEM in the private key".into(),
            })
        })?;
        self.install_der(key, chain_pem)
    }

    fn install_der(
        &self,
        key: PrivateKeyDer<'static>,
        chain_pem: &[String],
    ) -> Result<Arc<Leaf>, Error> {
        let mut chain: Vec<CertificateDer<'static>> = Vec::new();
        for pem in chain_pem {
            chain.extend(certs_from_pem(pem)?);
        }
        let Some(leaf) = chain.first() else {
            return Err(Error::Invalid("empty certificate chain".into()));
        };
        let bundle = self.bundle.load();
        let id = bundle
            .verify(leaf, &chain[1..], UnixTime::now(), Usage::Client)
            .map_err(|e| Error::Invalid(format!("issued certificate: {e}")))?;
        if id != self.identity {
            return Err(Error::Invalid(format!(
                "issued certificate is for {id}, not {}",
                self.identity
            )));
        }
        let info = cert_info(leaf).map_err(|e| Error::Invalid(e.to_string()))?;
        let chain_info = chain[1..]
            .iter()
            .filter_map(|c| cert_info(c).ok())
            .collect();
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(key)?;
        // Roots are not sent: peers have them, and it saves bytes on every handshake.
        let roots = bundle.roots();
        let sent: Vec<_> = chain.into_iter().filter(|c| !roots.contains(c)).collect();
        let certified = CertifiedKey::new(sent, signing);
        certified.keys_match()?;
        let leaf = Arc::new(Leaf {
            certified: Arc::new(certified),
            info,
            chain_info,
        });
        self.current.store(Some(leaf.clone()));
        tracing::info!(
            identity = %self.identity,
            serial = %leaf.info.serial,
            not_after = leaf.info.not_after,
            "installed workload certificate"
        );
        Ok(leaf)
    }

    /// The certificate in service, if any.
    pub fn current(&self) -> Option<Arc<Leaf>> {
        self.current.load_full()
    }

    /// The trust bundle in force.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    /// Replaces the trust bundle (root rotation).
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|l| l.certified.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
