//! TLS to PostgreSQL under each `sslmode`, against the test server with a
//! CA and certificates this test makes (rcgen).
//!
//! The server tests point the server at a certificate for `localhost` only,
//! signed by a fresh CA (`ALTER SYSTEM` + `pg_reload_conf()`), and put the
//! server's settings back when they end, failed or not. They take a file
//! lock, so only one of them changes the server at a time, in this process
//! or another. Other tests that run meanwhile connect with `prefer` (any
//! certificate) or without TLS, and do not notice. The server must be local
//! (its certificate files are written here) and the test role a superuser;
//! otherwise the server tests say why they are skipped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use converge_ledger_core::{Metadata, NewEntry};
use converge_ledger_postgres::testkit::{
    REQUIRE_ENV, TestSchema, admin_query, base_url, services_required,
};
use converge_ledger_postgres::{Listener, Notice, PostgresOptions, PostgresStore};
use converge_ledger_store::{AppendCommand, Store, StoreError, WriteCommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// Prefix of the certificate directories, so that a run killed before it
/// could restore the server is recognised by the next one.
const DIR_PREFIX: &str = "cl-pg-tls-";
/// CN of the client certificate.
const CLIENT_CN: &str = "converge-ledger-test-client";

/// The server settings these tests change.
const SETTINGS: [&str; 4] = ["ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"];

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs one statement as the test superuser; panics on failure.
fn admin(sql: &str) -> Vec<Vec<Option<String>>> {
    admin_query(&base_url(), sql).unwrap_or_else(|e| panic!("{sql:?} failed: {e}"))
}

fn admin_value(sql: &str) -> String {
    admin(sql)
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default()
}

/// Reloads the configuration and waits until new connections see
/// `ssl_cert_file` equal to `cert_file` (`true`) or not (`false`): the
/// postmaster applies a reload (settings and TLS context together) between
/// accepting connections, so a new connection that sees the setting is
/// served with that certificate.
fn reload_until(cert_file: &str, equal: bool) -> Result<(), String> {
    let base = base_url();
    admin_query(&base, "SELECT pg_reload_conf()")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = admin_query(&base, "SHOW ssl_cert_file")?;
        let now = rows[0][0].clone().unwrap_or_default();
        if (now == cert_file) == equal {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server uses ssl_cert_file {now:?} 10 s after a reload (waiting for it {} {cert_file:?})",
                if equal { "to be" } else { "not to be" }
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test server serving a certificate for `localhost` signed by a fresh
/// CA (and trusting that CA for client certificates) until dropped.
struct ServerTls {
    /// What puts each setting back: `Some(value)` to set, `None` to reset.
    previous: Vec<(&'static str, Option<String>)>,
    /// The certificate file the server was pointed at.
    cert_file: String,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// A CA that signed neither.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// Removed after the server no longer uses it (fields drop in order).
    _dir: tempfile::TempDir,
    _lock: File,
}

impl ServerTls {
    /// `None` (saying why) when the server cannot be reconfigured from
    /// here.
    fn install(test: &str) -> Option<ServerTls> {
        let skip = |why: String| {
            if services_required() {
                panic!("{test}: {why}, and {REQUIRE_ENV}=1 requires this test to run");
            }
            eprintln!("SKIPPED {test}: {why}");
            None
        };
        let lock_path = std::env::temp_dir().join("converge-ledger-postgres-tls.lock");
        let lock = File::create(&lock_path).unwrap();
        lock.lock().unwrap();
        if admin_value("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") != "t" {
            return skip("the test role is not a superuser, so it cannot set ssl_cert_file".into());
        }
        let data_directory = admin_value("SHOW data_directory");
        let Ok(owner) = std::fs::metadata(&data_directory) else {
            return skip(format!(
                "the server's data directory {data_directory} is not on this machine, so it cannot read \
                 certificate files written here"
            ));
        };
        let mut previous = Vec::new();
        for name in SETTINGS {
            let row = admin(&format!(
                "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = '{name}'"
            ));
            let setting = row[0][0].clone().unwrap_or_default();
            let source = row[0][1].clone().unwrap_or_default();
            // Set with ALTER SYSTEM before this test, and not by a run of
            // it that was killed: put that value back; otherwise reset.
            let restore = (source.ends_with("postgresql.auto.conf")
                && !setting.contains(DIR_PREFIX))
            .then_some(setting);
            previous.push((name, restore));
        }

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap();
        // The server (another OS user) must reach the files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca_issuer = ca("converge-ledger test CA");
        let (server_cert, server_key) = leaf(&ca_issuer, "localhost", &["localhost"]);
        let (client_cert, client_key) = leaf(&ca_issuer, CLIENT_CN, &[]);
        let root = dir.path().to_owned();
        let p = |name: &str| root.join(name);
        write(&p("ca.pem"), &ca_issuer.pem(), 0o644);
        write(&p("other-ca.pem"), &ca("another CA").pem(), 0o644);
        write(&p("server.pem"), &server_cert, 0o644);
        write(&p("client.pem"), &client_cert, 0o644);
        write(&p("client.key"), &client_key, 0o600);
        // PostgreSQL refuses a key file that others can read or that the
        // database user does not own.
        write(&p("server.key"), &server_key, 0o600);
        if let Err(e) =
            std::os::unix::fs::chown(p("server.key"), Some(owner.uid()), Some(owner.gid()))
        {
            return skip(format!(
                "cannot give the server key to the database's OS user (uid {}): {e}",
                owner.uid()
            ));
        }

        let cert_file = p("server.pem").display().to_string();
        let guard = ServerTls {
            previous,
            cert_file: cert_file.clone(),
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            _dir: dir,
            _lock: lock,
        };
        for (name, value) in [
            ("ssl_cert_file", cert_file.clone()),
            ("ssl_key_file", p("server.key").display().to_string()),
            ("ssl_ca_file", p("ca.pem").display().to_string()),
            ("ssl", "on".into()),
        ] {
            admin(&format!("ALTER SYSTEM SET {name} = '{value}'"));
        }
        // On failure the guard puts the settings back.
        reload_until(&cert_file, true).unwrap_or_else(|e| panic!("{test}: {e}"));
        Some(guard)
    }
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        // Never panics: it may run while a failed test unwinds.
        let restore = || -> Result<(), String> {
            for (name, value) in &self.previous {
                let sql = match value {
                    Some(v) => format!("ALTER SYSTEM SET {name} = '{}'", v.replace('\'', "''")),
                    None => format!("ALTER SYSTEM RESET {name}"),
                };
                admin_query(&base_url(), &sql)?;
            }
            reload_until(&self.cert_file, false)
        };
        match restore() {
            Ok(()) => {}
            Err(e) => eprintln!(
                "could not restore the server's TLS settings ({e}); run ALTER SYSTEM RESET ssl_cert_file, \
                 ssl_key_file, ssl_ca_file, ssl and SELECT pg_reload_conf()"
            ),
        }
    }
}

/// The test database's URL with another host and TLS parameters.
fn url(schema: &TestSchema, host: &str, port: u16, tls: &str) -> String {
    let config: tokio_postgres::Config = base_url().parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    let auth = match config.get_password() {
        Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
        None => user.to_owned(),
    };
    format!(
        "postgresql://{auth}@{host}:{port}/{db}?application_name={}&{tls}",
        schema.application_name
    )
}

fn port() -> u16 {
    let config: tokio_postgres::Config = base_url().parse().unwrap();
    config.get_ports().first().copied().unwrap_or(5432)
}

fn options(schema: &TestSchema, host: &str, tls: &str) -> PostgresOptions {
    let mut o = schema.options();
    o.url = url(schema, host, port(), tls);
    o
}

fn open(schema: &TestSchema, host: &str, tls: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(options(schema, host, tls))
}

fn config_error(result: Result<PostgresStore, StoreError>) -> String {
    match result {
        Err(StoreError::Config(m)) => m,
        Err(e) => panic!("expected a configuration error, got {e:?}"),
        Ok(_) => panic!("expected a configuration error, the store opened"),
    }
}

/// Appends one entry and reads it back.
fn write_and_read(store: &PostgresStore, context: &str) {
    let committed = store
        .write(
            1,
            vec![WriteCommand::Append(AppendCommand {
                context: context.into(),
                entry: NewEntry {
                    key: "k".into(),
                    payload: b"over tls".to_vec(),
                    metadata: Metadata::new(),
                    lamport: 0,
                },
                idempotency_key: None,
            })],
        )
        .unwrap();
    assert_eq!(committed.entries.len(), 1);
    let entry = store
        .entry(context, 1)
        .unwrap()
        .expect("the entry is stored");
    assert_eq!(entry.payload, b"over tls");
}

/// `ssl` of every backend of this test, from `pg_stat_ssl`.
fn encrypted(schema: &TestSchema) -> Vec<bool> {
    admin(&format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{}'",
        schema.application_name
    ))
    .into_iter()
    .map(|r| r[0].as_deref() == Some("t"))
    .collect()
}

fn schema(test: &str) -> Option<TestSchema> {
    TestSchema::create(test)
}

#[test]
fn verify_full_connects_the_store_and_its_listener_over_tls_to_a_server_its_ca_signed() {
    let test = "verify_full_connects_the_store_and_its_listener_over_tls_to_a_server_its_ca_signed";
    let Some(schema) = schema(test) else { return };
    let Some(server) = ServerTls::install(test) else {
        return;
    };
    let tls = format!("sslmode=verify-full&sslrootcert={}", server.ca.display());
    let store = open(&schema, "localhost", &tls).unwrap_or_else(|e| {
        panic!("{e} (did the server load the test certificate? its log says why not)")
    });
    assert!(
        store
            .describe()
            .contains("over TLS (sslmode=verify-full: TLS, certificate and host name checked"),
        "{}",
        store.describe()
    );
    write_and_read(&store, "tls-ctx");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut listener = Listener::start(&options(&schema, "localhost", &tls)).unwrap();
        let notice = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the listener reports within 10 s");
        assert_eq!(notice, Some(Notice::Listening { reconnected: false }));
        let ssl = encrypted(&schema);
        assert!(
            ssl.len() >= 2,
            "the pool's and the listener's connections: {ssl:?}"
        );
        assert!(
            ssl.iter().all(|s| *s),
            "every connection is encrypted: {ssl:?}"
        );
    });
}

