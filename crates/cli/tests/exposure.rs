//! Putting the ledger on a network, with the real binary: an open ledger
//! refuses to listen off loopback unless told to; tokens made by `token
//! create` authenticate and their grants decide; the auth file and the TLS
//! certificates reload on SIGHUP without dropping the listener; clients
//! speak TLS with a CA certificate and authenticate by client certificate.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BIN, Server, cli};

fn sighup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Waits for the server to print a line containing `what`.
fn wait_for_line(server: &Server, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match server.lines.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => continue,
            Err(_) => panic!("the server never said {what:?}"),
        }
    }
}

/// `token create NAME --grant ...`, as JSON: (token, auth-file entry).
fn token(name: &str, grants: &[&str]) -> (String, String) {
    let mut args = vec!["--json", "token", "create", name];
    for g in grants {
        args.extend(["--grant", g]);
    }
    let (ok, out, err) = cli("http://127.0.0.1:9", &args, None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["auth_file_entry"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn an_open_ledger_refuses_to_listen_off_loopback_unless_told_to() {
    let out = Command::new(BIN)
        .args(["serve", "--storage", "memory", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--auth-file") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    // Knowingly: it serves.
    let server = Server::start_at("0.0.0.0:0", None, &["--allow-unauthenticated"]);
    assert!(
        server.first_line.contains("listening on 0.0.0.0:"),
        "{}",
        server.first_line
    );
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn tokens_authenticate_their_grants_decide_and_a_sighup_reloads_them() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    let (writer, entry) = token("writer", &["append:job-*", "read:job-*"]);
    std::fs::write(&auth, &entry).unwrap();
    let server = Server::start(None, &["--auth-file", auth.to_str().unwrap()]);
    let with = |token: Option<&str>, args: &[&str]| {
        let mut all: Vec<&str> = Vec::new();
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend(args);
        cli(&server.addr, &all, None)
    };
    let (ok, _, err) = with(Some(&writer), &["append", "job-1", "k", "--payload", "x"]);
    assert!(ok, "{err}");
    let (ok, _, err) = with(None, &["append", "job-1", "k", "--payload", "x"]);
    assert!(!ok && err.contains("not authenticated"), "{err}");
    let (ok, _, err) = with(Some(&writer), &["append", "other", "k", "--payload", "x"]);
    assert!(
        !ok && err.contains("permission denied") && err.contains("no append right"),
        "{err}"
    );
    // A new principal, added and reloaded while the server runs.
    let (reader, more) = token("reader", &["read:*"]);
    std::fs::write(&auth, format!("{entry}\n{more}")).unwrap();
    sighup(&server);
    wait_for_line(&server, "reloaded");
    let (ok, out, err) = with(Some(&reader), &["head", "job-1"]);
    assert!(ok, "{err}");
    assert!(out.contains('1'), "{out}");
    // A broken file does not replace the working one.
    std::fs::write(&auth, "[[principals]]\nname = 3\n").unwrap();
    sighup(&server);
    wait_for_line(&server, "previous principals stay");
    let (ok, _, err) = with(Some(&reader), &["head", "job-1"]);
    assert!(ok, "{err}");
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// A CA and certificates it signs, written as PEM files in `dir`.
struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> (Pki, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        (
            Pki {
                ca: rcgen::Issuer::new(params, key),
            },
            pem,
        )
    }

    /// (certificate PEM, key PEM) for `names`, with subject CN `cn`.
    fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if client {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn tls_with_client_certificates_serves_https_and_reloads_certificates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pki, ca_pem) = Pki::new("ledger test CA");
    let ca = write(d, "ca.pem", &ca_pem);
    let (cert, key) = pki.issue("ledger", &["localhost"], false);
    let server_cert = write(d, "server.pem", &cert);
    let server_key = write(d, "server.key", &key);
    let (cert, key) = pki.issue("auditor", &[], true);
    let client_cert = write(d, "client.pem", &cert);
    let client_key = write(d, "client.key", &key);
    let (writer, entry) = token("writer", &["append:*", "read:*"]);
    let auth = write(
        d,
        "auth.toml",
        &format!(
            "{entry}\n[[principals]]\nname = \"auditor\"\ncertificate_cn = \"auditor\"\ngrants = [\"read:*\"]\n"
        ),
    );
    let server = Server::start(
        None,
        &[
            "--auth-file",
            &auth,
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &ca,
        ],
    );
    let https = server.addr.replace("http://127.0.0.1", "https://localhost");
    let over_tls = |extra: &[&str], args: &[&str]| {
        let mut all: Vec<&str> = vec!["--addr", &https];
        all.extend(extra);
        all.extend(args);
        cli(&https, &all, None)
    };
    let (ok, _, err) = over_tls(
        &["--ca-cert", &ca, "--token", &writer],
        &["append", "c", "k", "--payload", "secret"],
    );
    assert!(ok, "{err}");
    // The auditor authenticates by its certificate alone.
    let (ok, out, err) = over_tls(
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
        ],
        &["--json", "get", "c"],
    );
    assert!(ok && out.contains("secret"), "{out}{err}");
    let (ok, _, err) = over_tls(
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
        ],
        &["append", "c", "k", "--payload", "x"],
    );
    assert!(!ok && err.contains("no append right"), "{err}");
    // Plain HTTP/2 to the TLS port, and a CA that did not sign it, fail.
    let (ok, _, _) = cli(&server.addr, &["--token", &writer, "head", "c"], None);
    assert!(!ok);
    let (_, other_ca) = Pki::new("another CA");
    let other = write(d, "other.pem", &other_ca);
    let (ok, _, _) = over_tls(&["--ca-cert", &other, "--token", &writer], &["head", "c"]);
    assert!(!ok);
    // New certificates from another CA, reloaded: the same listener now
    // presents them.
    let (pki2, ca2_pem) = Pki::new("rotated CA");
    let ca2 = write(d, "ca2.pem", &ca2_pem);
    let (cert, key) = pki2.issue("ledger", &["localhost"], false);
    write(d, "server.pem", &cert);
    write(d, "server.key", &key);
    sighup(&server);
    wait_for_line(&server, "reloaded the TLS certificate");
    let (ok, _, err) = over_tls(&["--ca-cert", &ca2, "--token", &writer], &["head", "c"]);
    assert!(ok, "{err}");
    let (ok, _, _) = over_tls(&["--ca-cert", &ca, "--token", &writer], &["head", "c"]);
    assert!(!ok, "the old certificate is still served");
    let (status, _) = server.terminate();
    assert!(status.success());
}
