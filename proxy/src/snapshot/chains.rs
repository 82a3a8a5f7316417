//! The listeners' filter chains, compiled with each snapshot from the workload's policies.

use std::sync::Arc;

use halyard_filters::filter::{Ctx, Filter, Flow};
use halyard_filters::jwt::{Authenticator, JwksStore};
use halyard_filters::path::NormalizePath;
use halyard_filters::rbac::Engine;
use halyard_xds::ProxyConfig;
use http::request::Parts;

use super::BuildError;

/// The inbound listener's filters: JWT authentication, path normalisation, authorization.
#[derive(Debug)]
pub struct InboundChain {
    /// The workload's `RequestAuthentication` rules.
    pub authn: Authenticator,
    /// The workload's `AuthorizationPolicy` rules (connections without HTTP are decided
    /// with them too).
    pub rbac: Engine,
}

impl InboundChain {
    /// Compiles the workload's policies; `None` when it has none, so requests skip the chain
    /// (and keep their paths as sent).
    pub fn compile(
        config: &ProxyConfig,
        jwks: &Arc<JwksStore>,
    ) -> Result<Option<Self>, BuildError> {
        let rbac = Engine::compile(&config.authorization_policies)?;
        let authn = Authenticator::compile(&config.request_authentications, jwks)?;
        Ok((!(rbac.is_empty() && authn.is_empty())).then_some(Self { authn, rbac }))
    }
}

impl Filter for InboundChain {
    async fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        (&self.authn, (NormalizePath, &self.rbac))
            .on_request(req, cx)
            .await
    }
}
