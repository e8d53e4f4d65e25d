//! [`PostgresStore`]: the [`Store`] contract over PostgreSQL, shared by any
//! number of ledger nodes.

use std::future::Future;

use converge_ledger_core::{Digest, Entry, Head, PublicKey};
use converge_ledger_store::{Committed, Scan, Store, StoreError, WriteCommand};
use tokio::runtime::{Handle, Runtime};

use crate::codec::{clamp_i64, entry_from_row, head_from_bytes, to_i64, to_u64};
use crate::connect::Connected;
use crate::error::{failed, is_connection_error, timed_out};
use crate::options::PostgresOptions;
use crate::pool::{Conn, Pool};
use crate::schema::migrate;
use crate::tls::SslMode;

mod write;

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
    /// What [`PostgresStore::describe`] says.
    described: String,
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

// After `read!`, which it uses.
mod derived;

/// `host:port/db over TLS (sslmode=…: …)`.
fn describe_transport(server: &str, mode: SslMode, tls: bool) -> String {
    match (mode, tls) {
        (SslMode::Disable, _) => format!("{server} without TLS (sslmode=disable)"),
        (SslMode::Prefer, false) => {
            format!(
                "{server} without TLS (sslmode=prefer: the server offers none, or its handshake failed)"
            )
        }
        (mode, _) => format!("{server} over TLS (sslmode={mode}: {})", mode.promise()),
    }
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
        let connector = options.connector()?;
        let server = connector.server.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let (version, tls) = handle.block_on(async {
            let connect = async {
                let Connected {
                    client,
                    connection,
                    tls,
                } = connector.connect().await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok((migrate(&client, &options.schema, &server).await?, tls))
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
        let described = describe_transport(&server, connector.tls.mode, tls);
        let pool = Pool::new(
            connector,
            options.schema.clone(),
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
            described,
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

    /// `host:port/dbname` of the database, whether the first connection
    /// negotiated TLS, and the `sslmode` and what it checks: for the
    /// startup line.
    pub fn describe(&self) -> &str {
        &self.described
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

fn row_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Internal(format!("PostgreSQL returned an unexpected row: {e}"))
}

impl Store for PostgresStore {
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError> {
        self.write_batch(now_ns, commands)
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
            // Without a key filter the head is read too, in the same round
            // trip and before the entries (the statements run in the order
            // sent, each in a snapshot no older than the one before): every
            // entry up to that head is visible to the scan, so a scan that
            // ends below it has found a hole, and one that ends at or above
            // it needs no second look.
            let (head, rows) = read!(self, "reading entries", |c| async {
                match scan.key {
                    None => {
                        let head_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] =
                            [&context];
                        let scan_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                            [&context, &from, &until, &limit];
                        let (head, rows) = tokio::join!(
                            c.client.query_opt(&c.st.head_get, &head_params),
                            c.client.query(&c.st.scan_all, &scan_params),
                        );
                        Ok::<_, tokio_postgres::Error>((Some(head?), rows?))
                    }
                    Some(key) => {
                        let rows = c
                            .client
                            .query(&c.st.scan_key, &[&context, &from, &until, &limit, &key])
                            .await?;
                        Ok((None, rows))
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
                if let Some(head) = head {
                    let head = match head {
                        Some(row) => to_u64(row.try_get::<_, i64>(0).map_err(row_error)?),
                        None => 0,
                    };
                    let next = after.saturating_add(1);
                    if head >= next {
                        return Err(StoreError::Corrupt {
                            context: context.to_owned(),
                            sequence: next,
                            reason: format!("entry {next} is missing below the head ({head})"),
                        });
                    }
                }
                return Ok(());
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

    fn derived(&self) -> Option<&dyn converge_ledger_store::derived::DerivedKv> {
        Some(self)
    }

    fn stats(&self) -> converge_ledger_store::stats::StorageStats {
        converge_ledger_store::stats::StorageStats {
            disk_bytes: None,
            pool: Some(self.pool.stats()),
        }
    }
}
