//! CPU time of this process and of its threads, from `/proc` (Linux), to show
//! whether a measurement was bounded by CPU.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`; 100 on
/// Linux x86_64).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU ticks used so far: the whole process and per thread name.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    process: u64,
    by_name: HashMap<String, u64>,
}

/// `(comm, utime + stime)` of a `stat` file.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Field 3 (state) is rest[0]; utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSample {
    /// Samples now. On systems without `/proc` every count is zero.
    pub fn now() -> Self {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t))
            .map_or(0, |(_, t)| t);
        let mut by_name: HashMap<String, u64> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for task in dir.flatten() {
                if let Some((comm, t)) = std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|t| parse_stat(&t))
                {
                    *by_name.entry(comm).or_default() += t;
                }
            }
        }
        Self {
            at: Instant::now(),
            process,
            by_name,
        }
    }

    /// Cores used by the whole process between `self` and `later`.
    pub fn process_cores(&self, later: &CpuSample) -> f64 {
        cores(
            later.process.saturating_sub(self.process),
            later.at - self.at,
        )
    }

    /// Cores used by threads named `name` between `self` and `later`
    /// (threads that exited in between are not counted).
    pub fn thread_cores(&self, later: &CpuSample, name: &str) -> f64 {
        let before = self.by_name.get(name).copied().unwrap_or(0);
        let after = later.by_name.get(name).copied().unwrap_or(0);
        cores(after.saturating_sub(before), later.at - self.at)
    }
}

fn cores(ticks: u64, wall: Duration) -> f64 {
    let wall = wall.as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    ticks as f64 / TICKS_PER_SEC / wall
}

/// Name of the group-commit thread (`converge_ledger_store::Writer`).
pub const WRITER_THREAD: &str = "ledger-writer";

/// CPU use of the whole machine and of this process (with its reaped
/// children), to tell how much other work ran during a measurement.
#[derive(Debug, Clone)]
pub struct MachineSample {
    at: Instant,
    busy: u64,
    own: u64,
}

impl MachineSample {
    /// Samples now (zeros without `/proc`).
    pub fn now() -> Self {
        // /proc/stat: "cpu user nice system idle iowait irq softirq steal ..."
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let line = t.lines().next()?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().take(8).sum();
                Some(total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0))
            })
            .unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| {
                let rest: Vec<u64> = t[t.rfind(')')? + 1..]
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                Some(rest.iter().sum())
            })
            .unwrap_or(0);
        Self {
            at: Instant::now(),
            busy,
            own,
        }
    }

    /// Average cores used by other processes between `self` and `later`.
    pub fn others_cores(&self, later: &MachineSample) -> f64 {
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        cores(busy.saturating_sub(own), later.at - self.at)
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
