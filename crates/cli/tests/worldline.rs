//! `converge-ledger worldline ...` against the real server: a commitment,
//! its outcome, a rejected commitment closed, a snapshot, replay, log,
//! show and verify, in text and JSON; refusals exit non-zero saying why.

mod support;

use serde_json::Value;
use support::{Server, cli};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn run(addr: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json", "worldline"];
    all.extend(args);
    let (ok, out, err) = cli(addr, &all, None);
    assert!(ok, "{args:?} failed: {err}");
    json_lines(&out).pop().unwrap()
}

const POLICY: &str = "8a3b5f3e1c7a2d8f9e0b4c6d5a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f";

#[test]
fn a_worldline_from_the_command_line() {
    let server = Server::start(None, &[]);
    let a = &server.addr;
    let commit = run(
        a,
        &[
            "commit",
            "agent-7",
            "--id",
            "0190a5b2-7c3e-7def-8a12-3456789abcde",
            "--class",
            "deploy",
            "--intent",
            "roll out v2",
            "--request",
            "repo.write",
            "--target",
            "svc/api",
            "--evidence",
            "cas://e1=ee8250fb76e094b34b471f13a73dbbe51d1ae142e9df59d7c0d31ec20f0a0a8e",
            "--proposer",
            "agent-7",
            "--accept",
            "--policy-hash",
            POLICY,
            "--policy-version",
            "v12",
            "--grant",
            "repo.write",
            "--decider",
            "kernel",
        ],
    );
    assert_eq!(commit["seq"], 1);
    assert_eq!(commit["body"]["decision"]["accepted"], true);
    let hash = commit["receipt_hash"].as_str().unwrap().to_owned();

    let outcome = run(
        a,
        &[
            "outcome",
            "agent-7",
            "--commitment",
            &hash,
            "--succeeded",
            "--effect",
            "deploy:svc/api:v2 live",
            "--put",
            "svc/api/version=2",
            "--reporter",
            "driver-1",
        ],
    );
    assert_eq!(outcome["seq"], 2);
    assert_eq!(outcome["body"]["status"], "succeeded");

    // A second, different outcome of the same commitment is refused.
    let (ok, _, err) = cli(
        a,
        &[
            "worldline",
            "outcome",
            "agent-7",
            "--commitment",
            &hash,
            "--failed",
            "nope",
            "--reporter",
            "driver-2",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("already has its outcome, receipt 2"), "{err}");

    let rejected = run(
        a,
        &[
            "commit",
            "agent-7",
            "--id",
            "0190a5b2-7c3e-7def-8a12-3456789abcdf",
            "--class",
            "deploy",
            "--intent",
            "drop the database",
            "--proposer",
            "agent-7",
            "--reject",
            "too dangerous",
            "--policy-hash",
            POLICY,
            "--policy-version",
            "v12",
            "--decider",
            "kernel",
        ],
    );
    let closed = run(
        a,
        &[
            "reject",
            "agent-7",
            "--commitment",
            rejected["receipt_hash"].as_str().unwrap(),
            "--reporter",
            "kernel",
        ],
    );
    assert_eq!(closed["seq"], 4);
    assert_eq!(closed["body"]["status"], "rejection");

    let snap = run(a, &["snapshot", "agent-7", "2"]);
    let replayed = run(a, &["replay", "agent-7", "--seq", "2"]);
    assert_eq!(snap["state_hash"], replayed["state_hash"]);
    assert_eq!(replayed["pairs"], 1);

    let (ok, out, err) = cli(a, &["--json", "worldline", "log", "agent-7"], None);
    assert!(ok, "{err}");
    let log = json_lines(&out);
    assert_eq!(log.len(), 4);
    assert_eq!(log[2]["body"]["decision"]["reason"], "too dangerous");

    let shown = run(a, &["show", &hash]);
    assert_eq!(shown["body"]["policy"]["version"], "v12");
    let head = run(a, &["head", "agent-7"]);
    assert_eq!(head["seq"], 4);
    let verified = run(a, &["verify", "agent-7"]);
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["snapshots"], 1);

    // Human output names what happened.
    let (ok, out, _) = cli(a, &["worldline", "verify", "agent-7"], None);
    assert!(ok && out.starts_with("OK: worldline"), "{out}");

    // The projections, waiting for the head: the state key's lineage goes
    // back to the commitment, its policy and evidence; the audit index
    // finds the rejection; the grant is in force.
    let proj = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--json", "worldline", "project"];
        all.extend(args);
        let (ok, out, err) = cli(a, &all, None);
        assert!(ok, "{args:?} failed: {err}");
        json_lines(&out)
    };
    let state = proj(&["state", "agent-7", "--min-seq", "4"]);
    assert_eq!(state[0]["through_seq"], 4);
    assert_eq!(state[0]["behind"], 0);
    assert_eq!(state[1]["state_hash"], replayed["state_hash"]);
    assert_eq!(state[2]["key"], "svc/api/version");
    let lineage = proj(&[
        "provenance",
        "agent-7",
        "--min-seq",
        "4",
        "--key",
        "svc/api/version",
    ]);
    assert_eq!(lineage[1]["write"]["seq"], 2);
    assert_eq!(
        lineage[2]["commitment"]["receipt"]["receipt_hash"],
        hash.as_str()
    );
    assert_eq!(lineage[2]["commitment"]["policy"]["version"], "v12");
    assert_eq!(lineage[2]["evidence"][0]["uri"], "cas://e1");
    let refused = proj(&[
        "audit",
        "agent-7",
        "--min-seq",
        "4",
        "--decision",
        "rejected",
    ]);
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[1]["rejection_reason"], "too dangerous");
    let grants = proj(&["grants", "agent-7", "--min-seq", "4"]);
    assert_eq!(grants[1]["capability"], "repo.write");
    assert_eq!(grants[1]["actor"], "agent-7");
    let (ok, out, _) = cli(
        a,
        &[
            "worldline",
            "project",
            "provenance",
            "agent-7",
            "--key",
            "svc/api/version",
        ],
        None,
    );
    assert!(ok && out.contains("under policy v12"), "{out}");
    let (ok, _, err) = cli(
        a,
        &[
            "worldline",
            "project",
            "audit",
            "agent-7",
            "--decision",
            "maybe",
        ],
        None,
    );
    assert!(!ok && err.contains("use accepted or rejected"), "{err}");

    // Offline, on the stopped server's data directory.
    let dir = tempfile::tempdir().unwrap();
    let server2 = Server::start(Some(dir.path()), &[]);
    run(
        &server2.addr,
        &[
            "commit",
            "w2",
            "--id",
            "0190a5b2-7c3e-7def-8a12-3456789abce0",
            "--class",
            "c",
            "--intent",
            "i",
            "--proposer",
            "p",
            "--accept",
            "--policy-hash",
            POLICY,
            "--policy-version",
            "v1",
            "--decider",
            "d",
        ],
    );
    let (status, _) = server2.terminate();
    assert!(status.success());
    let (ok, out, err) = cli(
        "http://127.0.0.1:1",
        &[
            "--json",
            "worldline",
            "verify",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let verdicts = json_lines(&out);
    assert_eq!(verdicts.len(), 1, "{out}");
    assert_eq!(verdicts[0]["ok"], true);
    assert_eq!(verdicts[0]["receipts"], 1);

    // The generic API cannot write there.
    let context = format!("wll/{}", commit["worldline"].as_str().unwrap());
    let (ok, _, err) = cli(
        a,
        &["append", &context, "wll.outcome", "--payload", "x"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("reserved"), "{err}");
}
