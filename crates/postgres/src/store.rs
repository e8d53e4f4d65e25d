//! [`PostgresStore`]: the [`Store`] contract over PostgreSQL, shared by any
//! number of ledger nodes.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use converge_ledger_core::{Digest, Entry, Head, PublicKey, genesis_hash};
use converge_ledger_store::sequencer::{Backing, batch_end_key, stage};
use converge_ledger_store::{Committed, Scan, Store, StoreError, WriteCommand};
use tokio::runtime::{Handle, Runtime};

use crate::codec::{clamp_i64, encode_metadata, entry_from_row, head_from_bytes, to_i64, to_u64};
use crate::error::{failed, is_connection_error, timed_out};
use crate::options::{PostgresOptions, describe_config};
use crate::pool::{Conn, Pool, Pooled};
use crate::schema::migrate;

/// A head checkpoint is written whenever a commit moves a context's head
/// across a multiple of this many entries.
pub const CHECKPOINT_INTERVAL: u64 = 1024;

/// Rows a scan asks for at first; later chunks aim at [`SCAN_CHUNK_BYTES`].
const SCAN_FIRST_CHUNK: i64 = 16;
const SCAN_CHUNK_ROWS_MAX: i64 = 1024;
const SCAN_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Notification payloads must stay under PostgreSQL's 8000 bytes; a context
/// id longer than this is announced without its id ("something changed").
const NOTIFY_CONTEXT_BYTES_MAX: usize = 7000;

/// The ledger's storage on PostgreSQL.
///
/// Every read goes to the database (nothing is cached across calls), so any
/// number of nodes can serve the same ledger. Writes lock the head rows of
/// the batch's contexts, so the nodes' group commits to one context are
/// serialised by the database and sequences stay gapless and unique (see
/// `docs/design.md`, "PostgreSQL storage").
///
/// # Threads
///
/// [`Store`] is synchronous. The store owns a small Tokio runtime that
/// drives its connections; each call runs its queries with
/// [`Handle::block_on`] on the calling thread. Call it from plain threads or
/// from `tokio::task::spawn_blocking` (as the ledger server does: its group
/// commit runs on a dedicated writer thread and its reads in
/// `spawn_blocking`), never from an async task: `block_on` inside a runtime
/// worker panics. For the same reason, [`PostgresStore::open`] must be
/// called outside async code.
///
/// # Failures
///
/// A database that cannot be reached, a connection that breaks and an
/// operation that misses [`PostgresOptions::operation_timeout`] are reported
/// as [`StoreError::Io`] (`UNAVAILABLE` over gRPC) naming the server; the
/// failed connection is dropped and the next call opens a fresh one, so the
/// store recovers by itself when the database is back. A write whose
/// `COMMIT` was sent but not answered may or may not have committed: its
/// error says so, and a retry with the same idempotency keys returns the
/// original entries instead of appending again.
pub struct PostgresStore {
    pool: Pool,
    options: PostgresOptions,
    handle: Handle,
    version: i32,
    /// Dropped without blocking (see `Drop`).
    runtime: Option<Runtime>,
}

/// Runs one read on a pooled connection: retried once on a fresh connection
/// when the pooled one turns out to be dead (after a database restart), each
/// attempt bounded by the operation timeout.
macro_rules! read {
    ($store:expr, $what:expr, |$c:ident| $body:expr) => {{
        let store: &PostgresStore = $store;
        store.block(async {
            let mut retried = false;
            loop {
                let mut pooled = store.pool.get().await?;
                let $c: &Conn = pooled.conn();
                match tokio::time::timeout(store.pool.operation_timeout, async { $body.await })
                    .await
                {
                    Ok(Ok(v)) => break Ok(v),
                    Ok(Err(e)) => {
                        let dead = is_connection_error(&e);
                        if dead {
                            pooled.mark_broken();
                            if !retried {
                                retried = true;
                                continue;
                            }
                        }
                        break Err(failed(&store.pool.server, $what, &e));
                    }
                    Err(_) => {
                        pooled.mark_broken();
                        break Err(timed_out(
                            &store.pool.server,
                            $what,
                            store.pool.operation_timeout,
                        ));
                    }
                }
            }
        })
    }};
}

impl PostgresStore {
    /// Connects, creates or migrates the schema (see [`crate::SCHEMA_VERSION`]),
    /// and checks that a connection works. Fails with a message naming the
    /// server when the database cannot be reached or its schema is newer
    /// than this build.
    ///
    /// Must not be called from async code (it blocks; use
    /// `tokio::task::spawn_blocking`).
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let config = options.config()?;
        let server = describe_config(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let version = handle.block_on(async {
            let connect = async {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| failed(&server, "connecting", &e))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                migrate(&client, &options.schema, &server).await
            };
            tokio::time::timeout(options.connect_timeout + options.operation_timeout, connect)
                .await
                .map_err(|_| {
                    timed_out(
                        &server,
                        "opening the store",
                        options.connect_timeout + options.operation_timeout,
                    )
                })?
        })?;
        let pool = Pool::new(
            config,
            options.schema.clone(),
            server,
            options.pool_size,
            handle.clone(),
            options.operation_timeout,
            options.connect_timeout,
        );
        let store = PostgresStore {
            pool,
            options,
            handle,
            version,
            runtime: Some(runtime),
        };
        // Fail now, not on the first request, if statements cannot be
        // prepared; the connection stays in the pool.
        store.block(async { store.pool.get().await.map(drop) })?;
        Ok(store)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &PostgresOptions {
        &self.options
    }

