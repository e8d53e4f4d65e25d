//! Pipelined appends: while other appends of the same client are in
//! flight, [`Client::append`] sends through one shared `AppendStream`
//! instead of a call of its own. A background task owns the stream: it
//! packs every append queued meanwhile into one message and hands each
//! acknowledgement back to its caller, so many tasks appending at once
//! cost a few messages per group commit instead of a call each.
//!
//! An append is sent on the stream once. If the stream breaks, the
//! server has no AppendStream, the task ends, the acknowledgement is a
//! transient failure or does not come in time, the caller goes on with
//! ordinary retried calls under the same idempotency key: each append is
//! still appended exactly once. The caller keeps its request and checks
//! the acknowledgement against it (the entry's hash recomputed), so the
//! hashing runs on the callers' tasks, not on the stream's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_core::{Digest, Entry};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::ledger::v1 as ext;
use converge_ledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::EntryCheck;
use crate::ClientError;

/// Appends queued for the stream's task at most; callers beyond it wait.
const QUEUE: usize = 4096;
/// Appends one message carries at most (lower when the server says so).
const MESSAGE_APPENDS: usize = 1024;
/// Encoded bytes one message carries at most (lower when the server's
/// request limit is; an append larger alone goes as a call).
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Appends, and bytes of appends, unacknowledged on the stream at most:
/// below the server's default limits (4096, 16 MiB), past which it would
/// stop reading anyway; lower when the server's are.
const INFLIGHT: usize = 4096;
const INFLIGHT_BYTES: usize = 8 * 1024 * 1024;
/// An open stream with nothing in flight for this long is closed (the
/// server drops a request stream that sends nothing for 30 s).
const STREAM_IDLE: Duration = Duration::from_secs(5);
/// The task with no stream and nothing queued for this long ends.
const TASK_IDLE: Duration = Duration::from_secs(30);
/// After the server refused to open a stream (too many open, or it cannot
/// be reached), appends go on as calls for this long before the next try.
const REFUSED_BACKOFF: Duration = Duration::from_secs(1);

/// The pipelining state a client and its clones share.
#[derive(Default)]
pub(crate) struct Pipe {
    /// Appends of this client in flight now, either way.
    inflight: AtomicUsize,
    /// The queue to the stream's task, while it runs.
    tx: Mutex<Option<mpsc::Sender<Flight>>>,
    /// The server answered AppendStream with UNIMPLEMENTED: calls only.
    unsupported: AtomicBool,
    /// Appends acknowledged through the stream (for tests and metrics).
    pub(crate) streamed: AtomicUsize,
}

/// Counts an append in flight until dropped.
pub(crate) struct InFlight<'a>(&'a Pipe);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the stream says of one append: its acknowledgement, or `Err`
/// when it did not settle it (`None`: go on with calls) or settled it as
/// an error (a server that answers out of order).
type Answer = Result<ext::AppendAck, Option<ClientError>>;

/// An append handed to the stream's task. Dropped unsettled (the task
/// ended, its runtime shut down), it tells its caller to go on with calls.
struct Flight {
    request: Option<pb::AppendRequest>,
    reply: Option<oneshot::Sender<Answer>>,
}

impl Flight {
    fn settle(mut self, answer: Answer) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(None));
        }
    }
}

/// What the stream's task needs of the client.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) ledger: LedgerServiceClient<Channel>,
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
}

impl Pipe {
    /// Counts one more append in flight; `true` when others are too (then
    /// the append should be pipelined).
    pub(crate) fn begin(&self) -> (InFlight<'_>, bool) {
        let before = self.inflight.fetch_add(1, Ordering::Relaxed);
        (
            InFlight(self),
            before > 0 && !self.unsupported.load(Ordering::Relaxed),
        )
    }

