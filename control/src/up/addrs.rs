//! Addresses `up` chooses: ports for the sidecars' listeners, and loopback addresses for apps
//! whose WorkloadEntry address is not on this machine.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use crate::model::{Doc, WorkloadEntry};

/// Ports for the sidecars' listeners, handed out below the kernel's ephemeral range: there no
/// outgoing connection or port-0 listener of another program can take one between the pick
/// and the sidecar's bind (a clash is still possible with programs that pick ports the same
/// way; `up` then starts again on other ports).
pub(super) struct Ports {
    low: u32,
    span: u32,
    next: u32,
}

impl Ports {
    /// The lowest port handed out.
    const LOW: u32 = 20_000;

    pub fn new() -> Self {
        let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32_768);
        let mut seed = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Ports {
            low: Self::LOW,
            span: ephemeral_from.saturating_sub(Self::LOW),
            next: u32::from_le_bytes(seed),
        }
    }

    /// A free 127.0.0.1 address.
    pub fn next(&mut self) -> Result<SocketAddr, String> {
        for _ in 0..self.span.min(4_096) {
            self.next = self.next.wrapping_add(7_919);
            let Ok(port) = u16::try_from(self.low + self.next % self.span) else {
                continue;
            };
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                return l.local_addr().map_err(|e| format!("free port: {e}"));
            }
        }
        // A machine without room below its ephemeral range: let the kernel choose.
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))
    }
}

/// Whether `address` is an IP this machine can listen on.
pub(super) fn on_this_machine(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .is_ok_and(|ip| TcpListener::bind((ip, 0)).is_ok())
}

/// Loopback addresses for apps whose WorkloadEntry address is not on this machine: one each,
/// so their ports never collide, and none that a WorkloadEntry uses itself.
pub(super) struct SpareLoopback {
    taken: HashSet<IpAddr>,
    next: u32,
}

impl SpareLoopback {
    /// The first address handed out: 127.100.0.1.
    const FIRST: u32 = u32::from_be_bytes([127, 100, 0, 1]);
    /// The last: 127.100.255.254.
    const LAST: u32 = u32::from_be_bytes([127, 100, 255, 254]);

    pub fn new(entries: &[Doc<WorkloadEntry>]) -> Self {
        let taken = entries
            .iter()
            .filter_map(|we| we.spec.address.parse().ok())
            .collect();
        SpareLoopback {
            taken,
            next: Self::FIRST,
        }
    }

    pub fn next(&mut self) -> Result<IpAddr, String> {
        while self.next <= Self::LAST {
            let ip = IpAddr::from(Ipv4Addr::from(self.next));
            self.next += 1;
            if !self.taken.contains(&ip) {
                return Ok(ip);
            }
        }
        Err("no spare loopback address left in 127.100.0.0/16".into())
    }
}