#[test]
fn verify_full_refuses_a_server_certificate_from_another_ca_as_a_configuration_error() {
    let test = "verify_full_refuses_a_server_certificate_from_another_ca_as_a_configuration_error";
    let Some(schema) = schema(test) else { return };
    let Some(server) = ServerTls::install(test) else {
        return;
    };
    let m = config_error(open(
        &schema,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.other_ca.display()
        ),
    ));
    assert!(
        m.contains(&format!("localhost:{}/", port())),
        "names the server: {m}"
    );
    assert!(m.contains("sslmode=verify-full"), "names the mode: {m}");
    assert!(
        m.contains("not signed by a CA in sslrootcert"),
        "says what failed: {m}"
    );
    // Under verify-ca too: the chain is what it checks.
    let m = config_error(open(
        &schema,
        "localhost",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            server.other_ca.display()
        ),
    ));
    assert!(m.contains("not signed by a CA in sslrootcert"), "{m}");
}

#[test]
fn verify_full_refuses_a_certificate_that_does_not_name_the_host_and_verify_ca_accepts_it() {
    let test =
        "verify_full_refuses_a_certificate_that_does_not_name_the_host_and_verify_ca_accepts_it";
    let Some(schema) = schema(test) else { return };
    let Some(server) = ServerTls::install(test) else {
        return;
    };
    let root = format!("sslrootcert={}", server.ca.display());
    // The certificate names localhost only.
    let m = config_error(open(
        &schema,
        "127.0.0.1",
        &format!("sslmode=verify-full&{root}"),
    ));
    assert!(m.contains("sslmode=verify-full"), "{m}");
    assert!(m.contains("does not name the host"), "{m}");
    let store = open(&schema, "127.0.0.1", &format!("sslmode=verify-ca&{root}")).unwrap();
    write_and_read(&store, "tls-ca");
    let ssl = encrypted(&schema);
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{ssl:?}");
}

