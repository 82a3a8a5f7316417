//! The filter chain's contract. A filter looks at a request's head on its way in and may
//! change it, or answer the request itself; on the way back it may change the response's
//! head. Chains are tuples of filters, composed once per configuration and dispatched
//! statically: `(A, (B, C))` runs A, B, C on a request and C, B, A on its response.

use std::future::Future;

use http::request::Parts;
use http::response;
use http::Uri;

use crate::attrs::{Authenticated, Connection};
use crate::flags::Flags;
use crate::metrics::FilterMetrics;
use crate::reply::LocalReply;

/// What happens after a filter has seen a request.
#[derive(Debug)]
pub enum Flow {
    /// The next filter (or, after the last, the upstream) gets the request.
    Continue,
    /// The request is answered with this reply; nothing after this filter runs.
    Respond(LocalReply),
}

/// What a filter learns about a request and leaves for the ones after it and for telemetry.
#[derive(Debug, Default)]
pub struct Notes {
    /// Response flags for the access log.
    pub flags: Flags,
    /// The verified JWT, once authentication has run and found one.
    pub auth: Option<Box<Authenticated>>,
    /// The authorization policy that denied the request, when one did.
    pub denied_by: Option<Box<str>>,
    /// The URI the access log shows instead of the request's (a token was taken out of it).
    pub redacted_uri: Option<Uri>,
}

/// A request's context as filters see it.
pub struct Ctx<'a> {
    /// The connection the request came on.
    pub conn: Connection<'a>,
    /// The request is gRPC (replies take gRPC's form).
    pub grpc: bool,
    /// The counters filters keep.
    pub metrics: &'a FilterMetrics,
    /// What filters have noted so far.
    pub notes: &'a mut Notes,
}

/// One step of a filter chain.
pub trait Filter: Send + Sync {
    /// Looks at (and may change) a request's head; [`Flow::Respond`] ends the request here.
    fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> impl Future<Output = Flow> + Send;

    /// Looks at (and may change) the head of the upstream's response on its way back.
    fn on_response(&self, _resp: &mut response::Parts, _notes: &mut Notes) {}
}

/// No filter: every request continues.
impl Filter for () {
    async fn on_request(&self, _req: &mut Parts, _cx: &mut Ctx<'_>) -> Flow {
        Flow::Continue
    }
}

/// A filter that may be absent (not configured): absent, it lets everything through.
impl<F: Filter> Filter for Option<F> {
    async fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        match self {
            Some(f) => f.on_request(req, cx).await,
            None => Flow::Continue,
        }
    }

    fn on_response(&self, resp: &mut response::Parts, notes: &mut Notes) {
        if let Some(f) = self {
            f.on_response(resp, notes);
        }
    }
}

/// A filter borrowed from the configuration that owns it.
impl<F: Filter> Filter for &F {
    fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> impl Future<Output = Flow> + Send {
        (**self).on_request(req, cx)
    }

    fn on_response(&self, resp: &mut response::Parts, notes: &mut Notes) {
        (**self).on_response(resp, notes);
    }
}

/// Two filters in a row: the first sees the request first and the response last.
impl<A: Filter, B: Filter> Filter for (A, B) {
    async fn on_request(&self, req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        match self.0.on_request(req, cx).await {
            Flow::Continue => self.1.on_request(req, cx).await,
            answered => answered,
        }
    }

    fn on_response(&self, resp: &mut response::Parts, notes: &mut Notes) {
        self.1.on_response(resp, notes);
        self.0.on_response(resp, notes);
    }
}

/// Runs `filter` on `parts` as a plaintext request from 127.0.0.1 would meet it (time paused,
/// so delays pass at once): its flow, notes and counters.
#[cfg(test)]
pub(crate) fn run_on<F: Filter>(filter: &F, parts: &mut Parts) -> (Flow, Notes, FilterMetrics) {
    let metrics = FilterMetrics::unregistered();
    let mut notes = Notes::default();
    let mut cx = Ctx {
        conn: crate::attrs::tests::connection(),
        grpc: false,
        metrics: &metrics,
        notes: &mut notes,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("test runtime: {e}"));
    let flow = rt.block_on(filter.on_request(parts, &mut cx));
    (flow, notes, metrics)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::StatusCode;

    use super::*;

    /// Records its name on both ways; answers when told to.
    struct Probe {
        name: &'static str,
        answer: bool,
        seen: &'static Mutex<Vec<String>>,
    }

    impl Filter for Probe {
        async fn on_request(&self, req: &mut Parts, _cx: &mut Ctx<'_>) -> Flow {
            self.seen.lock().unwrap().push(format!("req {}", self.name));
            req.headers.append("x-seen", self.name.parse().unwrap());
            if self.answer {
                Flow::Respond(LocalReply::new(
                    StatusCode::IM_A_TEAPOT,
                    Flags::default(),
                    "no",
                ))
            } else {
                Flow::Continue
            }
        }

        fn on_response(&self, _resp: &mut response::Parts, _notes: &mut Notes) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("resp {}", self.name));
        }
    }

    fn run<F: Filter>(chain: &F) -> (Flow, Vec<String>) {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        let (flow, _, _) = run_on(chain, &mut parts);
        let seen = parts
            .headers
            .get_all("x-seen")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (flow, seen)
    }

    #[test]
    fn chain_runs_in_order_and_stops_at_an_answer() {
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let p = |name, answer| Probe {
            name,
            answer,
            seen: &SEEN,
        };
        let (flow, seen) = run(&(p("a", false), (p("b", false), p("c", false))));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(seen, ["a", "b", "c"]);

        let (flow, seen) = run(&(p("a", false), (p("b", true), p("c", false))));
        assert!(matches!(flow, Flow::Respond(r) if r.status == StatusCode::IM_A_TEAPOT));
        assert_eq!(seen, ["a", "b"], "nothing after an answer runs");

        let (flow, seen) = run(&(None::<Probe>, (Some(p("b", false)), ())));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(seen, ["b"], "an absent filter is skipped");

        SEEN.lock().unwrap().clear();
        let chain = (p("a", false), (p("b", false), p("c", false)));
        let (mut resp, ()) = http::Response::new(()).into_parts();
        chain.on_response(&mut resp, &mut Notes::default());
        assert_eq!(*SEEN.lock().unwrap(), ["resp c", "resp b", "resp a"]);
    }
}
