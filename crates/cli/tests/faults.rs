//! Real storage faults under the real binary, injected by `faultfs`: a
//! failed fsync and a full disk. Appends that did not become durable are
//! refused (and so is every later one, until an operator restarts the
//! server), nothing acknowledged is lost, and the server that stops after
//! such a failure says so and exits with a non-zero status instead of
//! "stopped cleanly".

mod support;

use std::time::Duration;

use converge_ledger_client::{AppendOptions, Client, ClientError, ClientOptions, GetOptions};
use converge_ledger_faultfs::testing::test_mount;
use converge_ledger_faultfs::{Options, PowerCut};
use support::Server;

async fn client(server: &Server) -> Client {
    let options = ClientOptions {
        attempts: 1,
        ..ClientOptions::default()
    };
    Client::connect_with(server.addr.clone(), options)
        .await
        .unwrap()
}

async fn append(c: &Client, payload: Vec<u8>) -> Result<u64, ClientError> {
    c.append("f", "k", payload, AppendOptions::default())
        .await
        .map(|e| e.sequence)
}

/// Stops the server with SIGTERM and returns whether it exited 0, with all
/// it printed after starting.
fn stop(server: Server) -> (bool, String) {
    let (status, lines) = server.terminate();
    (status.success(), lines.join("\n"))
}

async fn stored(server: &Server) -> u64 {
    client(server).await.head("f").await.unwrap().sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_refuses_that_append_and_every_later_one_and_the_exit_says_so() {
    let test = "a_failed_fsync_refuses_that_append_and_every_later_one_and_the_exit_says_so";
    let Some(mount) = test_mount(test, Options::default()) else {
        return;
    };
    let data = mount.join("ledger");
    let server = Server::start(Some(&data), &["--fsync", "always"]);
    let c = client(&server).await;
    for i in 0..3u8 {
        append(&c, vec![i]).await.unwrap();
    }
    mount.fs.fail_fsync(true);
    let e = append(&c, b"not durable".to_vec()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("fsync") || m.contains("committing")),
        "{e}"
    );
    // The disk works again, but the engine cannot tell what reached it:
    // every write is refused until a restart recovers from the journal.
    mount.fs.fail_fsync(false);
    let e = append(&c, b"after".to_vec()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("restart")),
        "{e}"
    );
    drop(c);
    let (clean, said) = stop(server);
    assert!(!clean, "the server exited 0 after a failed fsync: {said}");
    assert!(said.contains("storage failed"), "{said}");
    assert!(!said.contains("stopped cleanly"), "{said}");
    // An fsync that failed says nothing of what reached the disk: the
    // refused append may be there after a restart (its client retries with
    // its idempotency key), the one refused after it cannot be. Restarted
    // after a power cut: the acknowledged entries, then at most that one.
    mount.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    let server = Server::start(Some(&data), &["--fsync", "always"]);
    let c = client(&server).await;
    let all = c.get("f", GetOptions::default()).await.unwrap().entries;
    let payloads: Vec<&[u8]> = all.iter().map(|e| e.payload.as_slice()).collect();
    assert!(
        payloads == [&[0u8][..], &[1], &[2]]
            || payloads == [&[0u8][..], &[1], &[2], b"not durable"],
        "{payloads:?}"
    );
    append(&c, vec![9]).await.unwrap();
    drop(c);
    let (clean, said) = stop(server);
    assert!(clean, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_interval_fsync_fails_later_appends_and_the_exit_status() {
    let test = "a_failed_interval_fsync_fails_later_appends_and_the_exit_status";
    let Some(mount) = test_mount(test, Options::default()) else {
        return;
    };
    let data = mount.join("ledger");
    let server = Server::start(
        Some(&data),
        &["--fsync", "interval", "--fsync-interval-ms", "20"],
    );
    let c = client(&server).await;
    append(&c, b"before".to_vec()).await.unwrap();
    mount.fs.fail_fsync(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mount.fs.stats().failed_syncs == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interval fsync ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mount.fs.fail_fsync(false);
    let e = append(&c, b"after".to_vec()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("interval fsync")),
        "{e}"
    );
    drop(c);
    let (clean, said) = stop(server);
    assert!(!clean, "the server exited 0 after a failed fsync: {said}");
    assert!(said.contains("interval fsync failed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_as_no_space_and_loses_nothing_acknowledged() {
    let test = "a_full_disk_is_reported_as_no_space_and_loses_nothing_acknowledged";
    let Some(mount) = test_mount(test, Options::default()) else {
        return;
    };
    let data = mount.join("ledger");
    let server = Server::start(Some(&data), &["--fsync", "always"]);
    let c = client(&server).await;
    append(&c, b"first".to_vec()).await.unwrap();
    // Room for a little more than is used now; the journal is
    // preallocated, so the next large writes need new space.
    let used = mount.fs.stats().used_bytes;
    mount.fs.set_space_limit(Some(used + 256 * 1024));
    let mut acked = 1;
    let e = loop {
        match append(&c, vec![7; 64 * 1024]).await {
            Ok(seq) => acked = seq,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the disk never filled");
    };
    assert!(
        matches!(&e, ClientError::ResourceExhausted(m) if m.contains("no space left")),
        "{e}"
    );
    drop(c);
    let (clean, said) = stop(server);
    assert!(!clean, "the server exited 0 with a full disk: {said}");
    assert!(said.contains("no space left"), "{said}");
    // Space freed, restarted: everything acknowledged is there.
    mount.fs.set_space_limit(None);
    let server = Server::start(Some(&data), &["--fsync", "always"]);
    assert!(stored(&server).await >= acked);
    let (clean, said) = stop(server);
    assert!(clean, "{said}");
}