#[test]
fn require_and_prefer_encrypt_without_checking_the_certificate_and_disable_does_not_encrypt() {
    let test =
        "require_and_prefer_encrypt_without_checking_the_certificate_and_disable_does_not_encrypt";
    let Some(schema) = schema(test) else { return };
    let Some(_server) = ServerTls::install(test) else {
        return;
    };
    for (tls, expect_tls) in [
        ("sslmode=require", true),
        ("sslmode=prefer", true),
        ("sslmode=disable", false),
    ] {
        let store = open(&schema, "127.0.0.1", tls).unwrap_or_else(|e| panic!("{tls}: {e}"));
        write_and_read(&store, &format!("tls-{expect_tls}-{}", &tls[8..]));
        let ssl = encrypted(&schema);
        assert!(!ssl.is_empty());
        assert!(ssl.iter().all(|s| *s == expect_tls), "{tls}: {ssl:?}");
        assert_eq!(
            store.describe().contains("over TLS"),
            expect_tls,
            "{}",
            store.describe()
        );
        drop(store);
        schema.terminate_backends();
    }
}

#[test]
fn a_client_certificate_is_presented_when_sslcert_and_sslkey_are_given() {
    let test = "a_client_certificate_is_presented_when_sslcert_and_sslkey_are_given";
    let Some(schema) = schema(test) else { return };
    let Some(server) = ServerTls::install(test) else {
        return;
    };
    let tls = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        server.ca.display(),
        server.client_cert.display(),
        server.client_key.display()
    );
    let _store = open(&schema, "localhost", &tls).unwrap();
    let dns = admin(&format!(
        "SELECT coalesce(s.client_dn, '') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{}'",
        schema.application_name
    ));
    assert!(!dns.is_empty());
    for dn in dns {
        assert_eq!(dn[0].as_deref(), Some(format!("/CN={CLIENT_CN}").as_str()));
    }
}

