//! Results: per-run values of named metrics, reported as the median over
//! runs, as a human table and optionally as one JSON line.

use std::io::Write as _;

use serde_json::{Map, Value, json};

/// What a metric should reach.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The median must be at most this.
    AtMost(f64),
    /// The median must be at least this.
    AtLeast(f64),
}

impl Goal {
    /// How far the median is from the goal as a factor where `>= 1.0` means
    /// met: `median / target` for at-least goals, `target / median` for
    /// at-most goals.
    pub fn ratio(self, median: f64) -> f64 {
        match self {
            Goal::AtLeast(t) => median / t,
            Goal::AtMost(t) => {
                if median <= 0.0 {
                    f64::INFINITY
                } else {
                    t / median
                }
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(t) => format!(">= {}", fmt_num(t)),
            Goal::AtMost(t) => format!("<= {}", fmt_num(t)),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Goal::AtLeast(t) => json!({ "op": ">=", "value": t }),
            Goal::AtMost(t) => json!({ "op": "<=", "value": t }),
        }
    }
}

/// One named measurement, one value per run.
#[derive(Debug, Clone)]
pub struct Metric {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
    goal: Option<Goal>,
}

/// The results of one scenario.
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    config: Map<String, Value>,
    metrics: Vec<Metric>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            config: Map::new(),
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a configuration value (printed with the results).
    pub fn config(&mut self, key: &str, value: impl Into<Value>) {
        self.config.insert(key.to_owned(), value.into());
    }

    /// Adds one run's value of metric `name`.
    pub fn record(&mut self, name: &str, unit: &'static str, value: f64, goal: Option<Goal>) {
        if let Some(m) = self.metrics.iter_mut().find(|m| m.name == name) {
            m.values.push(value);
            return;
        }
        self.metrics.push(Metric {
            name: name.to_owned(),
            unit,
            values: vec![value],
            goal,
        });
    }

    /// A free-text remark printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Prints the table (stdout, or stderr when `json`), then with `json` one
    /// JSON line on stdout.
    pub fn print(&self, json: bool) {
        let table = self.table();
        if json {
            eprint!("{table}");
            let line = serde_json::to_string(&self.to_json()).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        } else {
            print!("{table}");
        }
    }

    fn table(&self) -> String {
        let runs = self
            .metrics
            .iter()
            .map(|m| m.values.len())
            .max()
            .unwrap_or(0);
        let mut s = format!(
            "\n== {} ({runs} run(s); median of runs) ==\n",
            self.scenario
        );
        let cfg: Vec<String> = self
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!("config: {}\n", cfg.join(" ")));
        let name_w = self
            .metrics
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        s.push_str(&format!(
            "{:<name_w$}  {:>6}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}  {}\n",
            "metric", "unit", "median", "min", "max", "target", "x target", "met"
        ));
        for m in &self.metrics {
            let med = median(&m.values);
            let min = m.values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = m.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (target, ratio, met) = match m.goal {
                Some(g) => {
                    let r = g.ratio(med);
                    (
                        g.describe(),
                        format!("{r:.2}"),
                        if r >= 1.0 { "yes" } else { "NO" },
                    )
                }
                None => (String::new(), String::new(), ""),
            };
            s.push_str(&format!(
                "{:<name_w$}  {:>6}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}  {}\n",
                m.name,
                m.unit,
                fmt_num(med),
                fmt_num(min),
                fmt_num(max),
                target,
                ratio,
                met
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s.push_str(
            "(x target: median/target for >= goals, target/median for <= goals; >= 1 means met)\n",
        );
        s
    }

    fn to_json(&self) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                let med = median(&m.values);
                let mut o = json!({
                    "name": m.name,
                    "unit": m.unit,
                    "median": med,
                    "runs": m.values,
                });
                if let Some(g) = m.goal {
                    let r = g.ratio(med);
                    o["target"] = g.to_json();
                    o["ratio"] = json!(r);
                    o["met"] = json!(r >= 1.0);
                }
                o
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "config": self.config,
            "metrics": metrics,
            "notes": self.notes,
        })
    }
}

/// Median (mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a >= 100_000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Latency samples in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<u64>,
}

impl Latencies {
    /// Sorts `samples` (nanoseconds).
    pub fn new(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Nearest-rank percentile `p` (0..=100), in microseconds.
    pub fn p_us(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let n = self.sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1] as f64 / 1_000.0
    }

    /// Mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        self.sorted.iter().map(|&x| x as f64).sum::<f64>() / self.sorted.len() as f64 / 1_000.0
    }

    /// Largest sample in microseconds.
    pub fn max_us(&self) -> f64 {
        self.sorted.last().map_or(f64::NAN, |&x| x as f64 / 1_000.0)
    }
}
