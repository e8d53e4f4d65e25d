//! Every gRPC call observed once: its count and latency by operation and
//! status, and a log line for every error the server answers, naming the
//! operation and the context it concerned.
//!
//! A tower layer under all services. The context a call concerns is known
//! only to its handler, after decoding: handlers name it when they check
//! the caller's right ([`note_context`], called by `Caller::require`), into
//! a slot the layer put in a task-local for the call. The status is read
//! from the response headers (a trailers-only error) or from the trailers
//! that end the body; a body dropped before its trailers is a call the
//! client cancelled. The latency of a streaming call is the time until its
//! stream ended.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use converge_ledger_store::stats::{Histogram, SECONDS_BOUNDS};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

type Noted = Arc<Mutex<Option<String>>>;

tokio::task_local! {
    static NOTED: Noted;
}

/// Names the context the current call concerns (the first one named
/// counts), for its log line. Outside a call, does nothing.
pub(crate) fn note_context(context: &str) {
    let _ = NOTED.try_with(|slot| {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(context.to_owned());
        }
    });
}

/// Distinct operations tracked; calls of further paths (which the router
/// answers `UNIMPLEMENTED`) count as `unknown`.
const OPERATIONS_MAX: usize = 64;

/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// One operation's histograms, indexed by status code.
type ByCode = Vec<Option<Arc<Histogram>>>;

/// Latency histograms per operation and status code.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    series: RwLock<HashMap<Arc<str>, ByCode>>,
}

impl RpcMetrics {
    fn histogram(&self, path: &str, code: usize) -> Arc<Histogram> {
        let code = code.min(CODES - 1);
        if let Some(h) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .and_then(|codes| codes[code].clone())
        {
            return h;
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let known = series.contains_key(path);
        let path = if known || series.len() < OPERATIONS_MAX {
            path
        } else {
            "unknown"
        };
        let codes = series
            .entry(Arc::from(path))
            .or_insert_with(|| vec![None; CODES]);
        codes[code]
            .get_or_insert_with(|| Arc::new(Histogram::new(SECONDS_BOUNDS)))
            .clone()
    }

    /// Every series: operation (`package.Service/Method`), code, histogram.
    pub fn series(&self) -> Vec<(Arc<str>, usize, Arc<Histogram>)> {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = series
            .iter()
            .flat_map(|(op, codes)| {
                codes
                    .iter()
                    .enumerate()
                    .filter_map(|(c, h)| h.clone().map(|h| (op.clone(), c, h)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        out
    }
}

/// The gRPC name of a status code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code).copied().unwrap_or("UNKNOWN")
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<RpcMetrics>) -> RpcLayer {
        RpcLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

/// One call, to be recorded once.
struct Call {
    metrics: Arc<RpcMetrics>,
    path: String,
    started: Instant,
    noted: Noted,
}

impl Call {
    fn finish(self, code: usize, message: &str) {
        self.metrics
            .histogram(&self.path, code)
            .observe_duration(self.started.elapsed());
        if code == 0 {
            return;
        }
        let context = self.noted.lock().unwrap_or_else(|p| p.into_inner()).take();
        let context = context.as_deref().unwrap_or("-");
        let operation = self.path.trim_start_matches('/');
        log_refused(operation, context, code, &percent_decode(message));
    }
}

/// Logs a call (or one append of a stream) that ended with status `code`
/// (not 0), at the level its kind deserves.
pub(crate) fn log_refused(operation: &str, context: &str, code: usize, message: &str) {
    let status = code_name(code);
    match code {
        // The client went away: not an error of the server's.
        1 => tracing::debug!(operation, context, status, "call cancelled by the client"),
        2 | 13 | 15 => {
            tracing::error!(operation, context, status, error = %message, "call failed")
        }
        // Refused credentials and rights, exhausted limits, storage
        // that is away.
        7 | 8 | 14 | 16 => {
            tracing::warn!(operation, context, status, error = %message, "call failed")
        }
        _ => tracing::info!(operation, context, status, error = %message, "call refused"),
    }
}

impl<S, B> tower_service::Service<http::Request<Body>> for RpcService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let noted: Noted = Arc::default();
        let call = Call {
            metrics: self.metrics.clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            noted: noted.clone(),
        };
        let future = NOTED.scope(noted, self.inner.call(request));
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            let call = match grpc_status(&parts.headers) {
                // Trailers-only: the status is in the headers.
                Some((code, message)) => {
                    call.finish(code, &message);
                    None
                }
                None => Some(call),
            };
            Ok(http::Response::from_parts(
                parts,
                Body::new(ObservedBody {
                    inner: Body::new(body),
                    call,
                }),
            ))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(usize, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Some((code, message))
}

/// gRPC percent-encodes `grpc-message`.
pub(crate) fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response body that records its call when the trailers pass, or as
/// cancelled when it is dropped before.
struct ObservedBody {
    inner: Body,
    call: Option<Call>,
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(1, "");
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let (code, message) = grpc_status(trailers).unwrap_or((2, String::new()));
                    call.finish(code, &message);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(call) = this.call.take() {
                    call.finish(2, e.message());
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish(2, "the response ended without a status");
                }
            }
            Poll::Pending => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("no escapes"), "no escapes");
        assert_eq!(percent_decode("bad %zz end%"), "bad %zz end%");
    }

    #[test]
    fn operations_beyond_the_bound_count_as_unknown() {
        let m = RpcMetrics::default();
        for i in 0..OPERATIONS_MAX + 5 {
            m.histogram(&format!("/s/m{i}"), 0).observe(0.001);
        }
        let series = m.series();
        assert_eq!(series.len(), OPERATIONS_MAX + 1);
        let unknown = series.iter().find(|s| &*s.0 == "unknown").unwrap();
        assert_eq!(unknown.2.read().0.last(), Some(&5));
    }
}
