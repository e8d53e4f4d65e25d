//! The versioned schema and its migrations.
//!
//! Every node runs [`migrate`] when it opens the store. Migrations run in one
//! transaction under a transaction-scoped advisory lock, so nodes starting
//! together apply each migration exactly once, and a failed migration leaves
//! nothing behind. A database whose schema is newer than this build is
//! refused rather than written with an older layout.

use converge_ledger_store::StoreError;

use crate::error::{describe, failed};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 3;

struct Migration {
    version: i32,
    description: &'static str,
    sql: fn(&str) -> String,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "heads, entries (indexed by hash and by context, key, sequence), idempotency keys, \
                      Merkle nodes, snapshots (head checkpoints), meta",
        sql: v1,
    },
    Migration {
        version: 2,
        description: "wll_receipts and wll_snapshots: the WorldLine seed's tables, as views over entries",
        sql: v2,
    },
    Migration {
        version: 3,
        description: "derived: the key-value space of the WorldLine projections, rebuildable from entries",
        sql: v3,
    },
];

/// Version 3: the derived key-value space (docs/design.md §18, "Projections
/// served"): data computed from entries, written only by guarded writes
/// under advisory locks, never part of the history (so not append-only).
fn v3(s: &str) -> String {
    format!(
        r#"
CREATE TABLE "{s}".derived (
    key   bytea PRIMARY KEY,
    value bytea NOT NULL
);
"#
    )
}

/// Version 2: the WorldLine profile's tables as the seed names them
/// (docs/design.md §18), read-only views over `entries`, so what an
/// operator queries is always what the ledger stores and verifies.
/// `wll_receipts` uses `entries_key_idx` through the context prefix and
/// `entries_hash_idx` for `receipt_hash`.
fn v2(s: &str) -> String {
    format!(
        r#"
CREATE VIEW "{s}".wll_receipts AS
SELECT decode(substr(context, 5, 64), 'hex') AS worldline_id,
       seq,
       hash AS receipt_hash,
       CASE WHEN seq = 1 THEN NULL ELSE prev_hash END AS prev_hash,
       CASE key WHEN 'wll.commitment' THEN 'commitment' WHEN 'wll.outcome' THEN 'outcome' ELSE key END AS kind,
       payload,
       appended_at_ns / 1000000 AS timestamp_ms,
       appended_at_ns AS timestamp_ns,
       lamport
FROM "{s}".entries
WHERE context LIKE 'wll/%' AND length(context) = 68;

CREATE VIEW "{s}".wll_snapshots AS
SELECT decode(substr(h.context, 5, 64), 'hex') AS worldline_id,
       h.seq AS snapshot_seq,
       substring(h.payload FROM 14 FOR 32) AS anchored_receipt,
       (SELECT string_agg(c.payload, ''::bytea ORDER BY c.seq)
          FROM "{s}".entries c
         WHERE c.context = h.context AND c.seq > h.seq
           AND c.seq <= h.seq + ((get_byte(h.payload, 97)::bigint << 24) | (get_byte(h.payload, 98) << 16)
                                 | (get_byte(h.payload, 99) << 8) | get_byte(h.payload, 100))) AS state_blob,
       substring(h.payload FROM 46 FOR 32) AS state_hash,
       h.appended_at_ns / 1000000 AS timestamp_ms,
       h.payload AS header
FROM "{s}".entries h
WHERE h.context LIKE 'wll/%/snapshots' AND h.key = 'wll.snapshot';
"#
    )
}