    /// Sends `request` through the stream and checks the acknowledgement.
    /// `Err(Ok(request))` gives the request back when the stream did not
    /// settle it in `timeout` (the caller goes on with calls under the
    /// same idempotency key); `Err(Err(e))` is final (a refusal, a
    /// verification failure).
    pub(crate) async fn append(
        self: &Arc<Self>,
        link: &(dyn Fn() -> Link + Sync),
        request: pb::AppendRequest,
        timeout: Duration,
    ) -> Result<Entry, Result<pb::AppendRequest, ClientError>> {
        let (reply, answer) = oneshot::channel();
        let mut flight = Flight {
            request: Some(request.clone()),
            reply: Some(reply),
        };
        let sent = async {
            // Twice at most: a task that retired just as this took its
            // queue is replaced once.
            for _ in 0..2 {
                let tx = self.queue(link);
                match tx.send(flight).await {
                    Ok(()) => return answer.await.unwrap_or(Err(None)),
                    Err(mpsc::error::SendError(f)) => {
                        flight = f;
                        self.retire_queue(&tx);
                    }
                }
            }
            Err(None)
        };
        let ack = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(Some(e))) => return Err(Err(e)),
            Ok(Err(None)) | Err(_) => return Err(Ok(request)),
        };
        if ack.code != 0 {
            let status = tonic::Status::new(tonic::Code::from(ack.code as i32), ack.message);
            let e = ClientError::from(status);
            return Err(if e.is_transient() {
                Ok(request)
            } else {
                Err(e)
            });
        }
        let entry = entry_of(request, &ack).map_err(Err)?;
        self.streamed.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// The running task's queue, or a new task's.
    fn queue(self: &Arc<Self>, link: &(dyn Fn() -> Link + Sync)) -> mpsc::Sender<Flight> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &*tx
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (sender, rx) = mpsc::channel(QUEUE);
        *tx = Some(sender.clone());
        let worker = Worker {
            pipe: Arc::downgrade(self),
            link: link(),
            rx,
            next_tag: 0,
            refused_until: None,
            known: None,
        };
        tokio::spawn(worker.run());
        sender
    }

    /// Forgets `tx` if it is still the current queue (its task ended).
    fn retire_queue(&self, tx: &mpsc::Sender<Flight>) {
        let mut current = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| c.same_channel(tx)) {
            *current = None;
        }
    }
}

/// How much one stream's task packs into a message and keeps in flight:
/// the SDK's own caps, lowered to the limits the server reports in
/// ServerInfo, so that its messages fit what the server accepts (one it
/// refuses ends the stream and sends every append on it to calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    message_appends: usize,
    message_bytes: usize,
    inflight: usize,
    inflight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_appends: MESSAGE_APPENDS,
            message_bytes: MESSAGE_BYTES,
            inflight: INFLIGHT,
            inflight_bytes: INFLIGHT_BYTES,
        }
    }
}

impl Limits {
    /// The SDK's caps under what `info` reports (0: not reported, the
    /// SDK's own cap stands).
    pub(crate) fn under(info: &ext::ServerInfoResponse) -> Limits {
        let under = |own: usize, server: u64| match usize::try_from(server) {
            Ok(0) | Err(_) => own,
            Ok(s) => own.min(s),
        };
        let own = Limits::default();
        Limits {
            message_appends: under(
                own.message_appends,
                u64::from(info.append_stream_message_appends_max),
            ),
            // The message's own framing and the gRPC header come on top.
            message_bytes: match info.request_bytes_max {
                0 => own.message_bytes,
                r => under(own.message_bytes, r.saturating_sub(64).max(1)),
            },
            inflight: under(own.inflight, u64::from(info.append_stream_inflight_max)),
            inflight_bytes: under(own.inflight_bytes, info.append_stream_inflight_bytes_max),
        }
    }
}

/// An append sent on the stream, waiting for its acknowledgement.
struct Sent {
    tag: u64,
    bytes: usize,
    flight: Flight,
}

