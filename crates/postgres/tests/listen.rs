//! LISTEN/NOTIFY: what commits announce, reconnection, and the relay that
//! drives a ledger. Skipped, saying so, when PostgreSQL is unreachable (a
//! failure with `CONVERGE_LEDGER_REQUIRE_SERVICES=1`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_ledger_core::{Metadata, NewEntry};
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_postgres::{
    BoxFuture, Listener, Notice, NotificationTarget, PostgresStore, relay_notifications,
};
use converge_ledger_store::{AppendCommand, Store, WriteCommand};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

const LIMIT: Duration = Duration::from_secs(15);

fn append(ctx: &str, payload: &str) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: NewEntry {
            key: "k".into(),
            payload: payload.as_bytes().to_vec(),
            metadata: Metadata::new(),
            lamport: 0,
        },
        idempotency_key: None,
    })
}

async fn open(schema: &TestSchema) -> Arc<PostgresStore> {
    let options = schema.options();
    Arc::new(
        tokio::task::spawn_blocking(move || PostgresStore::open(options))
            .await
            .unwrap()
            .unwrap(),
    )
}

async fn write(store: &Arc<PostgresStore>, commands: Vec<WriteCommand>) {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.write(1, commands).unwrap())
        .await
        .unwrap();
}

/// The next notice that matches, within the limit.
async fn expect(listener: &mut Listener, what: &str, want: impl Fn(&Notice) -> bool) -> Notice {
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            let n = listener.recv().await.expect("listener ended");
            if want(&n) {
                return n;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {LIMIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_announce_context_and_sequence_only() {
    let Some(schema) = TestSchema::create("commits_announce_context_and_sequence_only") else {
        return;
    };
    let store = open(&schema).await;
    let mut listener = Listener::start(store.options()).unwrap();
    expect(&mut listener, "first Listening", |n| {
        *n == Notice::Listening { reconnected: false }
    })
    .await;
    // The same channel, raw: subscribe before writing.
    let (client, mut connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (raw_tx, mut raw) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = raw_tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!(r#"LISTEN "{}""#, store.options().channel()))
        .await
        .unwrap();
    let secret = "payload that must never be sent";
    write(
        &store,
        vec![
            append("job 1", secret),
            append("b", secret),
            append("job 1", secret),
            append("job 1", secret),
        ],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match expect(&mut listener, "Appended", |n| {
            matches!(n, Notice::Appended { .. })
        })
        .await
        {
            Notice::Appended {
                context: Some(c),
                sequence,
            } => got.push((c, sequence)),
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, vec![("b".to_string(), 1), ("job 1".to_string(), 3)]);
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let p = tokio::time::timeout(LIMIT, raw.recv())
            .await
            .expect("raw notification")
            .unwrap();
        assert!(!p.contains(secret));
        payloads.push(p);
    }
    payloads.sort();
    assert_eq!(payloads, vec!["1 b".to_string(), "3 job 1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_cut() {
    let Some(schema) = TestSchema::create("the_listener_reconnects_after_its_connection_is_cut")
    else {
        return;
    };
    let store = open(&schema).await;
    let mut listener = Listener::start(store.options()).unwrap();
    expect(&mut listener, "first Listening", |n| {
        matches!(n, Notice::Listening { .. })
    })
    .await;
    for round in 0..3 {
        let killed = tokio::task::block_in_place(|| schema.terminate_backends());
        assert!(killed > 0);
        let lost = expect(&mut listener, "Lost", |n| matches!(n, Notice::Lost(_))).await;
        let Notice::Lost(why) = lost else {
            unreachable!()
        };
        assert!(why.contains("PostgreSQL at 127.0.0.1:"), "{why}");
        expect(&mut listener, "Listening again", |n| {
            *n == Notice::Listening { reconnected: true }
        })
        .await;
        let ctx = format!("after-{round}");
        write(&store, vec![append(&ctx, "x")]).await;
        expect(
            &mut listener,
            "Appended after reconnect",
            |n| matches!(n, Notice::Appended { context: Some(c), sequence: 1 } if *c == ctx),
        )
        .await;
    }
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.as_str() == what)
            .count()
    }
    fn logged(&self, fragment: &str) -> bool {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("log: ") && c.contains(fragment))
    }
}

struct Target(Arc<Recorder>);

impl NotificationTarget for Target {
    fn appended<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .calls
                .lock()
                .unwrap()
                .push(format!("appended {context}"));
            Ok(())
        })
    }
    fn catch_up(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.0.calls.lock().unwrap().push("catch_up".into());
            Ok(())
        })
    }
    fn log(&self, message: &str) {
        self.0.calls.lock().unwrap().push(format!("log: {message}"));
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(LIMIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {LIMIT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wakes_the_ledger_catches_up_and_reports_outages() {
    let Some(schema) =
        TestSchema::create("the_relay_wakes_the_ledger_catches_up_and_reports_outages")
    else {
        return;
    };
    let store = open(&schema).await;
    let recorder = Arc::new(Recorder::default());
    let relay = tokio::spawn(relay_notifications(
        store.options().clone(),
        Duration::from_millis(200),
        Arc::new(Target(recorder.clone())),
    ));
    // Connected: a catch-up; then periodic ones.
    wait_for("catch-ups", || recorder.count("catch_up") >= 3).await;
    write(&store, vec![append("ctx-a", "x"), append("ctx-b", "y")]).await;
    wait_for("appended ctx-a", || recorder.count("appended ctx-a") == 1).await;
    wait_for("appended ctx-b", || recorder.count("appended ctx-b") == 1).await;
    // An outage of the listener's connection is logged once and its end
    // too, followed by a catch-up.
    tokio::task::block_in_place(|| schema.terminate_backends());
    wait_for("outage logged", || recorder.logged("reconnecting")).await;
    wait_for("recovery logged", || recorder.logged("again")).await;
    write(&store, vec![append("ctx-c", "z")]).await;
    wait_for("appended ctx-c", || recorder.count("appended ctx-c") == 1).await;
    relay.abort();
}

/// Polling mode: commits send no notification, nothing listens, and the
/// relay still catches up on its timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_sends_nothing_and_catches_up_on_a_timer() {
    let Some(schema) = TestSchema::create("polling_mode_sends_nothing_and_catches_up_on_a_timer")
    else {
        return;
    };
    let mut options = schema.options();
    options.notifications = false;
    let opening = options.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || PostgresStore::open(opening))
            .await
            .unwrap()
            .unwrap(),
    );
    // A raw listener on the channel sees nothing.
    let (client, mut connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (raw_tx, mut raw) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = raw_tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!(r#"LISTEN "{}""#, options.channel()))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let relay = tokio::spawn(relay_notifications(
        options,
        Duration::from_millis(50),
        Arc::new(Target(recorder.clone())),
    ));
    write(&store, vec![append("p", "x")]).await;
    wait_for("timer catch-ups", || recorder.count("catch_up") >= 5).await;
    // Control: a notification sent by hand on the channel does arrive, so
    // the silence above is not a deaf listener.
    client
        .batch_execute(&format!(
            "SELECT pg_notify('{}', 'control')",
            store.options().channel()
        ))
        .await
        .unwrap();
    let first = tokio::time::timeout(LIMIT, raw.recv()).await.unwrap();
    assert_eq!(first.as_deref(), Some("control"), "the commit notified");
    assert_eq!(recorder.count("appended p"), 0);
    relay.abort();
}
