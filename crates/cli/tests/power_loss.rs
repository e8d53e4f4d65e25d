//! Power loss, simulated for real: the real binary serves with its data
//! directory on `faultfs` (a FUSE filesystem that keeps only what was
//! fsynced), writers append from many tasks, and each round ends with the
//! server killed and the power cut — every unsynced write dropped or torn
//! at 512-byte sectors. The server restarts on what remains.
//!
//! - `--fsync always`: every acknowledged entry is there with its hash,
//!   every chain and Merkle root verifies, the signing key is the same, and
//!   `verify --data-dir` passes.
//! - `--fsync never` and `interval`: the same runs lose acknowledged
//!   entries (so the test can fail), yet what remains is a valid prefix of
//!   every context, and the server says what it recovered.
//!
//! Rounds: `CONVERGE_LEDGER_POWER_ROUNDS` (default 20); the cuts and the
//! amount written per round come from a seed, printed at the start and
//! replayed with `CONVERGE_LEDGER_POWER_SEED`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_client::{AppendOptions, Client, ClientOptions, Digest};
use converge_ledger_faultfs::testing::test_mount;
use converge_ledger_faultfs::{Options, PowerCut};
use support::{Server, cli};

const CONTEXTS: usize = 4;
const WRITERS: usize = 8;

type Acked = Arc<Mutex<BTreeMap<(String, u64), Digest>>>;

