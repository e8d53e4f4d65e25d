//! `watch-lag`: how long after an append a watcher over gRPC sees it, under
//! a paced append load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use clap::Args as ClapArgs;
use converge_ledger_client::{AppendOptions, Client};
use converge_ledger_store::{FsyncPolicy, MemoryStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, oneshot};

use crate::report::{Goal, Latencies, Report};
use crate::setup::{Common, Server, open_embedded};

const CONTEXT: &str = "watched";

/// Options of `watch-lag`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Appends per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of paced appends per case per run.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Milliseconds between batches of appends (rate x tick appends each).
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// Most unanswered appends; a send beyond it is skipped and counted
    /// (keeps an overloaded run bounded).
    #[arg(long, default_value_t = 2000)]
    max_in_flight: u64,
    /// Skip the memory-store case.
    #[arg(long)]
    no_memory: bool,
}

impl Args {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.common.json
    }
}

struct Outcome {
    skipped: u64,
    errors: u64,
    first_error: Option<String>,
    lag: Latencies,
    ack: Latencies,
    send_rate: f64,
}

/// Runs the scenario.
pub async fn run(a: Args) -> anyhow::Result<Report> {
    a.common.check()?;
    ensure!(
        a.common.payload_bytes >= 8,
        "--payload-bytes must be at least 8 (the send time is in the payload)"
    );
    ensure!(
        a.tick_ms > 0 && a.rate > 0,
        "--tick-ms and --rate must be at least 1"
    );
    let per_tick = (a.rate * a.tick_ms).div_ceil(1000);
    let ticks = ((a.duration_secs * 1000.0) as u64 / a.tick_ms).max(1);
    let mut r = Report::new("watch-lag");
    r.config("rate_per_s", a.rate);
    r.config("tick_ms", a.tick_ms);
    r.config("appends_per_tick", per_tick);
    r.config("duration_secs", a.duration_secs);
    r.config("payload_bytes", a.common.payload_bytes);
    let payloads = a.common.payloads();
    for run in 1..=a.common.runs {
        let mut cases = vec!["embedded_always"];
        if !a.no_memory {
            cases.push("memory");
        }
        for label in cases {
            eprintln!("watch-lag: run {run}/{}, {label}", a.common.runs);
            let dir = a.common.fresh_dir("watch")?;
            let store: Arc<dyn Store> = if label == "memory" {
                Arc::new(MemoryStore::new())
            } else {
                open_embedded(dir.path(), FsyncPolicy::Always)?
            };
            let o = one_case(
                store,
                payloads.clone(),
                per_tick,
                ticks,
                Duration::from_millis(a.tick_ms),
                a.max_in_flight,
            )
            .await?;
            drop(dir);
            let goal = (label == "embedded_always").then_some(Goal::AtMost(2.0));
            r.record(
                &format!("{label}_lag_p50"),
                "ms",
                o.lag.p_us(50.0) / 1000.0,
                None,
            );
            r.record(
                &format!("{label}_lag_p99"),
                "ms",
                o.lag.p_us(99.0) / 1000.0,
                goal,
            );
            r.record(
                &format!("{label}_lag_max"),
                "ms",
                o.lag.max_us() / 1000.0,
                None,
            );
            r.record(
                &format!("{label}_append_ack_p50"),
                "ms",
                o.ack.p_us(50.0) / 1000.0,
                None,
            );
            r.record(
                &format!("{label}_append_ack_p99"),
                "ms",
                o.ack.p_us(99.0) / 1000.0,
                None,
            );
            r.record(&format!("{label}_send_rate"), "1/s", o.send_rate, None);
            r.record(
                &format!("{label}_append_errors"),
                "count",
                o.errors as f64,
                None,
            );
            r.record(
                &format!("{label}_sends_skipped"),
                "count",
                o.skipped as f64,
                None,
            );
            if let Some(e) = o.first_error {
                r.note(format!(
                    "run {run} {label}: {} append(s) failed, first: {e}",
                    o.errors
                ));
            }
        }
    }
    r.note("lag = watcher receive instant - instant the appender issued Client::append (send time carried in the payload, one shared Instant)");
    r.note("append_ack: the appender's Client::append latency for the same appends; lag includes the commit (fsync) the ack waits for");
    r.note("sends_skipped: paced sends not issued because max_in_flight appends were unanswered (the ledger fell behind the offered rate)");
    r.note("appender: one SDK client, a batch of concurrent appends every tick; watcher: SDK Client::watch on its own connection");
    Ok(r)
}

