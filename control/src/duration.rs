//! Durations for flags: parsed by `halyard_xds::parse_duration` (Go-style plus `d`), shown
//! in the largest whole unit.

use std::time::Duration;

pub use halyard_xds::parse_duration as parse;

/// Shows a duration the way `parse` reads it, in the largest whole unit (`90d`, `24h`, `90s`).
pub fn display(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if (secs / size) * size == secs {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        for s in ["90d", "36h", "90s", "5m", "1500ms"] {
            assert_eq!(display(parse(s).unwrap_or_default()), s);
        }
        assert_eq!(display(Duration::from_secs(86400)), "1d");
    }
}
