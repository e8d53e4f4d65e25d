//! A small connection pool: at most `pool_size` connections, opened lazily,
//! each with its statements prepared once. A connection that failed, timed
//! out or was closed by the server is dropped rather than returned, so the
//! next request opens a fresh one: the store reconnects by itself after a
//! database restart, without restarting the node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_store::StoreError;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Statement};

use crate::codec::ENTRY_COLUMNS;
use crate::connect::{Connected, Connector};
use crate::error::{failed, timed_out};

/// Prepared statements of one connection (names are schema-qualified).
pub(crate) struct Statements {
    pub begin: Statement,
    pub commit: Statement,
    pub rollback: Statement,
    /// `$1` contexts, `$2` genesis hashes, `$3` empty heads (sorted by
    /// context): creates missing head rows so they can be locked.
    pub heads_create: Statement,
    /// `$1` contexts: locks their head rows in context order.
    pub heads_lock: Statement,
    /// `$1` contexts, `$2` idempotency keys: the stored sequences.
    pub idempotency_find: Statement,
    pub entry_get: Statement,
    pub entries_insert: Statement,
    pub idempotency_insert: Statement,
    pub nodes_insert: Statement,
    pub heads_update: Statement,
    pub snapshots_insert: Statement,
    /// `$1` channel, `$2` payloads.
    pub notify: Statement,
    pub head_get: Statement,
    pub scan_all: Statement,
    pub scan_key: Statement,
    pub by_hash: Statement,
    pub nodes_get: Statement,
    pub contexts_page: Statement,
    /// The derived space (projections): `$1` key.
    pub derived_get: Statement,
    /// `$1` start, `$2` end, `$3` limit; ascending and descending.
    pub derived_forward: Statement,
    pub derived_backward: Statement,
    /// `$1` advisory lock ids, taken in ascending order.
    pub derived_lock: Statement,
    /// Commits the transaction without waiting for its WAL flush: a
    /// projection is rebuilt from the receipts if the last ones are lost.
    pub derived_async_commit: Statement,
    /// `$1` keys: those present, with their values.
    pub derived_read: Statement,
    /// `$1` guard keys, `$2` the values they must hold (NULL: absent):
    /// whether each does, as `'true'` or `'false'`, also kept for the rest
    /// of the transaction in the setting `converge_ledger.guards_hold`.
    pub derived_guards_hold: Statement,
    /// `$1` keys to delete, if the guards held.
    pub derived_delete: Statement,
    /// `$1` keys, `$2` values to set, if the guards held.
    pub derived_upsert: Statement,
}

/// The transaction-local setting a guarded projection write keeps its
/// guards' verdict in, so that its writes, sent in the same round trip,
/// take effect only if the guards held.
const GUARDS_HOLD: &str = "converge_ledger.guards_hold";

