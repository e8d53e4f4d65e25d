//! Turning driver errors into [`StoreError`]s with messages an operator can
//! act on.

use std::error::Error as _;

use converge_ledger_store::StoreError;
use tokio_postgres::error::SqlState;

use crate::tls::SslMode;

/// The driver's error with its whole cause chain (the driver's own
/// `Display` often says only "db error" or "error connecting to server").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(" (");
            s.push_str(d);
            s.push(')');
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// Whether the error means the connection (or the server) is gone, as
/// opposed to a statement that failed on a working connection.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        }
        // No SQLSTATE: an I/O error, a failed connect, a timeout or a
        // protocol error is about the connection; a conversion error is not.
        None => {
            let m = e.to_string();
            e.source().is_some_and(|s| s.is::<std::io::Error>())
                || m.starts_with("error connecting")
                || m.starts_with("error communicating")
                || m.starts_with("timeout waiting")
                || m.starts_with("unexpected message")
        }
    }
}

/// A failed database operation, as the store reports it, by what the
/// caller can do about it (the SQLSTATE class): a lost connection, a
/// conflict or a canceled statement is transient ([`StoreError::Io`],
/// `UNAVAILABLE` over gRPC: retry later or elsewhere); a full disk is
/// [`StoreError::NoSpace`]; refused credentials, a missing database or
/// schema, or missing privileges are [`StoreError::Config`]; anything else
/// (a constraint or data error) means the ledger sent something it should
/// not have, a bug ([`StoreError::Internal`]). Corrupt data read back is
/// reported separately by the codec.
pub(crate) fn failed(server: &str, what: &str, e: &tokio_postgres::Error) -> StoreError {
    if is_connection_error(e) {
        return StoreError::Io(format!(
            "PostgreSQL at {server} is unavailable ({what}): {}",
            describe(e)
        ));
    }
    let refused = format!("PostgreSQL at {server} refused {what}: {}", describe(e));
    let Some(code) = e.code() else {
        return StoreError::Internal(refused);
    };
    match code.code().get(..2).unwrap_or("") {
        _ if *code == SqlState::DISK_FULL => StoreError::NoSpace(refused),
        // Transaction rollback (serialization, deadlock), insufficient
        // resources, operator intervention (canceled statement), object
        // in use or locked: the same request can succeed later.
        "40" | "53" | "57" | "55" => StoreError::Io(refused),
        // Authorization, missing database, schema or privileges, syntax
        // or undefined objects (a schema from another build).
        "28" | "3D" | "3F" | "42" => StoreError::Config(refused),
        _ => StoreError::Internal(refused),
    }
}

/// An operation that missed its deadline.
pub(crate) fn timed_out(server: &str, what: &str, after: std::time::Duration) -> StoreError {
    StoreError::Io(format!(
        "PostgreSQL at {server} is unavailable ({what}): no answer within {} ms; the connection was closed",
        after.as_millis()
    ))
}

/// Whether a failed connect is the TLS layer's refusal (a certificate that
/// does not verify, a server without TLS under `require`, a handshake the
/// two sides cannot agree on) rather than the network failing during it.
pub(crate) fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut source = e.source();
    let mut transport = false;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            // tokio-rustls reports the TLS layer's errors as I/O errors
            // wrapping a `rustls::Error`.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
            transport = true;
        }
        if cause.is::<rustls::Error>() {
            return true;
        }
        source = cause.source();
    }
    // The driver's own TLS refusals ("server does not support TLS") carry
    // only a message.
    !transport && e.to_string() == "error performing TLS handshake"
}

/// A refused TLS connection, with what to change.
pub(crate) fn tls_failed(server: &str, mode: SslMode, e: &tokio_postgres::Error) -> StoreError {
    let mut hint = "";
    let mut source = e.source();
    while let Some(cause) = source {
        let tls = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| cause.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(c)) = tls {
            use rustls::CertificateError as C;
            hint = match c {
                C::UnknownIssuer | C::BadSignature => {
                    "; the server's certificate is not signed by a CA in sslrootcert"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "; the server's certificate does not name the host of the URL"
                }
                C::Expired | C::ExpiredContext { .. } => "; the server's certificate has expired",
                _ => "",
            };
            break;
        }
        source = cause.source();
    }
    StoreError::Config(format!(
        "TLS to PostgreSQL at {server} failed under sslmode={mode}: {}{hint}",
        describe(e)
    ))
}
