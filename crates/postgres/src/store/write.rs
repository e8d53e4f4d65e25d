//! The write path: lock the batch's heads, stage it with the shared append
//! rule, then insert everything, move the heads and commit in one round
//! trip (docs/design.md, "The append path across nodes").

use std::collections::{BTreeSet, HashMap};

use converge_ledger_core::{Digest, Entry, Head, genesis_hash};
use converge_ledger_store::sequencer::{Backing, Staged, batch_end_key, stage};
use converge_ledger_store::{Committed, StoreError, WriteCommand};

use super::{CHECKPOINT_INTERVAL, NOTIFY_CONTEXT_BYTES_MAX, PostgresStore, row_error};
use crate::codec::{encode_metadata, entry_from_row, head_from_bytes, to_i64, to_u64};
use crate::error::{failed, is_connection_error, timed_out};
use crate::pool::{Conn, Pooled};

impl PostgresStore {
    pub(super) fn write_batch(
        &self,
        now_ns: u64,
        commands: Vec<WriteCommand>,
    ) -> Result<Committed, StoreError> {
        if commands.is_empty() {
            return Ok(Committed::default());
        }
        let batch = Batch::of(&commands)?;
        let (mut pooled, locked) = self.lock_phase(&batch)?;
        let staged = {
            let backing = TxBacking {
                store: self,
                conn: pooled.conn(),
                locked: &locked,
            };
            stage(&backing, now_ns, commands)
        };
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                // A read under the locks failed or found corrupt data; the
                // connection may be mid-query: close it (PostgreSQL rolls
                // back and releases the locks).
                pooled.mark_broken();
                return Err(e);
            }
        };
        let rows = Rows::of(&staged, &locked, self.options.notifications);
        if rows.h_context.is_empty() && rows.e_context.is_empty() {
            // Only duplicates and refused imports: nothing to write.
            self.rollback(&mut pooled);
            return Ok(staged.committed);
        }
        self.commit_rows(&mut pooled, &rows)?;
        Ok(staged.committed)
    }

    /// Phase three: every insert, the head updates, `COMMIT` and the
    /// notification, pipelined in one round trip.
    fn commit_rows(&self, pooled: &mut Pooled<'_>, rows: &Rows<'_>) -> Result<(), StoreError> {
        let channel = self.options.channel();
        let c = pooled.conn();
        let cl = &c.client;
        // One round trip: every insert, the head updates, COMMIT and the
        // notification, pipelined in this order.
        let run = async {
            tokio::join!(
                async {
                    if rows.e_context.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(
                        &c.st.entries_insert,
                        &[
                            &rows.e_context,
                            &rows.e_seq,
                            &rows.e_hash,
                            &rows.e_prev,
                            &rows.e_key,
                            &rows.e_payload,
                            &rows.e_metadata,
                            &rows.e_time,
                            &rows.e_lamport,
                        ],
                    )
                    .await
                },
                async {
                    if rows.k_context.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(
                        &c.st.idempotency_insert,
                        &[&rows.k_context, &rows.k_key, &rows.k_seq],
                    )
                    .await
                },
                async {
                    if rows.n_context.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(
                        &c.st.nodes_insert,
                        &[&rows.n_context, &rows.n_level, &rows.n_index, &rows.n_root],
                    )
                    .await
                },
                async {
                    if rows.h_context.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(
                        &c.st.heads_update,
                        &[&rows.h_context, &rows.h_seq, &rows.h_hash, &rows.h_head],
                    )
                    .await
                },
                async {
                    if rows.s_context.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(
                        &c.st.snapshots_insert,
                        &[
                            &rows.s_context,
                            &rows.s_seq,
                            &rows.s_anchor,
                            &rows.s_state,
                            &rows.s_state_hash,
                            &rows.s_time,
                        ],
                    )
                    .await
                },
                cl.execute(&c.st.commit, &[]),
                // After COMMIT, as a transaction of its own that writes no
                // WAL and so waits for no flush: inside the write
                // transaction, PostgreSQL's notification lock (one per
                // database, held until the commit is flushed) would
                // serialise the commits of all nodes. See docs/design.md.
                async {
                    if rows.notify.is_empty() {
                        return Ok(0);
                    }
                    cl.execute(&c.st.notify, &[&channel, &rows.notify]).await
                },
            )
        };
        let server = &self.pool.server;
        let outcome = self.block_timed(run);
        let Ok((entries, keys, nodes, heads, checkpoints, commit, notify)) = outcome else {
            pooled.mark_broken();
            return Err(StoreError::Io(format!(
                "PostgreSQL at {server} did not answer the commit of a batch within {} ms; the batch \
                 may or may not have been committed (retries with the same idempotency keys are safe)",
                self.pool.operation_timeout.as_millis()
            )));
        };
        for (what, r) in [
            ("writing entries", entries),
            ("writing idempotency keys", keys),
            ("writing Merkle nodes", nodes),
            ("moving heads", heads),
            ("writing checkpoints", checkpoints),
        ] {
            if let Err(e) = r {
                // COMMIT of a failed transaction rolls back; the connection
                // is dropped anyway.
                pooled.mark_broken();
                return Err(failed(server, what, &e));
            }
        }
        if let Err(e) = commit {
            pooled.mark_broken();
            return Err(if is_connection_error(&e) {
                StoreError::Io(format!(
                    "PostgreSQL at {server} became unavailable while committing a batch ({}); the batch \
                     may or may not have been committed (retries with the same idempotency keys are safe)",
                    crate::error::describe(&e)
                ))
            } else {
                failed(server, "committing a batch", &e)
            });
        }
        if notify.is_err() {
            // Committed, but the other nodes were not told: their watchers
            // get these entries from their periodic catch-up (or with the
            // next notification of the context). Not a failed write.
            pooled.mark_broken();
        }
        Ok(())
    }

    /// Phase one of a write: begin, create missing head rows, lock every head
    /// row of the batch in context order, and read the batch's idempotency
    /// keys. One round trip (the statements are pipelined).
    fn lock_phase(&self, batch: &Batch) -> Result<(Pooled<'_>, Locked), StoreError> {
        let mut retried = false;
        loop {
            let mut pooled = self.block(self.pool.get())?;
            let c = pooled.conn();
            let run = async {
                let (begin, create, lock, keys) = tokio::join!(
                    c.client.execute(&c.st.begin, &[]),
                    async {
                        c.client
                            .execute(
                                &c.st.heads_create,
                                &[&batch.contexts, &batch.geneses, &batch.empty_heads],
                            )
                            .await
                    },
                    async { c.client.query(&c.st.heads_lock, &[&batch.contexts]).await },
                    async {
                        if batch.key_contexts.is_empty() {
                            Ok(Vec::new())
                        } else {
                            c.client
                                .query(&c.st.idempotency_find, &[&batch.key_contexts, &batch.keys])
                                .await
                        }
                    },
                );
                begin?;
                create?;
                Ok::<_, tokio_postgres::Error>((lock?, keys?))
            };
            match self.block_timed(run) {
                Ok(Ok((heads, keys))) => {
                    return match Locked::from_rows(heads, keys) {
                        Ok(locked) => Ok((pooled, locked)),
                        Err(e) => {
                            // The transaction holds the locks: close the
                            // connection rather than return it to the pool.
                            pooled.mark_broken();
                            Err(e)
                        }
                    };
                }
                Ok(Err(e)) => {
                    pooled.mark_broken();
                    // Nothing can have committed: a dead pooled connection
                    // (the database restarted) is retried once on a new one.
                    if is_connection_error(&e) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(failed(&self.pool.server, "locking heads for a write", &e));
                }
                Err(_) => {
                    pooled.mark_broken();
                    return Err(timed_out(
                        &self.pool.server,
                        "locking heads for a write (another node may hold them)",
                        self.pool.operation_timeout,
                    ));
                }
            }
        }
    }

    /// Ends a transaction that writes nothing (releases the locks).
    fn rollback(&self, pooled: &mut Pooled<'_>) {
        let c = pooled.conn();
        let done = self.block_timed(c.client.execute(&c.st.rollback, &[]));
        if !matches!(done, Ok(Ok(_))) {
            pooled.mark_broken();
        }
    }
}

