//! `converge-ledger verify` and `proof` against real processes, and the
//! tamper tests: altered, deleted or reordered entries in the on-disk store
//! are reported with their context and first failing sequence.

mod support;

use std::path::Path;

use converge_ledger_core::record;
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore};
use support::{Server, cli};

/// Three contexts of 20 entries in a stopped server's data directory.
fn populated(dir: &Path) {
    let server = Server::start(Some(dir), &[]);
    for c in ["alpha", "beta", "gamma"] {
        for i in 0..20 {
            let (ok, _, err) = cli(
                &server.addr,
                &["append", c, "k", "--payload", &format!("{c} payload {i}")],
                None,
            );
            assert!(ok, "{err}");
        }
    }
    // Without a key obtained out of band, the server's word for its key is
    // all there is: consistent, but unverified.
    let (ok, out, err) = cli(&server.addr, &["verify", "beta"], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("UNVERIFIED: beta: 20 entries"), "{out}");
    let (ok, out, err) = cli(
        &server.addr,
        &["--json", "proof", "inclusion", "beta", "7"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains(r#""verified":false"#), "{out}");
    // With the key read from the key file: verified.
    let key_file = dir.join("signing.key");
    let (ok, key, err) = cli(
        &server.addr,
        &["key", "--file", key_file.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
    let key = key.trim().rsplit(' ').next().unwrap().to_owned();
    let (ok, out, err) = cli(
        &server.addr,
        &["verify", "beta", "--public-key", &key],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("OK: beta: 20 entries"), "{out}");
    let (ok, out, err) = cli(
        &server.addr,
        &[
            "proof",
            "inclusion",
            "beta",
            "7",
            "--tree-size",
            "9",
            "--public-key",
            &key,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "verified: the root is tied to the head of 20 entries signed by the pinned key"
        ),
        "{out}"
    );
    let (ok, out, err) = cli(
        &server.addr,
        &[
            "--json",
            "proof",
            "consistency",
            "beta",
            "5",
            "13",
            "--public-key",
            &key,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(r#""old_size":5"#)
            && out.contains(r#""new_size":13"#)
            && out.contains(r#""verified":true"#)
            && out.contains(r#""anchor_sequence":20"#),
        "{out}"
    );
    // A key that is not the server's: refused.
    let other = "11".repeat(32);
    let (ok, _, err) = cli(
        &server.addr,
        &["proof", "inclusion", "beta", "7", "--public-key", &other],
        None,
    );
    assert!(!ok);
    assert!(err.contains("not by the trusted key"), "{err}");
    let (ok, _, err) = cli(&server.addr, &["proof", "inclusion", "beta", "21"], None);
    assert!(!ok);
    assert!(err.contains("out of range"), "{err}");
    let (status, _) = server.terminate();
    assert!(status.success());
}

fn tamper(dir: &Path, f: impl FnOnce(&EmbeddedStore)) {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir)).unwrap();
    f(&store);
}

fn offline(dir: &Path) -> (bool, String, String) {
    cli(
        "http://127.0.0.1:9",
        &["verify", "--data-dir", dir.to_str().unwrap()],
        None,
    )
}

#[test]
fn a_clean_store_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (ok, out, err) = offline(dir.path());
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("OK: 3 contexts, 60 entries verified"),
        "{out}"
    );
}

#[test]
fn a_flipped_payload_byte_is_reported_at_its_context_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    tamper(dir.path(), |s| {
        let mut raw = s.raw_entry("beta", 9).unwrap();
        let at = raw.len() - 4 - 3; // inside the payload, before the CRC
        raw[at] ^= 0x01;
        s.raw_put_entry("beta", 9, &raw);
    });
    let (ok, out, _) = offline(dir.path());
    assert!(!ok);
    assert!(
        out.contains("FAILED: context \"beta\" fails at sequence 9") && out.contains("checksum"),
        "{out}"
    );
    assert!(!out.contains("alpha") && !out.contains("gamma"), "{out}");
}

#[test]
fn a_rewritten_payload_with_a_valid_checksum_is_reported_as_a_hash_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    tamper(dir.path(), |s| {
        let mut e = record::decode(&s.raw_entry("gamma", 4).unwrap()).unwrap();
        e.payload[0] ^= 0x01;
        s.raw_put_entry("gamma", 4, &record::encode(&e));
    });
    let (ok, out, _) = offline(dir.path());
    assert!(!ok);
    assert!(
        out.contains("context \"gamma\" fails at sequence 4") && out.contains("hashes to"),
        "{out}"
    );
}

#[test]
fn a_deleted_entry_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    tamper(dir.path(), |s| s.raw_delete_entry("alpha", 12));
    let (ok, out, _) = offline(dir.path());
    assert!(!ok);
    assert!(
        out.contains("context \"alpha\" fails at sequence 12"),
        "{out}"
    );
    // The last entry deleted: the head says more than there is.
    tamper(dir.path(), |s| s.raw_delete_entry("beta", 20));
    let (_, out, _) = offline(dir.path());
    assert!(
        out.contains("context \"beta\" fails at sequence 20"),
        "{out}"
    );
}

#[test]
fn reordered_entries_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    tamper(dir.path(), |s| {
        let a = s.raw_entry("alpha", 5).unwrap();
        let b = s.raw_entry("alpha", 6).unwrap();
        s.raw_put_entry("alpha", 5, &b);
        s.raw_put_entry("alpha", 6, &a);
    });
    let (ok, out, _) = offline(dir.path());
    assert!(!ok);
    assert!(
        out.contains("context \"alpha\" fails at sequence 5"),
        "{out}"
    );
    let (ok, out, _) = cli(
        "http://127.0.0.1:9",
        &[
            "verify",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "gamma",
        ],
        None,
    );
    assert!(ok, "only the named context is verified: {out}");
}

#[test]
fn online_verify_reports_a_store_altered_under_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    tamper(dir.path(), |s| {
        let mut e = record::decode(&s.raw_entry("alpha", 3).unwrap()).unwrap();
        e.key = "forged".into();
        s.raw_put_entry("alpha", 3, &record::encode(&e));
    });
    let server = Server::start(Some(dir.path()), &[]);
    let (ok, _, err) = cli(&server.addr, &["verify", "alpha"], None);
    assert!(!ok);
    assert!(
        err.contains("FAILED") && err.contains("alpha") && err.contains("3"),
        "{err}"
    );
    let (ok, _, err) = cli(&server.addr, &["verify", "beta"], None);
    assert!(ok, "{err}");
}
