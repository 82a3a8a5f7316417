//! Header rules: hop-by-hop removal, request ids, forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::hex::hex16;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Set by a sidecar that carries an HTTP/1.1 request over HTTP/2 to another sidecar, so the
/// receiving sidecar speaks HTTP/1.1 to its app again.
pub static ORIG_PROTO: HeaderName = HeaderName::from_static("halyard-orig-proto");
/// Envoy's header telling the app which verified client certificate the request came with.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A header value that owns `buf` rather than a copy in a `Vec`: request heads are cloned
/// for retries (and ids kept for the access log), and cloning a `Vec`-backed value allocates
/// again where this one shares. `None` when `buf` is not a valid header value.
pub fn owned_value(buf: impl AsRef<[u8]> + Send + 'static) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)).ok()
}

/// Which of `names` the map holds, found in one pass over its names. Most headers the proxy
/// strips are absent, and looking an absent custom name up hashes it byte by byte, which cost
/// more than this scan of a request's few names.
pub fn present<const N: usize>(headers: &HeaderMap, names: [&HeaderName; N]) -> [bool; N] {
    let mut found = [false; N];
    for name in headers.keys() {
        if let Some(f) = names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| found.get_mut(i))
        {
            *f = true;
        }
    }
    found
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (a protocol switch in progress).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let [connection, keep_alive, proxy_connection, transfer_encoding, proxy_authorization, te, upgrade] =
        present(
            headers,
            [
                &header::CONNECTION,
                &KEEP_ALIVE,
                &PROXY_CONNECTION,
                &header::TRANSFER_ENCODING,
                &header::PROXY_AUTHORIZATION,
                &header::TE,
                &header::UPGRADE,
            ],
        );
    if connection {
        for name in listed_in_connection(headers, keep_upgrade) {
            headers.remove(name);
        }
    }
    for (there, name) in [
        (keep_alive, &KEEP_ALIVE),
        (proxy_connection, &PROXY_CONNECTION),
        (transfer_encoding, &header::TRANSFER_ENCODING),
        (proxy_authorization, &header::PROXY_AUTHORIZATION),
    ] {
        if there {
            headers.remove(name);
        }
    }
    if te
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        if connection {
            headers.remove(header::CONNECTION);
        }
        if upgrade {
            headers.remove(header::UPGRADE);
        }
    }
}

/// The headers the map holds that `Connection` names as hop-by-hop too. Its tokens are
/// mostly `keep-alive`, `close` or `upgrade`, naming no header present, so a token is matched
/// against the map's few names rather than parsed into a name and looked up.
fn listed_in_connection(headers: &HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut listed = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        let held = headers
            .keys()
            .find(|n| n.as_str().eq_ignore_ascii_case(token));
        if let Some(name) = held {
            if !(keep_upgrade && name == header::UPGRADE) {
                listed.push(name.clone());
            }
        }
    }
    listed
}

/// Whether a request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Returns the request id, adding a random UUIDv4 one when absent.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if !v.is_empty() {
            return v.clone();
        }
    }
    let v = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// A random UUIDv4, written at fixed offsets into a buffer the header value owns.
fn new_request_id() -> HeaderValue {
    // Version 4 in bits 76..80, the RFC 4122 variant (0b10) in bits 62..64.
    let v = fastrand::u128(..) & !(0xf << 76 | 0x3 << 62) | (0x4 << 76 | 0x2 << 62);
    let (hi, lo) = (hex16((v >> 64) as u64), hex16(v as u64));
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hi[..8]);
    out[9..13].copy_from_slice(&hi[8..12]);
    out[14..18].copy_from_slice(&hi[12..]);
    out[19..23].copy_from_slice(&lo[..4]);
    out[24..].copy_from_slice(&lo[4..]);
    owned_value(out).unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// Appends the client address to `x-forwarded-for` and sets `x-forwarded-proto` when absent.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    let prev = headers
        .get(&X_FORWARDED_FOR)
        .filter(|v| v.to_str().is_ok_and(|p| !p.trim().is_empty()))
        .map(HeaderValue::as_bytes);
    let mut value = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 45);
    if let Some(prev) = prev {
        value.extend_from_slice(prev);
        value.extend_from_slice(b", ");
    }
    write_ip(client, &mut value);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
}

