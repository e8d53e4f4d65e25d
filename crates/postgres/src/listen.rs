//! Cross-node wake-ups: PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Every commit that moves heads is followed, in the same round trip, by one
//! notification per moved context on the channel `<schema>_appended` with
//! the payload `"<new head sequence> <context id>"` — ids only, never
//! payloads. It is sent right after `COMMIT` succeeded, so the entries are
//! in the tables before anyone is woken. A notification can be lost (the
//! node dies between the two statements, or a listener is reconnecting);
//! the periodic catch-up covers that. A [`Listener`] holds its own connection (not one of the store's
//! pool), reconnects with backoff, checks the connection with a ping every
//! two seconds, and tells its consumer when it is listening again so that
//! notifications lost meanwhile are made up by reading the tables.
//! [`relay_notifications`] turns all of that into calls on a
//! [`NotificationTarget`] (the ledger's `notify_appended` and
//! `notify_all_watched`), adding a periodic catch-up.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_ledger_store::StoreError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::connect::{Connected, Connector};
use crate::error::describe;
use crate::options::PostgresOptions;

/// How often the listener checks that its connection still answers.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a ping or the `LISTEN` may take before the connection is
/// considered dead.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the listener reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `LISTEN` is active on a (new) connection. Notifications sent while
    /// there was none are lost: whatever is watched must be checked against
    /// the tables now. `reconnected` is false for the first connection.
    Listening {
        /// Whether an earlier connection was lost before this one.
        reconnected: bool,
    },
    /// Some node committed entries to a context.
    Appended {
        /// The context (`None` for a context id too long for a notification
        /// payload: check every watched context).
        context: Option<String>,
        /// Its head sequence after that commit.
        sequence: u64,
    },
    /// The connection was lost or could not be made; the listener retries
    /// with backoff (50 ms doubling to 2 s).
    Lost(String),
}

/// A `LISTEN` connection that reconnects by itself. Runs as a task on the
/// Tokio runtime it was started in; dropping the listener stops it.
pub struct Listener {
    rx: mpsc::Receiver<Notice>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening on the channel of `options.schema`. Must be called
    /// within a Tokio runtime. Fails only on invalid options; connection
    /// failures are reported as [`Notice::Lost`] and retried.
    pub fn start(options: &PostgresOptions) -> Result<Listener, StoreError> {
        let connector = options.connector()?;
        let channel = options.channel();
        let (tx, rx) = mpsc::channel(4096);
        let connect_timeout = options.connect_timeout;
        let task = tokio::spawn(run(connector, channel, connect_timeout, tx));
        Ok(Listener { rx, task })
    }

    /// The next notice (`None` only if the listener task ended).
    pub async fn recv(&mut self) -> Option<Notice> {
        self.rx.recv().await
    }

    /// A notice that is already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Notice> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts a task when dropped (so a session's connection driver never
/// outlives the session).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    connector: Connector,
    channel: String,
    connect_timeout: Duration,
    tx: mpsc::Sender<Notice>,
) {
    let server = connector.server.clone();
    let mut backoff = BACKOFF_FIRST;
    let mut sessions = 0u64;
    loop {
        let started = Instant::now();
        let Err(why) = session(&connector, &channel, connect_timeout, &tx, &mut sessions).await
        else {
            return; // the consumer is gone
        };
        let notice = Notice::Lost(format!(
            "notification connection to PostgreSQL at {server}: {why}"
        ));
        if tx.send(notice).await.is_err() {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life. `Ok(())`: the consumer went away; `Err`: the
/// connection failed (the caller reconnects).
async fn session(
    connector: &Connector,
    channel: &str,
    connect_timeout: Duration,
    tx: &mpsc::Sender<Notice>,
    sessions: &mut u64,
) -> Result<(), String> {
    let Connected {
        client,
        mut connection,
        ..
    } = tokio::time::timeout(connect_timeout + PING_TIMEOUT, connector.connect())
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| match e {
            // Without the kind's prefix: the caller names the connection.
            StoreError::Io(m) | StoreError::Config(m) => m,
            e => e.to_string(),
        })?;
    // The connection must be polled both for the replies to our queries and
    // for notifications; a driver task does both and forwards
    // notifications with back-pressure.
    let forward = tx.clone();
    let wanted = channel.to_owned();
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == wanted => {
                    if forward.send(parse(n.payload())).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(describe(&e)),
                None => return Err("the server closed the connection".to_string()),
            }
        }
    }));
    let listen_sql = format!(r#"LISTEN "{channel}""#);
    let listen = client.batch_execute(&listen_sql);
    tokio::select! {
        r = tokio::time::timeout(PING_TIMEOUT, listen) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("LISTEN failed: {}", describe(&e))),
            Err(_) => return Err("LISTEN got no answer within 5 s".into()),
        },
        r = &mut driver.0 => return ended(r),
    }
    *sessions += 1;
    let reconnected = *sessions > 1;
    if tx.send(Notice::Listening { reconnected }).await.is_err() {
        return Ok(());
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            r = &mut driver.0 => return ended(r),
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(describe(&e)),
                    Err(_) => return Err("no answer to a liveness check within 5 s".into()),
                }
            }
        }
    }
}

fn ended(r: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r,
        Err(e) => Err(format!("the connection task failed: {e}")),
    }
}

