//! The real binary as operators' tools see it: gRPC health and reflection
//! answer Python's standard grpcio clients, JSON logs name the operation
//! and context of every error, and the web view in a real headless
//! Chromium shows an entry appended over gRPC within a second.
//!
//! The tools come from Debian (chromium, chromium-driver) and PyPI
//! (grpcio, grpcio-health-checking, grpcio-reflection); `.ci/run`
//! installs them. Without them a test says `skipped` and why, unless
//! CONVERGE_LEDGER_REQUIRE_SERVICES=1, which makes that a failure.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Server, cli};

/// `Ok` to go on; `Err` (after saying so) when `what` is missing and not
/// required.
fn tool_available(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var_os("CONVERGE_LEDGER_REQUIRE_SERVICES").is_none(),
        "{what} is required (CONVERGE_LEDGER_REQUIRE_SERVICES=1) but missing"
    );
    eprintln!("skipped: {what} is missing");
    false
}

/// The HTTP address the server printed.
/// Whether the headless browser is installed (a failure when it must be).
fn browser_available() -> bool {
    let has_browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    tool_available(
        has_browser,
        "Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    )
}

fn http_addr(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(line) = server.lines.recv_timeout(Duration::from_millis(100))
            && let Some(rest) = line.split("HTTP on http://").nth(1)
        {
            return rest.split('/').next().unwrap().parse().unwrap();
        }
    }
    panic!("the server printed no HTTP address");
}

const PYTHON_PROBE: &str = r#"
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from google.protobuf import descriptor_pb2

channel = grpc.insecure_channel(sys.argv[1])
status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))
status = health_pb2_grpc.HealthStub(channel).Check(
    health_pb2.HealthCheckRequest(service="converge.ledger.v1.LedgerService"), timeout=10)
print("health-ledger", health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))

stub = reflection_pb2_grpc.ServerReflectionStub(channel)
def ask(**kw):
    return next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)]), timeout=10))
services = ask(list_services="").list_services_response.service
for s in services:
    print("service", s.name)
files = ask(file_containing_symbol="converge.context.v1.ContextService").file_descriptor_response.file_descriptor_proto
for raw in files:
    f = descriptor_pb2.FileDescriptorProto.FromString(raw)
    for svc in f.service:
        for m in svc.method:
            print("method", f.package + "." + svc.name + "/" + m.name)
"#;

#[test]
fn grpc_health_and_reflection_answer_the_standard_python_clients() {
    let has_grpc = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_health.v1.health_pb2, grpc_reflection.v1alpha.reflection_pb2",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !tool_available(
        has_grpc,
        "python3 with grpcio, grpcio-health-checking and grpcio-reflection (pip)",
    ) {
        return;
    }
    let server = Server::start(None, &[]);
    let target = server.addr.trim_start_matches("http://").to_owned();
    let out = Command::new("python3")
        .args(["-c", PYTHON_PROBE, &target])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "health SERVING",
        "health-ledger SERVING",
        "service converge.context.v1.ContextService",
        "service converge.ledger.v1.LedgerService",
        "service grpc.health.v1.Health",
        "method converge.context.v1.ContextService/Append",
        "method converge.context.v1.ContextService/Watch",
    ] {
        assert!(said.lines().any(|l| l == line), "no {line:?} in:\n{said}");
    }
}

#[test]
fn json_logs_name_the_operation_and_context_of_each_error_once() {
    let server = Server::start(None, &["--log-format", "json"]);
    assert!(
        serde_json::from_str::<Value>(&server.first_line).is_ok(),
        "the first line is not JSON: {}",
        server.first_line
    );
    let (ok, _, _) = cli(
        &server.addr,
        &["append", "log-ctx", "", "--payload", "x"],
        None,
    );
    assert!(!ok);
    let (ok, _, _) = cli(
        &server.addr,
        &["append", "log-ctx", "k", "--payload", "fine"],
        None,
    );
    assert!(ok);
    let (status, rest) = server.terminate();
    assert!(status.success());
    let events: Vec<Value> = rest
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let errors: Vec<&Value> = events
        .iter()
        .filter(|e| e["fields"]["status"].is_string())
        .collect();
    assert_eq!(errors.len(), 1, "one error, logged once: {errors:#?}");
    let f = &errors[0]["fields"];
    assert_eq!(f["operation"], "converge.context.v1.ContextService/Append");
    assert_eq!(f["context"], "log-ctx");
    assert_eq!(f["status"], "INVALID_ARGUMENT");
    assert!(f["error"].as_str().unwrap().contains("key is empty"), "{f}");
    assert_eq!(errors[0]["level"], "INFO");
}

