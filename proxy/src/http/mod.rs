//! HTTP proxying: serving downstream connections, forwarding requests, bodies and headers.

pub mod attempts;
pub mod body;
pub mod conn;
pub mod headers;
pub mod local;
pub mod mirror;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod server;
