//! Carrying out plans: HTTP attempts with retries and body replay, mirrors, tunnels
//! (WebSocket, CONNECT), connections to upstreams and the opaque TCP relay.

pub mod attempts;
pub mod connect;
pub mod http;
pub mod mirror;
pub mod relay;
pub mod tcp;
pub mod tunnel;
