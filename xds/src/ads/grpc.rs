//! The gRPC face of the ADS server: [`AdsService`] routes the two ADS methods to an
//! [`AdsServer`] and frames each stream's responses itself.
//!
//! tonic's generated server encodes every response of a stream into one buffer that it keeps
//! for the stream's lifetime, grown to the largest response ever sent (a Service resource with
//! all of a namespace's endpoints): one such buffer per connected proxy. Here each response is
//! encoded into a buffer of exactly its size, released once the connection has written it.
//! Requests are decoded by tonic as before, with a small initial buffer: they are short.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;
use tonic_prost::ProstDecoder;

use super::server::AdsServer;

/// `/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// `/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Initial size of a stream's request buffer; it grows for a longer request.
const REQUEST_BUFFER: usize = 1024;
/// The gRPC message header: compression flag and big-endian length.
const HEADER_SIZE: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The aggregated discovery service as a tonic service, for
/// `tonic::transport::Server::add_service`.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    /// The service of `server`.
    pub(crate) fn new(server: AdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tower::Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let resp = match req.uri().path() {
                DELTA_PATH => match request(req) {
                    Ok(r) => server.delta(r).await.map(respond),
                    Err(status) => Err(status),
                },
                SOTW_PATH => match request(req) {
                    Ok(r) => server.sotw(r).await.map(respond),
                    Err(status) => Err(status),
                },
                _ => Err(Status::unimplemented("")),
            };
            Ok(resp.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// The request stream of a call, decoded as tonic's generated server would.
fn request<B, M>(req: http::Request<B>) -> Result<tonic::Request<Streaming<M>>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
    M: prost::Message + Default + Send + 'static,
{
    // No compression is enabled, as with the generated server's defaults.
    if let Some(enc) = req.headers().get("grpc-encoding") {
        if enc.as_bytes() != b"identity" {
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(enc.as_bytes())
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static("identity"),
            );
            return Err(status);
        }
    }
    let (parts, body) = req.into_parts();
    let decoder = ProstDecoder::<M>::new(BufferSettings::new(REQUEST_BUFFER, REQUEST_BUFFER));
    let inbound = Streaming::new_request(decoder, body, None, None);
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        inbound,
    ))
}

/// The response of an accepted stream: its messages as they are queued, then the status.
fn respond<M>(rx: mpsc::Receiver<Result<M, Status>>) -> http::Response<tonic::body::Body>
where
    M: prost::Message + Send + 'static,
{
    let mut resp = http::Response::new(tonic::body::Body::new(ResponseBody { rx, done: false }));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// A server-streaming response body: one data frame per message, then the trailers.
struct ResponseBody<M> {
    rx: mpsc::Receiver<Result<M, Status>>,
    done: bool,
}

impl<M: prost::Message + Send + 'static> http_body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.rx.poll_recv(cx)) {
            Some(Ok(msg)) => match frame(&msg) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            // The stream's task ended without a word: the client went away or was done.
            None => Status::ok(""),
        };
        this.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One message as a gRPC length-prefixed frame, in a buffer of exactly its size.
fn frame<M: prost::Message>(msg: &M) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("a response of {len} bytes is too large"))
    })?;
    let mut buf = BytesMut::with_capacity(HEADER_SIZE + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    msg.encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
    Ok(buf.freeze())
}

/// The trailers carrying `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that is no valid header value gets here; the code still goes out.
        map.clear();
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}
