//! Go-style durations (`300ms`, `1h30m`, `90d`) for flags and config files, beside proto3's
//! `0.3s`.
//!
//! proto3's JSON mapping only knows seconds (`"1.5s"`); people write Go-style durations.
//! Values of fields named `*timeout`/`*interval` (and `fixedDelay`, `backoff`,
//! `baseEjectionTime`, `ttl`) are rewritten in place before parsing, on
//! the same line, so error positions stay right.

use std::time::Duration;

/// Rewrites Go-style duration values of `*timeout`/`*interval` fields to proto3 seconds.
pub fn normalize(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut last = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find(':') {
        let colon = i + pos;
        i = colon + 1;
        if !key_before(text, colon) {
            continue;
        }
        // The value: optional spaces, optional quote, token, optional quote.
        let mut start = colon + 1;
        while start < bytes.len() && bytes[start] == b' ' {
            start += 1;
        }
        let quote = bytes
            .get(start)
            .copied()
            .filter(|b| *b == b'"' || *b == b'\'');
        if quote.is_some() {
            start += 1;
        }
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == 'µ'))
            .map_or(text.len(), |n| start + n);
        let Some(secs) = parse_go(&text[start..end]) else {
            continue;
        };
        out.push_str(&text[last..start]);
        out.push_str(&secs);
        last = end;
        i = end;
    }
    if last == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

/// Whether the token just before `colon` is a duration field name (optionally quoted).
fn key_before(text: &str, colon: usize) -> bool {
    let head = text[..colon].trim_end_matches(['"', '\'']);
    let key_start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |n| n + 1);
    let key = head[key_start..].to_ascii_lowercase().replace('_', "");
    key.ends_with("timeout") || key.ends_with("interval") || DURATION_FIELDS.contains(&key.as_str())
}

/// Duration fields whose names do not end in `timeout` or `interval` (lower case, no `_`).
const DURATION_FIELDS: &[&str] = &["fixeddelay", "backoff", "baseejectiontime", "ttl"];

/// Parses a Go-style duration (`time.ParseDuration` syntax, without a sign) with `d` (24 h)
/// accepted as an extra unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// The proto3 seconds form of a Go-style token, or None when it is already plain seconds
/// (left to the proto3 parser) or not a duration.
fn parse_go(tok: &str) -> Option<String> {
    if tok.ends_with('s') && tok[..tok.len() - 1].parse::<f64>().is_ok() {
        return None;
    }
    let d = parse_duration(tok).ok()?;
    Some(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("2160h"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "h", "10", "10x", "-5s", "1h-5m", "1..5s", "s10"] {
            assert!(parse_duration(s).is_err(), "{s} parsed");
        }
    }

    #[test]
    fn rewrites_only_duration_fields() {
        let src = "name: 5m\ntimeout: 300ms\nconnectTimeout: \"1m30s\"\nidle_timeout: 2s\nx: {interval: 10us}\n";
        let got = normalize(src);
        assert_eq!(
            got,
            "name: 5m\ntimeout: 0.300000000s\nconnectTimeout: \"90.000000000s\"\nidle_timeout: 2s\nx: {interval: 0.000010000s}\n"
        );
        assert_eq!(got.lines().count(), src.lines().count());
    }

    #[test]
    fn json_keys_and_junk() {
        assert_eq!(
            normalize("{\"timeout\": \"1h\"}"),
            "{\"timeout\": \"3600.000000000s\"}"
        );
        assert_eq!(normalize("timeout: soon"), "timeout: soon");
        assert_eq!(
            normalize("fault: {delay: {fixedDelay: 100ms}}\nbase_ejection_time: 1m\nbackoff: 25ms\nttl: 1h\n"),
            "fault: {delay: {fixedDelay: 0.100000000s}}\nbase_ejection_time: 60.000000000s\nbackoff: 0.025000000s\nttl: 3600.000000000s\n"
        );
        assert_eq!(normalize("timeout: 5"), "timeout: 5");
    }
}
