//! Helpers for tests against a real PostgreSQL (feature `testkit`).
//!
//! - [`TestSchema::create`] checks that the database answers and gives the
//!   test a fresh schema name and a unique `application_name`; the schema is
//!   dropped when the value is dropped. When the database is unreachable it
//!   prints `SKIPPED` with the reason and returns `None` — unless
//!   `CONVERGE_LEDGER_REQUIRE_SERVICES=1`, which makes that a test failure.
//! - [`TestSchema::terminate_backends`] cuts every connection of the test
//!   (by its `application_name`), as a database restart would, without
//!   touching anyone else's.
//! - [`Proxy`] sits between the nodes and the database and can be switched
//!   off and on: an outage (connections cut, new ones refused) that other
//!   tests sharing the database never see.
//!
//! The database is `$CONVERGE_LEDGER_TEST_POSTGRES_URL`, by default
//! `postgresql://postgres@127.0.0.1:5432/test`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_core::Digest;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::PostgresOptions;
use crate::error::describe;

/// Environment variable naming the test database.
pub const URL_ENV: &str = "CONVERGE_LEDGER_TEST_POSTGRES_URL";
/// The test database when [`URL_ENV`] is not set.
pub const DEFAULT_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";
/// Set to `1` to make an unreachable database a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CONVERGE_LEDGER_REQUIRE_SERVICES";

/// The test database's URL.
pub fn base_url() -> String {
    std::env::var(URL_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// Whether an unreachable database must fail the test.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Runs SQL (simple protocol, several statements allowed) on its own
/// connection and returns the rows of the last result as text. Usable from
/// sync and async tests alike (it runs on a thread of its own).
pub fn admin_query(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut config: tokio_postgres::Config =
                url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
            config.connect_timeout(Duration::from_secs(5));
            let (client, connection) =
                tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
                    .await
                    .map_err(|_| "connecting timed out".to_string())?
                    .map_err(|e| describe(&e))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let messages = tokio::time::timeout(Duration::from_secs(60), client.simple_query(&sql))
                .await
                .map_err(|_| format!("{sql:?} timed out"))?
                .map_err(|e| describe(&e))?;
            let mut rows = Vec::new();
            for m in messages {
                match m {
                    SimpleQueryMessage::Row(r) => {
                        rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    SimpleQueryMessage::CommandComplete(_) => {}
                    _ => {}
                }
            }
            Ok(rows)
        })
    })
    .join()
    .map_err(|_| "the admin query thread panicked".to_string())?
}

/// A name nobody else uses: hex of a hash of the process id, the time and a
/// counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Digest::of(&[
        &std::process::id().to_be_bytes(),
        &now.to_be_bytes(),
        &n.to_be_bytes(),
    ])
    .to_hex()[..12]
        .to_owned()
}

/// `url` with `application_name` set.
pub fn with_application_name(url: &str, name: &str) -> String {
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// A fresh schema for one test; dropped (with everything in it) on drop.
pub struct TestSchema {
    base: String,
    /// The schema name (`cl_test_<hex>`).
    pub schema: String,
    /// The `application_name` of every connection made through
    /// [`TestSchema::url`] (`cl-test-<hex>`).
    pub application_name: String,
}

impl TestSchema {
    /// A fresh schema name, if the test database answers. Otherwise prints
    /// why the test is skipped and returns `None`, or panics when
    /// [`services_required`].
    pub fn create(test: &str) -> Option<TestSchema> {
        let base = base_url();
        if let Err(e) = admin_query(&base, "SELECT 1") {
            if services_required() {
                panic!(
                    "{test}: PostgreSQL at {base} is unreachable ({e}), and {REQUIRE_ENV}=1 requires it"
                );
            }
            eprintln!(
                "SKIPPED {test}: PostgreSQL at {base} is unreachable ({e}); set {URL_ENV} to a reachable \
                 database, or {REQUIRE_ENV}=1 to make this a failure"
            );
            return None;
        }
        let id = unique_suffix();
        Some(TestSchema {
            base,
            schema: format!("cl_test_{id}"),
            application_name: format!("cl-test-{id}"),
        })
    }

    /// The test database URL with this test's `application_name`.
    pub fn url(&self) -> String {
        with_application_name(&self.base, &self.application_name)
    }

    /// The same, but through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        let config: tokio_postgres::Config = self.base.parse().expect("test URL parses");
        let user = config.get_user().unwrap_or("postgres");
        let db = config.get_dbname().unwrap_or(user);
        let auth = match config.get_password() {
            Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
            None => user.to_owned(),
        };
        format!(
            "postgresql://{auth}@127.0.0.1:{}/{db}?application_name={}",
            proxy.port(),
            self.application_name
        )
    }

    /// Store options for this schema: [`TestSchema::url`], a pool of 4,
    /// 3 s to connect, 10 s per operation.
    pub fn options(&self) -> PostgresOptions {
        let mut o = PostgresOptions::new(self.url());
        o.schema = self.schema.clone();
        o.pool_size = 4;
        o.connect_timeout = Duration::from_secs(3);
        o.operation_timeout = Duration::from_secs(10);
        o
    }

    /// `host:port` of the test database (for a [`Proxy`]).
    pub fn upstream(&self) -> String {
        let config: tokio_postgres::Config = self.base.parse().expect("test URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// Runs SQL on an administrative connection; panics on failure.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        admin_query(&self.base, sql).unwrap_or_else(|e| panic!("{sql:?} failed: {e}"))
    }

    /// Terminates every backend of this test (`application_name`), like a
    /// database restart does to them, and waits (up to 5 s each) until they
    /// are gone. Returns how many were terminated.
    pub fn terminate_backends(&self) -> usize {
        self.query(&format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = '{}' AND pid <> pg_backend_pid()",
            self.application_name
        ))
        .len()
    }

    /// How many backends of this test are connected.
    pub fn backends(&self) -> usize {
        let rows = self.query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
            self.application_name
        ));
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Err(e) = admin_query(
            &self.base,
            &format!(r#"DROP SCHEMA IF EXISTS "{}" CASCADE"#, self.schema),
        ) {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// A TCP proxy on loopback in front of the database that can be cut.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    runtime: Option<Runtime>,
}

struct ProxyShared {
    upstream: String,
    down: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-pg-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        // Bound without `block_on`, so this works inside async tests too.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking socket");
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(std_listener).expect("proxy listener")
        };
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream: upstream.to_owned(),
            down: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                // Checked and registered under the lock `set_down` takes, so
                // no connection slips through a cut.
                let mut conns = s.connections.lock().unwrap_or_else(|p| p.into_inner());
                if s.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = s.upstream.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Proxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `true`: cut every proxied connection and refuse new ones (they are
    /// closed at once); `false`: forward again.
    pub fn set_down(&self, down: bool) {
        let mut conns = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            for h in conns.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
