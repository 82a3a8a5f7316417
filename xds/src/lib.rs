//! Halyard's configuration resources: the protobuf types shared by the proxy and
//! the control server, and loading of their static-file form with precise errors;
//! and the xDS transport that carries them ([`ads`]).

pub mod ads;
mod duration;
pub use duration::parse_duration;
mod load;
mod locate;
mod validate;

pub use load::{load_file, parse_str, LoadError};
pub use locate::{line_of, Segment};
pub use validate::{
    find_service, parse_subnet, validate, ValidationError, ACCESS_LOG_FIELDS, RETRY_CONDITIONS,
};

/// Generated protobuf types (`halyard.config.v1`).
#[allow(clippy::all, missing_docs)]
pub mod config {
    /// Version 1 of the configuration resources.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/halyard.config.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/halyard.config.v1.serde.rs"));
    }
}

pub use config::v1::*;

/// Converts a protobuf duration to std, treating negative values as zero.
pub fn to_std_duration(d: &pbjson_types::Duration) -> std::time::Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(d.seconds as u64, d.nanos as u32)
}

/// Returns the std duration of an optional protobuf duration, or `default` when unset.
pub fn duration_or(
    d: Option<&pbjson_types::Duration>,
    default: std::time::Duration,
) -> std::time::Duration {
    d.map(to_std_duration).unwrap_or(default)
}