    /// `host:port/dbname` of the database, for messages.
    pub fn server(&self) -> &str {
        &self.pool.server
    }

    /// The schema version after opening.
    pub fn schema_version(&self) -> i32 {
        self.version
    }

    /// Records `key` as the ledger's signing key if none is recorded yet, and
    /// returns the recorded one. Every node of a ledger must sign with the
    /// same key (clients pin it); a node whose key differs from the
    /// returned one must refuse to start. Only the public key is stored.
    pub fn register_signing_key(&self, key: &PublicKey) -> Result<PublicKey, StoreError> {
        let schema = &self.options.schema;
        let insert = format!(
            r#"INSERT INTO "{schema}".meta (key, value) VALUES ('signing_public_key', $1)
               ON CONFLICT (key) DO NOTHING"#
        );
        let select =
            format!(r#"SELECT value FROM "{schema}".meta WHERE key = 'signing_public_key'"#);
        let hex = key.to_hex();
        let stored: String = read!(self, "registering the signing key", |c| async {
            c.client.execute(insert.as_str(), &[&hex]).await?;
            c.client.query_one(select.as_str(), &[]).await?.try_get(0)
        })?;
        PublicKey::from_hex(&stored).map_err(|e| StoreError::Corrupt {
            context: String::new(),
            sequence: 0,
            reason: format!("the recorded signing key {stored:?} is not a public key: {e}"),
        })
    }

    /// The head checkpoints of `context` (table `snapshots`), oldest first:
    /// the head as it was at each recorded sequence. Each is checked against
    /// its stored state hash and anchor.
    pub fn checkpoints(&self, context: &str) -> Result<Vec<Head>, StoreError> {
        let sql = format!(
            r#"SELECT seq, head_hash, state, state_hash FROM "{}".snapshots
               WHERE context = $1 ORDER BY seq"#,
            self.options.schema
        );
        let rows = read!(self, "reading checkpoints", |c| c
            .client
            .query(sql.as_str(), &[&context]))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let bad = |reason: String| StoreError::Corrupt {
                context: context.to_owned(),
                sequence: 0,
                reason,
            };
            let seq: i64 = row.try_get(0).map_err(|e| bad(e.to_string()))?;
            let anchor: &[u8] = row.try_get(1).map_err(|e| bad(e.to_string()))?;
            let state: &[u8] = row.try_get(2).map_err(|e| bad(e.to_string()))?;
            let state_hash: &[u8] = row.try_get(3).map_err(|e| bad(e.to_string()))?;
            if Digest::of(&[state]).0 != state_hash {
                return Err(bad(format!(
                    "checkpoint {seq} does not match its state hash"
                )));
            }
            let head = head_from_bytes(context, seq, state)?;
            if head.hash.0 != anchor {
                return Err(bad(format!(
                    "checkpoint {seq} is not anchored to its head hash"
                )));
            }
            out.push(head);
        }
        Ok(out)
    }

    /// Forgets every idle connection; the next calls open new ones. (For
    /// tests and operators that moved the database.)
    pub fn reset_connections(&self) {
        self.pool.clear();
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.handle.block_on(f)
    }

