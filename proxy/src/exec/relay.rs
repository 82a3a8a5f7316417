//! Opaque TCP relay: both directions in one task, half-close propagated, idle timeout.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

const BUF_SIZE: usize = 16 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the client (downstream) to the server (upstream).
    pub client_to_server: u64,
    /// From the server back to the client.
    pub server_to_client: u64,
}

/// How a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Nothing moved in either direction for the idle timeout.
    #[error("idle timeout")]
    Idle(Transferred),
    /// The connection was closed from outside (its permission was revoked).
    #[error("stopped")]
    Stopped(Transferred),
    /// A read or write failed.
    #[error("{side:?} side: {source}")]
    Io {
        /// Bytes moved before the failure.
        moved: Transferred,
        /// The end whose read or write failed.
        side: Side,
        /// The failure.
        source: io::Error,
    },
}

/// One end of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream connection.
    Client,
    /// The upstream connection.
    Server,
}

impl RelayError {
    /// Bytes moved before it ended.
    pub fn moved(&self) -> Transferred {
        match self {
            Self::Idle(m) | Self::Stopped(m) => *m,
            Self::Io { moved, .. } => *moved,
        }
    }

    /// The end that was reset by its peer (rather than closed), when one was: the other end
    /// should then be reset too.
    pub fn reset_side(&self) -> Option<Side> {
        match self {
            Self::Io { side, source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Some(*side)
            }
            _ => None,
        }
    }
}

/// One direction of the relay.
struct OneWay {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    read_done: bool,
    shut: bool,
    total: u64,
}

impl OneWay {
    fn new() -> Self {
        Self {
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            read_done: false,
            shut: false,
            total: 0,
        }
    }

    /// Moves bytes from `r` to `w` until blocked; `Ready(Ok)` once EOF was read, all bytes
    /// written and the write side shut down (the half-close passed on).
    /// A failure names the end it happened on: `sides` are the reader's and the writer's.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        sides: (Side, Side),
        moved: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.start = 0;
                            self.end = n;
                            *moved = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((sides.0, e))),
                    Poll::Pending => {
                        // Nothing more to read right now: make sure what was written is flushed.
                        ready!(w.as_mut().poll_flush(cx)).map_err(|e| (sides.1, e))?;
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.start..self.end]))
                    .map_err(|e| (sides.1, e))?;
                if n == 0 {
                    return Poll::Ready(Err((sides.1, io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.total += n as u64;
                *moved = true;
            }
            if self.read_done {
                if !self.shut {
                    ready!(w.as_mut().poll_shutdown(cx)).map_err(|e| (sides.1, e))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// How a relay ended without an error.
enum End {
    Done,
    Idle,
    Stopped,
}

/// Relays bytes between `client` and `server` until both directions reach EOF, an error
/// occurs, nothing moves for `idle`, or `stop` is cancelled.
pub async fn relay<C, S>(
    client: &mut C,
    server: &mut S,
    idle: Duration,
    stop: Option<&CancellationToken>,
) -> Result<Transferred, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = OneWay::new();
    let mut down = OneWay::new();
    let (mut up_done, mut down_done) = (false, false);
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let stopped = async {
        match stop {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    let totals = |up: &OneWay, down: &OneWay| Transferred {
        client_to_server: up.total,
        server_to_client: down.total,
    };
    let result = poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(End::Stopped));
        }
        let mut moved = false;
        if !up_done {
            match up.poll_copy(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *server),
                (Side::Client, Side::Server),
                &mut moved,
            ) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !down_done {
            match down.poll_copy(
                cx,
                Pin::new(&mut *server),
                Pin::new(&mut *client),
                (Side::Server, Side::Client),
                &mut moved,
            ) {
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if up_done && down_done {
            return Poll::Ready(Ok(End::Done));
        }
        if moved {
            sleep.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(End::Idle)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let moved = totals(&up, &down);
    match result {
        Ok(End::Done) => Ok(moved),
        Ok(End::Idle) => Err(RelayError::Idle(moved)),
        Ok(End::Stopped) => Err(RelayError::Stopped(moved)),
        Err((side, source)) => Err(RelayError::Io {
            moved,
            side,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_passes_through() {
        let (mut client, mut proxy_c) = tokio::io::duplex(1024);
        let (mut proxy_s, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            relay(&mut proxy_c, &mut proxy_s, Duration::from_secs(5), None).await
        });
        // Server echoes until EOF, then closes.
        let echo = tokio::spawn(async move {
            let mut data = Vec::new();
            server.read_to_end(&mut data).await.unwrap();
            server.write_all(&data).await.unwrap();
            server.shutdown().await.unwrap();
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
        echo.await.unwrap();
        let t = relay.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                client_to_server: 4,
                server_to_client: 4
            }
        );
    }

    #[tokio::test]
    async fn a_reset_names_its_side() {
        use crate::io::abort::Abort;
        use tokio::net::{TcpListener, TcpStream};
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
            (c.expect("connect"), s.expect("accept").0)
        }
        let (_client, mut proxy_c) = pair().await;
        let (mut proxy_s, server) = pair().await;
        server.abort();
        let r = relay(&mut proxy_c, &mut proxy_s, Duration::from_secs(5), None).await;
        let e = r.expect_err("the server was reset");
        assert_eq!(e.reset_side(), Some(Side::Server), "{e}");
        assert_eq!(RelayError::Idle(Transferred::default()).reset_side(), None);
    }

    #[tokio::test]
    async fn idle_timeout_fires() {
        let (_client, mut proxy_c) = tokio::io::duplex(64);
        let (mut proxy_s, _server) = tokio::io::duplex(64);
        let r = relay(&mut proxy_c, &mut proxy_s, Duration::from_millis(50), None).await;
        assert!(matches!(r, Err(RelayError::Idle(_))));
    }

    #[tokio::test]
    async fn stop_ends_an_open_relay() {
        let (mut client, mut proxy_c) = tokio::io::duplex(64);
        let (mut proxy_s, mut server) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let relay = tokio::spawn(async move {
            relay(
                &mut proxy_c,
                &mut proxy_s,
                Duration::from_secs(30),
                Some(&s2),
            )
            .await
        });
        client.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Err(RelayError::Stopped(t)) if t.client_to_server == 2),
            "{r:?}"
        );
        // Both sides see the relay gone.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
