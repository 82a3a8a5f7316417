//! Halyard proxy: listeners, protocol detection, HTTP/TCP forwarding, upstream pools, live
//! configuration and telemetry. The modules are layers (see the crate README): a module
//! uses only those of its own layer or below.

pub mod hex;

pub mod ctx;
pub mod headers;

pub mod detect;
pub mod io;
pub mod mtls;
pub mod telemetry;

pub mod identity;
pub mod upstream;

pub mod live;
pub mod routes;
pub mod shared;
pub mod snapshot;
pub mod watched;

pub mod plan;
pub mod request;

pub mod chain;

pub mod exec;

pub mod admin;
pub mod listeners;

pub mod app;
pub mod discovery;

#[cfg(test)]
mod test_util;