/// `"<sequence> <context>"`, or `"<sequence>"` alone for a context id too
/// long to send.
fn parse(payload: &str) -> Notice {
    match payload.split_once(' ') {
        Some((seq, context)) => match seq.parse() {
            Ok(sequence) => Notice::Appended {
                context: Some(context.to_owned()),
                sequence,
            },
            Err(_) => Notice::Appended {
                context: None,
                sequence: 0,
            },
        },
        None => Notice::Appended {
            context: None,
            sequence: payload.parse().unwrap_or(0),
        },
    }
}

/// A boxed, sendable future (what [`NotificationTarget`] methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`relay_notifications`] drives; implemented over the ledger server
/// by the binary (`Ledger::notify_appended` / `Ledger::notify_all_watched`).
pub trait NotificationTarget: Send + Sync + 'static {
    /// Another node (or this one) committed entries to `context`: publish
    /// what local watchers have not seen, reading it from the tables.
    fn appended<'a>(&'a self, context: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Notifications may have been missed: do the same for every watched
    /// context.
    fn catch_up(&self) -> BoxFuture<'_, Result<(), String>>;
    /// A line for the operator (connection lost and restored, reads failing
    /// and recovered). Called once per change, not per retry.
    fn log(&self, message: &str);
}

/// Listens for commits of any node and drives `target`: each notified
/// context once per wake-up (notifications that arrive together are
/// coalesced), every watched context after each (re)connect, and every
/// watched context every `catch_up_every` regardless (covering
/// notifications lost in a reconnect, and databases or proxies that drop
/// them). With [`PostgresOptions::notifications`] off (polling mode) it
/// only does the periodic catch-up. Runs until the task is dropped;
/// returns early only on invalid options. Must run within a Tokio runtime.
pub async fn relay_notifications(
    options: PostgresOptions,
    catch_up_every: Duration,
    target: Arc<dyn NotificationTarget>,
) -> Result<(), StoreError> {
    options.connector()?;
    let mut tick = tokio::time::interval(catch_up_every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    if !options.notifications {
        loop {
            tick.tick().await;
            report(target.as_ref(), target.catch_up().await, &mut failing);
        }
    }
    let mut listener = Listener::start(&options)?;
    let mut state = RelayState {
        target: target.as_ref(),
        catch_up_every,
        pending: BTreeSet::new(),
        everything: false,
        listening: false,
        lost_reported: false,
    };
    loop {
        tokio::select! {
            n = listener.recv() => {
                let Some(n) = n else { return Ok(()) };
                state.absorb(n);
                while let Some(n) = listener.try_recv() {
                    state.absorb(n);
                }
            }
            _ = tick.tick() => state.everything = true,
        }
        let result = if state.everything {
            state.everything = false;
            state.pending.clear();
            target.catch_up().await
        } else {
            let mut result = Ok(());
            for context in std::mem::take(&mut state.pending) {
                if let Err(e) = target.appended(&context).await {
                    result = Err(e);
                }
            }
            result
        };
        report(target.as_ref(), result, &mut failing);
    }
}

/// Logs the first failure of a streak and the recovery.
fn report(target: &dyn NotificationTarget, result: Result<(), String>, failing: &mut bool) {
    match result {
        Err(e) if !*failing => {
            target.log(&format!(
                "reading entries appended by other nodes failed: {e}; retrying"
            ));
            *failing = true;
        }
        Ok(()) if *failing => {
            target.log("reading entries appended by other nodes works again");
            *failing = false;
        }
        _ => {}
    }
}

struct RelayState<'a> {
    target: &'a dyn NotificationTarget,
    catch_up_every: Duration,
    /// Contexts notified since the last wake-up.
    pending: BTreeSet<String>,
    /// Check every watched context on this wake-up.
    everything: bool,
    listening: bool,
    /// A lost connection was logged and its restoration not yet.
    lost_reported: bool,
}

impl RelayState<'_> {
    fn absorb(&mut self, n: Notice) {
        match n {
            Notice::Listening { reconnected } => {
                self.everything = true;
                self.listening = true;
                if reconnected && self.lost_reported {
                    self.target.log(
                        "listening for other nodes' commits on PostgreSQL again; catching up watchers",
                    );
                }
                self.lost_reported = false;
            }
            Notice::Appended {
                context: Some(c), ..
            } => {
                self.pending.insert(c);
            }
            Notice::Appended { context: None, .. } => self.everything = true,
            Notice::Lost(why) => {
                // Once per outage, not once per retry.
                if self.listening || !self.lost_reported {
                    self.target.log(&format!(
                        "{why}; reconnecting (meanwhile watchers are caught up from the tables every {} ms)",
                        self.catch_up_every.as_millis()
                    ));
                    self.lost_reported = true;
                }
                self.listening = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_sequence_and_context_only() {
        assert_eq!(
            parse("17 job 1"),
            Notice::Appended {
                context: Some("job 1".into()),
                sequence: 17
            }
        );
        assert_eq!(
            parse("9"),
            Notice::Appended {
                context: None,
                sequence: 9
            }
        );
        assert_eq!(
            parse("garbage here"),
            Notice::Appended {
                context: None,
                sequence: 0
            }
        );
    }
}
