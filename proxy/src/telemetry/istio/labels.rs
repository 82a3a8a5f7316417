//! Label names and values of the Istio families, and how they are normalised.

use crate::telemetry::peer::WorkloadMeta;

/// Label names of the HTTP families, in order.
pub const HTTP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Label names of the TCP families, in order.
pub const TCP_LABELS: [&str; 21] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Which side of the exchange reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar (outbound).
    Source,
    /// The server's sidecar (inbound).
    Destination,
}

impl Reporter {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The labels of one finished HTTP or gRPC request.
#[derive(Clone, Copy, Debug)]
pub struct RequestLabels<'a> {
    /// Who reports.
    pub reporter: Reporter,
    /// The client workload.
    pub source: &'a WorkloadMeta,
    /// The client's SPIFFE identity (empty: unknown).
    pub source_principal: &'a str,
    /// The server workload.
    pub destination: &'a WorkloadMeta,
    /// The server's SPIFFE identity (empty: unknown).
    pub destination_principal: &'a str,
    /// The service host, e.g. `reviews.default.svc.cluster.local`; its name and namespace
    /// labels come from it (see [`service_name_namespace`], the reporting workload's
    /// namespace when the host does not say).
    pub destination_service: &'a str,
    /// gRPC (`application/grpc` request) rather than plain HTTP.
    pub grpc: bool,
    /// HTTP status sent downstream; 0 when there was no response.
    pub response_code: u16,
    /// `grpc-status` of the response, when gRPC and present.
    pub grpc_status: Option<u32>,
    /// Envoy-style response flags (`-` or empty when none).
    pub response_flags: &'a str,
    /// The connection was mutual TLS (used by the destination reporter only).
    pub mutual_tls: bool,
}

/// The labels of one TCP connection.
#[derive(Clone, Copy, Debug)]
pub struct TcpLabels<'a> {
    /// Who reports.
    pub reporter: Reporter,
    /// The client workload.
    pub source: &'a WorkloadMeta,
    /// The client's SPIFFE identity (empty: unknown).
    pub source_principal: &'a str,
    /// The server workload.
    pub destination: &'a WorkloadMeta,
    /// The server's SPIFFE identity (empty: unknown).
    pub destination_principal: &'a str,
    /// The service host (name and namespace as for [`RequestLabels`]).
    pub destination_service: &'a str,
    /// Envoy-style response flags (`-` or empty when none).
    pub response_flags: &'a str,
    /// The connection was mutual TLS (used by the destination reporter only).
    pub mutual_tls: bool,
}

/// What the HTTP and TCP label sets have in common, normalised.
pub(super) struct Common<'a> {
    pub(super) values: [&'a str; 18],
    pub(super) response_flags: &'a str,
    pub(super) security: &'static str,
}

impl<'a> Common<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        reporter: Reporter,
        source: &'a WorkloadMeta,
        source_principal: &'a str,
        destination: &'a WorkloadMeta,
        destination_principal: &'a str,
        service: &'a str,
        response_flags: &'a str,
        mutual_tls: bool,
    ) -> Self {
        let known = |v: &'a str| if v.is_empty() { "unknown" } else { v };
        let revision = |v: &'a str| if v.is_empty() { "latest" } else { v };
        let reporting = match reporter {
            Reporter::Source => source,
            Reporter::Destination => destination,
        };
        let (service_name, service_namespace) =
            service_name_namespace(service, reporting.namespace());
        Self {
            values: [
                reporter.as_str(),
                known(source.workload()),
                known(source.namespace()),
                known(source_principal),
                known(source.app()),
                known(source.version()),
                known(source.canonical_service()),
                revision(source.canonical_revision()),
                known(destination.workload()),
                known(destination.namespace()),
                known(destination_principal),
                known(destination.app()),
                known(destination.version()),
                known(destination.canonical_service()),
                revision(destination.canonical_revision()),
                known(service),
                known(service_name),
                known(service_namespace),
            ],
            response_flags: if response_flags.is_empty() {
                "-"
            } else {
                response_flags
            },
            // Istio knows the security policy only on the server side.
            security: match (reporter, mutual_tls) {
                (Reporter::Source, _) => "unknown",
                (Reporter::Destination, true) => "mutual_tls",
                (Reporter::Destination, false) => "none",
            },
        }
    }

    /// Appends the label values, as the shared map is keyed.
    pub(super) fn encode(&self, key: &mut Vec<u8>) {
        for v in self
            .values
            .iter()
            .chain([&self.response_flags, &self.security])
        {
            push_str(key, v);
        }
    }
}

/// Appends `s` and 0xFF, a byte UTF-8 never uses.
fn push_str(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(s.as_bytes());
    key.push(0xFF);
}

/// What a request ended with, as a thread key holds it: gRPC or not, the status code, the
/// gRPC status (TCP keys hold the default).
#[derive(Clone, Copy, Default)]
struct Outcome {
    grpc: bool,
    code: u16,
    grpc_status: Option<u32>,
}

/// Length of a thread key's fixed part.
const THREAD_KEY_FIXED: usize = 8 + 8 + 8 + 1 + 1 + 2 + 5 + 4 * 4;

/// A label set's key in a thread's map: the instance, both workloads by id, the reporter and
/// mTLS, the outcome and the texts' lengths in one fixed part, then the texts that are not ids
/// (the lengths delimit them).
pub(super) struct ThreadKey<'a> {
    fixed: [u8; THREAD_KEY_FIXED],
    texts: [&'a str; 4],
}

