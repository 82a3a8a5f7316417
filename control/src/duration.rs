//! Go-style durations for flags: `24h`, `90s`, `1h30m`, `1.5h`, `500ms`, plus `d` for days.

use std::time::Duration;

/// Parses a Go-style duration (`time.ParseDuration` syntax, without a sign) with `d` (24 h)
/// accepted as an extra unit.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like 24h, 90s, 1h30m or 500ms");
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}`: missing unit (ns, us, ms, s, m, h or d)"))?;
        if num_end == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(format!(
                    "`{s}`: unknown unit `{other}` (use ns, us, ms, s, m, h or d)"
                ))
            }
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("`{s}`: {e}"))
}

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
    fn go_style() {
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse("2160h"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "h", "10", "10x", "-5s", "1h-5m", "1..5s", "s10"] {
            assert!(parse(s).is_err(), "{s} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["90d", "36h", "90s", "5m", "1500ms"] {
            assert_eq!(display(parse(s).unwrap_or_default()), s);
        }
        assert_eq!(display(Duration::from_secs(86400)), "1d");
    }
}
