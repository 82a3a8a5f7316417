//! Closing a connection with a TCP reset: a connection the policy refuses or revokes, or whose
//! other end was reset, ends so that the peer sees "connection reset", not an end of stream it
//! could take for a complete answer.

use std::time::Duration;

use tokio::net::TcpStream;

use super::{Counted, DownstreamIo, PrefixedIo, UpstreamIo};

/// A stream over one TCP connection that can be aborted.
pub trait Abort: Sized {
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;

    /// Drops the stream with a reset (RST) instead of an orderly close; unsent bytes are
    /// discarded.
    fn abort(self) {
        // SO_LINGER 0 makes close() send RST.
        if let Err(e) = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot reset the connection; closing it instead");
        }
    }
}

impl Abort for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<I: Abort> Abort for PrefixedIo<I> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl Abort for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Abort for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Abort for DownstreamIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s.tcp(),
            Self::Tls(s) => s.tcp(),
        }
    }
}

impl Abort for UpstreamIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.tcp(),
        }
    }
}

impl<S: Abort> Abort for Counted<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn an_aborted_connection_is_reset_and_a_dropped_one_ends() {
        let (mut c, s) = pair().await;
        s.abort();
        let mut buf = [0u8; 8];
        let e = c.read(&mut buf).await.expect_err("a reset");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);

        let (mut c, mut s) = pair().await;
        s.write_all(b"bye").await.expect("write");
        drop(s);
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("an orderly end");
        assert_eq!(got, b"bye");
    }
}
