//! The ledger's real storage (fjall, through `EmbeddedStore`) on faultfs:
//! a writer process appends and reports each acknowledged entry, is killed
//! while it writes, the power is cut, and the store is reopened to see what
//! an acknowledgement was worth.
//!
//! What these tests found (fjall 3.1.13, lsm-tree 3.1.10): fjall creates
//! each keyspace's directory `keyspaces/<id>` and fsyncs the new directory
//! and its `tables/`, but never fsyncs `keyspaces/` itself, so under strict
//! POSIX no keyspace had a durable name, and a power cut after the first
//! open emptied the ledger without an error; nor was the parent of a new
//! data directory fsynced. The store now syncs both at open; the tests show
//! that `fsync always` keeps every acknowledged append and `fsync never`
//! does not.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Mounted, mount, mount_with};
use converge_ledger_faultfs::{DirSync, Options, PowerCut, Unsynced};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, Store, verify};

const CONTEXT: &str = "ledger";
/// Tells the writer (`src/bin/ledger-writer.rs`) what to do,
/// tab-separated: data directory, `always` or `never`, entries, payload
/// bytes, and after how many appends to print `paused` and wait for a line
/// on stdin (0: never).
const WRITER_ENV: &str = "FAULTFS_LEDGER_WRITER";
/// Longest wait for one line from the writer.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// One run: what the writer does.
#[derive(Debug, Clone)]
struct Run {
    policy: &'static str,
    entries: u64,
    payload_bytes: usize,
    /// Kill the writer once this many appends are acknowledged, while it
    /// is still writing (`None`: when it is done).
    kill_after: Option<usize>,
    /// Before killing an idle writer, wait until a memtable flush has
    /// made a table durable.
    await_flush: bool,
    /// Make fsync fail (EIO) once this many appends are written (the
    /// writer waits for it).
    fail_fsync_after: Option<usize>,
}

impl Run {
    fn new(policy: &'static str, entries: u64) -> Run {
        Run {
            policy,
            entries,
            payload_bytes: 100,
            kill_after: Some(entries as usize / 2),
            await_flush: false,
            fail_fsync_after: None,
        }
    }
}

/// A writer process, killed when dropped.
struct Writer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    fn start(data: &Path, run: &Run) -> Writer {
        let spec = format!(
            "{}\t{}\t{}\t{}\t{}",
            data.display(),
            run.policy,
            run.entries,
            run.payload_bytes,
            run.fail_fsync_after.unwrap_or(0)
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_faultfs-ledger-writer"))
            .env(WRITER_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Writer { child, lines }
    }

    /// Reads the writer's reports until `run.kill_after` acknowledgements
    /// (then SIGKILLs it mid-stream) or `done` (then SIGKILLs it idle),
    /// switching fsync failures on while it is paused.
    fn report_until_killed(mut self, m: &Mounted, data: &Path, run: &Run) -> Report {
        let mut report = Report::default();
        let mut killed = false;
        loop {
            let line = match self.lines.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Disconnected) if killed => break,
                Err(e) => panic!("the writer went quiet or died: {e}"),
            };
            let mut words = line.split_whitespace();
            match words.next() {
                Some("ack") => {
                    report.acked_after_error |= !report.errors.is_empty();
                    report.acks.push((
                        words.next().unwrap().parse().unwrap(),
                        words.next().unwrap().to_owned(),
                    ));
                }
                Some("paused") => {
                    m.fs.fail_fsync(true);
                    let stdin = self.child.stdin.as_mut().unwrap();
                    stdin.write_all(b"go\n").unwrap();
                    stdin.flush().unwrap();
                }
                Some("done") if !killed => {
                    if run.await_flush {
                        await_durable_table(m, data);
                    }
                    self.kill();
                    killed = true;
                }
                Some("error") if run.fail_fsync_after.is_some() => report.errors.push(line),
                Some("error") => panic!("a write failed: {line}"),
                _ => {}
            }
            if !killed && run.kill_after.is_some_and(|n| report.acks.len() >= n) {
                self.kill();
                killed = true;
            }
        }
        report
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the writer reported before it was killed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Report {
    /// (sequence, hash) of each acknowledged append, in order.
    acks: Vec<(u64, String)>,
    /// Writes that returned an error.
    errors: Vec<String>,
    /// Whether an append was acknowledged after a write had failed.
    acked_after_error: bool,
}

/// What the reopened store holds of the acknowledged appends.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    acknowledged: u64,
    /// Acknowledged entries found, with the hash acknowledged.
    kept: u64,
    /// The head after reopening.
    head: u64,
    /// What was not durable at the cut.
    unsynced: Vec<Unsynced>,
    /// What the writer of the last round reported.
    report: Report,
}

