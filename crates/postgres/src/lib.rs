//! PostgreSQL storage for the Converge ledger.
//!
//! [`PostgresStore`] implements the [`Store`](converge_ledger_store::Store)
//! contract over a PostgreSQL schema, so that several stateless ledger nodes
//! can serve one ledger:
//!
//! - **Schema**: created and migrated on open, versioned
//!   ([`SCHEMA_VERSION`], table `schema_migrations`): `heads`, `entries`
//!   (keyed by context and sequence; indexed by hash and by context, key,
//!   sequence), `idempotency`, `merkle_nodes`, `snapshots` (head
//!   checkpoints), `meta` (the ledger's signing public key) and `derived`
//!   (the WorldLine projections' records, rebuildable from entries).
//! - **Sequencing across nodes**: one transaction per group commit locks the
//!   head rows of the batch's contexts in context order (`SELECT … FOR
//!   UPDATE`), stages the batch with the shared append rule
//!   ([`converge_ledger_store::sequencer`]), inserts entries, keys and Merkle
//!   nodes, moves the heads and commits; `NOTIFY` follows in the same round
//!   trip. Commit order per context is sequence order, so a reader never
//!   sees `n + 1` without `n`.
//! - **Reads** always go to the database; nothing is cached across calls.
//! - **Cross-node watches**: [`relay_notifications`] listens on the schema's
//!   channel and wakes the local ledger's watchers; data is always read from
//!   the tables, notifications carry ids only.
//! - **Failures**: database outages are [`StoreError::Io`](converge_ledger_store::StoreError::Io)
//!   (gRPC `UNAVAILABLE`); the store and the listener reconnect by
//!   themselves. A full disk, bad configuration (credentials, privileges, a
//!   schema from a newer build) and bugs have kinds of their own, which
//!   clients do not retry.
//! - **TLS**: the URL's `sslmode` as libpq reads it (`disable`, `prefer`,
//!   `require`, `verify-ca`, `verify-full`, with `sslrootcert`, `sslcert`,
//!   `sslkey`), over rustls; a refused handshake is a configuration error.
//!
//! The design and its reasoning are in `docs/design.md` ("PostgreSQL
//! storage"); deployment advice is in `docs/deploy.md`.

mod codec;
mod connect;
mod error;
mod listen;
mod options;
mod pool;
mod schema;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tls;

pub use listen::{BoxFuture, Listener, Notice, NotificationTarget, relay_notifications};
pub use options::{DEFAULT_APPLICATION_NAME, DEFAULT_SCHEMA, PostgresOptions, SCHEMA_NAME_MAX};
pub use schema::SCHEMA_VERSION;
pub use store::{CHECKPOINT_INTERVAL, PostgresStore};