/// splitmix64, for the seeded choices of each round.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn rounds() -> usize {
    std::env::var("CONVERGE_LEDGER_POWER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn seed() -> u64 {
    match std::env::var("CONVERGE_LEDGER_POWER_SEED") {
        Ok(s) => s.parse().expect("CONVERGE_LEDGER_POWER_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Appends from WRITERS tasks until the server dies, recording every
/// acknowledged entry.
async fn write_until_killed(addr: String, acked: Acked, round: usize, payload_bytes: usize) {
    let options = ClientOptions {
        attempts: 1,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(addr, options).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let ctx = format!("ctx-{}", (w + i as usize) % CONTEXTS);
                let mut payload = format!("round {round} writer {w} item {i} ").into_bytes();
                payload.resize(payload_bytes + (i as usize * 37) % 700, b'.');
                match client
                    .append(&ctx, "k", payload, AppendOptions::default())
                    .await
                {
                    Ok(e) => {
                        acked.lock().unwrap().insert((ctx, e.sequence), e.hash);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// What a restarted server holds, checked: every chain verifies from
/// genesis to its signed head, and what remains of the acknowledged entries
/// is a prefix of each context. Acknowledged entries beyond a recovered
/// head are lost: returned as a count and forgotten (their sequences are
/// appended again). With `strict`, losing one fails the test.
async fn check(addr: &str, acked: &Acked, strict: bool, at: &str) -> (u64, usize) {
    let client = Client::connect(addr).await.unwrap();
    let mut stored = BTreeMap::new();
    for c in 0..CONTEXTS {
        let ctx = format!("ctx-{c}");
        let (all, head) = support::read_chain(&client, &ctx, at).await;
        let h = client.verify_head(&ctx).await.unwrap();
        assert_eq!(
            (h.sequence, h.hash, h.merkle_root),
            (head.sequence, head.hash, head.merkle_root()),
            "{at}: {ctx}: the signed head is not the fold of the entries"
        );
        stored.insert(ctx, all);
    }
    let mut acked = acked.lock().unwrap();
    let mut lost = 0;
    let entries = stored.values().map(|all| all.len() as u64).sum();
    for ((ctx, seq), hash) in acked.clone() {
        match stored[&ctx].get(seq as usize - 1) {
            Some(e) => assert_eq!(
                e.hash, hash,
                "{at}: {ctx}#{seq} is not the acknowledged entry: the stored history is not a \
                 prefix of what was written"
            ),
            None => {
                assert!(!strict, "{at}: acknowledged entry {ctx}#{seq} was lost");
                lost += 1;
                acked.remove(&(ctx, seq));
            }
        }
    }
    (entries, lost)
}

/// The "recovered N contexts, M entries" of the startup line.
fn recovered_entries(line: &str) -> u64 {
    line.split("recovered ")
        .nth(1)
        .and_then(|r| r.split(", ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the startup line does not say what it recovered: {line}"))
}

fn signing_key(line: &str) -> String {
    line.rsplit("signing key ")
        .next()
        .unwrap_or_else(|| panic!("no signing key in {line}"))
        .trim()
        .to_owned()
}

/// Rounds of writing, killing and cutting the power under `policy`;
/// returns the acknowledged entries lost in all.
async fn power_cuts(test: &str, policy: &[&str], strict: bool) -> Option<usize> {
    let mount = test_mount(test, Options::default())?;
    let data = mount.join("ledger");
    let seed = seed();
    let rounds = rounds();
    eprintln!("{test}: seed {seed}, {rounds} rounds (replay: CONVERGE_LEDGER_POWER_SEED={seed})");
    let mut rng = Rng(seed);
    let acked: Acked = Arc::default();
    let mut key = None;
    let mut lost = 0;
    for round in 0..=rounds {
        let at = format!("{test}, seed {seed}, round {round}");
        let server = Server::start(Some(&data), policy);
        let line = server.first_line.clone();
        if line.contains("torn journal tail") {
            eprintln!("{at}: {line}");
        }
        let k = signing_key(&line);
        assert_eq!(
            key.get_or_insert_with(|| k.clone()),
            &k,
            "{at}: the signing key did not survive the power cut"
        );
        let (entries, round_lost) = check(&server.addr, &acked, strict, &at).await;
        lost += round_lost;
        assert_eq!(
            recovered_entries(&line),
            entries,
            "{at}: the server says it recovered another number of entries than it holds: {line}"
        );
        if round == rounds {
            let (status, _) = server.terminate();
            assert!(status.success(), "{at}: the server did not stop cleanly");
            break;
        }
        let target = 20 + (rng.next() % 200) as usize;
        let payload_bytes = (rng.next() % 1500) as usize;
        let load = tokio::spawn(write_until_killed(
            server.addr.clone(),
            acked.clone(),
            round,
            payload_bytes,
        ));
        let before = acked.lock().unwrap().len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{at}: appends stalled"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill9();
        tokio::time::timeout(Duration::from_secs(30), load)
            .await
            .expect("the writers did not stop")
            .unwrap();
        let cut = if rng.next().is_multiple_of(4) {
            PowerCut::DropUnsynced
        } else {
            PowerCut::Torn { seed: rng.next() }
        };
        if std::env::var("DEBUG_UNSYNCED").is_ok() {
            for u in mount.fs.unsynced() {
                eprintln!("  unsynced: {u}");
            }
        }
        let report = mount.fs.power_cut(cut).unwrap();
        eprintln!("{at}: {cut:?}: {report:?}");
    }
    offline_verify(&data, test);
    Some(lost)
}

fn offline_verify(data: &Path, test: &str) {
    let (ok, out, err) = cli(
        "http://127.0.0.1:9",
        &["verify", "--data-dir", data.to_str().unwrap()],
        None,
    );
    assert!(
        ok && out.starts_with("OK: "),
        "{test}: verify --data-dir: {out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_always_no_power_cut_loses_an_acknowledged_entry() {
    let lost = power_cuts(
        "with_fsync_always_no_power_cut_loses_an_acknowledged_entry",
        &["--fsync", "always"],
        true,
    )
    .await;
    assert_eq!(lost.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_never_power_cuts_lose_acknowledged_entries_but_leave_valid_prefixes() {
    let Some(lost) = power_cuts(
        "with_fsync_never_power_cuts_lose_acknowledged_entries_but_leave_valid_prefixes",
        &["--fsync", "never"],
        false,
    )
    .await
    else {
        return;
    };
    assert!(
        lost > 0,
        "no acknowledged entry was lost: the power cuts cut nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_interval_power_cuts_lose_the_last_interval_but_leave_valid_prefixes() {
    let Some(lost) = power_cuts(
        "with_fsync_interval_power_cuts_lose_the_last_interval_but_leave_valid_prefixes",
        &["--fsync", "interval", "--fsync-interval-ms", "200"],
        false,
    )
    .await
    else {
        return;
    };
    assert!(
        lost > 0,
        "no acknowledged entry was lost: the power cuts cut nothing"
    );
}