/// The write batch's keys, in the shapes the statements bind.
struct Batch {
    /// Distinct contexts, sorted (byte order = `COLLATE "C"` order).
    contexts: Vec<String>,
    geneses: Vec<Vec<u8>>,
    empty_heads: Vec<Vec<u8>>,
    /// (context, idempotency key) pairs of the batch's appends.
    key_contexts: Vec<String>,
    keys: Vec<String>,
}

impl Batch {
    fn of(commands: &[WriteCommand]) -> Result<Batch, StoreError> {
        let mut contexts = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for c in commands {
            let context = match c {
                WriteCommand::Append(a) => {
                    check_text("the key", &a.entry.key)?;
                    if let Some(k) = &a.idempotency_key {
                        check_text("the idempotency key", k)?;
                        keys.insert((a.context.clone(), k.clone()));
                        keys.insert((a.context.clone(), batch_end_key(k)));
                    }
                    &a.context
                }
                WriteCommand::AppendBatch(b) => {
                    for e in &b.entries {
                        check_text("the key", &e.key)?;
                    }
                    if let Some(k) = &b.idempotency_key {
                        check_text("the idempotency key", k)?;
                        keys.insert((b.context.to_owned(), k.clone()));
                        keys.insert((b.context.to_owned(), batch_end_key(k)));
                    }
                    &b.context
                }
                WriteCommand::Import(i) => {
                    for e in &i.entries {
                        check_text("the key", &e.key)?;
                    }
                    &i.context
                }
            };
            check_text("the context id", context)?;
            contexts.insert(context.as_str());
        }
        let contexts: Vec<String> = contexts.into_iter().map(str::to_owned).collect();
        let (key_contexts, keys) = keys.into_iter().unzip();
        Ok(Batch {
            geneses: contexts
                .iter()
                .map(|c| genesis_hash(c).0.to_vec())
                .collect(),
            empty_heads: contexts.iter().map(|c| Head::empty(c).encode()).collect(),
            contexts,
            key_contexts,
            keys,
        })
    }
}

