//! JSON access log lines on stdout, written by a dedicated thread so that a slow stdout never
//! blocks the runtime; when its bounded queue is full, lines are dropped and counted.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use prometheus::IntCounter;

/// Lines queued at most before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Sends access-log lines to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: IntCounter,
}

/// The writer thread; joining it flushes what was queued.
pub struct AccessLogWriter(JoinHandle<()>);

impl AccessLog {
    /// Starts the writer thread.
    pub fn start(dropped: IntCounter) -> std::io::Result<(Self, AccessLogWriter)> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                    // Drain what is already queued, then flush once.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok((Self { tx, dropped }, AccessLogWriter(handle)))
    }

    /// Sends lines to `tx` instead of a writer thread (in-process tests read them there).
    pub fn to(tx: SyncSender<String>, dropped: IntCounter) -> Self {
        Self { tx, dropped }
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

impl AccessLogWriter {
    /// Waits until every queued line is written (all senders must be gone).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use halyard_xds::ACCESS_LOG_FIELDS;
use http::{HeaderValue, Version};
use serde_json::{json, Value};

use crate::ctx::{Flags, ListenerKind};

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The protocol as Envoy writes it in access logs.
pub fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A header value as a JSON string (null when absent or not text).
pub fn header_str(v: &Option<HeaderValue>) -> Value {
    match v.as_ref().and_then(|v| v.to_str().ok()) {
        Some(s) => Value::String(s.to_string()),
        None => Value::Null,
    }
}

/// Which access-log fields are written, in order.
#[derive(Debug, Clone)]
pub struct LogFields(Arc<[u8]>);

impl LogFields {
    /// Every field, in the order of [`ACCESS_LOG_FIELDS`].
    pub fn all() -> Self {
        Self((0..ACCESS_LOG_FIELDS.len() as u8).collect())
    }

    /// The named fields in the given order; an empty list means all. Unknown names (already
    /// refused by validation) are skipped.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() {
            return Self::all();
        }
        Self(
            names
                .iter()
                .filter_map(|n| ACCESS_LOG_FIELDS.iter().position(|f| f == n))
                .map(|i| i as u8)
                .collect(),
        )
    }

    /// Renders one JSON object with the fields `value` knows (`None`: not applicable here).
    pub fn render(&self, value: impl Fn(&str) -> Option<Value>) -> String {
        let mut out = String::with_capacity(512);
        out.push('{');
        for &i in self.0.iter() {
            let Some(name) = ACCESS_LOG_FIELDS.get(i as usize) else {
                continue;
            };
            let Some(v) = value(name) else { continue };
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

/// Fields of one opaque TCP connection's log line.
pub struct TcpRecord<'a> {
    /// Listener.
    pub listener: ListenerKind,
    /// When it was accepted.
    pub start_wall: SystemTime,
    /// Duration.
    pub duration: std::time::Duration,
    /// Client.
    pub peer: SocketAddr,
    /// Endpoint.
    pub upstream: Option<&'a str>,
    /// Service.
    pub cluster: Option<&'a str>,
    /// Bytes from client.
    pub received: u64,
    /// Bytes to client.
    pub sent: u64,
    /// Flags.
    pub flags: Flags,
}

impl TcpRecord<'_> {
    /// The JSON line with the configured fields that apply to a TCP connection.
    pub fn line(&self, fields: &LogFields) -> String {
        fields.render(|name| {
            Some(match name {
                "start_time" => rfc3339(self.start_wall).into(),
                "listener" => self.listener.as_str().into(),
                "protocol" => "TCP".into(),
                "response_flags" => self.flags.to_string().into(),
                "bytes_received" => self.received.into(),
                "bytes_sent" => self.sent.into(),
                "duration" => (self.duration.as_millis() as u64).into(),
                "upstream_host" => json!(self.upstream),
                "upstream_cluster" => json!(self.cluster),
                "downstream_remote_address" => self.peer.to_string().into(),
                _ => return None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        assert_eq!(rfc3339(t), "2025-11-25T10:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
