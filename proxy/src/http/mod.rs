//! HTTP proxying: serving downstream connections, forwarding requests, bodies and headers.

pub mod body;
pub mod headers;
pub mod local;
pub mod policy;
pub mod proxy;
pub mod server;
