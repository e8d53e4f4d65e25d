//! The writer process of the power-cut tests (`tests/ledger.rs`): opens the
//! ledger's embedded store, appends one entry per write, prints
//! `ack <sequence> <hash>` after each write that returned Ok (`error ...`
//! otherwise), then `done`, and waits to be killed: a power cut gives no
//! chance to close the store (whose drop would fsync everything).
//!
//! What to do comes in `FAULTFS_LEDGER_WRITER`, tab-separated: data
//! directory, `always` or `never`, entries, payload bytes, and after how
//! many appends to print `paused` and wait for a line on stdin (0: never).

use std::io::Write;

use converge_ledger_core::{Metadata, NewEntry};
use converge_ledger_store::{
    AppendCommand, EmbeddedOptions, EmbeddedStore, FsyncPolicy, Store, WriteCommand,
};

const CONTEXT: &str = "ledger";

fn append(i: u64, payload_bytes: usize) -> WriteCommand {
    let mut payload = format!("entry {i}").into_bytes();
    payload.resize(payload_bytes.max(payload.len()), b'.');
    WriteCommand::Append(AppendCommand {
        context: CONTEXT.into(),
        entry: NewEntry {
            key: "event".into(),
            payload,
            metadata: Metadata::new(),
            lamport: 0,
        },
        idempotency_key: None,
    })
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() {
    let spec = std::env::var("FAULTFS_LEDGER_WRITER").expect("FAULTFS_LEDGER_WRITER is set");
    let parts: Vec<&str> = spec.split('\t').collect();
    let [path, policy, count, payload_bytes, pause_after] = parts[..] else {
        panic!("FAULTFS_LEDGER_WRITER has {} fields, not 5", parts.len());
    };
    let pause_after: u64 = pause_after.parse().unwrap();
    let mut options = EmbeddedOptions::new(path);
    options.fsync = match policy {
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        other => panic!("unknown policy {other}"),
    };
    options.cache_bytes = 1 << 20;
    let count: u64 = count.parse().unwrap();
    let payload_bytes: usize = payload_bytes.parse().unwrap();
    let store = EmbeddedStore::open(options).expect("opening the store");
    let mut out = std::io::stdout().lock();
    for i in 1..=count {
        match store.write(now_ns(), vec![append(i, payload_bytes)]) {
            Ok(committed) => {
                for (_, entry) in committed.entries {
                    writeln!(out, "ack {} {}", entry.sequence, entry.hash.to_hex()).unwrap();
                }
            }
            Err(e) => writeln!(out, "error {e}").unwrap(),
        }
        if i == pause_after {
            writeln!(out, "paused").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut String::new()).unwrap();
        }
        out.flush().unwrap();
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    loop {
        std::thread::park();
    }
}
