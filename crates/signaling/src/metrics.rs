//! Prometheus metrics of a [`SignalingServer`](crate::SignalingServer):
//! calls admitted and how their exchanges ended, requests refused by RPC and
//! status code, and (read at scrape time) offers waiting for an answer and
//! exchanges in progress.

use tether_transport::metrics::prometheus_client::metrics::counter::Counter;
use tether_transport::metrics::prometheus_client::metrics::family::Family;
use tether_transport::metrics::prometheus_client::registry::Registry;
use tether_transport::metrics::{GaugeFn, Label};
use tonic::Code;

use crate::core::CallEnd;

/// Counters of one signaling server (cheap to clone; they count whether or
/// not they are registered).
#[derive(Clone, Debug, Default)]
pub struct SignalingMetrics {
    /// Calls whose offer reached the call queue.
    pub calls: Counter,
    /// Exchanges ended, by `outcome`: `finished`, `deadline`,
    /// `answerer_error`, `answerer_gone`, `caller_gone`.
    pub exchanges_ended: Family<Label, Counter>,
    /// Requests refused, by `rpc` and `code` (the gRPC status code name).
    pub refused: Family<[(&'static str, &'static str); 2], Counter>,
}

impl SignalingMetrics {
    pub(crate) fn refused(&self, rpc: &'static str, code: Code) {
        self.refused.get_or_create(&[("rpc", rpc), ("code", code_name(code))]).inc();
    }

    pub(crate) fn ended(&self, end: &CallEnd) {
        let outcome = match end {
            CallEnd::Finished => "finished",
            CallEnd::Deadline => "deadline",
            CallEnd::AnswererError(_) => "answerer_error",
            CallEnd::AnswererGone(_) => "answerer_gone",
            CallEnd::CallerGone => "caller_gone",
        };
        self.exchanges_ended.get_or_create(&[("outcome", outcome)]).inc();
    }
}

impl crate::SignalingServer {
    /// Registers this server's metrics (`tether_signaling_*`) in `registry`
    /// (`tether_signaling_refused` appears with the first refusal).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = self.metrics();
        for outcome in ["finished", "deadline", "answerer_error", "answerer_gone", "caller_gone"] {
            let _ = m.exchanges_ended.get_or_create(&[("outcome", outcome)]);
        }
        registry.register("tether_signaling_calls", "Calls whose offer was queued for an answerer", m.calls.clone());
        registry.register(
            "tether_signaling_exchanges_ended",
            "Signaling exchanges ended, by outcome (finished, deadline, answerer_error, answerer_gone, caller_gone)",
            m.exchanges_ended.clone(),
        );
        registry.register(
            "tether_signaling_refused",
            "Signaling requests refused, by rpc (call, call_update, answer, config) and gRPC status code",
            m.refused.clone(),
        );
        let server = self.clone();
        GaugeFn::new(
            "tether_signaling_pending_offers",
            "Calls waiting for an answer, counted against their host",
            move || i64::try_from(server.limit_stats().pending_offers).unwrap_or(i64::MAX),
        )
        .register(registry);
        let server = self.clone();
        GaugeFn::new(
            "tether_signaling_exchanges",
            "Exchanges in progress, counted against their caller's address",
            move || i64::try_from(server.limit_stats().exchanges).unwrap_or(i64::MAX),
        )
        .register(registry);
    }
}

/// The canonical name of a gRPC status code (`RESOURCE_EXHAUSTED`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
