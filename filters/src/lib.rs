//! Halyard's request-path policy: authorization (Istio `AuthorizationPolicy`) and JWT
//! authentication (Istio `RequestAuthentication`), each compiled from xDS resources when
//! configuration arrives and evaluated per request without locks.

pub mod attrs;
pub mod jwt;
pub mod path;
pub mod rbac;