    /// [`PostgresStore::block`] bounded by the operation timeout (the timer
    /// is created inside the store's runtime).
    fn block_timed<T>(&self, f: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
        let limit = self.pool.operation_timeout;
        self.handle
            .block_on(async move { tokio::time::timeout(limit, f).await })
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

    /// A scan without a key filter ended after `after`: if the head is past
    /// it, entry `after + 1` must exist (checked in one snapshot, so a
    /// commit racing with the scan is not mistaken for a hole).
    fn check_tail(&self, context: &str, after: u64) -> Result<(), StoreError> {
        let next = clamp_i64(after.saturating_add(1));
        let row = read!(self, "checking the end of a scan", |c| c
            .client
            .query_opt(&c.st.tail_check, &[&context, &next]))?;
        let Some(row) = row else { return Ok(()) };
        let head: i64 = row.try_get(0).map_err(row_error)?;
        let exists: bool = row.try_get(1).map_err(row_error)?;
        if head >= next && !exists {
            return Err(StoreError::Corrupt {
                context: context.to_owned(),
                sequence: to_u64(next),
                reason: format!("entry {next} is missing below the head ({head})"),
            });
        }
        Ok(())
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

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The last handle may be dropped inside async code, where a blocking
        // runtime shutdown would panic; connections close with the runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
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

fn row_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Internal(format!("PostgreSQL returned an unexpected row: {e}"))
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

impl Store for PostgresStore {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
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
            if !self.options.notifications {
                continue;
            }
            rows.notify
                .push(if context.len() <= NOTIFY_CONTEXT_BYTES_MAX {
                    format!("{} {context}", head.sequence)
                } else {
                    head.sequence.to_string()
                });
        }
        if moved.is_empty() && rows.e_context.is_empty() {
            // Only duplicates and refused imports: nothing to write.
            self.rollback(&mut pooled);
            return Ok(staged.committed);
        }
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
        Ok(staged.committed)
    }

    fn head(&self, context: &str) -> Result<Option<Head>, StoreError> {
        let row = read!(self, "reading a head", |c| c
            .client
            .query_opt(&c.st.head_get, &[&context]))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let seq: i64 = row.try_get(0).map_err(row_error)?;
                let bytes: &[u8] = row.try_get(1).map_err(row_error)?;
                head_from_bytes(context, seq, bytes).map(Some)
            }
        }
    }

    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        if scan.after >= scan.until {
            return Ok(());
        }
        let until = clamp_i64(scan.until);
        let mut after = scan.after;
        let mut limit = SCAN_FIRST_CHUNK;
        loop {
            let from = clamp_i64(after);
            let rows = read!(self, "reading entries", |c| async {
                match scan.key {
                    None => {
                        c.client
                            .query(&c.st.scan_all, &[&context, &from, &until, &limit])
                            .await
                    }
                    Some(key) => {
                        c.client
                            .query(&c.st.scan_key, &[&context, &from, &until, &limit, &key])
                            .await
                    }
                }
            })?;
            let n = rows.len();
            let mut bytes = 0usize;
            for row in &rows {
                let e = entry_from_row(context, row)?;
                // Without a key filter every sequence in (after, until]
                // below the head exists: a hole is lost data.
                if scan.key.is_none() && e.sequence != after + 1 {
                    return Err(StoreError::Corrupt {
                        context: context.to_owned(),
                        sequence: after + 1,
                        reason: format!(
                            "entry {} is missing (the next stored entry is {})",
                            after + 1,
                            e.sequence
                        ),
                    });
                }
                after = e.sequence;
                bytes += e.approximate_size();
                if !visit(e) {
                    return Ok(());
                }
            }
            if after >= scan.until {
                return Ok(());
            }
            if (n as i64) < limit {
                return match scan.key {
                    Some(_) => Ok(()),
                    None => self.check_tail(context, after),
                };
            }
            let average = (bytes / n.max(1)).max(1);
            limit = ((SCAN_CHUNK_BYTES / average) as i64).clamp(1, SCAN_CHUNK_ROWS_MAX);
        }
    }

    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError> {
        if sequence == 0 || sequence > i64::MAX as u64 {
            return Ok(None);
        }
        let seq = to_i64(sequence);
        let row = read!(self, "reading an entry", |c| c
            .client
            .query_opt(&c.st.entry_get, &[&context, &seq]))?;
        row.map(|r| entry_from_row(context, &r)).transpose()
    }

    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError> {
        let h: &[u8] = &hash.0;
        let row = read!(self, "looking up a hash", |c| c
            .client
            .query_opt(&c.st.by_hash, &[&h]))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let context: String = row.try_get(0).map_err(row_error)?;
                let seq: i64 = row.try_get(1).map_err(row_error)?;
                Ok(Some((context, to_u64(seq))))
            }
        }
    }

    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        if count == 0 || start > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let level = i16::from(level);
        let from = to_i64(start);
        let to = clamp_i64(start.saturating_add(count - 1));
        let rows = read!(self, "reading Merkle nodes", |c| c
            .client
            .query(&c.st.nodes_get, &[&context, &level, &from, &to]))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let idx: i64 = row.try_get(0).map_err(row_error)?;
            if to_u64(idx) != start + i as u64 {
                // Contiguous from `start` only, like the other backends.
                break;
            }
            let root: &[u8] = row.try_get(1).map_err(row_error)?;
            out.push(Digest::from_slice(root).ok_or_else(|| StoreError::Corrupt {
                context: context.to_owned(),
                sequence: 0,
                reason: format!(
                    "a Merkle node at level {level} is {} bytes, not 32",
                    root.len()
                ),
            })?);
        }
        Ok(out)
    }

    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError> {
        const PAGE: i64 = 256;
        let mut after: Option<String> = (!after.is_empty()).then(|| after.to_owned());
        loop {
            let rows = read!(self, "listing contexts", |c| c
                .client
                .query(&c.st.contexts_page, &[&after, &PAGE]))?;
            let n = rows.len();
            for row in rows {
                let context: String = row.try_get(0).map_err(row_error)?;
                let seq: i64 = row.try_get(1).map_err(row_error)?;
                let bytes: &[u8] = row.try_get(2).map_err(row_error)?;
                let head = head_from_bytes(&context, seq, bytes)?;
                if !visit(&context, &head) {
                    return Ok(());
                }
                after = Some(context);
            }
            if (n as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Nothing to do: a write returns once PostgreSQL committed it, which is
    /// durable as the database's `synchronous_commit` says (`on` by default:
    /// the WAL is flushed, and replicated where synchronous replication is
    /// configured).
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
