//! `converge.ledger.v1.LedgerService/AppendStream`: pipelined appends.
//!
//! One stream carries appends to any contexts. Each request message's
//! appends are checked (rights, limits, the reserved namespace) and queued
//! in order without waiting for the ones before to commit; each is
//! acknowledged once durable, in arrival order, as many acknowledgements
//! to a response message as are ready. Everything happens as the transport
//! pulls the response: no task of its own, and a client that stops reading
//! acknowledgements stops the server reading its appends, so a stream holds
//! at most its in-flight limits (appends and bytes) plus one message.
//! Each message's bytes go back to the request budget once its last
//! acknowledgement is sent.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_proto::ledger::v1 as pb;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use prost::Message;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::ConnInfo;
use crate::auth::{Caller, Right};
use crate::conn::{ConnStreamSlot, HeldBytes};
use crate::convert::append_parts;
use crate::{Appended, Ledger, LedgerError};

/// Most acknowledgements in one response message.
const ACKS_PER_MESSAGE: usize = 1024;

pub(crate) type AppendStreamOut =
    Pin<Box<dyn Stream<Item = Result<pb::AppendStreamResponse, Status>> + Send>>;

/// Opens the stream: takes one of its connection's AppendStream slots (when
/// it came through the server's connection layer) and one of the
/// server's, for as long as it is open.
pub(crate) fn open(
    ledger: Arc<Ledger>,
    caller: Caller,
    held: Option<HeldBytes>,
    conn: Option<&ConnInfo>,
    inbound: Streaming<pb::AppendStreamRequest>,
) -> Result<AppendStreamOut, LedgerError> {
    let per_connection = ledger.config().append_streams_per_connection_max;
    let conn_slot = match conn {
        Some(c) => Some(c.open_append_stream(per_connection).ok_or_else(|| {
            LedgerError::ResourceExhausted(format!(
                "{per_connection} AppendStreams are open on this connection, the server's limit \
                 per connection (--max-append-streams-per-connection); one stream carries any \
                 number of appends to any contexts"
            ))
        })?),
        None => None,
    };
    let slot = ledger.open_append_stream()?;
    let pump = Pump {
        stopping: ledger.stopping(),
        ledger,
        caller,
        held,
        inbound,
        reading: true,
        failed: None,
        pending: FuturesOrdered::new(),
        inflight_bytes: 0,
        messages: VecDeque::new(),
        _slot: slot,
        _conn_slot: conn_slot,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        pump,
        |mut pump| async move { pump.next().await.map(|item| (item, pump)) },
    )))
}

/// One append's acknowledgement to come, with its size in flight.
type AckFuture = BoxFuture<'static, (pb::AppendAck, usize)>;

struct Pump {
    ledger: Arc<Ledger>,
    caller: Caller,
    held: Option<HeldBytes>,
    inbound: Streaming<pb::AppendStreamRequest>,
    /// Further messages may come (the client has not half-closed, and the
    /// stream has not failed).
    reading: bool,
    /// The stream failed (a bad message, a broken transport): reported once
    /// the acknowledgements of what was queued before are sent.
    failed: Option<Status>,
    /// Acknowledgements to come, in arrival order.
    pending: FuturesOrdered<AckFuture>,
    /// Bytes of the appends in `pending`.
    inflight_bytes: usize,
    /// Per received message not yet given back to the request budget,
    /// oldest first: its acknowledgements still to send (its bytes go back
    /// once they, and those of every message before it, are sent).
    messages: VecDeque<usize>,
    /// Shutdown began: take no more appends, acknowledge what was taken.
    stopping: tokio::sync::watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
    /// Its connection's slot (`None`: it came some other way).
    _conn_slot: Option<ConnStreamSlot>,
}

impl Pump {
    /// The next response message, `None` when the stream is done.
    async fn next(&mut self) -> Option<Result<pb::AppendStreamResponse, Status>> {
        let config = self.ledger.config();
        let (count_max, bytes_max) = (
            config.append_stream_inflight_max.max(1),
            config.append_stream_inflight_bytes_max.max(1),
        );
        loop {
            let can_read =
                self.reading && self.pending.len() < count_max && self.inflight_bytes < bytes_max;
            if !can_read && self.pending.is_empty() {
                if self.reading {
                    // Unreachable with both limits at least 1; never spin.
                    self.reading = false;
                }
                return self.failed.take().map(Err);
            }
            tokio::select! {
                biased;
                Some(first) = self.pending.next(), if !self.pending.is_empty() => {
                    return Some(Ok(self.acknowledge(first)));
                }
                _ = self.stopping.wait_for(|s| *s).map(|r| r.is_ok()), if self.reading => {
                    self.reading = false;
                    self.failed = Some(Status::unavailable(
                        "the server is shutting down: appends sent after the last acknowledgement \
                         were not taken; send them again (with the same idempotency keys) to \
                         another node or once it is back",
                    ));
                }
                message = self.inbound.message(), if can_read => match message {
                    Ok(Some(m)) => self.take(m).await,
                    Ok(None) => self.reading = false,
                    Err(status) => {
                        self.reading = false;
                        self.failed = Some(status);
                    }
                },
            }
        }
    }

