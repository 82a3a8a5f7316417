//! What every layer of the proxy shares about a connection and a request: the listener kind,
//! the downstream connection, response flags and the local replies that end a request (the
//! last two defined with the filters, which answer requests with them too).

mod conn;

pub use conn::{ConnInfo, PeerCert};
pub use halyard_filters::flags::Flags;
pub use halyard_filters::reply::{grpc_code, Form, LocalReply};

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