struct Worker {
    pipe: std::sync::Weak<Pipe>,
    link: Link,
    rx: mpsc::Receiver<Flight>,
    next_tag: u64,
    /// The last stream was refused at its start: until then, appends go
    /// on as calls.
    refused_until: Option<tokio::time::Instant>,
    /// The limits the server last reported: what a stream packs within
    /// when it cannot ask.
    known: Option<Limits>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let first = match tokio::time::timeout(TASK_IDLE, self.rx.recv()).await {
                Ok(Some(flight)) => flight,
                Ok(None) => return,
                Err(_) => {
                    // Idle: end. Closing the queue first makes a sender
                    // that raced with this start a new task; what was
                    // queued meanwhile goes on as calls (dropped flights
                    // say so).
                    self.rx.close();
                    while self.rx.try_recv().is_ok() {}
                    return;
                }
            };
            if self
                .refused_until
                .is_some_and(|until| tokio::time::Instant::now() < until)
            {
                // Dropped: its caller goes on with calls.
                drop(first);
                continue;
            }
            if !self.session(first).await {
                // Whatever is still queued goes on as calls.
                self.rx.close();
                while self.rx.try_recv().is_ok() {}
                return;
            }
        }
    }

    /// One stream, from `first` until it is idle or breaks; `false` when the
    /// task should end (the server has no stream, or the client is gone).
    async fn session(&mut self, first: Flight) -> bool {
        let limits = self.limits().await;
        let (requests, outbound) = mpsc::channel::<ext::AppendStreamRequest>(2);
        let mut sent: VecDeque<Sent> = VecDeque::new();
        let mut sent_bytes = 0usize;
        let mut carry = Some(first);
        // The first message goes before the call, so the call's headers and
        // the first appends leave together.
        let message = self.message(&limits, &mut carry, &mut sent, &mut sent_bytes);
        if message.appends.is_empty() {
            // Everything queued went to calls (too large for a message).
            return true;
        }
        let _ = requests.try_send(message);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        if let Some(a) = &self.link.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let mut responses = match self.link.ledger.clone().append_stream(request).await {
            Ok(r) => {
                self.refused_until = None;
                r.into_inner()
            }
            Err(status) => {
                self.refused_until = Some(tokio::time::Instant::now() + REFUSED_BACKOFF);
                return self.broken(&status);
            }
        };
        let mut requests = Some(requests);
        loop {
            let room = sent.len() < limits.inflight && sent_bytes < limits.inflight_bytes;
            let open = requests.clone();
            tokio::select! {
                biased;
                message = responses.message() => match message {
                    Ok(Some(m)) => {
                        if let Err(e) = acknowledged(m, &mut sent, &mut sent_bytes) {
                            // A server that answers out of order or with
                            // nothing in flight: settle everything so.
                            for s in sent.drain(..) {
                                s.flight.settle(Err(Some(e.clone())));
                            }
                            return true;
                        }
                    }
                    // The server ended the stream (or broke it): anything
                    // unacknowledged goes on as calls (dropped flights).
                    Ok(None) => return true,
                    Err(status) => return self.broken(&status),
                },
                // Acknowledgements keep being read while a message waits
                // for room in the outgoing queue.
                permit = reserve(open), if carry.is_some() => match permit {
                    Some(permit) => {
                        let message =
                            self.message(&limits, &mut carry, &mut sent, &mut sent_bytes);
                        permit.send(message);
                    }
                    None => {
                        // The request side is closed: this append goes on
                        // as a call; the stream finishes what it took.
                        carry = None;
                        requests = None;
                    }
                },
                flight = self.rx.recv(), if room && carry.is_none() && requests.is_some() => {
                    match flight {
                        Some(f) => carry = Some(f),
                        None => {
                            // Every client handle is gone: finish what is
                            // in flight, then end.
                            requests = None;
                            if sent.is_empty() {
                                return false;
                            }
                        }
                    }
                }
                () = tokio::time::sleep(STREAM_IDLE), if sent.is_empty() && carry.is_none() => {
                    // Half-close; the server ends the stream, answered above.
                    requests = None;
                }
            }
            if self.pipe.upgrade().is_none() && sent.is_empty() {
                return false;
            }
        }
    }

    /// The server's limits for the stream about to open, asked for before
    /// each stream (one call per stream: the server may have restarted
    /// with other flags); when it does not answer within 2 s, the limits it
    /// reported last, else the SDK's own caps (a server without the stream
    /// says so when the stream opens). Behind a balancer that routes each
    /// call on its own, the answer is some node's: nodes of one deployment
    /// should share their stream limits.
    async fn limits(&mut self) -> Limits {
        let mut request = tonic::Request::new(ext::ServerInfoRequest {});
        if let Some(a) = &self.link.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            self.link.ledger.clone().server_info(request),
        )
        .await;
        match asked {
            Ok(Ok(info)) => {
                let limits = Limits::under(info.get_ref());
                self.known = Some(limits);
                limits
            }
            _ => self.known.unwrap_or_default(),
        }
    }

    /// One message of `carry` and whatever else is queued now, within
    /// `limits`. An append larger alone than a message may be goes as a
    /// call instead (its flight dropped): its own, smaller encoding the
    /// server may still take, or refuse with a clear status.
    fn message(
        &mut self,
        limits: &Limits,
        carry: &mut Option<Flight>,
        sent: &mut VecDeque<Sent>,
        sent_bytes: &mut usize,
    ) -> ext::AppendStreamRequest {
        let mut appends: Vec<ext::StreamedAppend> = Vec::new();
        let mut bytes = 0;
        loop {
            let mut flight = match carry.take() {
                Some(f) => f,
                None if appends.len() < limits.message_appends
                    && sent.len() < limits.inflight
                    && *sent_bytes < limits.inflight_bytes =>
                {
                    match self.rx.try_recv() {
                        Ok(f) => f,
                        Err(_) => break,
                    }
                }
                None => break,
            };
            let Some(request) = flight.request.take() else {
                continue;
            };
            let tag = self.next_tag.wrapping_add(1);
            let append = ext::StreamedAppend {
                tag,
                append: Some(request),
            };
            // Exactly what it adds to the message on the wire.
            let size = prost::encoding::message::encoded_len(1, &append);
            if size > limits.message_bytes {
                drop(flight);
                continue;
            }
            if !appends.is_empty() && bytes + size > limits.message_bytes {
                // The next message's first.
                flight.request = append.append;
                *carry = Some(flight);
                break;
            }
            self.next_tag = tag;
            bytes += size;
            *sent_bytes += size;
            appends.push(append);
            sent.push_back(Sent {
                tag,
                bytes: size,
                flight,
            });
        }
        ext::AppendStreamRequest { appends }
    }

    /// The stream broke with `status` (or was refused: too many streams,
    /// a server without it): what was in flight goes on as calls, which
    /// report their own errors; `false` when the server has no stream at
    /// all.
    fn broken(&self, status: &tonic::Status) -> bool {
        let supported = status.code() != tonic::Code::Unimplemented;
        if !supported && let Some(pipe) = self.pipe.upgrade() {
            pipe.unsupported.store(true, Ordering::Relaxed);
        }
        supported
    }
}

