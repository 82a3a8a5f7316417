//! Halyard proxy: listeners, protocol detection, HTTP/TCP forwarding, upstream pools, live
//! configuration and telemetry.

pub mod admin;
pub mod app;
pub mod detect;
pub mod discovery;
pub mod hex;
pub mod http;
pub mod identity;
pub mod io;
pub mod listener;
pub mod live;
pub mod mtls;
pub mod plan;
pub mod routes;
pub mod shared;
pub mod snapshot;
pub mod tcp;
pub mod telemetry;
pub mod upstream;
