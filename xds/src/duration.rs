//! Friendly durations in config files: `300ms`, `1m`, `1h30m` as well as proto3's `0.3s`.
//!
//! proto3's JSON mapping only knows seconds (`"1.5s"`); people write Go-style durations.
//! Values of fields named `*timeout`/`*interval` are rewritten in place before parsing, on
//! the same line, so error positions stay right.

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
    let key = head[key_start..].to_ascii_lowercase();
    key.ends_with("timeout") || key.ends_with("interval")
}

/// Parses `1h2m3.5s`, `300ms`, `10us`; returns `"N.NNNNNNNNNs"`, or None when the token is
/// already plain seconds or not a duration.
fn parse_go(tok: &str) -> Option<String> {
    if tok.is_empty() || (tok.ends_with('s') && tok[..tok.len() - 1].parse::<f64>().is_ok()) {
        return None;
    }
    let mut nanos: u128 = 0;
    let mut rest = tok;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: f64 = match unit {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        nanos += (value * scale).round() as u128;
        rest = tail;
    }
    Some(format!(
        "{}.{:09}s",
        nanos / 1_000_000_000,
        nanos % 1_000_000_000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(normalize("timeout: 5"), "timeout: 5");
    }
}
