//! The CLI end to end against a real `converge-ledger serve` process.

mod support;

use support::{Server, cli};

#[test]
fn tour_append_get_head_snapshot_load_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Some(&dir.path().join("data")), &[]);
    let a = server.addr.as_str();

    let (ok, out, err) = cli(
        a,
        &[
            "append",
            "job-1",
            "facts",
            "--payload",
            "market_size: 2.4B",
            "--meta",
            "cycle=1",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("#1") && out.contains("market_size: 2.4B") && out.contains("cycle=1"),
        "{out}"
    );
    let (ok, _, err) = cli(a, &["append", "job-1", "traces"], Some(b"from stdin"));
    assert!(ok, "{err}");
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    let (ok, _, err) = cli(
        a,
        &["append", "job-1", "blobs", "--file", file.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");

    let (ok, out, err) = cli(a, &["--json", "get", "job-1"], None);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["payload"], "market_size: 2.4B");
    assert_eq!(lines[0]["metadata"]["cycle"], "1");
    assert_eq!(lines[1]["payload"], "from stdin");
    assert_eq!(lines[2]["payload_base64"], "AJ+Slg==");
    assert_eq!(lines[2]["sequence"], 3);

    let (ok, out, _) = cli(a, &["--json", "get", "job-1", "--key", "traces"], None);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);

    let (ok, out, _) = cli(a, &["--json", "head", "job-1"], None);
    assert!(ok);
    let head: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(head["sequence"], 3);
    assert_eq!(head["hash"], lines[2]["hash"]);

    let snap = dir.path().join("job-1.snap");
    let (ok, _, err) = cli(
        a,
        &["snapshot", "job-1", "-o", snap.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        a,
        &["load", "job-2", snap.to_str().unwrap(), "--fail-if-exists"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("loaded 3 entries"), "{out}");
    let (ok, _, err) = cli(
        a,
        &["load", "job-2", snap.to_str().unwrap(), "--fail-if-exists"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");

    let (ok, _, err) = cli(a, &["append", "", "k", "--payload", "x"], None);
    assert!(!ok);
    assert!(err.contains("context_id is empty"), "{err}");

    let (ok, out, _) = cli(a, &["contexts"], None);
    assert!(ok);
    assert_eq!(out, "job-1\t3\njob-2\t3\n");

    // One entry per line, in batches, conditional on the head.
    let (ok, _, err) = cli(
        a,
        &[
            "append",
            "job-2",
            "lines",
            "--lines",
            "--expected-sequence",
            "2",
        ],
        Some(b"one\n"),
    );
    assert!(!ok);
    assert!(
        err.contains("at sequence 3, not the expected 2") && err.contains("nothing was appended"),
        "{err}"
    );
    let (ok, out, err) = cli(
        a,
        &[
            "--json",
            "append",
            "job-2",
            "lines",
            "--lines",
            "--expected-sequence",
            "3",
        ],
        Some(b"one\ntwo\r\n\nfour\n"),
    );
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&r["entries"], &r["first_sequence"], &r["last_sequence"]),
        (&4.into(), &4.into(), &7.into())
    );
    let (ok, out, _) = cli(a, &["--json", "get", "job-2", "--key", "lines"], None);
    assert!(ok);
    let payloads: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"].to_string())
        .collect();
    assert_eq!(payloads, ["\"one\"", "\"two\"", "\"\"", "\"four\""]);

    let (status, rest) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
}

#[test]
fn a_client_command_without_a_server_says_what_to_do() {
    let (ok, _, err) = cli("http://127.0.0.1:9", &["get", "x"], None);
    assert!(!ok);
    assert!(err.contains("is a ledger running"), "{err}");
}
