//! Appends: one entry, or an ordered atomic batch, through the group-commit
//! writer.

use std::sync::Arc;

use converge_ledger_core::{Entry, NewEntry};
use converge_ledger_store::{AppendCommand, BatchCommand, Pending, WriteCommand, WriteOutcome};

use super::Ledger;
use crate::LedgerError;

/// A successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The entry as stored.
    pub entry: Arc<Entry>,
    /// `true` when this was a retry of an earlier append with the same
    /// idempotency key and nothing new was appended.
    pub duplicate: bool,
}

/// A queued append ([`Ledger::append_many`]): [`PendingAppend::answer`]
/// waits until it is durable.
pub struct PendingAppend {
    pending: Option<Pending>,
    asked: Asked,
}

impl PendingAppend {
    /// Waits for the append to be durable (or refused).
    pub async fn answer(self) -> Result<Appended, LedgerError> {
        let outcome = match self.pending {
            Some(pending) => pending.await,
            None => Err(converge_ledger_store::WriteError::Closed),
        };
        self.asked.answer(outcome)
    }
}

/// What an append's answer names: its context and idempotency key.
struct Asked {
    context: String,
    idempotency_key: Option<String>,
}

impl Asked {
    fn answer(
        self,
        outcome: Result<WriteOutcome, converge_ledger_store::WriteError>,
    ) -> Result<Appended, LedgerError> {
        match outcome? {
            WriteOutcome::Appended(entry) => Ok(Appended {
                entry,
                duplicate: false,
            }),
            WriteOutcome::Duplicate(entry) => Ok(Appended {
                entry,
                duplicate: true,
            }),
            WriteOutcome::IdempotencyConflict { sequence } => {
                Err(LedgerError::AlreadyExists(format!(
                    "idempotency key {:?} was already used in context {:?} for sequence {sequence}, \
                     with a different key, payload or metadata; use a new idempotency key for a new entry",
                    self.idempotency_key.unwrap_or_default(),
                    self.context
                )))
            }
            WriteOutcome::Failed(e) => Err(e.into()),
            other => Err(LedgerError::Internal(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }
}

/// A successful batch append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedBatch {
    /// The entries as stored, in order (consecutive sequences).
    pub entries: Vec<Arc<Entry>>,
    /// `true` when this was a retry of an earlier batch with the same
    /// idempotency key and nothing new was appended.
    pub duplicate: bool,
}

impl Ledger {
    /// Appends one entry; returns once it is durable under the store's
    /// policy.
    pub async fn append(
        &self,
        context: String,
        entry: NewEntry,
        idempotency_key: Option<String>,
    ) -> Result<Appended, LedgerError> {
        let (command, asked) = self.append_command(context, entry, idempotency_key)?;
        let outcome = self.writer.submit(WriteCommand::Append(command)).await;
        asked.answer(outcome)
    }

    /// Checks each append and queues those that pass, in order: they commit
    /// in this order (so in order per context), each exactly as
    /// [`Ledger::append`] would, without waiting for one before queueing
    /// the next. Returns once all are queued (waiting for queue space when
    /// the writer is full), one answer to come per append; a refused one
    /// holds its error.
    pub async fn append_many(
        &self,
        appends: Vec<(String, NewEntry, Option<String>)>,
    ) -> Vec<Result<PendingAppend, LedgerError>> {
        let mut answers: Vec<Result<PendingAppend, LedgerError>> =
            Vec::with_capacity(appends.len());
        let mut commands = Vec::with_capacity(appends.len());
        for (context, entry, key) in appends {
            match self.append_command(context, entry, key) {
                Ok((command, asked)) => {
                    commands.push(WriteCommand::Append(command));
                    answers.push(Ok(PendingAppend {
                        pending: None,
                        asked,
                    }));
                }
                Err(e) => answers.push(Err(e)),
            }
        }
        let mut queued = self.writer.enqueue(commands).await.into_iter();
        for answer in &mut answers {
            if let Ok(p) = answer {
                match queued.next() {
                    Some(Ok(pending)) => p.pending = Some(pending),
                    Some(Err(e)) => *answer = Err(e.into()),
                    None => *answer = Err(LedgerError::Internal("an append was not queued".into())),
                }
            }
        }
        answers
    }

    /// An append checked against the limits and the reserved namespace,
    /// as a write command, with what its answer needs.
    fn append_command(
        &self,
        context: String,
        entry: NewEntry,
        idempotency_key: Option<String>,
    ) -> Result<(AppendCommand, Asked), LedgerError> {
        self.config.limits.check_append(
            &context,
            &entry,
            idempotency_key.as_deref().unwrap_or(""),
        )?;
        check_not_reserved(&context)?;
        let idempotency_key = idempotency_key.filter(|k| !k.is_empty());
        let asked = Asked {
            context: context.clone(),
            idempotency_key: idempotency_key.clone(),
        };
        Ok((
            AppendCommand {
                context,
                entry,
                idempotency_key,
            },
            asked,
        ))
    }

    /// Appends `entries` to `context` in order, atomically: they take
    /// consecutive sequences in one commit, or nothing is appended. With
    /// `expected_sequence`, only if the context's head sequence is exactly
    /// that when the batch commits. Each entry's `lamport` is a received
    /// Lamport time merged before it (the gRPC service sets the request's on
    /// the first entry).
    pub async fn append_batch(
        &self,
        context: String,
        entries: Vec<NewEntry>,
        idempotency_key: Option<String>,
        expected_sequence: Option<u64>,
    ) -> Result<AppendedBatch, LedgerError> {
        let limits = &self.config.limits;
        limits.check_context_id(&context)?;
        check_not_reserved(&context)?;
        limits.check_batch_len(entries.len())?;
        limits.check_idempotency_key(idempotency_key.as_deref().unwrap_or(""))?;
        for (i, e) in entries.iter().enumerate() {
            limits
                .check_entry(&e.key, e.payload.len(), &e.metadata, e.lamport)
                .map_err(|err| {
                    LedgerError::InvalidArgument(format!("entries[{i}]: {}", err.message))
                })?;
        }
        let idempotency_key = idempotency_key.filter(|k| !k.is_empty());
        let key_for_error = idempotency_key.clone();
        let outcome = self
            .writer
            .submit(WriteCommand::AppendBatch(BatchCommand {
                context: context.clone(),
                entries,
                idempotency_key,
                expected_sequence,
            }))
            .await?;
        match outcome {
            WriteOutcome::AppendedBatch(entries) => Ok(AppendedBatch {
                entries,
                duplicate: false,
            }),
            WriteOutcome::DuplicateBatch(entries) => Ok(AppendedBatch {
                entries,
                duplicate: true,
            }),
            WriteOutcome::IdempotencyConflict { sequence } => {
                Err(LedgerError::AlreadyExists(format!(
                    "idempotency key {:?} was already used in context {context:?} for the entries \
                     from sequence {sequence} on, which differ from this batch; use a new \
                     idempotency key for a new batch",
                    key_for_error.unwrap_or_default()
                )))
            }
            WriteOutcome::SequenceMismatch { expected, actual } => Err(LedgerError::HeadMismatch {
                message: format!(
                    "context {context:?} is at sequence {actual}, not the expected {expected}; \
                     nothing was appended (read the new entries, then retry with \
                     expected_sequence {actual})"
                ),
                actual,
            }),
            WriteOutcome::Failed(e) => Err(e.into()),
            other => Err(LedgerError::Internal(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }
}

/// Contexts of the WorldLine profile (`wll/...`) are written only by the
/// WorldLine service, which checks every receipt first: the generic
/// Append, AppendBatch and Load refuse them, so L4 and L5 cannot be
/// bypassed.
pub(crate) fn check_not_reserved(context: &str) -> Result<(), LedgerError> {
    if converge_ledger_worldline::is_reserved_context(context) {
        return Err(LedgerError::InvalidArgument(format!(
            "context {context:?} is reserved: ids starting with {:?} hold WorldLine receipts, \
             which only converge.ledger.v1.WorldlineService appends (after checking them); \
             nothing was written",
            converge_ledger_worldline::NAMESPACE
        )));
    }
    Ok(())
}

impl Ledger {
    /// Submits a batch to a reserved (WorldLine) context, after the entry
    /// limits; the caller has checked the receipts. Returns the writer's
    /// outcome as it is (duplicates, conflicts and head mismatches are the
    /// caller's to interpret).
    pub(crate) async fn submit_reserved(
        &self,
        command: BatchCommand,
    ) -> Result<WriteOutcome, LedgerError> {
        let limits = &self.config.limits;
        limits.check_context_id(&command.context)?;
        limits.check_batch_len(command.entries.len())?;
        limits.check_idempotency_key(command.idempotency_key.as_deref().unwrap_or(""))?;
        for e in &command.entries {
            limits.check_entry(&e.key, e.payload.len(), &e.metadata, e.lamport)?;
        }
        match self
            .writer
            .submit(WriteCommand::AppendBatch(command))
            .await?
        {
            WriteOutcome::Failed(e) => Err(e.into()),
            other => Ok(other),
        }
    }
}
