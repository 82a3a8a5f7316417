//! Halyard's request-path policy behind one [`filter::Filter`] trait: JWT authentication
//! (Istio `RequestAuthentication`), path normalisation, authorization (Istio
//! `AuthorizationPolicy`), injected faults and header operations — each compiled when
//! configuration arrives and run per request without locks — and the local replies
//! ([`reply::LocalReply`]) with which a filter answers a request itself.

pub mod attrs;
pub mod fault;
pub mod filter;
pub mod flags;
pub mod header_ops;
pub mod jwt;
pub mod metrics;
pub mod path;
pub mod rbac;
pub mod reply;
