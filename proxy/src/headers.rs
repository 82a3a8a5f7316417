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
        // Names listed in Connection are hop-by-hop too.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for name in listed {
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
    let ip = client.to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
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
}
