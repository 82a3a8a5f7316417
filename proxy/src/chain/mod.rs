//! Running the filter chains ([`halyard_filters::filter`]) on a request: the listener's chain
//! before it is planned (the inbound one, built once per snapshot), and the filters of the
//! route it matched (fault, header operations) before it is sent. What filters note goes
//! into the request's record.

pub mod ops;

use halyard_filters::filter::{Ctx, Filter, Flow};
use http::request::Parts;

use crate::ctx::{ConnInfo, LocalReply};
use crate::request::RequestCtx;
use crate::shared::Shared;

/// Runs `chain` on a request's head; `Err` is the reply a filter answered with. The flags
/// and the redacted URI filters noted go into the record.
pub async fn run<F: Filter>(
    chain: &F,
    shared: &Shared,
    conn: &ConnInfo,
    port: u16,
    parts: &mut Parts,
    ex: &mut RequestCtx,
) -> Result<(), LocalReply> {
    let mut cx = Ctx {
        conn: conn.attrs(port),
        grpc: ex.grpc,
        metrics: &shared.metrics.filters,
        notes: &mut ex.notes,
    };
    let flow = chain.on_request(parts, &mut cx).await;
    ex.flags.set(ex.notes.flags);
    if let Some(uri) = ex.notes.redacted_uri.take() {
        ex.uri = uri;
    }
    match flow {
        Flow::Continue => Ok(()),
        Flow::Respond(reply) => Err(reply),
    }
}