/// PostgreSQL `text` cannot hold NUL; the ledger's limits already refuse
/// control characters in ids and keys, so only direct store users can hit
/// this.
fn check_text(what: &str, s: &str) -> Result<(), StoreError> {
    if s.contains('\0') {
        return Err(StoreError::Internal(format!(
            "{what} {s:?} contains NUL, which PostgreSQL text cannot store; nothing was written"
        )));
    }
    Ok(())
}

/// What phase one read while holding the locks.
struct Locked {
    heads: HashMap<String, Head>,
    keys: HashMap<(String, String), u64>,
}

impl Locked {
    fn from_rows(
        heads: Vec<tokio_postgres::Row>,
        keys: Vec<tokio_postgres::Row>,
    ) -> Result<Locked, StoreError> {
        let mut out = Locked {
            heads: HashMap::with_capacity(heads.len()),
            keys: HashMap::with_capacity(keys.len()),
        };
        for row in heads {
            let context: String = row.try_get(0).map_err(row_error)?;
            let seq: i64 = row.try_get(1).map_err(row_error)?;
            let bytes: &[u8] = row.try_get(2).map_err(row_error)?;
            let head = head_from_bytes(&context, seq, bytes)?;
            out.heads.insert(context, head);
        }
        for row in keys {
            let context: String = row.try_get(0).map_err(row_error)?;
            let key: String = row.try_get(1).map_err(row_error)?;
            let seq: i64 = row.try_get(2).map_err(row_error)?;
            out.keys.insert((context, key), to_u64(seq));
        }
        Ok(out)
    }
}

/// Committed state as seen under the batch's head locks: heads and keys from
/// phase one, entries read on demand on the same transaction.
struct TxBacking<'a> {
    store: &'a PostgresStore,
    conn: &'a Conn,
    locked: &'a Locked,
}

impl Backing for TxBacking<'_> {
    fn committed_head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        match self.locked.heads.get(context) {
            Some(h) if h.sequence > 0 => Ok(Some(h.clone())),
            Some(_) => Ok(None),
            None => Err(StoreError::Internal(format!(
                "the head of {context:?} was not locked for this write; nothing was written"
            ))),
        }
    }

    fn committed_idempotency(&self, context: &str, key: &str) -> Result<Option<u64>, StoreError> {
        // Every key of the batch was read in phase one; other writers of
        // this context wait for our head lock, so none can appear meanwhile.
        Ok(self
            .locked
            .keys
            .get(&(context.to_owned(), key.to_owned()))
            .copied())
    }

    fn committed_entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        let c = self.conn;
        let row = self
            .store
            .block_timed(async {
                c.client
                    .query_opt(&c.st.entry_get, &[&context, &to_i64(sequence)])
                    .await
            })
            .map_err(|_| {
                timed_out(
                    &self.store.pool.server,
                    "reading an entry for a write",
                    self.store.pool.operation_timeout,
                )
            })?
            .map_err(|e| failed(&self.store.pool.server, "reading an entry for a write", &e))?;
        row.map(|r| entry_from_row(context, &r)).transpose()
    }
}

