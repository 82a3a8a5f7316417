//! Protocol detection: classify a connection from its first bytes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge / h2c).
    Http2,
    /// A TLS ClientHello record.
    Tls,
    /// Anything else, or nothing at all before the timeout.
    Tcp,
}

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods whose request line marks a connection as HTTP/1.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"SEARCH",
    b"PURGE",
    b"LINK",
    b"UNLINK",
];

/// Bytes needed at most to decide.
pub const MAX_PEEK: usize = H2_PREFACE.len();

/// Classifies `buf`; `None` means more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    // TLS handshake record: content type 22, version major 3.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Tcp),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    match buf.iter().position(|&b| b == b' ') {
        Some(sp) => Some(if METHODS.contains(&&buf[..sp]) {
            Detected::Http1
        } else {
            Detected::Tcp
        }),
        None if METHODS.iter().any(|m| m.starts_with(buf)) => None,
        None => Some(Detected::Tcp),
    }
}

/// Reads from `io` until the protocol is known or `timeout` passes; returns the verdict and the
/// bytes consumed, which the caller must replay (see [`crate::io::PrefixedIo`]).
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(MAX_PEEK);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            // Silence (server speaks first) or an undecided prefix: treat as opaque TCP.
            Err(_elapsed) => return Ok((Detected::Tcp, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok((Detected::Tcp, buf.freeze())),
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return Ok((d, buf.freeze()));
                }
                if buf.len() >= MAX_PEEK {
                    return Ok((Detected::Tcp, buf.freeze()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"CONNECT a:443 HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Detected::Tcp));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"\x00\x01binary"), Some(Detected::Tcp));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Tcp));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn silence_is_tcp() {
        let (mut a, _b) = tokio::io::duplex(64);
        let (d, bytes) = detect(&mut a, Duration::from_millis(20)).await.unwrap();
        assert_eq!(d, Detected::Tcp);
        assert!(bytes.is_empty());
    }

    #[tokio::test]
    async fn preface_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            b.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::task::yield_now().await;
            b.write_all(&H2_PREFACE[5..]).await.unwrap();
            b
        });
        let (d, bytes) = detect(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d, Detected::Http2);
        assert_eq!(&bytes[..], H2_PREFACE);
        drop(writer.await.unwrap());
    }
}
