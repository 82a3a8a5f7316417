//! Identity from certificate files: loaded and checked at start, read again when they
//! change, a set that does not fit refused while the certificate in service stays.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{certs_json, files, CertFiles, Identity, IdentityError, IdentitySource};
use crate::test_util::{spiffe_id, FakeCa};

fn files_of(source: &IdentitySource) -> CertFiles {
    match source {
        IdentitySource::Files(f) => f.clone(),
        IdentitySource::Ca(_) => panic!("not from files"),
    }
}

fn serial(identity: &Identity) -> String {
    identity
        .store
        .current()
        .expect("a certificate")
        .info
        .serial
        .clone()
}

fn copy(from: &Path, to: &Path) {
    // Write then rename, as tools updating certificate files do.
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// Waits up to 10 s for `done`, letting the watcher run.
async fn wait(what: &str, done: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn files_are_checked_at_start_and_never_shown() {
    let ca = FakeCa::new();
    let source = ca.identity("web");
    let f = files_of(&source);
    let identity = Identity::new(source).expect("identity from files");
    assert!(identity.ready());
    assert_eq!(identity.id(), &spiffe_id("web"));
    assert!(identity.control_over_tls() && identity.ca().is_none());
    let json = certs_json(Some(&identity)).to_string();
    let key = std::fs::read_to_string(&f.key).expect("key");
    let body = key.lines().nth(1).expect("a line of base64");
    assert!(!json.contains(body) && !json.contains("PRIVATE"), "{json}");
    assert!(json.contains(&*f.key.to_string_lossy()), "{json}");

    // Someone else's certificate, a key of another certificate, a missing file: refused,
    // naming the files, never quoting the key.
    let other = files_of(&ca.identity("other"));
    let cases = [
        CertFiles {
            identity: spiffe_id("web"),
            ..other.clone()
        },
        CertFiles {
            key: other.key.clone(),
            ..f.clone()
        },
        CertFiles {
            key: f.key.with_extension("missing"),
            ..f.clone()
        },
    ];
    for bad in cases {
        let e = match Identity::new(IdentitySource::Files(bad.clone())) {
            Err(e @ IdentityError::File { .. }) => e.to_string(),
            Err(e) => panic!("{bad:?}: {e}"),
            Ok(_) => panic!("{bad:?} accepted"),
        };
        assert!(e.contains(&*bad.key.to_string_lossy()), "{e}");
        assert!(!e.contains(body), "{e}");
    }
}

#[tokio::test]
async fn changed_files_are_installed_and_a_bad_set_is_not() {
    let ca = FakeCa::new();
    let source = ca.identity("web");
    let f = files_of(&source);
    let identity: Arc<Identity> = Identity::new(source).expect("identity from files");
    let first = serial(&identity);
    let expiry = prometheus::Gauge::new("e", "e").expect("gauge");
    let renewals = prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["result"])
        .expect("counter");
    let stop = CancellationToken::new();
    let task = tokio::spawn(files::watch(
        identity.clone(),
        f.clone(),
        identity.loaded.expect("stamps of the files read"),
        Duration::from_millis(20),
        expiry.clone(),
        renewals.clone(),
        stop.clone(),
    ));
    let count = |r: &str| renewals.with_label_values(&[r]).get();

    // A renewed pair written over the old one.
    let next = files_of(&ca.identity("web"));
    copy(&next.cert_chain, &f.cert_chain);
    copy(&next.key, &f.key);
    wait("renewed files installed", || serial(&identity) != first).await;
    let second = serial(&identity);
    assert!(expiry.get() > 0.0);

    // A chain without its key: refused, the certificate in service stays; once the key
    // follows, the pair is installed.
    let third = files_of(&ca.identity("web"));
    let errors = count("error");
    copy(&third.cert_chain, &f.cert_chain);
    wait("a mismatched pair counted", || count("error") > errors).await;
    assert_eq!(serial(&identity), second);
    copy(&third.key, &f.key);
    wait("the completed pair installed", || {
        serial(&identity) != second
    })
    .await;
    stop.cancel();
    task.await.expect("watch task");
}
