//! What a request may hold while it is received and handled.
//!
//! A tower layer in front of every service:
//!
//! - counts the request against its connection's in-flight requests until
//!   its response ends (the connection's idle timer only runs with none);
//! - takes every byte of the request body from one budget shared by all
//!   connections as it arrives, and holds it until the response ends (the
//!   decoded message lives that long); a request that finds the budget
//!   spent waits for at most `wait`, then fails with `RESOURCE_EXHAUSTED`:
//!   many clients sending large messages at once cannot exhaust memory;
//! - refuses a gRPC message longer than the request limit from its 5-byte
//!   frame header, before its bytes are received, with
//!   `RESOURCE_EXHAUSTED` naming `--max-request-bytes` (gRPC's code for it;
//!   tonic's own check would say `OUT_OF_RANGE`);
//! - fails a body that sends nothing for `idle` (a stalled upload holds
//!   memory and a stream slot).
//!
//! A streaming handler that is done with a message gives its bytes back
//! early through the request's [`HeldBytes`] (in its extensions): a
//! long-lived stream holds only what it has received and not yet handled.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use super::{ConnInfo, ConnState};

/// The bytes all requests may hold at once, and how long one waits for them.
#[derive(Debug)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    /// The budget, in bytes.
    pub bytes_max: usize,
    /// How long a request waits for budget before it is refused.
    pub wait: Duration,
    /// How long a request body may send nothing.
    pub idle: Duration,
}

impl RequestBudget {
    /// A budget of `bytes_max` bytes over all requests.
    pub fn new(bytes_max: usize, wait: Duration, idle: Duration) -> Arc<RequestBudget> {
        let bytes_max = bytes_max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Arc::new(RequestBudget {
            permits: Arc::new(Semaphore::new(bytes_max)),
            bytes_max,
            wait,
            idle,
        })
    }

    /// Bytes of requests held now.
    pub fn in_use(&self) -> usize {
        self.bytes_max - self.permits.available_permits()
    }
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct RequestLayer {
    budget: Arc<RequestBudget>,
    /// Largest gRPC message of a request.
    message_bytes_max: usize,
}

impl RequestLayer {
    /// A layer drawing on `budget`, refusing messages over
    /// `message_bytes_max`.
    pub fn new(budget: Arc<RequestBudget>, message_bytes_max: usize) -> RequestLayer {
        RequestLayer {
            budget,
            message_bytes_max,
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestLayer {
    type Service = RequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            budget: self.budget.clone(),
            message_bytes_max: self.message_bytes_max,
        }
    }
}

/// See [`RequestLayer`].
#[derive(Debug, Clone)]
pub struct RequestService<S> {
    inner: S,
    budget: Arc<RequestBudget>,
    message_bytes_max: usize,
}

/// The request-budget bytes one request holds, shared by its body (which
/// takes them as they arrive), its response (which holds them until it
/// ends) and, through the request's extensions, its handler (which may give
/// a handled message's bytes back early).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldBytes(Arc<Mutex<Holding>>);

#[derive(Debug, Default)]
struct Holding {
    permit: Option<OwnedSemaphorePermit>,
    /// The size on the wire (5-byte header and body) of each message whose
    /// header arrived and that was not given back yet, oldest first.
    messages: std::collections::VecDeque<usize>,
}

impl HeldBytes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.lock();
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
    }

    /// A message of `bytes` on the wire began.
    fn message(&self, bytes: usize) {
        self.lock().messages.push_back(bytes);
    }

    /// Gives the oldest message's bytes, as they arrived on the wire, back
    /// to the budget (at most what is held): the caller is done with it.
    pub(crate) fn release_message(&self) {
        let mut held = self.lock();
        let Some(n) = held.messages.pop_front() else {
            return;
        };
        if let Some(p) = &mut held.permit {
            if n >= p.num_permits() {
                held.permit = None;
            } else {
                drop(p.split(n));
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

/// Held from the request's start until its response ends: the connection's
/// in-flight count and the request's budget.
struct Held {
    state: Option<Arc<ConnState>>,
    _permits: HeldBytes,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(s) = &self.state {
            s.end();
        }
    }
}

impl<S, B> tower_service::Service<http::Request<Body>> for RequestService<S>
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
        let state = request
            .extensions()
            .get::<ConnInfo>()
            .map(|i| i.state.clone());
        if let Some(s) = &state {
            s.begin();
        }
        let permits = HeldBytes::default();
        let held = Held {
            state,
            _permits: permits.clone(),
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(permits.clone());
        let body = Body::new(BudgetedBody {
            inner: body,
            budget: self.budget.clone(),
            message_bytes_max: self.message_bytes_max,
            permits,
            framing: Framing::default(),
            waiting: None,
            pending_frame: None,
            idle: None,
            progressed: false,
        });
        let future = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|b| {
                Body::new(HeldBody {
                    inner: Body::new(b),
                    _held: held,
                })
            }))
        })
    }
}

/// A response body that keeps the request's [`Held`] until it ends.
struct HeldBody<B> {
    inner: B,
    _held: Held,
}

impl<B> HttpBody for HeldBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where the reader is in the gRPC framing of the request body: 5 header
/// bytes (compressed flag, `u32` length), then the message.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    message_left: u64,
}

impl Framing {
    /// Walks `data`; the length of a message header that exceeds `max`.
    /// Each message that begins is told to `began` with its size on the
    /// wire.
    fn over(&mut self, mut data: &[u8], max: usize, began: &mut dyn FnMut(usize)) -> Option<u64> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let n = (self.message_left as usize).min(data.len());
                self.message_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                if len > max as u64 {
                    return Some(len);
                }
                began(5 + len as usize);
                self.message_left = len;
            }
        }
        None
    }
}