/// One request to ChromeDriver (WebDriver over HTTP/1.1, JSON bodies).
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // ChromeDriver keeps the connection open: read exactly Content-Length.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let body = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "WebDriver {method} {path}: connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while raw.len() < end + 4 + length {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "WebDriver {method} {path}: body cut short");
            raw.extend_from_slice(&buf[..n]);
        }
        break raw[end + 4..end + 4 + length].to_vec();
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(e) = v["value"].get("error") {
        panic!("WebDriver {method} {path}: {e}: {}", v["value"]["message"]);
    }
    v["value"].clone()
}

struct Browser {
    driver: std::process::Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let session = webdriver(
            port,
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--window-size=1360,820",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}})),
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Browser {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    fn go(&self, url: &str) {
        webdriver(
            self.port,
            "POST",
            &format!("/session/{}/url", self.session),
            Some(&json!({"url": url})),
        );
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> Value {
        webdriver(
            self.port,
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Waits up to `limit` for `script` to return a truthy value.
    fn wait_for(&self, limit: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(script);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.eval("return document.body.innerText");
                panic!("timed out after {limit:?} waiting for {what}; the page says:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = webdriver(
            self.port,
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            webdriver(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_web_view_shows_an_entry_appended_over_grpc_within_a_second() {
    if !browser_available() {
        return;
    }
    let server = Server::start(None, &["--http-listen", "127.0.0.1:0"]);
    let http = http_addr(&server);
    for (key, payload) in [
        ("facts", r#"{"market_size":"2.4B","confidence":0.8}"#),
        ("traces", "agent:analyst started"),
    ] {
        let (ok, _, err) = cli(
            &server.addr,
            &["append", "job-web", key, "--payload", payload],
            None,
        );
        assert!(ok, "{err}");
    }
    let (ok, _, err) = cli(
        &server.addr,
        &["append", "job-web", "blobs"],
        Some(&[0u8, 159, 146, 150, 255, 1, 2]),
    );
    assert!(ok, "{err}");

    let browser = Browser::start();
    browser.go(&format!("http://{http}/"));
    browser.wait_for(
        Duration::from_secs(10),
        "the context list",
        "return document.querySelector('#contexts a')?.textContent === 'job-web'",
    );
    browser.go(&format!("http://{http}/#/context/job-web"));
    browser.wait_for(
        Duration::from_secs(10),
        "three entries and an open live tail",
        "return document.querySelectorAll('#entries tbody tr').length === 3 \
         && document.querySelector('#tail-status')?.textContent.startsWith('live:')",
    );
    let verdict = browser.wait_for(
        Duration::from_secs(10),
        "the browser-side check of the signed head",
        "return document.querySelector('#head-check')?.textContent",
    );
    assert_eq!(verdict, json!("signature verified in this browser"));
    let kinds = browser.eval(
        "return [...document.querySelectorAll('#entries .kind')].map(k => k.textContent.split(' ')[0])",
    );
    assert_eq!(kinds, json!(["json", "text", "hex"]));
    let pretty =
        browser.eval("return document.querySelector('tr[data-seq=\"1\"] pre').textContent");
    assert!(
        pretty
            .as_str()
            .unwrap()
            .contains("\n  \"market_size\": \"2.4B\""),
        "{pretty}"
    );
    // The live tail's watch is open on the server before the append.
    std::thread::sleep(Duration::from_millis(200));

    let (ok, _, err) = cli(
        &server.addr,
        &[
            "append",
            "job-web",
            "facts",
            "--payload",
            "appended while watching",
        ],
        None,
    );
    assert!(ok, "{err}");
    let appended = Instant::now();
    browser.wait_for(
        Duration::from_secs(1),
        "entry 4 on the page",
        "return document.querySelector('tr[data-seq=\"4\"]')?.textContent.includes('appended while watching')",
    );
    let shown_after = appended.elapsed();
    eprintln!("entry 4 was on the page {shown_after:?} after its append returned");
    browser.wait_for(
        Duration::from_secs(5),
        "the head to follow the new entry",
        "return document.querySelector('#head-sequence')?.textContent === '4 entries' \
         && document.querySelector('#head-check')?.textContent === 'signature verified in this browser'",
    );
    if let Some(path) = std::env::var_os("CONVERGE_LEDGER_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).unwrap();
        eprintln!(
            "screenshot written to {}",
            std::path::Path::new(&path).display()
        );
    }
}

#[test]
fn the_web_view_traces_a_worldline_state_key_to_its_commitment() {
    if !browser_available() {
        return;
    }
    let server = Server::start(None, &["--http-listen", "127.0.0.1:0"]);
    let http = http_addr(&server);
    let run = |args: &[&str]| -> Value {
        let mut all = vec!["--json", "worldline"];
        all.extend(args);
        let (ok, out, err) = cli(&server.addr, &all, None);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let commit = run(&[
        "commit",
        "web-worldline",
        "--id",
        "0190a5b2-7c3e-7def-8a12-3456789abc01",
        "--class",
        "deploy",
        "--intent",
        "roll out v3",
        "--evidence",
        "cas://ticket-42=ee8250fb76e094b34b471f13a73dbbe51d1ae142e9df59d7c0d31ec20f0a0a8e",
        "--proposer",
        "agent-9",
        "--accept",
        "--policy-hash",
        "8a3b5f3e1c7a2d8f9e0b4c6d5a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f",
        "--policy-version",
        "v31",
        "--decider",
        "kernel",
    ]);
    run(&[
        "outcome",
        "web-worldline",
        "--commitment",
        commit["receipt_hash"].as_str().unwrap(),
        "--succeeded",
        "--put",
        "svc/api/version=3",
        "--reporter",
        "driver-7",
    ]);
    // The projection reflects both receipts before the page asks.
    run(&["project", "state", "web-worldline", "--min-seq", "2"]);
    let context = format!("wll/{}", commit["worldline"].as_str().unwrap());

    let browser = Browser::start();
    browser.go(&format!(
        "http://{http}/#/context/{}",
        context.replace('/', "%2F")
    ));
    browser.wait_for(
        Duration::from_secs(10),
        "the receipts and the trace form",
        "return document.querySelectorAll('#entries tbody tr').length === 2 \
         && document.querySelector('#state-key') !== null",
    );
    browser.eval(
        "document.querySelector('#state-key').value = 'svc/api/version'; \
         document.querySelector('#trace').click(); return true",
    );
    let traced = browser.wait_for(
        Duration::from_secs(10),
        "the lineage of svc/api/version",
        "const t = document.querySelector('#provenance')?.textContent || ''; \
         return t.includes('answering commitment') ? t : null",
    );
    let traced = traced.as_str().unwrap();
    for part in [
        "svc/api/version was written by outcome #2 (succeeded, reported by driver-7)",
        "commitment #1 deploy",
        "proposed by agent-9, accepted by kernel under policy v31",
        "evidence: cas://ticket-42",
    ] {
        assert!(traced.contains(part), "{part:?} missing from {traced:?}");
    }
    browser.eval(
        "document.querySelector('#state-key').value = 'never/set'; \
         document.querySelector('#trace').click(); return true",
    );
    browser.wait_for(
        Duration::from_secs(10),
        "a key never written",
        "return (document.querySelector('#provenance')?.textContent || '').includes('never written')",
    );
}
