//! Decisions apart from their execution: pure functions from the snapshot, a request's head
//! and the connection it came on to a plan that names every choice, or to the local reply
//! that ends the request. Nothing here does I/O, waits or reads a clock; randomness (the
//! weighted pick) comes in as an argument, so every decision is table-tested.

mod http;
mod tcp;

pub use self::http::{
    authority_of as http_authority, inbound, outbound, Endpoints, Forward, HttpPlan, Step, Target,
};
pub use self::tcp::{connect, connect_inbound, tcp};

#[cfg(test)]
mod tests;