impl Statements {
    async fn prepare(c: &Client, s: &str) -> Result<Statements, tokio_postgres::Error> {
        let cols = ENTRY_COLUMNS;
        Ok(Statements {
            begin: c.prepare("BEGIN").await?,
            commit: c.prepare("COMMIT").await?,
            rollback: c.prepare("ROLLBACK").await?,
            heads_create: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".heads (context, seq, hash, head)
                       SELECT c, 0, g, h FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS u(c, g, h)
                       ORDER BY c
                       ON CONFLICT (context) DO NOTHING"#
                ))
                .await?,
            heads_lock: c
                .prepare(&format!(
                    r#"SELECT context, seq, head FROM "{s}".heads
                       WHERE context = ANY($1::text[]) ORDER BY context FOR UPDATE"#
                ))
                .await?,
            idempotency_find: c
                .prepare(&format!(
                    r#"SELECT i.context, i.idem_key, i.seq
                       FROM "{s}".idempotency i
                       JOIN unnest($1::text[], $2::text[]) AS u(c, k)
                         ON i.context = u.c AND i.idem_key = u.k"#
                ))
                .await?,
            entry_get: c
                .prepare(&format!(
                    r#"SELECT {cols} FROM "{s}".entries WHERE context = $1 AND seq = $2"#
                ))
                .await?,
            entries_insert: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".entries
                         (context, seq, hash, prev_hash, key, payload, metadata, appended_at_ns, lamport)
                       SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::bytea[], $5::text[],
                                            $6::bytea[], $7::bytea[], $8::int8[], $9::int8[])"#
                ))
                .await?,
            idempotency_insert: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".idempotency (context, idem_key, seq)
                       SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])"#
                ))
                .await?,
            nodes_insert: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".merkle_nodes (context, level, idx, root)
                       SELECT * FROM unnest($1::text[], $2::int2[], $3::int8[], $4::bytea[])"#
                ))
                .await?,
            heads_update: c
                .prepare(&format!(
                    r#"UPDATE "{s}".heads AS h SET seq = u.seq, hash = u.hash, head = u.head
                       FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::bytea[]) AS u(context, seq, hash, head)
                       WHERE h.context = u.context"#
                ))
                .await?,
            snapshots_insert: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".snapshots (context, seq, head_hash, state, state_hash, appended_at_ns)
                       SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::bytea[], $5::bytea[], $6::int8[])
                       ON CONFLICT DO NOTHING"#
                ))
                .await?,
            notify: c
                .prepare("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .await?,
            head_get: c
                .prepare(&format!(
                    r#"SELECT seq, head FROM "{s}".heads WHERE context = $1 AND seq > 0"#
                ))
                .await?,
            scan_all: c
                .prepare(&format!(
                    r#"SELECT {cols} FROM "{s}".entries
                       WHERE context = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"#
                ))
                .await?,
            scan_key: c
                .prepare(&format!(
                    r#"SELECT {cols} FROM "{s}".entries
                       WHERE context = $1 AND key = $5 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"#
                ))
                .await?,
            by_hash: c
                .prepare(&format!(
                    r#"SELECT context, seq FROM "{s}".entries WHERE hash = $1 ORDER BY context, seq LIMIT 1"#
                ))
                .await?,
            nodes_get: c
                .prepare(&format!(
                    r#"SELECT idx, root FROM "{s}".merkle_nodes
                       WHERE context = $1 AND level = $2 AND idx >= $3 AND idx <= $4 ORDER BY idx"#
                ))
                .await?,
            contexts_page: c
                .prepare(&format!(
                    r#"SELECT context, seq, head FROM "{s}".heads
                       WHERE seq > 0 AND ($1::text IS NULL OR context > $1) ORDER BY context LIMIT $2"#
                ))
                .await?,
            derived_get: c
                .prepare(&format!(r#"SELECT value FROM "{s}".derived WHERE key = $1"#))
                .await?,
            derived_forward: c
                .prepare(&format!(
                    r#"SELECT key, value FROM "{s}".derived
                       WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3"#
                ))
                .await?,
            derived_backward: c
                .prepare(&format!(
                    r#"SELECT key, value FROM "{s}".derived
                       WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT $3"#
                ))
                .await?,
            derived_lock: c
                .prepare(
                    "SELECT count(pg_advisory_xact_lock(l)) FROM \
                     (SELECT l FROM unnest($1::int8[]) AS l ORDER BY l) AS s",
                )
                .await?,
            derived_async_commit: c
                .prepare("SELECT set_config('synchronous_commit', 'off', true)")
                .await?,
            derived_read: c
                .prepare(&format!(
                    r#"SELECT key, value FROM "{s}".derived WHERE key = ANY($1::bytea[])"#
                ))
                .await?,
            derived_guards_hold: c
                .prepare(&format!(
                    r#"SELECT set_config('{GUARDS_HOLD}', (NOT EXISTS (
                           SELECT 1 FROM unnest($1::bytea[], $2::bytea[]) AS g (key, value)
                           LEFT JOIN "{s}".derived AS d ON d.key = g.key
                           WHERE d.value IS DISTINCT FROM g.value))::text, true)"#
                ))
                .await?,
            derived_delete: c
                .prepare(&format!(
                    r#"DELETE FROM "{s}".derived WHERE key = ANY($1::bytea[])
                       AND current_setting('{GUARDS_HOLD}') = 'true'"#
                ))
                .await?,
            derived_upsert: c
                .prepare(&format!(
                    r#"INSERT INTO "{s}".derived (key, value)
                       SELECT * FROM unnest($1::bytea[], $2::bytea[])
                       WHERE current_setting('{GUARDS_HOLD}') = 'true'
                       ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"#
                ))
                .await?,
        })
    }
}

