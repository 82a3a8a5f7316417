//! Who is calling the CA: a verified client certificate from this CA, or a bearer token
//! from the tokens file. Each credential proves exactly one identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use halyard_certs::SpiffeId;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;

use crate::tokens::TokenTable;

/// How often the tokens file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What proved the caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate issued by this CA, verified in the TLS handshake.
    ClientCert,
    /// A bearer token from the tokens file.
    Token,
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::ClientCert => "client-certificate",
            Credential::Token => "token",
        })
    }
}

/// An authenticated caller: the one identity it may obtain certificates for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity the credential proves.
    pub identity: SpiffeId,
    /// Which credential proved it.
    pub credential: Credential,
}

/// Why a caller could not be authenticated (each is `UNAUTHENTICATED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate.
    #[error("no credentials: send `authorization: Bearer <token>` or a client certificate")]
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    /// A token that is not in the tokens file.
    #[error("unknown bearer token")]
    UnknownToken,
}

/// Authenticates CA callers against the tokens in force.
#[derive(Debug)]
pub struct Authenticator {
    tokens: ArcSwap<TokenTable>,
}

impl Authenticator {
    /// An authenticator with `tokens` in force.
    pub fn new(tokens: TokenTable) -> Self {
        Authenticator {
            tokens: ArcSwap::from_pointee(tokens),
        }
    }

    /// Replaces the tokens in force (a reload of the tokens file).
    pub fn set_tokens(&self, tokens: TokenTable) {
        self.tokens.store(Arc::new(tokens));
    }

    /// Authenticates a request. As istiod does, a verified client certificate is tried
    /// first and, when present, decides alone; otherwise the bearer token does.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        client_cert: Option<&SpiffeId>,
    ) -> Result<Caller, AuthError> {
        if let Some(id) = client_cert {
            return Ok(Caller {
                identity: id.clone(),
                credential: Credential::ClientCert,
            });
        }
        let token = bearer_token(metadata)?.ok_or(AuthError::Missing)?;
        let tokens = self.tokens.load();
        let identity = tokens.lookup(token).ok_or(AuthError::UnknownToken)?;
        Ok(Caller {
            identity: identity.clone(),
            credential: Credential::Token,
        })
    }
}

/// The token of an `authorization: Bearer <token>` header, if there is one.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, AuthError> {
    let mut values = metadata.get_all("authorization").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

/// Watches the tokens file and swaps in a new table when it changes (checked every 2 s, and
/// at once on SIGHUP). A file that fails to parse is logged and the old tokens stay.
pub async fn watch_tokens(
    auth: Arc<Authenticator>,
    path: PathBuf,
    mut hup: Signal,
    trust_domain: String,
    cancel: CancellationToken,
) {
    // The file may have changed between loading it at start and this task's first look:
    // the first tick always reloads.
    let mut seen = None;
    loop {
        let forced = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_INTERVAL) => false,
            Some(()) = hup.recv() => true,
        };
        let now = stamp(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match TokenTable::load(&path, &trust_domain) {
            Ok(table) => {
                tracing::info!(file = %path.display(), tokens = table.len(), "reloaded the tokens file");
                auth.set_tokens(table);
            }
            Err(e) => {
                tracing::error!(error = %e, "the tokens file is invalid; keeping the tokens in force");
            }
        }
    }
}

/// What changes when the file is rewritten: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn auth() -> Authenticator {
        let text = "- token: good-token-123\n  namespace: default\n  serviceAccount: reviews\n";
        let table = TokenTable::parse(text, Path::new("t.yaml"), "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        Authenticator::new(table)
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            if let Ok(v) = v.parse() {
                m.append(*k, v);
            }
        }
        m
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::workload("cluster.local", ns, sa).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn token_maps_to_its_identity() {
        let a = auth();
        let c = a
            .authenticate(&md(&[("authorization", "Bearer good-token-123")]), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.identity, id("default", "reviews"));
        assert_eq!(c.credential, Credential::Token);
        // The scheme is case-insensitive, as HTTP says.
        assert!(a
            .authenticate(&md(&[("authorization", "bearer good-token-123")]), None)
            .is_ok());
    }

    #[test]
    fn refusals() {
        let a = auth();
        assert_eq!(a.authenticate(&md(&[]), None), Err(AuthError::Missing));
        assert_eq!(
            a.authenticate(&md(&[("authorization", "Bearer nope")]), None),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            a.authenticate(&md(&[("authorization", "Basic Zm9vOmJhcg==")]), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authenticate(&md(&[("authorization", "good-token-123")]), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authenticate(&md(&[("authorization", "Bearer ")]), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authenticate(
                &md(&[
                    ("authorization", "Bearer good-token-123"),
                    ("authorization", "Bearer other")
                ]),
                None
            ),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn client_certificate_decides_alone() {
        let a = auth();
        let cert = id("shop", "cart");
        let c = a
            .authenticate(&md(&[]), Some(&cert))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.identity, cert);
        assert_eq!(c.credential, Credential::ClientCert);
        let c = a
            .authenticate(
                &md(&[("authorization", "Bearer good-token-123")]),
                Some(&cert),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.identity, cert);
    }

    #[test]
    fn reload_swaps_tokens() {
        let a = auth();
        let text = "- token: new-token-456\n  namespace: default\n  serviceAccount: ratings\n";
        let table = TokenTable::parse(text, Path::new("t.yaml"), "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        a.set_tokens(table);
        assert_eq!(
            a.authenticate(&md(&[("authorization", "Bearer good-token-123")]), None),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            a.authenticate(&md(&[("authorization", "Bearer new-token-456")]), None)
                .map(|c| c.identity),
            Ok(id("default", "ratings"))
        );
    }
}