/// Room for one message in the outgoing queue, `None` when it is closed.
async fn reserve(
    tx: Option<mpsc::Sender<ext::AppendStreamRequest>>,
) -> Option<mpsc::OwnedPermit<ext::AppendStreamRequest>> {
    tx?.reserve_owned().await.ok()
}

/// Hands the acknowledgements of `m` to the oldest appends in `sent`.
fn acknowledged(
    m: ext::AppendStreamResponse,
    sent: &mut VecDeque<Sent>,
    sent_bytes: &mut usize,
) -> Result<(), ClientError> {
    for ack in m.acks {
        let Some(s) = sent.pop_front() else {
            return Err(ClientError::Protocol(format!(
                "the append stream acknowledged tag {} with nothing in flight",
                ack.tag
            )));
        };
        if s.tag != ack.tag {
            let tag = s.tag;
            sent.push_front(s);
            return Err(ClientError::Protocol(format!(
                "the append stream acknowledged tag {} where tag {tag} was next",
                ack.tag
            )));
        }
        *sent_bytes -= s.bytes;
        s.flight.settle(Ok(ack));
    }
    Ok(())
}

/// The entry `ack` acknowledges, checked: its hash recomputes from what was
/// sent and what the server assigned.
fn entry_of(request: pb::AppendRequest, ack: &ext::AppendAck) -> Result<Entry, ClientError> {
    let digest = |bytes: &[u8], what: &str| {
        Digest::from_slice(bytes).ok_or_else(|| {
            ClientError::Protocol(format!(
                "an append acknowledgement's {what} is {} bytes, not 32",
                bytes.len()
            ))
        })
    };
    let entry = Entry {
        sequence: ack.sequence,
        key: request.key,
        payload: request.payload,
        metadata: request.metadata.into_iter().collect(),
        appended_at_ns: ack.appended_at_ns,
        lamport: ack.lamport,
        prev_hash: digest(&ack.prev_hash, "previous hash")?,
        hash: digest(&ack.hash, "hash")?,
    };
    EntryCheck::new(&request.context_id).check(&entry)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_reported_limits_lower_the_sdks_caps_and_zero_leaves_them() {
        let none = ext::ServerInfoResponse::default();
        assert_eq!(Limits::under(&none), Limits::default());
        let low = ext::ServerInfoResponse {
            append_stream_message_appends_max: 3,
            append_stream_inflight_max: 5,
            append_stream_inflight_bytes_max: 4096,
            request_bytes_max: 64 * 1024,
            ..Default::default()
        };
        assert_eq!(
            Limits::under(&low),
            Limits {
                message_appends: 3,
                message_bytes: 64 * 1024 - 64,
                inflight: 5,
                inflight_bytes: 4096,
            }
        );
        let high = ext::ServerInfoResponse {
            append_stream_message_appends_max: 1 << 20,
            append_stream_inflight_max: 1 << 20,
            append_stream_inflight_bytes_max: 1 << 40,
            request_bytes_max: 1 << 40,
            ..Default::default()
        };
        assert_eq!(Limits::under(&high), Limits::default());
    }

    fn flight(payload: usize) -> (Flight, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        let request = pb::AppendRequest {
            context_id: "ctx".into(),
            key: "k".into(),
            payload: vec![7; payload],
            ..Default::default()
        };
        let f = Flight {
            request: Some(request),
            reply: Some(reply),
        };
        (f, answer)
    }

    #[tokio::test]
    async fn a_message_stops_at_the_append_and_byte_limits_and_carries_the_rest() {
        let (tx, rx) = mpsc::channel(16);
        let channel = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let mut worker = Worker {
            pipe: std::sync::Weak::new(),
            link: Link {
                ledger: LedgerServiceClient::new(channel),
                authorization: None,
            },
            rx,
            next_tag: 0,
            refused_until: None,
            known: None,
        };
        let mut answers = Vec::new();
        for _ in 0..6 {
            let (f, a) = flight(100);
            tx.send(f).await.unwrap();
            answers.push(a);
        }
        let one = {
            let (f, _) = flight(100);
            let append = ext::StreamedAppend {
                tag: 1,
                append: f.request.clone(),
            };
            prost::encoding::message::encoded_len(1, &append)
        };
        // Room for two appends by bytes, four by count.
        let limits = Limits {
            message_appends: 4,
            message_bytes: 2 * one + one / 2,
            ..Limits::default()
        };
        let (mut sent, mut sent_bytes, mut carry) = (VecDeque::new(), 0, None);
        let m = worker.message(&limits, &mut carry, &mut sent, &mut sent_bytes);
        assert_eq!(m.appends.len(), 2, "stopped by bytes");
        assert_eq!(prost::Message::encoded_len(&m), 2 * one);
        assert!(
            carry.is_some(),
            "the third append waits for the next message"
        );
        let m = worker.message(&limits, &mut carry, &mut sent, &mut sent_bytes);
        assert_eq!(
            m.appends.iter().map(|a| a.tag).collect::<Vec<_>>(),
            vec![3, 4],
            "tags go on in order"
        );
        let wide = Limits {
            message_appends: 1,
            ..Limits::default()
        };
        let m = worker.message(&wide, &mut carry, &mut sent, &mut sent_bytes);
        assert_eq!(m.appends.len(), 1, "stopped by count");
        assert_eq!(sent.len(), 5);
        assert_eq!(sent_bytes, 5 * one);
        // Larger alone than a message may be: not sent, its caller told to
        // go on with a call, and no tag taken.
        let (big, big_answer) = flight(4 * one);
        tx.send(big).await.unwrap();
        let (last, _last_answer) = flight(100);
        tx.send(last).await.unwrap();
        let m = worker.message(&limits, &mut carry, &mut sent, &mut sent_bytes);
        assert_eq!(
            m.appends.iter().map(|a| a.tag).collect::<Vec<_>>(),
            vec![6, 7],
            "the sixth append, then the one after the large one"
        );
        assert!(matches!(big_answer.await, Ok(Err(None))));
    }
}