/// A server on loopback in front of the test database that answers a TLS
/// request with `answer` and then closes the connection (`forward` false)
/// or forwards the rest of it (`forward` true, for an answer of `N`); a
/// connection that does not ask for TLS is forwarded.
fn fake_front(answer: &'static [u8], forward: bool) -> u16 {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("127.0.0.1:{}", self::port());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).is_err() {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                if first == SSL_REQUEST {
                    if client.write_all(answer).is_err() || !forward {
                        return;
                    }
                } else if server.write_all(&first).is_err() {
                    return;
                }
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn a_server_without_tls_is_a_configuration_error_under_require_and_a_refused_connection_is_not() {
    let test = "a_server_without_tls_is_a_configuration_error_under_require_and_a_refused_connection_is_not";
    let Some(schema) = schema(test) else { return };
    let no_tls = fake_front(b"N", true);
    let mut o = schema.options();
    o.url = url(&schema, "127.0.0.1", no_tls, "sslmode=require");
    let m = config_error(PostgresStore::open(o.clone()));
    assert!(m.contains("sslmode=require"), "{m}");
    assert!(m.contains("server does not support TLS"), "{m}");
    // A server that offers nothing is fine under prefer.
    o.url = url(&schema, "127.0.0.1", no_tls, "sslmode=prefer");
    let store = PostgresStore::open(o.clone()).unwrap();
    write_and_read(&store, "no-tls");
    assert!(
        store.describe().contains("without TLS"),
        "{}",
        store.describe()
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    o.url = url(&schema, "127.0.0.1", closed_port, "sslmode=require");
    match PostgresStore::open(o) {
        Err(StoreError::Io(m)) => assert!(m.contains("unavailable"), "{m}"),
        Err(e) => panic!("a refused connection is transient, got {e:?}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
}

#[test]
fn prefer_falls_back_to_plain_text_when_the_tls_handshake_fails_and_require_does_not() {
    let test = "prefer_falls_back_to_plain_text_when_the_tls_handshake_fails_and_require_does_not";
    let Some(schema) = schema(test) else { return };
    // "Yes, TLS", then bytes that are no TLS record.
    let broken = fake_front(b"Snot a TLS record\r\n", false);
    let mut o = schema.options();
    o.url = url(&schema, "127.0.0.1", broken, "sslmode=prefer");
    let store = PostgresStore::open(o.clone()).unwrap();
    write_and_read(&store, "fallback");
    let ssl = encrypted(&schema);
    assert!(!ssl.is_empty() && ssl.iter().all(|s| !s), "{ssl:?}");
    drop(store);
    o.url = url(&schema, "127.0.0.1", broken, "sslmode=require");
    let m = config_error(PostgresStore::open(o));
    assert!(m.contains("sslmode=require"), "{m}");
    assert!(m.contains(&format!("127.0.0.1:{broken}/")), "{m}");
}
