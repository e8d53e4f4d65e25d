//! The scenarios, one module each.

pub mod inprocess;
pub mod latency;
pub mod read;
pub mod restart;
pub mod throughput;
pub mod watch_lag;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cpu::{CpuSample, StateSampler, States, WRITER_THREAD};
use crate::report::Latencies;

/// When each worker of a closed-loop load stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long (the append in flight at the deadline still counts).
    After(Duration),
    /// After this many appends per worker.
    Count(u64),
}

/// What a closed-loop load achieved.
#[derive(Debug)]
pub struct Load {
    /// Appends completed.
    pub appends: u64,
    /// From start until the last worker finished.
    pub elapsed: Duration,
    /// Latency of every append.
    pub latency: Latencies,
    /// Cores used by the whole process meanwhile.
    pub process_cores: f64,
    /// Cores used by the group-commit thread meanwhile.
    pub writer_cores: f64,
    /// Where the group-commit thread spent its time (sampled).
    pub writer_states: States,
}

impl Load {
    /// Records this load's metrics under `label`; `goal` applies to the rate.
    pub fn record(
        &self,
        r: &mut crate::report::Report,
        label: &str,
        goal: Option<crate::report::Goal>,
    ) {
        r.record(&format!("{label}_appends_per_s"), "1/s", self.rate(), goal);
        r.record(
            &format!("{label}_latency_p50"),
            "us",
            self.latency.p_us(50.0),
            None,
        );
        r.record(
            &format!("{label}_latency_p99"),
            "us",
            self.latency.p_us(99.0),
            None,
        );
        r.record(
            &format!("{label}_cpu_cores"),
            "cores",
            self.process_cores,
            None,
        );
        r.record(
            &format!("{label}_writer_cpu_cores"),
            "cores",
            self.writer_cores,
            None,
        );
        r.record(
            &format!("{label}_writer_running"),
            "frac",
            self.writer_states.running,
            None,
        );
        r.record(
            &format!("{label}_writer_in_disk_wait"),
            "frac",
            self.writer_states.disk,
            None,
        );
        r.record(
            &format!("{label}_writer_waiting_for_work"),
            "frac",
            self.writer_states.sleeping,
            None,
        );
    }

    /// Appends per second.
    pub fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `workers` tasks; worker `i` calls `append(i, k)` for its `k`-th
/// append, one at a time, until `stop`.
pub async fn closed_loop<F, Fut, E>(workers: usize, stop: Stop, append: F) -> anyhow::Result<Load>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let append = Arc::new(append);
    let sampler = StateSampler::start(WRITER_THREAD, Duration::from_millis(2));
    let cpu0 = CpuSample::now();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let append = append.clone();
        handles.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut k = 0u64;
            loop {
                match stop {
                    Stop::After(d) if start.elapsed() >= d => break,
                    Stop::Count(n) if k >= n => break,
                    _ => {}
                }
                let t = Instant::now();
                append(i, k).await?;
                samples.push(t.elapsed().as_nanos() as u64);
                k += 1;
            }
            Ok::<_, E>(samples)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let elapsed = start.elapsed();
    let cpu1 = CpuSample::now();
    let writer_states = sampler.map(StateSampler::finish).unwrap_or_default();
    Ok(Load {
        appends: all.len() as u64,
        elapsed,
        latency: Latencies::new(all),
        process_cores: cpu0.process_cores(&cpu1),
        writer_cores: cpu0.thread_cores(&cpu1, WRITER_THREAD),
        writer_states,
    })
}