/// Writes `ip` as `Display` would. IPv4 is done by hand: through `fmt` it cost more than any
/// other header rule on the request path.
fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-foo".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_upgrade_when_switching() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn request_ids_are_random_uuid_v4() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = new_request_id().to_str().unwrap().to_string();
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(groups.iter().all(|g| g
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "RFC 4122 variant: {id}"
            );
            assert!(seen.insert(id));
        }
        // Every other digit is random: each position takes more than one value.
        for pos in (0..36).filter(|p| ![8, 13, 14, 18, 19, 23].contains(p)) {
            let values: std::collections::HashSet<u8> =
                seen.iter().map(|id| id.as_bytes()[pos]).collect();
            assert!(values.len() > 8, "position {pos}: {values:?}");
        }
    }

    #[test]
    fn request_id_and_forwarded() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(ensure_request_id(&mut h), id);
        assert_eq!(h["x-request-id"], id);
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        let cases = [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.7.45",
            "::1",
            "fd00::a:1",
            "::ffff:10.0.0.1",
        ];
        for case in cases {
            let ip: IpAddr = case.parse().unwrap();
            let mut out = Vec::new();
            write_ip(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), ip.to_string(), "{case}");
        }
    }

    #[test]
    fn forwarded_for_appends_only_to_a_usable_value() {
        let cases: [(Option<&[u8]>, &str); 4] = [
            (None, "10.1.2.3"),
            (Some(b"  "), "10.1.2.3"),
            (Some(b"1.1.1.1, 2.2.2.2"), "1.1.1.1, 2.2.2.2, 10.1.2.3"),
            (Some(b"caf\xe9"), "10.1.2.3"),
        ];
        for (prev, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(p) = prev {
                h.insert("x-forwarded-for", HeaderValue::from_bytes(p).unwrap());
            }
            h.insert("x-forwarded-proto", "https".parse().unwrap());
            add_forwarded(&mut h, "10.1.2.3".parse().unwrap());
            assert_eq!(h["x-forwarded-for"], want, "{prev:?}");
            assert_eq!(h["x-forwarded-proto"], "https");
        }
    }

    #[test]
    fn connection_names_only_headers_it_lists() {
        // (Connection values, headers present, keep_upgrade, headers left)
        type Case = (
            &'static [&'static str],
            &'static [&'static str],
            bool,
            &'static [&'static str],
        );
        let cases: [Case; 5] = [
            (&["keep-alive"], &["x-keep"], false, &["x-keep"]),
            (&["close, X-Foo"], &["x-foo", "x-keep"], false, &["x-keep"]),
            (
                &["x-a", " X-B ,keep-alive"],
                &["x-a", "x-b", "keep-alive", "x-keep"],
                false,
                &["x-keep"],
            ),
            (
                &["Upgrade, x-a"],
                &["upgrade", "x-a"],
                true,
                &["connection", "upgrade"],
            ),
            (&["Upgrade"], &["upgrade", "x-keep"], false, &["x-keep"]),
        ];
        for (connection, present, keep_upgrade, left) in cases {
            let mut h = HeaderMap::new();
            for c in connection {
                h.append(header::CONNECTION, c.parse().unwrap());
            }
            for p in present {
                h.insert(
                    HeaderName::from_bytes(p.as_bytes()).unwrap(),
                    "1".parse().unwrap(),
                );
            }
            remove_hop_by_hop(&mut h, keep_upgrade);
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, left, "{connection:?} {present:?}");
        }
    }
}