type Acquire = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Result<OwnedSemaphorePermit, tokio::sync::AcquireError>,
                    tokio::time::error::Elapsed,
                >,
            > + Send,
    >,
>;

struct BudgetedBody {
    inner: Body,
    budget: Arc<RequestBudget>,
    message_bytes_max: usize,
    permits: HeldBytes,
    framing: Framing,
    /// The budget being waited for, for `pending_frame`.
    waiting: Option<Acquire>,
    pending_frame: Option<Frame<Bytes>>,
    /// The idle timer, armed only when the body first has to wait (a
    /// request that arrives whole never touches the timer wheel).
    idle: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last armed.
    progressed: bool,
}

impl BudgetedBody {
    /// Polls the idle timer, arming it (or re-arming it after progress)
    /// `idle` from now; ready when the body sent nothing for that long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.budget.idle;
        let timer = match &mut self.idle {
            Some(timer) => {
                if std::mem::take(&mut self.progressed) {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                timer
            }
            None => {
                self.progressed = false;
                self.idle.insert(Box::pin(tokio::time::sleep(idle)))
            }
        };
        timer.as_mut().poll(cx)
    }
}

fn refuse(status: Status) -> Poll<Option<Result<Frame<Bytes>, tonic::codegen::StdError>>> {
    Poll::Ready(Some(Err(Box::new(status))))
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(acquire) = &mut this.waiting {
                match ready!(acquire.as_mut().poll(cx)) {
                    Ok(Ok(permit)) => {
                        this.waiting = None;
                        this.permits.add(permit);
                        let frame = this.pending_frame.take();
                        this.progressed = true;
                        return Poll::Ready(frame.map(Ok));
                    }
                    Ok(Err(_)) => {
                        return refuse(Status::unavailable("the server is shutting down"));
                    }
                    Err(_) => {
                        return refuse(Status::resource_exhausted(format!(
                            "the server holds its whole budget of {} bytes of requests being received \
                             (--max-inflight-request-bytes) and none was freed within {} s; retry later",
                            this.budget.bytes_max,
                            this.budget.wait.as_secs()
                        )));
                    }
                }
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
                Poll::Pending => {
                    if this.poll_idle(cx).is_ready() {
                        return refuse(Status::deadline_exceeded(format!(
                            "the request sent nothing for {} s; its stream was dropped",
                            this.budget.idle.as_secs()
                        )));
                    }
                    return Poll::Pending;
                }
            };
            let Some(data) = frame.data_ref() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            let permits = &this.permits;
            if let Some(len) = this
                .framing
                .over(data.chunk(), this.message_bytes_max, &mut |n| {
                    permits.message(n)
                })
            {
                return refuse(Status::resource_exhausted(format!(
                    "the request message is {len} bytes; the limit is {} bytes (--max-request-bytes)",
                    this.message_bytes_max
                )));
            }
            let n = data.remaining();
            if n == 0 {
                // An empty DATA frame holds nothing.
                this.progressed = true;
                return Poll::Ready(Some(Ok(frame)));
            }
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match this.budget.permits.clone().try_acquire_many_owned(n) {
                Ok(permit) => {
                    this.permits.add(permit);
                    this.progressed = true;
                    return Poll::Ready(Some(Ok(frame)));
                }
                Err(_) => {
                    let permits = this.budget.permits.clone();
                    let wait = this.budget.wait;
                    this.pending_frame = Some(frame);
                    this.waiting = Some(Box::pin(tokio::time::timeout(
                        wait,
                        permits.acquire_many_owned(n),
                    )));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending_frame.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_header_over_the_limit_is_found_wherever_the_chunks_split_it() {
        let mut stream = Vec::new();
        for len in [3u32, 10, 2000] {
            stream.push(0);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for split in 1..20 {
            let mut f = Framing::default();
            let mut began = Vec::new();
            let found = stream
                .chunks(split)
                .find_map(|c| f.over(c, 1000, &mut |n| began.push(n)));
            assert_eq!(found, Some(2000), "chunks of {split}");
            assert_eq!(began, vec![8, 15], "chunks of {split}");
            let mut f = Framing::default();
            let mut began = Vec::new();
            assert_eq!(
                stream
                    .chunks(split)
                    .find_map(|c| f.over(c, 2000, &mut |n| began.push(n))),
                None
            );
            assert_eq!(began, vec![8, 15, 2005], "chunks of {split}");
        }
    }

    #[test]
    fn a_handled_message_gives_back_its_size_on_the_wire_and_no_more() {
        let budget = RequestBudget::new(10_000, Duration::from_secs(1), Duration::from_secs(1));
        let held = HeldBytes::default();
        // Two messages arrive (their bytes taken as they come), a third
        // begins.
        for n in [1000u32, 3000, 500] {
            held.add(budget.permits.clone().try_acquire_many_owned(n).unwrap());
        }
        held.message(1000);
        held.message(3000);
        held.message(4000);
        assert_eq!(budget.in_use(), 4500);
        held.release_message();
        assert_eq!((budget.in_use(), held.held()), (3500, 3500));
        held.release_message();
        assert_eq!(budget.in_use(), 500);
        // The third message is not all here: at most what is held goes back.
        held.release_message();
        assert_eq!(budget.in_use(), 0);
        held.release_message();
        assert_eq!(budget.in_use(), 0, "nothing more than was taken");
    }
}
