//! What every layer of the proxy shares about a connection and a request: the listener kind,
//! the downstream connection, response flags and the local replies that end a request.

mod conn;
mod flags;
mod local;

pub use conn::{ConnInfo, PeerCert};
pub use flags::Flags;
pub use local::{grpc_code, LocalReply};

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