/// Version 1. Column and table names follow the ledger's model (docs/design.md,
/// "PostgreSQL storage"); `text COLLATE "C"` makes `ORDER BY context` byte
/// order, the order of `Store::contexts` and of head locking.
fn v1(s: &str) -> String {
    format!(
        r#"
CREATE TABLE "{s}".meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per context: its head (Head::encode: sequence, hash, Lamport, time,
-- Merkle frontier). Writers lock these rows; seq = 0 is a row created to be
-- locked before the context's first entry commits.
CREATE TABLE "{s}".heads (
    context text COLLATE "C" PRIMARY KEY,
    seq     bigint NOT NULL CHECK (seq >= 0),
    hash    bytea  NOT NULL,
    head    bytea  NOT NULL
);

CREATE TABLE "{s}".entries (
    context        text COLLATE "C" NOT NULL,
    seq            bigint NOT NULL CHECK (seq >= 1),
    hash           bytea  NOT NULL,
    prev_hash      bytea  NOT NULL,
    key            text COLLATE "C" NOT NULL,
    payload        bytea  NOT NULL,
    metadata       bytea  NOT NULL,
    appended_at_ns bigint NOT NULL,
    lamport        bigint NOT NULL,
    PRIMARY KEY (context, seq)
);
CREATE INDEX entries_hash_idx ON "{s}".entries (hash);
CREATE INDEX entries_key_idx ON "{s}".entries (context, key, seq);

CREATE TABLE "{s}".idempotency (
    context  text COLLATE "C" NOT NULL,
    idem_key text COLLATE "C" NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (context, idem_key)
);

-- Roots of completed perfect Merkle subtrees at levels 4, 8, 12, ...
CREATE TABLE "{s}".merkle_nodes (
    context text COLLATE "C" NOT NULL,
    level   smallint NOT NULL,
    idx     bigint NOT NULL,
    root    bytea  NOT NULL,
    PRIMARY KEY (context, level, idx)
);

-- Head checkpoints: the state (encoded head) of a context at `seq`,
-- anchored to the hash of entry `seq`; written whenever a commit crosses a
-- multiple of 1024 entries.
CREATE TABLE "{s}".snapshots (
    context        text COLLATE "C" NOT NULL,
    seq            bigint NOT NULL,
    head_hash      bytea  NOT NULL,
    state          bytea  NOT NULL,
    state_hash     bytea  NOT NULL,
    appended_at_ns bigint NOT NULL,
    PRIMARY KEY (context, seq)
);

-- History is append-only: refuse UPDATE, DELETE and TRUNCATE of it.
CREATE FUNCTION "{s}".refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'converge-ledger: % of %.% is not allowed; history is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME;
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON "{s}".entries
    FOR EACH ROW EXECUTE FUNCTION "{s}".refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON "{s}".entries
    FOR EACH STATEMENT EXECUTE FUNCTION "{s}".refuse_change();
CREATE TRIGGER idempotency_append_only BEFORE UPDATE OR DELETE ON "{s}".idempotency
    FOR EACH ROW EXECUTE FUNCTION "{s}".refuse_change();
CREATE TRIGGER merkle_nodes_append_only BEFORE UPDATE OR DELETE ON "{s}".merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION "{s}".refuse_change();
"#
    )
}

/// Creates the schema if needed and applies every migration it lacks.
/// Returns the version the schema is at afterwards.
pub(crate) async fn migrate(
    client: &tokio_postgres::Client,
    schema: &str,
    server: &str,
) -> Result<i32, StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| failed(server, what, &e);
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| fail("starting the schema migration", e))?;
    let result = migrate_in_transaction(client, schema, server).await;
    match result {
        Ok(version) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| fail("committing the schema migration", e))?;
            Ok(version)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn migrate_in_transaction(
    client: &tokio_postgres::Client,
    schema: &str,
    server: &str,
) -> Result<i32, StoreError> {
    let fail = |what: String, e: tokio_postgres::Error| failed(server, &what, &e);
    // Serialises nodes that start at the same time; released at commit.
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('converge-ledger/migrate/' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(|e| fail("locking the schema for migration".into(), e))?;
    client
        .batch_execute(&format!(
            r#"CREATE SCHEMA IF NOT EXISTS "{schema}";
               CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations (
                   version     integer PRIMARY KEY,
                   description text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now()
               );"#
        ))
        .await
        .map_err(|e| fail(format!("creating schema {schema:?}"), e))?;
    let current: i32 = client
        .query_one(
            &format!(r#"SELECT coalesce(max(version), 0) FROM "{schema}".schema_migrations"#),
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("reading the schema version".into(), e))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Config(format!(
            "schema {schema:?} at {server} is at version {current}, newer than this build's \
             version {SCHEMA_VERSION}; upgrade this node (nothing was changed)"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        client.batch_execute(&(m.sql)(schema)).await.map_err(|e| {
            StoreError::Io(format!(
                "migrating schema {schema:?} at {server} to version {} failed: {}; nothing was changed",
                m.version,
                describe(&e)
            ))
        })?;
        client
            .execute(
                &format!(
                    r#"INSERT INTO "{schema}".schema_migrations (version, description) VALUES ($1, $2)"#
                ),
                &[&m.version, &m.description],
            )
            .await
            .map_err(|e| fail(format!("recording migration {}", m.version), e))?;
    }
    Ok(SCHEMA_VERSION.max(current))
}
