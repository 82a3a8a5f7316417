//! Listeners: each kind composes the layers below it (plans, the filter chain, execution)
//! for its side of the workload; `accept` is shared (the accept loop, detection, dispatch).

pub mod accept;
pub mod http;
mod inbound;
mod outbound;
pub mod server;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_mtls;