    /// A response message of `first` and every acknowledgement ready after
    /// it.
    fn acknowledge(&mut self, first: (pb::AppendAck, usize)) -> pb::AppendStreamResponse {
        let mut acks = Vec::with_capacity(self.pending.len().min(ACKS_PER_MESSAGE) + 1);
        let mut next = Some(first);
        while let Some((ack, bytes)) = next {
            acks.push(ack);
            self.inflight_bytes -= bytes;
            self.acknowledged_one();
            if acks.len() >= ACKS_PER_MESSAGE || self.pending.is_empty() {
                break;
            }
            next = self.pending.next().now_or_never().flatten();
        }
        pb::AppendStreamResponse { acks }
    }

    /// One more acknowledgement is sent: a message whose last one it was
    /// gives its bytes back to the request budget.
    fn acknowledged_one(&mut self) {
        if let Some(front) = self.messages.front_mut() {
            *front = front.saturating_sub(1);
        }
        self.release_done();
    }

    /// Gives the bytes of the oldest messages whose acknowledgements are all
    /// sent back to the request budget, in arrival order (the budget
    /// counted them in that order, as they arrived on the wire).
    fn release_done(&mut self) {
        while self.messages.front() == Some(&0) {
            self.messages.pop_front();
            if let Some(held) = &self.held {
                held.release_message();
            }
        }
    }

    /// Checks and queues one request message's appends.
    async fn take(&mut self, m: pb::AppendStreamRequest) {
        let max = self
            .ledger
            .config()
            .append_stream_message_appends_max
            .max(1);
        if m.appends.len() > max {
            // Nothing of it is taken; its bytes go back in their turn.
            self.messages.push_back(0);
            self.release_done();
            self.reading = false;
            self.failed = Some(Status::invalid_argument(format!(
                "an AppendStream message carries {} appends; the limit is {max} \
                 (ServerInfo.append_stream_message_appends_max); none of them was appended, \
                 and the stream ends after the acknowledgements of the appends before it",
                m.appends.len()
            )));
            return;
        }
        if m.appends.is_empty() {
            // A no-op (a client may send one to keep an idle stream open).
            self.messages.push_back(0);
            self.release_done();
            return;
        }
        self.messages.push_back(m.appends.len());
        // In arrival order: refused at once (Err) or queued (Ok, an index
        // into `appends`).
        let mut order: Vec<(u64, usize, Result<usize, Status>, String)> =
            Vec::with_capacity(m.appends.len());
        let mut appends = Vec::with_capacity(m.appends.len());
        for (i, a) in m.appends.into_iter().enumerate() {
            let bytes = a.encoded_len();
            let mut context = String::new();
            let checked = match a.append {
                None => Err(Status::invalid_argument(format!(
                    "appends[{i}] (tag {}) has no append request; nothing was appended for it",
                    a.tag
                ))),
                Some(r) => match self
                    .ledger
                    .limits()
                    .check_context_id(&r.context_id)
                    .map_err(|e| Status::from(LedgerError::from(e)))
                    .and_then(|()| self.caller.require(Right::Append, &r.context_id))
                {
                    Err(status) => {
                        context = r.context_id;
                        Err(status)
                    }
                    Ok(()) => {
                        // Named in the log line if it is refused later.
                        context.clone_from(&r.context_id);
                        appends.push(append_parts(r));
                        Ok(appends.len() - 1)
                    }
                },
            };
            order.push((a.tag, bytes, checked, context));
        }
        let mut queued: Vec<Option<_>> = self
            .ledger
            .append_many(appends)
            .await
            .into_iter()
            .map(Some)
            .collect();
        let mut refused_here = 0usize;
        for (tag, bytes, checked, context) in order {
            self.inflight_bytes += bytes;
            let answer = match checked {
                Err(status) => Err(status),
                Ok(i) => match queued[i].take() {
                    Some(Ok(pending)) => {
                        self.pending.push_back(Box::pin(async move {
                            let answer = pending.answer().await.map_err(Status::from);
                            if let Err(status) = &answer {
                                refused(&context, status);
                            }
                            (ack(tag, answer), bytes)
                        }));
                        continue;
                    }
                    Some(Err(e)) => Err(Status::from(e)),
                    None => Err(Status::internal("an append was answered twice")),
                },
            };
            if let Err(status) = &answer {
                // One line per message for refusals made at once (a
                // message of many bad appends is not many log lines).
                if refused_here == 0 {
                    refused(&context, status);
                }
                refused_here += 1;
            }
            let answer = ack(tag, answer);
            self.pending
                .push_back(futures_util::future::ready((answer, bytes)).boxed());
        }
        if refused_here > 1 {
            tracing::info!(
                operation = "converge.ledger.v1.LedgerService/AppendStream",
                refused = refused_here,
                "appends of one message refused (the first is logged above)"
            );
        }
    }
}

/// Logs a refused append as a refused call is logged.
fn refused(context: &str, status: &Status) {
    crate::ops::log_refused(
        "converge.ledger.v1.LedgerService/AppendStream",
        if context.is_empty() { "-" } else { context },
        status.code() as usize,
        status.message(),
    );
}

/// The acknowledgement of one append.
fn ack(tag: u64, answer: Result<Appended, Status>) -> pb::AppendAck {
    match answer {
        Ok(a) => pb::AppendAck {
            tag,
            sequence: a.entry.sequence,
            hash: a.entry.hash.0.to_vec(),
            prev_hash: a.entry.prev_hash.0.to_vec(),
            lamport: a.entry.lamport,
            appended_at_ns: a.entry.appended_at_ns,
            duplicate: a.duplicate,
            code: 0,
            message: String::new(),
        },
        Err(status) => pb::AppendAck {
            tag,
            code: status.code() as u32,
            message: status.message().to_owned(),
            ..Default::default()
        },
    }
}
