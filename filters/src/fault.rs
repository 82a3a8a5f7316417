//! Injected faults (VirtualService `fault`): a delay before the request goes on, or an abort
//! that answers it, each for a share of requests.

use std::time::Duration;

use halyard_xds as xds;
use http::request::Parts;
use http::StatusCode;

use crate::filter::{Ctx, Filter, Flow};
use crate::flags::Flags;
use crate::reply::{Form, LocalReply};

/// A route's injected failures.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Delay and the share of requests (0..=1) it applies to.
    pub delay: Option<(Duration, f64)>,
    /// Abort and the share of requests it applies to.
    pub abort: Option<(Abort, f64)>,
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy)]
pub enum Abort {
    /// This HTTP status.
    Http(StatusCode),
    /// This gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// A percentage (absent: all) as a share in 0..=1.
pub fn share(percent: Option<f64>) -> f64 {
    percent.map_or(1.0, |p| (p / 100.0).clamp(0.0, 1.0))
}

impl Fault {
    /// Compiles a route's fault; `None` when it injects nothing.
    pub fn compile(f: &xds::Fault) -> Option<Self> {
        let delay = f.delay.as_ref().and_then(|d| {
            let t = xds::to_std_duration(d.fixed_delay.as_ref()?);
            Some((t, share(d.percent)))
        });
        let abort = f.abort.as_ref().and_then(|a| {
            let kind = match a.error? {
                xds::fault::abort::Error::HttpStatus(s) => {
                    Abort::Http(StatusCode::from_u16(u16::try_from(s).ok()?).ok()?)
                }
                xds::fault::abort::Error::GrpcStatus(g) => Abort::Grpc(g),
            };
            Some((kind, share(a.percent)))
        });
        (delay.is_some() || abort.is_some()).then_some(Self { delay, abort })
    }

    /// Whether an event with probability `p` happens now.
    pub fn roll(p: f64) -> bool {
        p >= 1.0 || (p > 0.0 && fastrand::f64() < p)
    }

    /// The answer of an injected abort.
    pub fn abort_reply(abort: Abort) -> LocalReply {
        const REASON: &str = "fault filter abort";
        match abort {
            Abort::Http(status) => LocalReply::new(status, Flags::FI, REASON).in_form(Form::Plain),
            Abort::Grpc(code) => {
                LocalReply::new(StatusCode::OK, Flags::FI, REASON).in_form(Form::Grpc(code))
            }
        }
    }
}

impl Filter for Fault {
    async fn on_request(&self, _req: &mut Parts, cx: &mut Ctx<'_>) -> Flow {
        if let Some((delay, share)) = self.delay {
            if Self::roll(share) {
                cx.metrics.faults.with_label_values(&["delay"]).inc();
                cx.notes.flags.set(Flags::DI);
                tokio::time::sleep(delay).await;
            }
        }
        match self.abort {
            Some((abort, share)) if Self::roll(share) => {
                cx.metrics.faults.with_label_values(&["abort"]).inc();
                Flow::Respond(Self::abort_reply(abort))
            }
            _ => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{run_on, Notes};
    use crate::metrics::FilterMetrics;

    fn run(fault: &Fault) -> (Flow, Notes, FilterMetrics) {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        run_on(fault, &mut parts)
    }

    #[test]
    fn aborts_and_delays_by_share() {
        let abort = |a, share| Fault {
            delay: None,
            abort: Some((a, share)),
        };
        let (flow, _, m) = run(&abort(Abort::Http(StatusCode::IM_A_TEAPOT), 1.0));
        let Flow::Respond(r) = flow else {
            panic!("an abort for every request answers")
        };
        assert_eq!(
            (r.status, r.form, r.flags),
            (StatusCode::IM_A_TEAPOT, Form::Plain, Flags::FI)
        );
        assert_eq!(m.faults.with_label_values(&["abort"]).get(), 1);

        let (flow, _, _) = run(&abort(Abort::Grpc(14), 1.0));
        assert!(matches!(flow, Flow::Respond(r) if r.form == Form::Grpc(14)));

        let (flow, _, m) = run(&abort(Abort::Http(StatusCode::IM_A_TEAPOT), 0.0));
        assert!(matches!(flow, Flow::Continue), "a zero share never aborts");
        assert_eq!(m.faults.with_label_values(&["abort"]).get(), 0);

        let delay = Fault {
            delay: Some((Duration::from_secs(5), 1.0)),
            abort: None,
        };
        let (flow, notes, m) = run(&delay);
        assert!(matches!(flow, Flow::Continue));
        assert!(notes.flags.contains(Flags::DI));
        assert_eq!(m.faults.with_label_values(&["delay"]).get(), 1);
    }

    #[test]
    fn compiles_percentages() {
        assert_eq!(share(None), 1.0);
        assert_eq!(share(Some(25.0)), 0.25);
        assert_eq!(share(Some(250.0)), 1.0);
        assert!(Fault::compile(&xds::Fault::default()).is_none());
    }
}
