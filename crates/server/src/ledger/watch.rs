//! Watches: gapless catch-up from storage into live delivery.
//!
//! A watch is a pull stream: it reads storage or takes from the hub only
//! when its consumer asks for the next entry. A client that stops reading
//! stops the gRPC layer from polling, so a stalled watcher holds one
//! catch-up chunk (bounded in bytes) and what the transport buffers, never
//! a growing queue, and no task.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_core::Entry;
use futures_util::stream::{self, Stream};
use tokio::sync::OwnedSemaphorePermit;

use super::Ledger;
use crate::LedgerError;
use crate::hub::{Live, Subscription};

/// A live watch: entries in sequence order, no gap, no duplicate. Ends when
/// the ledger shuts down; dropping it frees its resources.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<Entry>, LedgerError>> + Send>>;

/// Where a watch is in the algorithm of docs/design.md, "Watch".
enum Phase {
    /// Reading storage up to this head.
    CatchingUp { head: u64 },
    /// Taking entries from the hub.
    Live,
}

struct Watcher {
    ledger: Arc<Ledger>,
    context: String,
    key: Option<String>,
    /// Every sequence `<= handled` was delivered or filtered out.
    handled: u64,
    phase: Phase,
    subscription: Subscription,
    /// Entries read from storage and not yet delivered (one chunk).
    pending: VecDeque<Entry>,
    stopping: tokio::sync::watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Ledger {
    /// Watches `context`: entries with a sequence above `from` (matching
    /// `key` if given) from storage, then live, without gap or duplicate.
    pub fn watch(
        self: &Arc<Self>,
        context: String,
        key: Option<String>,
        from: u64,
    ) -> Result<WatchStream, LedgerError> {
        self.config.limits.check_context_id(&context)?;
        if let Some(k) = &key {
            self.config.limits.check_key(k)?;
        }
        if *self.stopping.borrow() {
            return Err(LedgerError::Unavailable(
                "the ledger is shutting down; watch another node or retry after the restart".into(),
            ));
        }
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            LedgerError::ResourceExhausted(format!(
                "{} watches are open, the limit (--max-watchers); close one or retry later",
                self.config.watchers_max
            ))
        })?;
        // Subscribe first, then read the head: any entry above the head
        // read is published after the subscription (docs/design.md §10).
        let subscription = self.hub.subscribe(&context);
        let start = Watcher {
            ledger: self.clone(),
            context,
            key,
            handled: from,
            phase: Phase::Live,
            subscription,
            pending: VecDeque::new(),
            stopping: self.stopping.subscribe(),
            _permit: permit,
        };
        let stream = stream::unfold(Some((start, true)), |state| async move {
            let (mut w, first) = state?;
            let next = if first {
                match w.read_head().await {
                    Ok(()) => w.next().await,
                    Err(e) => Some(Err(e)),
                }
            } else {
                w.next().await
            };
            match next {
                Some(Ok(entry)) => Some((Ok(entry), Some((w, false)))),
                // An error ends the watch after it is delivered.
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        });
        Ok(Box::pin(stream))
    }
}

impl Watcher {
    /// Reads the committed head and goes back to catching up from storage.
    /// Read again if another node's entries were announced while no head
    /// was known here: the first read may predate them, and the hub did not
    /// publish them (at most twice: the first note makes a head known).
    async fn read_head(&mut self) -> Result<(), LedgerError> {
        loop {
            let declined = self.subscription.declined();
            let head = self
                .ledger
                .head(&self.context)
                .await?
                .map_or(0, |h| h.sequence);
            if self.subscription.note_head(head, declined) {
                self.phase = Phase::CatchingUp { head };
                return Ok(());
            }
        }
    }

    /// The next entry to deliver; `None` ends the watch (shutdown).
    async fn next(&mut self) -> Option<Result<Arc<Entry>, LedgerError>> {
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(Arc::new(e)));
            }
            match self.phase {
                Phase::CatchingUp { head } => {
                    if let Err(e) = self.catch_up(head).await {
                        return Some(Err(e));
                    }
                }
                Phase::Live => {
                    let live = tokio::select! {
                        biased;
                        _ = self.stopping.wait_for(|s| *s) => return None,
                        live = self.subscription.next_after(self.handled) => live,
                    };
                    match live {
                        Live::Entry(e) => {
                            self.handled = e.sequence;
                            if self.key.as_deref().is_none_or(|k| e.key == k) {
                                return Some(Ok(e));
                            }
                        }
                        // Fell behind what the hub holds, or a gap (entries
                        // imported or written by another node): storage has
                        // everything published.
                        Live::Behind => {
                            if let Err(e) = self.read_head().await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads the next chunk of `handled < seq <= head` from storage into
    /// `pending` (bounded by the watch chunk limits), or moves to live
    /// delivery when there is nothing left below `head`.
    async fn catch_up(&mut self, head: u64) -> Result<(), LedgerError> {
        if self.handled >= head {
            self.handled = self.handled.max(head);
            self.phase = Phase::Live;
            return Ok(());
        }
        let config = &self.ledger.config;
        let (chunk, truncated) = self
            .ledger
            .read_chunk(
                &self.context,
                self.handled,
                head,
                self.key.as_deref(),
                config.watch_catch_up_chunk.max(1),
                config.watch_chunk_bytes_max(),
            )
            .await?;
        // A filtered read that was not cut short has seen everything up to
        // the head, matching or not.
        self.handled = match chunk.last() {
            Some(last) if truncated => last.sequence,
            _ => head,
        };
        self.pending.extend(chunk);
        Ok(())
    }
}

impl Ledger {
    /// Tells the ledger that `context` may have entries it did not write
    /// itself (another node over a shared store appended them). If the
    /// context is watched here, the entries its watchers are waiting for are
    /// read from storage, in chunks bounded like a watch's catch-up, and
    /// published to them in order. Cheap when nobody watches; reads nothing
    /// below the heads the watchers read themselves.
    pub async fn notify_appended(&self, context: &str) -> Result<(), LedgerError> {
        super::tell(&self.taps, context, None);
        let Some(mut last) = self.hub.remote_start(context) else {
            return Ok(());
        };
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let name: Arc<str> = Arc::from(context);
        while last < head {
            let (chunk, _) = self
                .read_chunk(
                    context,
                    last,
                    head,
                    None,
                    self.config.watch_catch_up_chunk.max(1),
                    self.config.watch_chunk_bytes_max(),
                )
                .await?;
            let Some(end) = chunk.last().map(|e| e.sequence) else {
                break;
            };
            let published: Vec<(Arc<str>, Arc<Entry>)> = chunk
                .into_iter()
                .map(|e| (name.clone(), Arc::new(e)))
                .collect();
            self.hub.publish(&published);
            last = end;
        }
        Ok(())
    }

    /// [`Ledger::notify_appended`] for every watched context: the periodic
    /// catch-up that covers notifications lost (e.g. during a reconnect).
    pub async fn notify_all_watched(&self) -> Result<(), LedgerError> {
        for context in self.hub.watched() {
            self.notify_appended(&context).await?;
        }
        Ok(())
    }
}
