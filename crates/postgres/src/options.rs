use std::time::Duration;

use converge_ledger_store::StoreError;

use crate::connect::Connector;
use crate::tls::{Tls, TlsParams, split_tls_params};

/// Schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "converge_ledger";

/// `application_name` of the ledger's connections when the URL sets none.
pub const DEFAULT_APPLICATION_NAME: &str = "converge-ledger";

/// Longest schema name accepted: the notification channel is
/// `<schema>_appended` and PostgreSQL channel names stop at 63 bytes.
pub const SCHEMA_NAME_MAX: usize = 50;

/// How to reach the database and how to use it.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connection string, as a URL (`postgresql://user:pass@host:5432/db?application_name=x`)
    /// or as `key=value` pairs (`host=127.0.0.1 user=postgres dbname=ledger`).
    /// TLS follows libpq's `sslmode` (`disable`, `prefer` by default,
    /// `require`, `verify-ca`, `verify-full`), with `sslrootcert=FILE` (PEM
    /// CA certificates; needed to verify, no system roots are used) and
    /// optionally `sslcert`/`sslkey` (a client certificate and its key).
    pub url: String,
    /// Schema that holds the ledger's tables (created and migrated on open).
    /// Lowercase ASCII letters, digits and `_`, starting with a letter or
    /// `_`, at most [`SCHEMA_NAME_MAX`] bytes. Nodes that share a ledger use
    /// the same schema.
    pub schema: String,
    /// Most connections this store opens (reads and writes share them; the
    /// notification listener has its own). Connections are opened lazily.
    pub pool_size: usize,
    /// Deadline for establishing one connection.
    pub connect_timeout: Duration,
    /// Deadline for one database operation (a read, or one phase of a write,
    /// including waiting for a pooled connection). A connection that misses
    /// it is closed, so PostgreSQL rolls back whatever it was doing.
    pub operation_timeout: Duration,
    /// `true` (default): every commit is announced with `NOTIFY` and
    /// [`crate::relay_notifications`] listens, so watchers on other nodes
    /// are woken within milliseconds. `false` (polling mode, for setups
    /// where `LISTEN` does not work, such as transaction-pooling proxies):
    /// nothing is sent or listened to, and watchers on other nodes get new
    /// entries from the periodic catch-up only.
    pub notifications: bool,
}

impl PostgresOptions {
    /// Defaults: schema [`DEFAULT_SCHEMA`], 8 connections, 5 s to connect,
    /// 30 s per operation, notifications on.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            notifications: true,
        }
    }

    /// Checks the options, reads the certificates they name and builds the
    /// connector every connection of the store and its listener uses.
    pub(crate) fn connector(&self) -> Result<Connector, StoreError> {
        check_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(StoreError::Config(
                "the PostgreSQL pool size must be at least 1".into(),
            ));
        }
        let (mut config, params) = self.parse()?;
        let tls = Tls::new(&params)?;
        config.ssl_mode(tls.mode.driver());
        if config.get_application_name().is_none() {
            config.application_name(DEFAULT_APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        // Notice a dead peer (a database host that vanished without closing
        // the connection) within about a minute rather than two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(6);
        Ok(Connector {
            server: describe_config(&config),
            config,
            tls,
        })
    }

    /// The driver's configuration (without the TLS keys, which the driver
    /// does not know) and the TLS keys.
    fn parse(&self) -> Result<(tokio_postgres::Config, TlsParams), StoreError> {
        let (rest, params) = split_tls_params(&self.url)?;
        let config = rest.parse().map_err(|e| {
            StoreError::Config(format!(
                "the PostgreSQL URL {} is not valid: {e}",
                redact(&self.url)
            ))
        })?;
        Ok((config, params))
    }

    /// `host:port/dbname` of the connection string and its `sslmode`,
    /// without credentials, for messages.
    pub fn describe(&self) -> String {
        match self.parse() {
            Ok((c, params)) => match params.mode() {
                Ok(mode) => format!(
                    "{} (sslmode={mode}: {})",
                    describe_config(&c),
                    mode.promise()
                ),
                Err(_) => describe_config(&c),
            },
            Err(_) => redact(&self.url),
        }
    }

    /// The notification channel of this schema.
    pub fn channel(&self) -> String {
        format!("{}_appended", self.schema)
    }
}

pub(crate) fn describe_config(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let db = c
        .get_dbname()
        .or(c.get_user())
        .unwrap_or("postgres")
        .to_owned();
    format!("{host}:{port}/{db}")
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.split_once('@')
    {
        let user = auth.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    if url.contains("password") {
        return "(a connection string with a password)".into();
    }
    url.to_owned()
}

/// Schema names are interpolated into SQL (quoted), so they are restricted
/// to a plain identifier alphabet.
pub(crate) fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= SCHEMA_NAME_MAX
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "schema name {schema:?} is not allowed: use 1 to {SCHEMA_NAME_MAX} lowercase ASCII letters, \
             digits and '_', starting with a letter or '_' and not with 'pg_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["converge_ledger", "_x", "cl_test_0af3", &"a".repeat(50)] {
            check_schema(ok).unwrap();
        }
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a\"b",
            "pg_catalog",
            &"a".repeat(51),
        ] {
            assert!(check_schema(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn messages_never_show_the_password() {
        let o = PostgresOptions::new("postgresql://u:secret@db.example:6543/ledger");
        assert_eq!(
            o.describe(),
            "db.example:6543/ledger (sslmode=prefer: TLS if the server offers it, certificate not checked)"
        );
        assert!(!redact(&o.url).contains("secret"));
        let o = PostgresOptions::new("host=h user=u password=secret dbname=d");
        assert!(o.describe().starts_with("h:5432/d (sslmode=prefer"));
        assert!(!redact(&o.url).contains("secret"));
    }

    #[test]
    fn the_driver_negotiates_tls_as_the_sslmode_says() {
        use tokio_postgres::config::SslMode as Driver;
        for (url, mode) in [
            ("postgresql://u@h/d", Driver::Prefer),
            ("postgresql://u@h/d?sslmode=disable", Driver::Disable),
            (
                "postgresql://u@h/d?sslmode=require&application_name=a",
                Driver::Require,
            ),
            ("host=h user=u sslmode=require", Driver::Require),
        ] {
            let c = PostgresOptions::new(url).connector().unwrap();
            assert_eq!(c.config.get_ssl_mode(), mode, "{url}");
        }
    }

    #[test]
    fn application_name_defaults_but_the_url_wins() {
        let c = PostgresOptions::new("postgresql://u@h/d")
            .connector()
            .unwrap()
            .config;
        assert_eq!(c.get_application_name(), Some(DEFAULT_APPLICATION_NAME));
        let c = PostgresOptions::new("postgresql://u@h/d?application_name=node-a")
            .connector()
            .unwrap()
            .config;
        assert_eq!(c.get_application_name(), Some("node-a"));
        let mut o = PostgresOptions::new("postgresql://u@h/d");
        o.pool_size = 0;
        assert!(o.connector().is_err());
    }
}