async fn one_case(
    store: Arc<dyn Store>,
    payloads: Arc<Vec<Vec<u8>>>,
    per_tick: u64,
    ticks: u64,
    tick: Duration,
    max_in_flight: u64,
) -> anyhow::Result<Outcome> {
    let server = Server::start(store).await?;
    let watcher_client = Client::connect(server.url()).await?;
    let appender = Client::connect(server.url()).await?;
    let epoch = Instant::now();
    let total = per_tick * ticks;
    // Until the appender is done the watcher may wait up to the paced
    // duration + 40 s; afterwards at most 10 s more.
    let deadline_ms = Arc::new(AtomicU64::new(
        (epoch.elapsed() + tick * (ticks as u32) + Duration::from_secs(40)).as_millis() as u64,
    ));
    let dl = deadline_ms.clone();
    let (ready_tx, ready_rx) = oneshot::channel::<()>();

    // The watcher: the warm-up entry (sequence 1), then every measured one;
    // how many there are is known once the appender is done (failed appends
    // append nothing).
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let target_set = Arc::new(Notify::new());
    let (t, n) = (target.clone(), target_set.clone());
    let watcher = tokio::spawn(async move {
        let mut w = watcher_client.watch(CONTEXT, None, 0);
        let mut ready = Some(ready_tx);
        let mut lags = Vec::with_capacity(total as usize);
        let mut got = 0u64;
        while got < t.load(Ordering::SeqCst) {
            let next = tokio::select! {
                next = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(epoch + Duration::from_millis(dl.load(Ordering::SeqCst))),
                    w.next(),
                ) => next,
                _ = n.notified() => continue,
            };
            let e = match next {
                Ok(Some(Ok(e))) => e,
                Ok(Some(Err(e))) => return Err(anyhow::Error::from(e)),
                Ok(None) => bail!("the watch ended"),
                Err(_) => bail!("the watch saw only {got} entries in time"),
            };
            got += 1;
            let now = epoch.elapsed().as_nanos() as u64;
            let sent = u64::from_le_bytes(e.payload[..8].try_into()?);
            if e.sequence == 1 {
                if let Some(t) = ready.take() {
                    let _ = t.send(());
                }
            } else {
                lags.push(now.saturating_sub(sent));
            }
        }
        Ok(lags)
    });

    let stamped = move |k: u64| {
        let mut p = payloads[(k as usize) % payloads.len()].clone();
        p[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        p
    };
    appender
        .append(CONTEXT, "lag", stamped(0), AppendOptions::default())
        .await?;
    tokio::time::timeout(Duration::from_secs(10), ready_rx).await??;

    let stamped = Arc::new(stamped);
    let start = tokio::time::Instant::now();
    let mut acks = Vec::with_capacity(total as usize);
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut skipped = 0u64;
    for t in 0..ticks {
        tokio::time::sleep_until(start + tick * (t as u32)).await;
        for j in 0..per_tick {
            // Open loop, but bounded: past `max_in_flight` unanswered
            // appends the send is skipped (and counted), so an overloaded
            // run ends instead of queueing without bound.
            if in_flight.load(Ordering::SeqCst) >= max_in_flight {
                skipped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::SeqCst);
            let (c, s, f) = (appender.clone(), stamped.clone(), in_flight.clone());
            acks.push(tokio::spawn(async move {
                let payload = s(t * per_tick + j + 1);
                let sent = Instant::now();
                let r = c
                    .append(CONTEXT, "lag", payload, AppendOptions::default())
                    .await
                    .map(|_| sent.elapsed().as_nanos() as u64);
                f.fetch_sub(1, Ordering::SeqCst);
                r
            }));
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let mut ack = Vec::with_capacity(acks.len());
    let mut errors = 0u64;
    let mut first_error = None;
    for h in acks {
        match h.await? {
            Ok(ns) => ack.push(ns),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    deadline_ms.store(
        (epoch.elapsed() + Duration::from_secs(10)).as_millis() as u64,
        Ordering::SeqCst,
    );
    target.store(ack.len() as u64 + 1, Ordering::SeqCst);
    target_set.notify_one();
    let lags = watcher.await??;
    drop(appender);
    server.stop().await?;
    Ok(Outcome {
        lag: Latencies::new(lags),
        ack: Latencies::new(ack),
        // `ticks` batches were issued over `ticks - 1` intervals.
        send_rate: (total - per_tick).saturating_sub(skipped) as f64 / send_secs.max(1e-9),
        skipped,
        errors,
        first_error,
    })
}
