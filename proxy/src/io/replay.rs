//! A request body that can be read more than once: by a retry after a failed attempt, and by
//! mirrors running beside the main request. The body streams through as it arrives (nothing
//! waits for the whole body) while a copy of up to a bounded number of bytes is kept; once
//! the body outgrows the bound the copy is dropped, and only a reader that has already seen
//! everything may go on.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Bytes of request body kept for retries and mirrors (Envoy keeps 64 KiB by default too).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why a replayed body could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The client's body stream failed.
    #[error("request body: {0}")]
    Source(#[source] BoxError),
    /// This reader fell behind after the kept copy was dropped (the body was too large).
    #[error("request body too large to replay")]
    Overflow,
}

/// Boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct State<B> {
    /// The client's body; taken by nobody — whichever reader is caught up polls it.
    source: Option<B>,
    /// Data frames kept so far (dropped on overflow).
    chunks: Vec<Bytes>,
    /// Data frames seen so far, kept or not.
    seen: usize,
    kept_bytes: usize,
    limit: usize,
    overflow: bool,
    trailers: Option<HeaderMap>,
    /// The source ended (`None` frame).
    done: bool,
    /// The source failed; readers that reach the failure see an error.
    failed: bool,
    /// Readers waiting for the next frame.
    waiters: Vec<Waker>,
    /// Counts body bytes once, however many readers there are.
    counter: Option<Arc<AtomicU64>>,
}

impl<B> State<B> {
    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

/// One reader of a shared request body.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<State<B>>>,
    /// Index of the next data frame this reader returns.
    pos: usize,
    trailers_sent: bool,
    size: SizeHint,
}

impl<B: Body<Data = Bytes> + Unpin> ReplayBody<B>
where
    B::Error: Into<BoxError>,
{
    /// Wraps a client's body; `counter` gets the number of body bytes received.
    pub fn new(source: B, limit: usize, counter: Option<Arc<AtomicU64>>) -> Self {
        let size = source.size_hint();
        let done = source.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(State {
                source: Some(source),
                chunks: Vec::new(),
                seen: 0,
                kept_bytes: 0,
                limit,
                overflow: false,
                trailers: None,
                done,
                failed: false,
                waiters: Vec::new(),
                counter,
            })),
            pos: 0,
            trailers_sent: false,
            size,
        }
    }

    /// Another reader from the start, if the body can still be replayed from the start.
    pub fn replay(&self) -> Option<ReplayBody<B>> {
        let st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if st.overflow || st.failed {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
            size: self.size,
        })
    }

    /// Whether a retry could still resend the whole body.
    pub fn replayable(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        !st.overflow && !st.failed
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ReplayBody<B>
where
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ReplayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplayError>>> {
        let this = self.get_mut();
        let mut st = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if this.pos < st.seen {
                // Behind: replay the kept copy, if it still exists.
                if st.overflow {
                    return Poll::Ready(Some(Err(ReplayError::Overflow)));
                }
                let chunk = st.chunks.get(this.pos).cloned().unwrap_or_default();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if st.done {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = st.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                return Poll::Ready(None);
            }
            if st.failed {
                return Poll::Ready(Some(Err(ReplayError::Overflow)));
            }
            // Caught up: pull the next frame from the client for everyone.
            let Some(source) = st.source.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(source).poll_frame(cx) {
                Poll::Pending => {
                    st.waiters.push(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    st.done = true;
                    st.source = None;
                    st.wake_all();
                }
                Poll::Ready(Some(Err(e))) => {
                    st.failed = true;
                    st.source = None;
                    st.wake_all();
                    return Poll::Ready(Some(Err(ReplayError::Source(e.into()))));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(c) = &st.counter {
                            c.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        st.seen += 1;
                        if !st.overflow {
                            st.kept_bytes += data.len();
                            if st.kept_bytes > st.limit {
                                st.overflow = true;
                                st.chunks = Vec::new();
                            } else {
                                st.chunks.push(data.clone());
                            }
                        }
                        this.pos = st.seen;
                        st.wake_all();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            st.trailers = Some(t);
                        }
                        // Loop: the next poll of the source reports the end.
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        st.done && self.pos >= st.seen && (self.trailers_sent || st.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // If this reader was the one registered with the source, another must take over.
        let mut st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        st.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    type Src = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn source(chunks: &[&'static str], trailer: bool) -> Src {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailer {
            let mut t = HeaderMap::new();
            t.insert("x-t", http::HeaderValue::from_static("1"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(stream::iter(frames))
    }

    async fn read<B: Body<Data = Bytes> + Unpin>(b: B) -> Result<(String, bool), B::Error> {
        let c = b.collect().await?;
        let trailers = c.trailers().is_some();
        Ok((String::from_utf8(c.to_bytes().to_vec()).unwrap(), trailers))
    }

    #[tokio::test]
    async fn replays_whole_body_with_trailers_and_counts_once() {
        let counter = Arc::new(AtomicU64::new(0));
        let first = ReplayBody::new(source(&["ab", "cd"], true), 100, Some(counter.clone()));
        let again = first.replay().unwrap();
        assert_eq!(read(first).await.unwrap(), ("abcd".into(), true));
        assert_eq!(read(again).await.unwrap(), ("abcd".into(), true));
        assert_eq!(counter.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn retry_after_partial_read_resends_from_the_start() {
        let mut first = ReplayBody::new(source(&["ab", "cd", "ef"], false), 100, None);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let again = first.replay().unwrap();
        drop(first);
        assert_eq!(read(again).await.unwrap().0, "abcdef");
    }

    #[tokio::test]
    async fn overflow_streams_on_but_cannot_replay() {
        let first = ReplayBody::new(source(&["aaaa", "bbbb", "cccc"], false), 6, None);
        let behind = first.replay().unwrap();
        assert_eq!(read(first).await.unwrap().0, "aaaabbbbcccc");
        assert!(matches!(read(behind).await, Err(ReplayError::Overflow)));
    }

    #[tokio::test]
    async fn no_replay_once_overflowed() {
        let mut first = ReplayBody::new(source(&["aaaa", "bbbb"], false), 6, None);
        assert!(first.replayable());
        let _ = first.frame().await;
        let _ = first.frame().await;
        assert!(!first.replayable());
        assert!(first.replay().is_none());
    }

    #[tokio::test]
    async fn concurrent_readers_see_the_same_bytes() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let src = StreamBody::new(tokio_stream_shim(rx));
        let a = ReplayBody::new(src, 1 << 20, None);
        let b = a.replay().unwrap();
        let ta = tokio::spawn(read(a));
        let tb = tokio::spawn(read(b));
        for i in 0..100 {
            tx.send(Ok(Frame::data(Bytes::from(format!("{i},")))))
                .await
                .unwrap();
        }
        drop(tx);
        let (a, b) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
        assert_eq!(a, b);
        assert!(a.0.starts_with("0,1,2,") && a.0.ends_with("99,"));
    }

    fn tokio_stream_shim<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
