//! Accepting connections under limits that hold under attack.
//!
//! - At most `connections_max` connections are open, and at most
//!   `pending_max` of them may still be in their handshake (TLS, then the
//!   HTTP/2 preface); past either, a new connection is closed at once. A
//!   connection that does not finish its handshake within
//!   `handshake_timeout` is closed, so sockets that never speak cannot hold
//!   the slots real clients need.
//! - An established connection with no request in flight for
//!   `idle_timeout` is closed; HTTP/2 keepalive pings (the server's) find
//!   half-open peers, and TCP keepalive the dead ones below that.
//! - With TLS, the handshake happens here (rustls), with certificates that
//!   a reload replaces for new connections without touching the listener;
//!   a verified client certificate's subject common name is handed to the
//!   requests of its connection ([`ConnInfo`]).

mod budget;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::auth::PeerCertificate;

pub(crate) use budget::HeldBytes;
pub use budget::{RequestBudget, RequestLayer};
pub use tls::{TlsError, TlsFiles, TlsServer};

/// What every connection is held to.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Most open connections.
    pub connections_max: usize,
    /// Most connections still in their handshake.
    pub pending_max: usize,
    /// How long a connection may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// How long an established connection may stay without a request in
    /// flight.
    pub idle_timeout: Duration,
    /// TCP keepalive probes after this much silence (dead peers).
    pub tcp_keepalive: Duration,
}

/// The HTTP/2 client preface: once this many bytes arrived, the handshake
/// is over.
const PREFACE_BYTES: u64 = 24;

/// What the server knows of a connection, shared by its IO and its
/// requests.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection was established).
    idle_since: Mutex<Option<Instant>>,
    /// AppendStreams open on this connection.
    append_streams: AtomicUsize,
}

/// One of a connection's AppendStream slots, given back when dropped.
pub(crate) struct ConnStreamSlot(Arc<ConnState>);

impl Drop for ConnStreamSlot {
    fn drop(&mut self) {
        self.0.append_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnInfo {
    /// One more AppendStream on this connection, if fewer than `max` are
    /// open.
    pub(crate) fn open_append_stream(&self, max: usize) -> Option<ConnStreamSlot> {
        self.state
            .append_streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnStreamSlot(self.state.clone()))
    }
}

impl ConnState {
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// How long the connection has had nothing in flight (`None`: busy).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(since.map_or(Duration::ZERO, |t| t.elapsed()))
    }
}

/// What a request knows of its connection (in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Its verified client certificate, with TLS and `--tls-client-ca`.
    pub peer: PeerCertificate,
    pub(crate) state: Arc<ConnState>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection under the limits.
pub(crate) struct Conn {
    io: Io,
    info: ConnInfo,
    /// Bytes read so far (until the preface is in).
    read: u64,
    /// Held while the handshake is not finished.
    pending: Option<OwnedSemaphorePermit>,
    /// The handshake deadline, then the next idle check.
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _slot: Slot,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl Conn {
    /// Whether the timer says to close the connection: a handshake past its
    /// deadline, or an established connection idle for too long. Re-arms
    /// the timer otherwise (registering the task's waker).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.pending.is_some() {
                return true;
            }
            let next = match self.info.state.idle_for() {
                Some(idle) if idle >= self.idle_timeout => return true,
                Some(idle) => self.idle_timeout - idle,
                None => self.idle_timeout,
            };
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + next);
        }
    }
}

fn closed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, why.to_owned())
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if this.pending.is_some() {
                    this.read += (buf.filled().len() - before) as u64;
                    if this.read >= PREFACE_BYTES {
                        // Established: free the handshake slot; from now on
                        // the timer watches for idleness.
                        this.pending = None;
                        *this
                            .info
                            .state
                            .idle_since
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        let at = tokio::time::Instant::now() + this.idle_timeout;
                        this.timer.as_mut().reset(at);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.expired(cx) {
                    let why = if this.pending.is_some() {
                        "the handshake did not finish in time"
                    } else {
                        "the connection was idle too long"
                    };
                    return Poll::Ready(Err(closed(why)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection's place under `--max-connections`, counted in
/// [`ConnCounters::open`] while it lasts.
struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<ConnCounters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connection counts, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections open now (in their handshake or serving).
    pub open: AtomicU64,
    /// Connections accepted since the start.
    pub accepted: AtomicU64,
    /// Connections closed at once because a limit was reached.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
    /// Whether the accept loop stopped.
    pub stopped: AtomicBool,
}

/// Accepts connections on `listener` into a channel, under `limits`, doing
/// the TLS handshake (if `tls`) before handing a connection over.
pub(crate) fn accept(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Arc<TlsServer>>,
    counters: Arc<ConnCounters>,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    // Handshakes may take at most half the slots: the other half is for
    // connections that speak, whatever a flood of silent sockets does.
    let handshakes = Arc::new(Semaphore::new(
        limits
            .pending_max
            .clamp(1, (limits.connections_max / 2).max(1)),
    ));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                // Transient accept errors (EMFILE, ECONNABORTED): back off a
                // little rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (Ok(slot), Ok(pending)) = (
                slots.clone().try_acquire_owned(),
                handshakes.clone().try_acquire_owned(),
            ) else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "refused a connection: at the connection or handshake limit");
                continue;
            };
            counters.open.fetch_add(1, Ordering::Relaxed);
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let slot = Slot {
                _permit: slot,
                counters: counters.clone(),
            };
            let _ = stream.set_nodelay(true);
            let _ = socket2::SockRef::from(&stream)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(limits.tcp_keepalive));
            let (tx, tls, limits, counters) =
                (tx.clone(), tls.clone(), limits.clone(), counters.clone());
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
                let (io, peer) = match tls {
                    None => (Io::Plain(stream), PeerCertificate::default()),
                    Some(tls) => {
                        let accepted =
                            tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await;
                        match accepted {
                            Ok(Ok(s)) => {
                                let peer = tls::peer_certificate(s.get_ref().1);
                                (Io::Tls(Box::new(s)), peer)
                            }
                            Ok(Err(e)) => {
                                counters.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                counters.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(%remote, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let conn = Conn {
                    io,
                    info: ConnInfo {
                        remote: Some(remote),
                        peer,
                        state: Arc::default(),
                    },
                    read: 0,
                    pending: Some(pending),
                    timer: Box::pin(tokio::time::sleep_until(deadline)),
                    idle_timeout: limits.idle_timeout,
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
        counters.stopped.store(true, Ordering::Relaxed);
    });
    rx
}
