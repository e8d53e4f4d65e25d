//! Pipelined appends: while other appends of the same client are in
//! flight, [`Client::append`] sends through one shared `AppendStream`
//! instead of a call of its own. A background task owns the stream: it
//! packs every append queued meanwhile into one message and hands each
//! acknowledgement back to its caller, so many tasks appending at once
//! cost a few messages per group commit instead of a call each.
//!
//! An append is sent on the stream once. If the stream breaks, the
//! server has no AppendStream, or the acknowledgement is a transient
//! failure, the caller goes on with ordinary retried calls under the same
//! idempotency key: each append is still appended exactly once.

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
/// Appends one message carries at most (the server's default limit).
const MESSAGE_APPENDS: usize = 1024;
/// Bytes of appends one message carries at most (one larger append goes
/// alone).
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Appends unacknowledged on the stream at most (the server's default
/// in-flight limit; it would stop reading past it anyway).
const INFLIGHT: usize = 4096;
/// An open stream with nothing in flight for this long is closed (the
/// server drops a request stream that sends nothing for 30 s).
const STREAM_IDLE: Duration = Duration::from_secs(5);
/// The task with no stream and nothing queued for this long ends.
const TASK_IDLE: Duration = Duration::from_secs(30);

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

/// An append handed to the stream's task.
struct Flight {
    request: pb::AppendRequest,
    reply: oneshot::Sender<Result<Entry, Unsent>>,
}

/// An append the stream did not settle: the caller retries it with calls.
pub(crate) struct Unsent {
    pub(crate) request: pb::AppendRequest,
    /// Why: a transient failure (or `None`: the server has no stream).
    pub(crate) error: Option<ClientError>,
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

    /// Sends `request` through the stream. `Err` gives the request back
    /// when the stream did not settle it, with a final error when it did
    /// (a refusal, a verification failure).
    pub(crate) async fn append(
        self: &Arc<Self>,
        link: &(dyn Fn() -> Link + Sync),
        request: pb::AppendRequest,
        timeout: Duration,
    ) -> Result<Entry, Result<Unsent, ClientError>> {
        let (reply, answer) = oneshot::channel();
        let mut flight = Flight { request, reply };
        // Twice at most: a task that retired just as this took its queue
        // is replaced once.
        for _ in 0..2 {
            let tx = self.queue(link);
            match tx.send(flight).await {
                Ok(()) => {
                    let Ok(answer) = tokio::time::timeout(timeout, answer).await else {
                        return Err(Err(ClientError::Rpc {
                            code: tonic::Code::DeadlineExceeded,
                            message: format!(
                                "the append stream did not acknowledge the append within {} ms; \
                                 it may or may not be appended (append it again with the same \
                                 idempotency key to find out)",
                                timeout.as_millis()
                            ),
                        }));
                    };
                    return match answer {
                        Ok(Ok(entry)) => Ok(entry),
                        Ok(Err(unsent)) => match unsent.error {
                            Some(e) if !e.is_transient() => Err(Err(e)),
                            _ => Err(Ok(unsent)),
                        },
                        Err(_) => Err(Err(ClientError::Unavailable(
                            "the append stream's task ended with the append in flight".into(),
                        ))),
                    };
                }
                Err(mpsc::error::SendError(f)) => {
                    flight = f;
                    self.retire_queue(&tx);
                }
            }
        }
        Err(Ok(Unsent {
            request: flight.request,
            error: None,
        }))
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

/// An append sent on the stream, waiting for its acknowledgement.
struct Sent {
    tag: u64,
    flight: Flight,
}

struct Worker {
    pipe: std::sync::Weak<Pipe>,
    link: Link,
    rx: mpsc::Receiver<Flight>,
    next_tag: u64,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let first = match tokio::time::timeout(TASK_IDLE, self.rx.recv()).await {
                Ok(Some(flight)) => flight,
                Ok(None) => return,
                Err(_) => {
                    // Idle: end. Closing the queue first makes a sender
                    // that raced with this start a new task.
                    self.rx.close();
                    // Whatever was queued meanwhile goes on as calls; the
                    // next append starts a new task.
                    while let Ok(flight) = self.rx.try_recv() {
                        unsent(flight, None);
                    }
                    return;
                }
            };
            if !self.session(first).await {
                return;
            }
        }
    }

    /// One stream, from `first` until it is idle or breaks; `false` when the
    /// task should end (the server has no stream, or the client is gone).
    async fn session(&mut self, first: Flight) -> bool {
        let (requests, outbound) = mpsc::channel::<ext::AppendStreamRequest>(2);
        let mut sent: VecDeque<Sent> = VecDeque::new();
        let mut carry = Some(first);
        // The first message goes before the call, so the call's headers and
        // the first appends leave together.
        let message = self.message(&mut carry, &mut sent);
        let _ = requests.try_send(message);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        if let Some(a) = &self.link.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let mut responses = match self.link.ledger.clone().append_stream(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return self.broken(status, sent),
        };
        let mut requests = Some(requests);
        loop {
            let idle = sent.is_empty();
            let room = sent.len() < INFLIGHT && requests.is_some();
            tokio::select! {
                biased;
                message = responses.message() => match message {
                    Ok(Some(m)) => {
                        if let Err(e) = self.acknowledged(m, &mut sent) {
                            // A server that answers out of order or with
                            // bad hashes: settle everything as that error.
                            for s in sent.drain(..) {
                                let _ = s.flight.reply.send(Err(Unsent {
                                    request: s.flight.request,
                                    error: Some(e.clone()),
                                }));
                            }
                            return true;
                        }
                    }
                    Ok(None) => {
                        // The server ended the stream: anything still
                        // unacknowledged goes on as calls.
                        for s in sent.drain(..) {
                            unsent(s.flight, None);
                        }
                        return true;
                    }
                    Err(status) => return self.broken(status, sent),
                },
                flight = self.rx.recv(), if room => match flight {
                    Some(f) => {
                        carry = Some(f);
                        let message = self.message(&mut carry, &mut sent);
                        if let Some(tx) = &requests
                            && tx.send(message).await.is_err()
                        {
                            requests = None;
                        }
                    }
                    None => {
                        // Every client handle is gone: finish what is in
                        // flight, then end.
                        requests = None;
                        if sent.is_empty() {
                            return false;
                        }
                    }
                },
                () = tokio::time::sleep(STREAM_IDLE), if idle => {
                    // Half-close; the server ends the stream, answered above.
                    requests = None;
                }
            }
            if self.pipe.upgrade().is_none() && sent.is_empty() {
                return false;
            }
        }
    }

    /// One message of `carry` and whatever else is queued now.
    fn message(
        &mut self,
        carry: &mut Option<Flight>,
        sent: &mut VecDeque<Sent>,
    ) -> ext::AppendStreamRequest {
        let mut appends = Vec::new();
        let mut bytes = 0;
        while let Some(flight) = carry.take().or_else(|| {
            (appends.len() < MESSAGE_APPENDS && bytes < MESSAGE_BYTES && sent.len() < INFLIGHT)
                .then(|| self.rx.try_recv().ok())
                .flatten()
        }) {
            self.next_tag = self.next_tag.wrapping_add(1);
            bytes += flight.request.payload.len() + flight.request.key.len();
            appends.push(ext::StreamedAppend {
                tag: self.next_tag,
                append: Some(flight.request.clone()),
            });
            sent.push_back(Sent {
                tag: self.next_tag,
                flight,
            });
        }
        ext::AppendStreamRequest { appends }
    }

    /// Settles the appends `m` acknowledges (the oldest in `sent`).
    fn acknowledged(
        &self,
        m: ext::AppendStreamResponse,
        sent: &mut VecDeque<Sent>,
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
            if ack.code != 0 {
                let status = tonic::Status::new(tonic::Code::from(ack.code as i32), ack.message);
                unsent(s.flight, Some(ClientError::from(status)));
                continue;
            }
            let answer = entry_of(s.flight.request, &ack).map_err(|e| Unsent {
                request: pb::AppendRequest::default(),
                error: Some(e),
            });
            if answer.is_ok()
                && let Some(pipe) = self.pipe.upgrade()
            {
                pipe.streamed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = s.flight.reply.send(answer);
        }
        Ok(())
    }

    /// The stream broke with `status` (or was refused: too many streams,
    /// a server without it): what was in flight goes on as calls, which
    /// report their own errors; `false` when the server has no stream at
    /// all.
    fn broken(&self, status: tonic::Status, sent: VecDeque<Sent>) -> bool {
        let supported = status.code() != tonic::Code::Unimplemented;
        if !supported && let Some(pipe) = self.pipe.upgrade() {
            pipe.unsupported.store(true, Ordering::Relaxed);
        }
        for s in sent {
            unsent(s.flight, None);
        }
        supported
    }
}

/// Gives `flight` back to its caller, unsettled (`error`: `None` or
/// transient) or refused for good.
fn unsent(flight: Flight, error: Option<ClientError>) {
    let _ = flight.reply.send(Err(Unsent {
        request: flight.request,
        error,
    }));
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