/// One open connection and its prepared statements.
pub(crate) struct Conn {
    pub client: Client,
    pub st: Statements,
}

pub(crate) struct Pool {
    connector: Connector,
    schema: String,
    /// `host:port/db`, for messages.
    pub server: String,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    size: usize,
    runtime: Handle,
    pub operation_timeout: Duration,
    connect_timeout: Duration,
}

/// A connection taken from the pool; goes back on drop unless marked broken
/// or closed.
pub(crate) struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pooled<'_> {
    pub fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }

    /// Drops the connection instead of returning it (after an error or a
    /// timeout its state is unknown; closing it makes PostgreSQL roll back
    /// any open transaction).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.broken
            && !conn.client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl Pool {
    pub fn new(
        connector: Connector,
        schema: String,
        size: usize,
        runtime: Handle,
        operation_timeout: Duration,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            schema,
            server: connector.server.clone(),
            connector,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
            runtime,
            operation_timeout,
            connect_timeout,
        }
    }

    /// Connections: most, handed out, idle.
    pub fn stats(&self) -> converge_ledger_store::stats::PoolStats {
        converge_ledger_store::stats::PoolStats {
            size: self.size,
            in_use: self.size - self.permits.available_permits().min(self.size),
            idle: self.idle.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// A pooled connection: an idle one that is still open, or a new one.
    pub async fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let permit = tokio::time::timeout(
            self.operation_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            StoreError::Io(format!(
                "no PostgreSQL connection became free within {} ms (all {} in use); raise --postgres-pool-size",
                self.operation_timeout.as_millis(),
                self.size
            ))
        })?
        .map_err(|_| StoreError::Closed)?;
        loop {
            let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match conn {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(c),
                        broken: false,
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let conn = self.connect().await?;
        Ok(Pooled {
            pool: self,
            conn: Some(conn),
            broken: false,
            _permit: permit,
        })
    }

    /// Forgets every idle connection (the next requests open new ones).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let connect = async {
            let Connected {
                client, connection, ..
            } = self.connector.connect().await?;
            self.runtime.spawn(async move {
                // Ends when the client is dropped or the server goes away;
                // requests then fail with "connection closed".
                let _ = connection.await;
            });
            client
                .batch_execute(
                    // A node that stops talking in the middle of a write
                    // (hung, partitioned) must not hold head locks forever.
                    // Every execution of a prepared statement is planned
                    // with its parameters and the tables' size as they are
                    // then: a generic plan cached while the tables were
                    // empty scans all of `idempotency` for every append,
                    // for as long as the connection lives, unless an
                    // ANALYZE (autovacuum) comes to replace it. PostgreSQL
                    // 11 has no such setting, and keeps its plans.
                    "SET idle_in_transaction_session_timeout = '60s';
                     DO $$ BEGIN
                       PERFORM set_config('plan_cache_mode', 'force_custom_plan', false);
                     EXCEPTION WHEN undefined_object THEN NULL;
                     END $$",
                )
                .await
                .map_err(|e| failed(&self.server, "configuring a connection", &e))?;
            let st = Statements::prepare(&client, &self.schema)
                .await
                .map_err(|e| failed(&self.server, "preparing statements", &e))?;
            Ok(Conn { client, st })
        };
        tokio::time::timeout(self.connect_timeout + self.operation_timeout, connect)
            .await
            .map_err(|_| {
                timed_out(
                    &self.server,
                    "connecting",
                    self.connect_timeout + self.operation_timeout,
                )
            })?
    }
}