impl Outcome {
    fn lost(&self) -> u64 {
        self.acknowledged - self.kept
    }
}

/// Runs a writer on `data`, kills it, cuts the power and reopens the store.
/// Checks that the store opens, its chain verifies, and every entry it
/// holds up to the head is the one acknowledged (a prefix, no holes).
fn write_cut_reopen(m: &Mounted, data: &Path, run: &Run, cut: PowerCut) -> Outcome {
    write_cut_reopen_after(m, data, run, cut, &mut Vec::new())
}

/// [`write_cut_reopen`] on a data directory that already holds the
/// appends `acks` acknowledged; the new ones are added to `acks`, and the
/// outcome counts them all.
fn write_cut_reopen_after(
    m: &Mounted,
    data: &Path,
    run: &Run,
    cut: PowerCut,
    acks: &mut Vec<(u64, String)>,
) -> Outcome {
    let report = Writer::start(data, run).report_until_killed(m, data, run);
    m.fs.fail_fsync(false);
    acks.extend(report.acks.iter().cloned());
    let unsynced = m.fs.unsynced();
    m.fs.power_cut(cut).expect("power cut");
    let store = EmbeddedStore::open(EmbeddedOptions::new(data)).expect("reopening the store");
    let head = store.head(CONTEXT).unwrap().map_or(0, |h| h.sequence);
    if head > 0 {
        verify::verify_context(&store, CONTEXT, &mut |_, _| {}).expect("the chain verifies");
    }
    let mut kept = 0;
    for (sequence, hash) in acks.iter() {
        match store.entry(CONTEXT, *sequence).unwrap() {
            Some(entry) => {
                assert_eq!(
                    &entry.hash.to_hex(),
                    hash,
                    "entry {sequence} is not the one acknowledged"
                );
                kept += 1;
            }
            None => assert!(
                *sequence > head,
                "entry {sequence} is missing below head {head}"
            ),
        }
    }
    let outcome = Outcome {
        acknowledged: acks.len() as u64,
        kept,
        head,
        unsynced,
        report,
    };
    eprintln!(
        "{} x{} {cut:?}: acknowledged {}, kept {}, lost {}, head {}",
        run.policy,
        run.payload_bytes,
        outcome.acknowledged,
        outcome.kept,
        outcome.lost(),
        outcome.head
    );
    outcome
}

const CUTS: [PowerCut; 4] = [
    PowerCut::DropUnsynced,
    PowerCut::Torn { seed: 1 },
    PowerCut::Torn { seed: 2 },
    PowerCut::Torn { seed: 3 },
];

#[test]
fn with_fsync_always_every_acknowledged_append_survives_a_power_cut() {
    for cut in CUTS {
        let Some(m) = mount("with_fsync_always_every_acknowledged_append_survives_a_power_cut")
        else {
            return;
        };
        let data = m.path();
        let run = Run::new("always", 60);
        let outcome = write_cut_reopen(&m, data, &run, cut);
        assert!(outcome.acknowledged >= 30);
        assert_eq!(outcome.lost(), 0, "{cut:?}: {outcome:?}");
        assert!(outcome.head >= outcome.acknowledged);
    }
}

#[test]
fn with_fsync_always_appends_survive_a_second_power_cut_after_recovery() {
    let Some(m) = mount("with_fsync_always_appends_survive_a_second_power_cut_after_recovery")
    else {
        return;
    };
    let data = m.path();
    let run = Run::new("always", 40);
    let mut acks = Vec::new();
    for (round, cut) in CUTS.into_iter().enumerate() {
        let outcome = write_cut_reopen_after(&m, data, &run, cut, &mut acks);
        assert_eq!(outcome.lost(), 0, "round {round}, {cut:?}: {outcome:?}");
    }
    assert!(acks.len() >= 4 * 20);
}

#[test]
fn a_write_whose_fsync_fails_is_not_acknowledged_and_nothing_after_it_is() {
    let Some(m) = mount("a_write_whose_fsync_fails_is_not_acknowledged_and_nothing_after_it_is")
    else {
        return;
    };
    let data = m.path();
    let mut run = Run::new("always", 30);
    run.kill_after = None;
    run.fail_fsync_after = Some(10);
    let outcome = write_cut_reopen(&m, data, &run, PowerCut::Torn { seed: 5 });
    assert_eq!(outcome.acknowledged, 10, "{outcome:?}");
    assert_eq!(outcome.report.errors.len(), 20, "every later write fails");
    assert!(!outcome.report.acked_after_error);
    assert_eq!(outcome.lost(), 0, "{outcome:?}");
}

