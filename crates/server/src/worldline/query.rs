//! Queries over the projections: at one consistent position, after waiting
//! (bounded) for the receipt a caller needs, saying how far behind the head
//! the answer is.

use std::sync::Arc;
use std::time::Duration;

use converge_ledger_core::Digest;
use converge_ledger_worldline::{KvRead, Projection, WorldlineError, WorldlineId};

use super::{Worldlines, blocking, to_ledger};
use crate::LedgerError;

/// How long a query with `min_seq` waits when it names no wait.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest wait a query may ask for.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// Where a projection stood when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The projection's name.
    pub projection: &'static str,
    /// Its version.
    pub version: u32,
    /// The last receipt it reflects (0: none).
    pub through_seq: u64,
    /// That receipt's hash.
    pub through_hash: Option<Digest>,
    /// The worldline's head when it answered.
    pub head_seq: u64,
    /// How long the oldest receipt not yet reflected has waited (0 when
    /// caught up).
    pub lag_ns: u64,
}

impl Position {
    /// Receipts not reflected yet.
    pub fn behind(&self) -> u64 {
        self.head_seq.saturating_sub(self.through_seq)
    }
}

impl Worldlines {
    fn projector_or_refuse(&self) -> Result<&Arc<super::Projector>, LedgerError> {
        self.projector.as_ref().ok_or_else(|| {
            LedgerError::FailedPrecondition(
                "this server keeps no projections: its storage has no derived space, or it was \
                 started without them; replay the worldline instead (ReplayState)"
                    .into(),
            )
        })
    }

    /// Runs `query` over `projection`'s records of `worldline` once the
    /// projection reflects at least receipt `min_seq` (waiting at most
    /// `wait`, capped at [`WAIT_MAX`]), at one consistent position. For a
    /// projection with one version; [`Worldlines::query_projection_versioned`]
    /// hands the query the version it reads.
    pub async fn query_projection<T: Send + 'static>(
        &self,
        worldline: &WorldlineId,
        projection: &'static dyn Projection,
        min_seq: u64,
        wait: Option<Duration>,
        query: impl Fn(&dyn KvRead) -> Result<T, WorldlineError> + Send + 'static,
    ) -> Result<(Position, T), LedgerError> {
        self.query_projection_versioned(worldline, projection, min_seq, wait, move |kv, _| {
            query(kv)
        })
        .await
    }

    /// [`Worldlines::query_projection`] over the version of `projection`
    /// (named by any of its versions) that queries are answered from: the
    /// stored one while a new version rebuilds beside it (`docs/design.md`
    /// §18, "Projection versions"). `query` is handed that version.
    pub async fn query_projection_versioned<T: Send + 'static>(
        &self,
        worldline: &WorldlineId,
        projection: &'static dyn Projection,
        min_seq: u64,
        wait: Option<Duration>,
        query: impl Fn(&dyn KvRead, &'static dyn Projection) -> Result<T, WorldlineError>
        + Send
        + 'static,
    ) -> Result<(Position, T), LedgerError> {
        let name = projection.name();
        let projector = self.projector_or_refuse()?.clone();
        let w = *worldline;
        let context = w.context_id();
        let failed = |p: &super::Projector| {
            p.failure(&w).map(|why| {
                LedgerError::DataLoss(format!(
                    "the projections of worldline {w} stopped: {why}; `converge-ledger worldline \
                     verify` names the receipt"
                ))
            })
        };
        if let Some(e) = failed(&projector) {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + wait.unwrap_or(WAIT_DEFAULT).min(WAIT_MAX);
        // Subscribed before the first read: a write after it is seen.
        let mut progress = projector.progress();
        // The last serving record and checkpoint read while waiting: the
        // query's first attempt starts from them instead of reading them
        // again (on PostgreSQL, a round trip saved).
        let mut start = None;
        if min_seq > 0 {
            // (Any head holds min_seq 0: no read for it, and no wait.) The
            // head is read beside the first checkpoint.
            let p = projector.clone();
            let (read, head) = tokio::join!(
                blocking(move || p.answering_read(name, &w).map_err(to_ledger)),
                self.ledger.head(&context),
            );
            let head = head?.map_or(0, |h| h.sequence);
            if min_seq > head {
                return Err(LedgerError::OutOfRange(format!(
                    "min_seq {min_seq} is past the head of worldline {w}, receipt {head}"
                )));
            }
            let mut read = read?;
            loop {
                let through = read
                    .checkpoint(&w)
                    .map_err(to_ledger)?
                    .map_or(0, |c| c.through_seq);
                if through >= min_seq {
                    start = Some(read);
                    break;
                }
                projector.notify_behind(w, min_seq);
                let changed = tokio::time::timeout_at(deadline, progress.changed()).await;
                if let Some(e) = failed(&projector) {
                    return Err(e);
                }
                if changed.is_err() {
                    return Err(LedgerError::Unavailable(format!(
                        "the {name} projection of worldline {w} reflects receipt {through}, not yet the \
                         requested {min_seq}; it is catching up: retry, or wait longer"
                    )));
                }
                let p = projector.clone();
                read = blocking(move || p.answering_read(name, &w).map_err(to_ledger)).await?;
            }
        }
        let p = projector.clone();
        // The head is read beside the query (on PostgreSQL, a round trip
        // on another connection at the same time): the position reports a
        // head of that moment, and never one below what the answer
        // reflects.
        let (answered, head) = tokio::join!(
            blocking(move || p.consistent_from(start, name, &w, query).map_err(to_ledger)),
            self.ledger.head(&context),
        );
        let (answering, checkpoint, answer) = answered?;
        let head = head?.map_or(0, |h| h.sequence);
        let through_seq = checkpoint.map_or(0, |c| c.through_seq);
        let mut lag_ns = 0;
        if through_seq < head {
            projector.notify_behind(w, head);
            let store = self.ledger.store().clone();
            let first = blocking(move || {
                store
                    .entry(&context, through_seq + 1)
                    .map_err(LedgerError::from)
            })
            .await?;
            if let Some(first) = first {
                lag_ns = self.ledger.now_ns().saturating_sub(first.appended_at_ns);
            }
        }
        Ok((
            Position {
                projection: answering.name(),
                version: answering.version(),
                through_seq,
                through_hash: checkpoint.map(|c| c.through_hash),
                head_seq: head.max(through_seq),
                lag_ns,
            },
            answer,
        ))
    }
}
