//! What the proxy reports: response flags, access logs, metrics, its own logs.

pub mod access_log;
pub mod flags;
pub mod istio;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod report;
pub mod trace;
pub mod tracers;

/// Which listener handled a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// App → mesh.
    Outbound,
    /// Mesh → app.
    Inbound,
}

impl ListenerKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}
