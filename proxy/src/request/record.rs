//! The access-log line of a request, from its context.

use std::sync::atomic::Ordering;

use serde_json::Value;

use super::RequestCtx;
use crate::telemetry::access_log::{header_str, protocol_name, rfc3339, LogFields};

impl RequestCtx {
    /// The value of one access-log field (indices of [`ACCESS_LOG_FIELDS`]).
    fn field(&self, name: &str, bytes_sent: u64) -> Value {
        let s = |v: Option<&str>| v.map_or(Value::Null, |v| Value::String(v.to_string()));
        match name {
            "start_time" => rfc3339(self.start_wall).into(),
            "listener" => self.conn.listener.as_str().into(),
            "route_name" => s(self.route.as_deref()),
            "method" => self.method.as_str().into(),
            "path" => self
                .uri
                .path_and_query()
                .map_or_else(|| self.uri.to_string(), |p| p.to_string())
                .into(),
            "protocol" => protocol_name(self.version).into(),
            "response_code" => self.code.into(),
            "response_flags" => self.flags.to_string().into(),
            "upstream_transport_failure_reason" => s(self.transport_failure),
            "bytes_received" => self
                .request_bytes
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Relaxed))
                .into(),
            "bytes_sent" => bytes_sent.into(),
            "duration" => (self.start.elapsed().as_millis() as u64).into(),
            "upstream_request_attempt_count" => self.attempts.into(),
            "x_forwarded_for" => header_str(&self.forwarded_for),
            "user_agent" => header_str(&self.user_agent),
            "request_id" => header_str(&self.request_id),
            "authority" => header_str(&self.authority),
            "upstream_host" => s(self.upstream.as_deref()),
            "upstream_cluster" => s(self.cluster.as_deref()),
            "downstream_local_address" => self
                .conn
                .local
                .map_or(Value::Null, |a| a.to_string().into()),
            "downstream_remote_address" => self.conn.peer.to_string().into(),
            "requested_server_name" => s(self.conn.sni.as_deref()),
            "downstream_peer_uri_san" => s(self
                .conn
                .peer_cert
                .as_ref()
                .map(|p| p.identity.to_string())
                .as_deref()),
            "upstream_peer_uri_san" => s(self.upstream_identity.as_deref()),
            "request_principal" => s(self.notes.auth.as_ref().map(|a| a.principal.as_str())),
            "rbac_policy" => s(self.notes.denied_by.as_deref()),
            "trace_id" => self
                .span
                .as_ref()
                .map_or(Value::Null, |s| s.0.trace_id_hex().into()),
            _ => Value::Null,
        }
    }

    pub(super) fn line(&self, fields: &LogFields, bytes_sent: u64) -> String {
        fields.render(|name| Some(self.field(name, bytes_sent)))
    }
}
