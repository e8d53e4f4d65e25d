//! The derived space (projections) on PostgreSQL: table `derived`, shared by
//! every node. Guarded writes take a transaction-scoped advisory lock per
//! guard key (in ascending order, so writers never deadlock), read the
//! guards under it and write only if they hold: two nodes folding the same
//! worldline serialise on its checkpoint keys, and the second finds the
//! checkpoint moved.
//!
//! A projection transaction commits asynchronously (`synchronous_commit`
//! off for it alone): it does not wait for its WAL flush, so the folding
//! never adds a disk flush beside the receipts' own. A crash can lose only
//! the last projection transactions, never half of one (the WAL keeps them
//! whole and in order, after the receipts they reflect), and the projector
//! folds those receipts again.

use converge_ledger_core::Digest;
use converge_ledger_store::StoreError;
use converge_ledger_store::derived::{DerivedKv, DerivedWrite, Guard, Pair};

use super::{PostgresStore, row_error};
use crate::error::{failed, is_connection_error, timed_out};
use crate::pool::Conn;

/// The advisory lock id of a guard key: the first 8 bytes of its SHA-256.
fn lock_id(key: &[u8]) -> i64 {
    let d = Digest::of(&[key]);
    i64::from_be_bytes(d.0[..8].try_into().expect("8 bytes"))
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl DerivedKv for PostgresStore {
    fn reads_are_round_trips(&self) -> bool {
        true
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let row = read!(self, "reading a projection record", |c| c
            .client
            .query_opt(&c.st.derived_get, &[&key]))?;
        row.map(|r| r.try_get::<_, Vec<u8>>(0).map_err(row_error))
            .transpose()
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
        let rows = read!(self, "reading projection records", |c| c
            .client
            .query(&c.st.derived_read, &params))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let k: Vec<u8> = r.try_get(0).map_err(row_error)?;
            let v: Vec<u8> = r.try_get(1).map_err(row_error)?;
            found.insert(k, v);
        }
        Ok(keys.iter().map(|k| found.get(*k).cloned()).collect())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let n = limit_of(limit);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&start, &end, &n];
        let rows = read!(self, "reading projection records", |c| c.client.query(
            if reverse {
                &c.st.derived_backward
            } else {
                &c.st.derived_forward
            },
            &params
        ))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(row_error)?,
                    r.try_get(1).map_err(row_error)?,
                ))
            })
            .collect()
    }

    fn write_if(&self, guards: &[Guard], writes: &[DerivedWrite]) -> Result<bool, StoreError> {
        let mut locks: Vec<i64> = guards.iter().map(|(k, _)| lock_id(k)).collect();
        locks.sort_unstable();
        locks.dedup();
        let (guard_keys, guard_values): (Vec<&[u8]>, Vec<Option<&[u8]>>) = guards
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .unzip();
        let deletes: Vec<&[u8]> = writes
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_slice())
            .collect();
        let (put_keys, put_values): (Vec<&[u8]>, Vec<&[u8]>) = writes
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_slice(), v.as_slice())))
            .unzip();
        let server = &self.pool.server;
        let mut pooled = self.block(self.pool.get())?;
        let c = pooled.conn();
        // One round trip: the statements run in order on the connection,
        // each after the one before has finished, so the guards are read
        // once their locks are held, and the writes take effect only if
        // the guards held (the verdict is kept in a transaction-local
        // setting the writes check).
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&locks];
        let guard_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&guard_keys, &guard_values];
        let done = self.block_timed(async {
            tokio::join!(
                c.client.execute(&c.st.begin, &[]),
                c.client.execute(&c.st.derived_async_commit, &[]),
                c.client.execute(&c.st.derived_lock, &lock_params),
                c.client.query_one(&c.st.derived_guards_hold, &guard_params),
                async {
                    if deletes.is_empty() {
                        return Ok(0);
                    }
                    c.client.execute(&c.st.derived_delete, &[&deletes]).await
                },
                async {
                    if put_keys.is_empty() {
                        return Ok(0);
                    }
                    c.client
                        .execute(&c.st.derived_upsert, &[&put_keys, &put_values])
                        .await
                },
                c.client.execute(&c.st.commit, &[]),
            )
        });
        let Ok((begin, async_commit, lock, held, deleted, put, commit)) = done else {
            pooled.mark_broken();
            return Err(StoreError::Io(format!(
                "PostgreSQL at {server} did not answer a projection write within {} ms; it may or \
                 may not have been committed (the projection resumes from its checkpoint either way)",
                self.pool.operation_timeout.as_millis()
            )));
        };
        // The first statement that failed is the one to report: the
        // transaction is aborted from there on, and its COMMIT rolls back.
        let held = match (begin, async_commit, lock, held) {
            (Ok(_), Ok(_), Ok(_), Ok(row)) => row,
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                pooled.mark_broken();
                return Err(failed(server, "locking projection checkpoints", &e));
            }
        };
        for (what, r) in [
            ("deleting projection records", deleted),
            ("writing projection records", put),
            ("committing projection records", commit),
        ] {
            if let Err(e) = r {
                pooled.mark_broken();
                return Err(failed(server, what, &e));
            }
        }
        let held: String = held.try_get(0).map_err(row_error)?;
        Ok(held == "true")
    }
}
