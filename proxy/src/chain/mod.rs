//! The request filters: authentication (JWT), path normalisation and authorization on the
//! inbound side; faults, redirects, rewrites and header operations of routes.

pub mod ops;
pub mod policy;
