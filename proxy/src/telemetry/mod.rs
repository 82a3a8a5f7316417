//! What the proxy reports: response flags, access logs, metrics, its own logs.

pub mod access_log;
pub mod istio;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod trace;
pub mod tracers;