/// Phase three's rows, in the shapes the statements bind.
#[derive(Default)]
struct Rows<'a> {
    e_context: Vec<&'a str>,
    e_seq: Vec<i64>,
    e_hash: Vec<&'a [u8]>,
    e_prev: Vec<&'a [u8]>,
    e_key: Vec<&'a str>,
    e_payload: Vec<&'a [u8]>,
    e_metadata: Vec<Vec<u8>>,
    e_time: Vec<i64>,
    e_lamport: Vec<i64>,
    k_context: Vec<&'a str>,
    k_key: Vec<&'a str>,
    k_seq: Vec<i64>,
    n_context: Vec<&'a str>,
    n_level: Vec<i16>,
    n_index: Vec<i64>,
    n_root: Vec<&'a [u8]>,
    h_context: Vec<&'a str>,
    h_seq: Vec<i64>,
    h_hash: Vec<&'a [u8]>,
    h_head: Vec<Vec<u8>>,
    s_context: Vec<&'a str>,
    s_seq: Vec<i64>,
    s_anchor: Vec<&'a [u8]>,
    s_state: Vec<Vec<u8>>,
    s_state_hash: Vec<Vec<u8>>,
    s_time: Vec<i64>,
    notify: Vec<String>,
}

impl<'a> Rows<'a> {
    /// The rows of a staged batch: its entries, keys and Merkle nodes, the
    /// heads it moved (with a checkpoint whenever one crosses a multiple of
    /// [`CHECKPOINT_INTERVAL`]) and their notifications.
    fn of(staged: &'a Staged, locked: &Locked, notifications: bool) -> Rows<'a> {
        let mut rows = Rows::default();
        for (context, e) in &staged.committed.entries {
            rows.e_context.push(context);
            rows.e_seq.push(to_i64(e.sequence));
            rows.e_hash.push(&e.hash.0);
            rows.e_prev.push(&e.prev_hash.0);
            rows.e_key.push(&e.key);
            rows.e_payload.push(&e.payload);
            rows.e_metadata.push(encode_metadata(&e.metadata));
            rows.e_time.push(to_i64(e.appended_at_ns));
            rows.e_lamport.push(to_i64(e.lamport));
        }
        for (context, key, seq) in &staged.idempotency {
            rows.k_context.push(context);
            rows.k_key.push(key);
            rows.k_seq.push(to_i64(*seq));
        }
        for (context, level, index, root) in &staged.nodes {
            rows.n_context.push(context);
            rows.n_level.push(i16::from(*level));
            rows.n_index.push(to_i64(*index));
            rows.n_root.push(&root.0);
        }
        let mut moved: Vec<(&str, &Head)> = staged
            .heads
            .iter()
            .filter(|(c, h)| locked.heads.get(&***c) != Some(*h))
            .map(|(c, h)| (&**c, h))
            .collect();
        moved.sort_by(|a, b| a.0.cmp(b.0));
        for (context, head) in &moved {
            let before = locked.heads.get(*context).map_or(0, |h| h.sequence);
            debug_assert!(head.sequence > before, "a head may only move forward");
            let encoded = head.encode();
            if before / CHECKPOINT_INTERVAL < head.sequence / CHECKPOINT_INTERVAL {
                rows.s_context.push(context);
                rows.s_seq.push(to_i64(head.sequence));
                rows.s_anchor.push(&head.hash.0);
                rows.s_state_hash.push(Digest::of(&[&encoded]).0.to_vec());
                rows.s_state.push(encoded.clone());
                rows.s_time.push(to_i64(head.appended_at_ns));
            }
            rows.h_context.push(context);
            rows.h_seq.push(to_i64(head.sequence));
            rows.h_hash.push(&head.hash.0);
            rows.h_head.push(encoded);
            if !notifications {
                continue;
            }
            rows.notify
                .push(if context.len() <= NOTIFY_CONTEXT_BYTES_MAX {
                    format!("{} {context}", head.sequence)
                } else {
                    head.sequence.to_string()
                });
        }
        rows
    }
}
