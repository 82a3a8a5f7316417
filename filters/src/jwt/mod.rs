//! Istio RequestAuthentication: JWT verification.