#[test]
fn with_fsync_always_appends_across_a_memtable_flush_survive_a_power_cut() {
    for cut in [PowerCut::DropUnsynced, PowerCut::Torn { seed: 9 }] {
        let Some(m) =
            mount("with_fsync_always_appends_across_a_memtable_flush_survive_a_power_cut")
        else {
            return;
        };
        let data = m.path();
        // 3 MiB payloads: the 16 MiB memtables flush to tables while the
        // writer goes on.
        let mut run = Run::new("always", 8);
        run.payload_bytes = 3 << 20;
        run.kill_after = None;
        run.await_flush = true;
        let outcome = write_cut_reopen(&m, data, &run, cut);
        assert_eq!(outcome.lost(), 0, "{cut:?}: {outcome:?}");
        assert!(!tables(data).is_empty(), "the flushed table is durable");
    }
}

/// The tables of the ledger's keyspaces (not of fjall's meta keyspace 0).
fn tables(data: &Path) -> Vec<PathBuf> {
    let meta = data.join("keyspaces/0");
    walk(&data.join("keyspaces"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")) && !p.starts_with(&meta))
        .collect()
}

/// Waits (boundedly) until some ledger table exists and nothing under a
/// `tables/` directory is unsynced: a memtable flush has completed.
fn await_durable_table(m: &Mounted, data: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let flushing =
            m.fs.unsynced()
                .iter()
                .any(|u| u.to_string().contains("/tables/"));
        if !tables(data).is_empty() && !flushing {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no memtable flush completed in 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn with_fsync_never_acknowledged_appends_are_lost_in_a_power_cut() {
    let mut lost_somewhere = false;
    for cut in CUTS {
        let Some(m) = mount("with_fsync_never_acknowledged_appends_are_lost_in_a_power_cut") else {
            return;
        };
        let data = m.path();
        let run = Run::new("never", 60);
        let outcome = write_cut_reopen(&m, data, &run, cut);
        if cut == PowerCut::DropUnsynced {
            assert_eq!(outcome.kept, 0, "nothing was fsynced: {outcome:?}");
        }
        lost_somewhere |= outcome.lost() > 0;
    }
    assert!(lost_somewhere);
}

/// Regression: fjall fsyncs each keyspace's directory but never
/// `keyspaces/`, which names them; under strict POSIX a power cut lost every
/// keyspace and the store reopened empty, without an error. The store now
/// syncs it at open.
#[test]
fn a_strict_power_cut_keeps_every_acknowledged_append_of_a_fresh_store() {
    let Some(m) = mount("a_strict_power_cut_keeps_every_acknowledged_append_of_a_fresh_store")
    else {
        return;
    };
    let data = m.path();
    let outcome = write_cut_reopen(&m, data, &Run::new("always", 20), PowerCut::DropUnsynced);
    assert!(outcome.acknowledged >= 1, "{outcome:?}");
    assert_eq!(outcome.lost(), 0, "{outcome:?}");
    // Nothing but the append in flight was left unsynced.
    for u in &outcome.unsynced {
        assert!(
            matches!(u, Unsynced::Content { path, .. } if path.ends_with(".jnl")),
            "unexpected unsynced change: {u}"
        );
    }
}

#[test]
fn with_ext4_like_directory_sync_fjall_keeps_every_acknowledged_append() {
    for cut in [PowerCut::DropUnsynced, PowerCut::Torn { seed: 4 }] {
        let Some(m) = mount_with(
            "with_ext4_like_directory_sync_fjall_keeps_every_acknowledged_append",
            Options::default().dir_sync(DirSync::OnFileFsync),
        ) else {
            return;
        };
        let data = m.path();
        let outcome = write_cut_reopen(&m, data, &Run::new("always", 40), cut);
        assert_eq!(outcome.lost(), 0, "{cut:?}: {outcome:?}");
    }
}

/// Regression: a store created in a new directory was lost in a power cut,
/// because the directory's parent was never synced. The store now syncs the
/// parent of every directory it creates.
#[test]
fn a_store_in_a_new_directory_survives_a_power_cut() {
    let Some(m) = mount("a_store_in_a_new_directory_survives_a_power_cut") else {
        return;
    };
    let data = m.join("new/data");
    let outcome = write_cut_reopen(&m, &data, &Run::new("always", 20), PowerCut::DropUnsynced);
    assert!(outcome.acknowledged >= 1, "{outcome:?}");
    assert_eq!(outcome.lost(), 0, "{outcome:?}");
}
