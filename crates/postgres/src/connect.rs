//! Opening one connection. The store's first connection, its pool and its
//! listener all connect through one [`Connector`], so they share the
//! driver configuration and the TLS setup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use converge_ledger_store::StoreError;
use tokio_postgres::{Client, Socket};

use crate::error::{describe, failed, is_tls_failure, tls_failed};
use crate::tls::{RustlsStream, SslMode, Tls};

/// The driver's half of a connection, to be polled by a task of its own.
pub(crate) type Connection = tokio_postgres::Connection<Socket, RustlsStream>;

/// How to open a connection to the database.
#[derive(Clone)]
pub(crate) struct Connector {
    /// Everything of the connection string but its TLS keys.
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// `host:port/db`, for messages.
    pub server: String,
}

/// A new connection.
pub(crate) struct Connected {
    pub client: Client,
    pub connection: Connection,
    /// Whether TLS was negotiated (under `prefer` it depends on the server).
    pub tls: bool,
}

impl Connector {
    /// Opens a connection. A refused TLS handshake (a certificate that
    /// does not verify, a server without TLS under `require`) is
    /// [`StoreError::Config`]: retrying does not help. Under `prefer` such
    /// a server is tried once more without TLS, as libpq does.
    pub async fn connect(&self) -> Result<Connected, StoreError> {
        let used = Arc::new(AtomicBool::new(false));
        let e = match self.config.connect(self.tls.connector(used.clone())).await {
            Ok((client, connection)) => {
                let tls = used.load(Ordering::Relaxed);
                return Ok(Connected {
                    client,
                    connection,
                    tls,
                });
            }
            Err(e) => e,
        };
        if !is_tls_failure(&e) {
            return Err(failed(&self.server, "connecting", &e));
        }
        if self.tls.mode != SslMode::Prefer {
            return Err(tls_failed(&self.server, self.tls.mode, &e));
        }
        let mut plain = self.config.clone();
        plain.ssl_mode(SslMode::Disable.driver());
        let (client, connection) =
            plain
                .connect(self.tls.connector(used))
                .await
                .map_err(|plain_error| {
                    let what =
                        format!("connecting without TLS after TLS failed ({})", describe(&e));
                    failed(&self.server, &what, &plain_error)
                })?;
        Ok(Connected {
            client,
            connection,
            tls: false,
        })
    }
}
