//! What recording costs the engine: a converge-core run of at least 10k
//! facts with no ledger, against the same run with a `Recorder` attached.
//!
//! ```sh
//! cargo run --release -p converge-ledger-converge --example overhead
//! cargo run --release -p converge-ledger-converge --example overhead -- --facts 20000 --runs 9
//! cargo run --release -p converge-ledger-converge --example overhead -- --addr http://127.0.0.1:50051
//! ```
//!
//! Without `--addr` the ledger is an in-process memory server (sharing the
//! machine's cores with the engine). Each round runs, in rotating order: the engine
//! alone; the engine with a callback that only clones each fact (the floor
//! of any callback that keeps facts); the engine with a recorder as
//! streaming callback (facts); the
//! engine with a recorder as streaming callback and experience-event
//! observer (facts and events). "engine" is the wall time of `Engine::run`;
//! "flush" is the time `Recorder::flush` then waits until the ledger holds
//! everything. Medians over the rounds, after one warm-up round.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use converge_core::experience_store::ExperienceEvent;
use converge_core::{
    Budget, ContextFact, ContextKey, ContextState, Engine, ExperienceEventObserver,
    StreamingCallback,
};
use converge_ledger_converge::Recorder;
use support::{Generator, arg, start_memory_server};

const KEYS: [ContextKey; 4] = [
    ContextKey::Signals,
    ContextKey::Hypotheses,
    ContextKey::Evaluations,
    ContextKey::Strategies,
];

fn engine(facts: usize) -> Engine {
    // The default budget stops at 10 000 facts; raise it.
    let mut engine = Engine::with_budget(Budget {
        max_cycles: 10_000,
        max_facts: (facts as u32).saturating_mul(2),
    });
    for (i, key) in KEYS.iter().enumerate() {
        let share = facts / KEYS.len() + usize::from(i < facts % KEYS.len());
        engine.register_suggestor(Generator::new(*key, share, 250));
    }
    engine
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Alone,
    CloneOnly,
    CloneAll,
    Facts,
    FactsAndEvents,
}

/// The least any streaming callback that keeps the facts pays: a clone of
/// each into a vector.
struct CloneOnly(Mutex<Vec<ContextFact>>);

/// The same for experience events.
struct CloneEvents(Mutex<Vec<ExperienceEvent>>);

impl ExperienceEventObserver for CloneEvents {
    fn on_event(&self, event: &ExperienceEvent) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
}

impl StreamingCallback for CloneOnly {
    fn on_cycle_start(&self, _cycle: u32) {}

    fn on_fact(&self, _cycle: u32, fact: &ContextFact) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fact.clone());
    }

    fn on_cycle_end(&self, _cycle: u32, _facts_added: usize) {}
}

struct Sample {
    engine: Duration,
    flush: Duration,
    entries: u64,
    /// Entries the writer had appended when the run ended.
    during: u64,
}

async fn round(addr: &str, facts: usize, mode: Mode, n: usize) -> anyhow::Result<Sample> {
    let mut engine = engine(facts);
    let recorder = if mode == Mode::Alone {
        None
    } else if mode == Mode::CloneOnly || mode == Mode::CloneAll {
        engine.set_streaming(Arc::new(CloneOnly(Mutex::default())));
        if mode == Mode::CloneAll {
            engine.set_event_observer(Arc::new(CloneEvents(Mutex::default())));
        }
        None
    } else {
        // Default options: a buffer of 65 536 holds this run's facts and
        // events, so the engine never waits for the ledger.
        let options = support::recorder_options();
        let context = format!("overhead-{}-{n}-{}", std::process::id(), mode as u8);
        let r = Recorder::connect(addr, context, options).await?;
        match mode {
            Mode::Facts => engine.set_streaming(Arc::new(r.clone())),
            _ => r.attach(&mut engine),
        }
        Some(r)
    };
    let started = Instant::now();
    let result = engine.run(ContextState::new()).await?;
    let ran = started.elapsed();
    anyhow::ensure!(
        result.integrity.fact_count == facts,
        "the run made {} facts",
        result.integrity.fact_count
    );
    let (flush, entries, during) = match recorder {
        None => (Duration::ZERO, 0, 0),
        Some(r) => {
            let during = r.stats().written;
            let started = Instant::now();
            let stats = r.finish().await?;
            (started.elapsed(), stats.written, during)
        }
    };
    Ok(Sample {
        engine: ran,
        flush,
        entries,
        during,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let facts: usize = arg("--facts")
        .map(|f| f.parse())
        .transpose()
        .context("--facts")?
        .unwrap_or(10_000);
    let runs: usize = arg("--runs")
        .map(|f| f.parse())
        .transpose()
        .context("--runs")?
        .unwrap_or(7);
    let addr = arg("--addr").unwrap_or_else(start_memory_server);
    println!("{facts} facts per run, {runs} rounds (+1 warm-up), ledger at {addr}");

    let modes = [
        Mode::Alone,
        Mode::CloneOnly,
        Mode::CloneAll,
        Mode::Facts,
        Mode::FactsAndEvents,
    ];
    let mut samples: Vec<Vec<Sample>> = modes.iter().map(|_| Vec::new()).collect();
    for n in 0..=runs {
        // Rotate the order of the modes from round to round.
        for k in 0..modes.len() {
            let m = (n + k) % modes.len();
            let s = round(&addr, facts, modes[m], n).await?;
            if n > 0 {
                samples[m].push(s);
            }
        }
    }
    let base = median(samples[0].iter().map(|s| s.engine).collect());
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "engine", "vs alone", "paired", "fastest", "flush", "entries/s"
    );
    let names = [
        "engine alone",
        "cloning facts (floor)",
        "cloning facts + events",
        "recording facts",
        "recording facts + events",
    ];
    for (m, name) in names.iter().enumerate() {
        let engine = median(samples[m].iter().map(|s| s.engine).collect());
        let flush = median(samples[m].iter().map(|s| s.flush).collect());
        let overhead = (engine.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
        // Median of the ratios to the engine alone in the same round.
        let mut ratios: Vec<f64> = samples[m]
            .iter()
            .zip(&samples[0])
            .map(|(s, a)| s.engine.as_secs_f64() / a.engine.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let paired = (ratios[ratios.len() / 2] - 1.0) * 100.0;
        let fastest = samples[m]
            .iter()
            .map(|s| s.engine)
            .min()
            .unwrap_or_default();
        let rate = if m < 3 {
            String::new()
        } else {
            let entries = samples[m][0].entries as f64;
            format!("{:.0}", entries / (engine + flush).as_secs_f64())
        };
        println!(
            "{name:<26} {:>9} {:>8.1}% {:>8.1}% {:>9} {:>9} {:>10}",
            format!("{engine:.1?}"),
            overhead,
            paired,
            format!("{fastest:.1?}"),
            format!("{flush:.2?}"),
            rate
        );
    }
    for (m, name) in names.iter().enumerate().skip(3) {
        let mut during: Vec<u64> = samples[m].iter().map(|s| s.during).collect();
        during.sort_unstable();
        println!(
            "{name}: entries already written when the run ended: median {}, max {}",
            during[during.len() / 2],
            during[during.len() - 1]
        );
    }
    println!(
        "engine: median wall time of Engine::run. vs alone: against the engine alone's median. \
         paired: median of the per-round ratios. fastest: the quickest run. flush: median wait after the run until the \
         ledger holds everything."
    );
    Ok(())
}
