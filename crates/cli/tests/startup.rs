//! What `serve` refuses to start with, saying what to do instead: flag
//! values that make no sense, a data directory of someone else's files, a
//! ledger whose signing key is gone.

mod support;

use std::process::{Command, Stdio};

use support::{BIN, Server, cli};

/// Runs `serve` expecting it to refuse; returns what it said.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flag_values_that_make_no_sense_are_refused_naming_the_flag() {
    for (args, says) in [
        (&["--max-connections", "0"][..], "--max-connections is 0"),
        (&["--max-watchers", "0"], "--max-watchers is 0"),
        (
            &["--max-request-bytes", "1"],
            "--max-request-bytes is 1 bytes",
        ),
        (&["--cache-mib", "999999999"], "--cache-mib 999999999"),
        (
            &["--worldline-cache-mib", "0"],
            "--worldline-cache-mib is 0",
        ),
        (&["--worldline-projector-nice", "20"], "20 is not in 0..=19"),
        (&["--worldline-projector-nice=-1"], "-1 is not in 0..=19"),
    ] {
        let mut all = vec!["--storage", "memory"];
        all.extend(args);
        let err = refused(&all);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_data_directory_of_other_files_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), "\\documentclass{book}").unwrap();
    let err = refused(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(
        err.contains("not empty") && err.contains("thesis.tex") && err.contains("--data-dir"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_ledger_whose_signing_key_is_gone_is_not_signed_with_a_new_one_silently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(Some(&data), &[]);
    let (ok, _, err) = cli(&server.addr, &["append", "c", "k", "--payload", "x"], None);
    assert!(ok, "{err}");
    let (status, _) = server.terminate();
    assert!(status.success());
    std::fs::remove_file(data.join("signing.key")).unwrap();
    let err = refused(&["--data-dir", data.to_str().unwrap()]);
    assert!(
        err.contains("no signing key") && err.contains("--new-signing-key"),
        "{err}"
    );
    // Knowingly: a new key.
    let server = Server::start(Some(&data), &["--new-signing-key"]);
    assert!(data.join("signing.key").exists());
    let (status, _) = server.terminate();
    assert!(status.success());
}