impl<'a> ThreadKey<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        instance: u64,
        reporter: Reporter,
        source: &WorkloadMeta,
        destination: &WorkloadMeta,
        mutual_tls: bool,
        outcome: Outcome,
        texts: [&'a str; 4],
    ) -> Self {
        let mut fixed = [0u8; THREAD_KEY_FIXED];
        fixed[..8].copy_from_slice(&instance.to_le_bytes());
        fixed[8..16].copy_from_slice(&source.id().to_le_bytes());
        fixed[16..24].copy_from_slice(&destination.id().to_le_bytes());
        fixed[24] = u8::from(reporter == Reporter::Destination) | u8::from(mutual_tls) << 1;
        fixed[25] = u8::from(outcome.grpc);
        fixed[26..28].copy_from_slice(&outcome.code.to_le_bytes());
        if let Some(status) = outcome.grpc_status {
            fixed[28] = 1;
            fixed[29..33].copy_from_slice(&status.to_le_bytes());
        }
        for (slot, t) in fixed[33..].chunks_exact_mut(4).zip(texts) {
            // Longer than 4 GiB cannot occur; saturating keeps the key well-formed regardless.
            slot.copy_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_le_bytes());
        }
        Self { fixed, texts }
    }

    /// Appends the key's bytes: five appends rather than one per field.
    pub(super) fn write(&self, key: &mut Vec<u8>) {
        key.extend_from_slice(&self.fixed);
        for t in self.texts {
            key.extend_from_slice(t.as_bytes());
        }
    }

    /// Whether `bytes`, as [`ThreadKey::write`] wrote them, are this key; compared without
    /// writing this one.
    pub(super) fn is(&self, bytes: &[u8]) -> bool {
        let Some((fixed, mut rest)) = bytes.split_first_chunk::<THREAD_KEY_FIXED>() else {
            return false;
        };
        if *fixed != self.fixed {
            return false;
        }
        for t in self.texts {
            match rest.split_at_checked(t.len()) {
                Some((head, tail)) if head == t.as_bytes() => rest = tail,
                _ => return false,
            }
        }
        rest.is_empty()
    }
}

impl<'a> RequestLabels<'a> {
    pub(super) fn common(&self) -> Common<'a> {
        Common::new(
            self.reporter,
            self.source,
            self.source_principal,
            self.destination,
            self.destination_principal,
            self.destination_service,
            self.response_flags,
            self.mutual_tls,
        )
    }

    /// The response code as reported: 0 outside `100..=599`.
    pub(super) fn code(&self) -> u16 {
        if (100..=599).contains(&self.response_code) {
            self.response_code
        } else {
            0
        }
    }

    /// The gRPC status as reported: only for gRPC.
    pub(super) fn grpc_status(&self) -> Option<u32> {
        self.grpc_status.filter(|_| self.grpc)
    }

    /// The key of this label set in a thread's map of `instance`: the workloads by id
    /// (unique per value), everything else as given.
    pub(super) fn thread_key(&self, instance: u64) -> ThreadKey<'a> {
        ThreadKey::new(
            instance,
            self.reporter,
            self.source,
            self.destination,
            self.mutual_tls,
            Outcome {
                grpc: self.grpc,
                code: self.response_code,
                grpc_status: self.grpc_status,
            },
            [
                self.source_principal,
                self.destination_principal,
                self.destination_service,
                self.response_flags,
            ],
        )
    }

    /// Appends the label values, as the shared map is keyed.
    pub(super) fn encode(&self, common: &Common<'_>, key: &mut Vec<u8>) {
        common.encode(key);
        push_outcome(key, self.grpc, self.code(), self.grpc_status());
    }
}

/// Appends a request's outcome to a shared-map key: gRPC or not, the status code, the gRPC
/// status.
fn push_outcome(key: &mut Vec<u8>, grpc: bool, code: u16, grpc_status: Option<u32>) {
    key.push(u8::from(grpc));
    key.extend_from_slice(&code.to_le_bytes());
    match grpc_status {
        Some(status) => {
            key.push(1);
            key.extend_from_slice(&status.to_le_bytes());
        }
        None => key.push(0),
    }
}

impl<'a> TcpLabels<'a> {
    /// As [`RequestLabels::thread_key`].
    pub(super) fn thread_key(&self, instance: u64) -> ThreadKey<'a> {
        ThreadKey::new(
            instance,
            self.reporter,
            self.source,
            self.destination,
            self.mutual_tls,
            Outcome::default(),
            [
                self.source_principal,
                self.destination_principal,
                self.destination_service,
                self.response_flags,
            ],
        )
    }

    pub(super) fn common(&self) -> Common<'a> {
        Common::new(
            self.reporter,
            self.source,
            self.source_principal,
            self.destination,
            self.destination_principal,
            self.destination_service,
            self.response_flags,
            self.mutual_tls,
        )
    }
}

/// Splits "reviews.default.svc.cluster.local" into ("reviews", "default"); other hosts: (host, fallback_namespace)
///
/// Any `<name>.<namespace>.svc[.<cluster domain>]` host splits; a `:port` suffix is dropped.
pub fn service_name_namespace<'a>(
    host: &'a str,
    fallback_namespace: &'a str,
) -> (&'a str, &'a str) {
    let host = strip_port(host);
    let mut parts = host.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(namespace), Some("svc")) if !name.is_empty() && !namespace.is_empty() => {
            (name, namespace)
        }
        _ => (host, fallback_namespace),
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their colons).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    }
}
