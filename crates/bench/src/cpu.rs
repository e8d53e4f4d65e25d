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

/// The `stat` file of the newest live thread named `name` (an earlier one
/// may still be listed for a moment after it finished).
fn find_thread(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .filter_map(|t| {
            let tid: u64 = t.file_name().to_str()?.parse().ok()?;
            let p = t.path().join("stat");
            let text = std::fs::read_to_string(&p).ok()?;
            let (comm, _) = parse_stat(&text)?;
            let alive = !matches!(stat_state(&text), Some('Z' | 'X'));
            (comm == name && alive).then_some((tid, p))
        })
        .max_by_key(|(tid, _)| *tid)
        .map(|(_, p)| p)
}

/// The state letter of a `stat` file.
fn stat_state(text: &str) -> Option<char> {
    text.rfind(')')
        .and_then(|i| text[i + 1..].trim_start().chars().next())
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

/// Samples the scheduler state of one thread every few milliseconds: how
/// often it was running or runnable (`R`), asleep waiting for work (`S`), or
/// in uninterruptible disk wait (`D`, e.g. inside fsync).
pub struct StateSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<[u64; 3]>,
}

/// Fractions of samples in each state.
#[derive(Debug, Clone, Copy, Default)]
pub struct States {
    /// Running or runnable.
    pub running: f64,
    /// Sleeping (waiting for work).
    pub sleeping: f64,
    /// Uninterruptible (disk) wait.
    pub disk: f64,
}

impl StateSampler {
    /// Starts sampling the newest thread named `name` (from when it
    /// appears); `None` if no sampler thread could be started.
    pub fn start(name: &str, every: Duration) -> Option<StateSampler> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_owned();
        let handle = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut counts = [0u64; 3];
                // A thread names itself once it runs, so look until found.
                let mut path = None;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if path.is_none() {
                        path = find_thread(&name);
                    }
                    if let Some(p) = &path
                        && let Ok(text) = std::fs::read_to_string(p)
                        && let Some(state) = stat_state(&text)
                    {
                        match state {
                            'R' => counts[0] += 1,
                            'D' => counts[2] += 1,
                            _ => counts[1] += 1,
                        }
                    }
                    std::thread::sleep(every);
                }
                counts
            })
            .ok()?;
        Some(StateSampler { stop, handle })
    }

    /// Stops and returns the fractions.
    pub fn finish(self) -> States {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let c = self.handle.join().unwrap_or_default();
        let n = (c[0] + c[1] + c[2]).max(1) as f64;
        States {
            running: c[0] as f64 / n,
            sleeping: c[1] as f64 / n,
            disk: c[2] as f64 / n,
        }
    }
}
