//! Model-based randomized tests: seeded random sequences of operations
//! (appends, batches conditional or not, idempotent retries and conflicts,
//! loads of valid, extending, conflicting, corrupt and refused snapshots,
//! reads with every filter, watches from any sequence, restarts) run
//! against the ledger over every backend and are checked, step by step,
//! against a plain model of what the ledger must hold.
//!
//! Sizes: `CONVERGE_LEDGER_MODEL_CASES` (runs per backend) and
//! `CONVERGE_LEDGER_MODEL_STEPS` (operations per run), small by default so
//! CI stays fast; `CONVERGE_LEDGER_MODEL_SEED` replays one run. A failure
//! names its seed and step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use converge_ledger_core::{Digest, Entry, Head, HeadSigner, Metadata, NewEntry};
use converge_ledger_postgres::PostgresStore;
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_server::{Ledger, LedgerConfig, LedgerError};
use converge_ledger_store::{
    EmbeddedOptions, EmbeddedStore, FsyncPolicy, MemoryStore, Store, SystemClock,
};
use tokio_stream::StreamExt;

/// splitmix64: a tiny, well-mixed, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const CONTEXTS: [&str; 4] = ["m0", "m1", "m2", "m3"];
const KEYS: [&str; 3] = ["a", "b", "c"];

/// What one entry must be: its content, where it came from (loads keep the
/// origin), and the Lamport clock it got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    key: String,
    payload: Vec<u8>,
    metadata: Metadata,
    lamport: u64,
    /// The append that created it; two contexts agree at a sequence iff
    /// they hold the same origins up to it.
    origin: u64,
}

/// An idempotency key's record: the first sequence and the content of the
/// entries appended under it.
#[derive(Debug, Clone)]
struct KeyRecord {
    first: u64,
    contents: Vec<(String, Vec<u8>, Metadata)>,
}

#[derive(Default)]
struct Model {
    contexts: BTreeMap<String, Vec<Expected>>,
    keys: HashMap<(String, String), KeyRecord>,
    /// Hash of every entry once seen: entries never change.
    hashes: HashMap<(String, u64), Digest>,
    /// Snapshots taken: context, bytes, and the entries they hold.
    snapshots: Vec<(String, Vec<u8>, Vec<Expected>)>,
    next_origin: u64,
    next_key: u64,
    /// Through which sequence each context's history was loaded (the last
    /// load that wrote entries), as its signed head must say.
    loaded: HashMap<String, u64>,
}

impl Model {
    fn entries(&self, context: &str) -> &[Expected] {
        self.contexts.get(context).map_or(&[], Vec::as_slice)
    }

    fn lamport(&self, context: &str) -> u64 {
        self.entries(context).last().map_or(0, |e| e.lamport)
    }

    fn push(&mut self, context: &str, new: &NewEntry) -> Expected {
        let lamport = self.lamport(context).max(new.lamport) + 1;
        self.next_origin += 1;
        let e = Expected {
            key: new.key.clone(),
            payload: new.payload.clone(),
            metadata: new.metadata.clone(),
            lamport,
            origin: self.next_origin,
        };
        self.contexts
            .entry(context.to_owned())
            .or_default()
            .push(e.clone());
        e
    }

    /// Checks `entry` (read from the ledger at `context`) against the model
    /// and against every earlier sighting of it.
    fn check(&mut self, context: &str, entry: &Entry, what: &str) {
        let want = self
            .entries(context)
            .get(entry.sequence as usize - 1)
            .unwrap_or_else(|| panic!("{what}: {context}#{} is not in the model", entry.sequence));
        assert_eq!(
            (&entry.key, &entry.payload, &entry.metadata, entry.lamport),
            (&want.key, &want.payload, &want.metadata, want.lamport),
            "{what}: {context}#{}",
            entry.sequence
        );
        let seen = self
            .hashes
            .entry((context.to_owned(), entry.sequence))
            .or_insert(entry.hash);
        assert_eq!(
            *seen, entry.hash,
            "{what}: {context}#{} changed its hash",
            entry.sequence
        );
    }
}

/// A backend under test: how to (re)open its store.
trait Backend {
    fn name(&self) -> &'static str;
    fn open(&mut self) -> Arc<dyn Store>;
}

struct Memory(Arc<MemoryStore>);

impl Backend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    /// A restart of the ledger over the same memory.
    fn open(&mut self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

struct Embedded(tempfile::TempDir);

impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }
    fn open(&mut self) -> Arc<dyn Store> {
        let mut o = EmbeddedOptions::new(self.0.path());
        o.fsync = FsyncPolicy::Always;
        Arc::new(EmbeddedStore::open(o).expect("open the embedded store"))
    }
}

struct Postgres(TestSchema);

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn open(&mut self) -> Arc<dyn Store> {
        let options = self.0.options();
        // PostgresStore blocks: never open it on a runtime worker.
        let store = std::thread::spawn(move || PostgresStore::open(options))
            .join()
            .unwrap()
            .expect("open the PostgreSQL store");
        Arc::new(store)
    }
}

fn new_entry(rng: &mut Rng, origin_hint: u64) -> NewEntry {
    let mut metadata = Metadata::new();
    for i in 0..rng.below(3) {
        metadata.insert(format!("m{i}"), format!("v{}", rng.below(4)));
    }
    let len = rng.below(48) as usize;
    let mut payload: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
    payload.extend_from_slice(&origin_hint.to_be_bytes()[6..]);
    NewEntry {
        key: rng.pick(&KEYS).to_string(),
        payload,
        metadata,
        lamport: if rng.chance(10) { rng.below(500) } else { 0 },
    }
}

fn content(e: &NewEntry) -> (String, Vec<u8>, Metadata) {
    (e.key.clone(), e.payload.clone(), e.metadata.clone())
}

struct Run {
    rng: Rng,
    model: Model,
    ledger: Arc<Ledger>,
    seed: u64,
    step: usize,
}

impl Run {
    fn at(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    /// An idempotency key: none, a fresh one, or one used before in
    /// `context` (for a retry or a conflict).
    fn idempotency_key(&mut self, context: &str) -> Option<String> {
        let used: Vec<String> = self
            .model
            .keys
            .keys()
            .filter(|(c, _)| c == context)
            .map(|(_, k)| k.clone())
            .collect();
        let roll = self.rng.below(10);
        if roll < 5 {
            return None;
        }
        if roll < 8 || used.is_empty() {
            self.model.next_key += 1;
            return Some(format!("key-{}", self.model.next_key));
        }
        Some(self.rng.pick(&used).clone())
    }

    async fn append(&mut self) {
        let context = self.rng.pick(&CONTEXTS).to_string();
        let key = self.idempotency_key(&context);
        let known = key
            .as_ref()
            .and_then(|k| self.model.keys.get(&(context.clone(), k.clone())).cloned());
        // A retry repeats the content of the key's first append.
        let mut new = new_entry(&mut self.rng, self.model.next_origin);
        if let Some(r) = &known
            && r.contents.len() == 1
            && self.rng.chance(70)
        {
            (new.key, new.payload, new.metadata) = r.contents[0].clone();
        }
        let got = self
            .ledger
            .append(context.clone(), new.clone(), key.clone())
            .await;
        let at = self.at();
        match known {
            Some(r) if r.contents == vec![content(&new)] => {
                let a = got.unwrap_or_else(|e| panic!("{at}: retry refused: {e}"));
                assert!(a.duplicate, "{at}: a retry appended again");
                assert_eq!(a.entry.sequence, r.first, "{at}");
                self.model.check(&context, &a.entry, &at);
            }
            Some(_) => {
                let e = got.expect_err("a reused key with other content is refused");
                assert!(matches!(e, LedgerError::AlreadyExists(_)), "{at}: {e}");
            }
            None => {
                let a = got.unwrap_or_else(|e| panic!("{at}: append failed: {e}"));
                assert!(!a.duplicate, "{at}");
                self.model.push(&context, &new);
                let seq = self.model.entries(&context).len() as u64;
                assert_eq!(a.entry.sequence, seq, "{at}");
                self.model.check(&context, &a.entry, &at);
                if let Some(k) = key {
                    self.model.keys.insert(
                        (context, k),
                        KeyRecord {
                            first: seq,
                            contents: vec![content(&new)],
                        },
                    );
                }
            }
        }
    }

    async fn batch(&mut self) {
        let context = self.rng.pick(&CONTEXTS).to_string();
        let key = self.idempotency_key(&context);
        let known = key
            .as_ref()
            .and_then(|k| self.model.keys.get(&(context.clone(), k.clone())).cloned());
        let n = 1 + self.rng.below(6) as usize;
        let mut entries: Vec<NewEntry> = (0..n)
            .map(|_| new_entry(&mut self.rng, self.model.next_origin))
            .collect();
        for e in entries.iter_mut().skip(1) {
            e.lamport = 0;
        }
        if let Some(r) = &known
            && self.rng.chance(70)
        {
            // A retry of the batch (or of the single append) under the key.
            entries = r
                .contents
                .iter()
                .map(|(k, p, m)| NewEntry {
                    key: k.clone(),
                    payload: p.clone(),
                    metadata: m.clone(),
                    lamport: 0,
                })
                .collect();
        }
        let head = self.model.entries(&context).len() as u64;
        let expected = match self.rng.below(3) {
            0 => None,
            1 => Some(head),
            _ => Some(head + 1 + self.rng.below(3)),
        };
        let got = self
            .ledger
            .append_batch(context.clone(), entries.clone(), key.clone(), expected)
            .await;
        let at = self.at();
        let contents: Vec<_> = entries.iter().map(content).collect();
        match known {
            // The key is checked first: a retry is a duplicate whatever the
            // expected head.
            Some(r) if r.contents == contents => {
                let b = got.unwrap_or_else(|e| panic!("{at}: batch retry refused: {e}"));
                assert!(b.duplicate, "{at}");
                assert_eq!(b.entries[0].sequence, r.first, "{at}");
                for e in &b.entries {
                    self.model.check(&context, e, &at);
                }
            }
            Some(_) => {
                let e = got.expect_err("a reused key with other entries is refused");
                assert!(matches!(e, LedgerError::AlreadyExists(_)), "{at}: {e}");
            }
            None if expected.is_some_and(|x| x != head) => {
                let e = got.expect_err("a batch at another head is refused");
                assert!(
                    matches!(e, LedgerError::HeadMismatch { actual, .. } if actual == head),
                    "{at}: {e}"
                );
            }
            None => {
                let b = got.unwrap_or_else(|e| panic!("{at}: batch failed: {e}"));
                assert!(!b.duplicate && b.entries.len() == n, "{at}");
                for e in &entries {
                    self.model.push(&context, e);
                }
                for e in &b.entries {
                    self.model.check(&context, e, &at);
                }
                if let Some(k) = key {
                    self.model.keys.insert(
                        (context, k),
                        KeyRecord {
                            first: head + 1,
                            contents,
                        },
                    );
                }
            }
        }
    }

    async fn read(&mut self) {
        let context = self.rng.pick(&CONTEXTS).to_string();
        let len = self.model.entries(&context).len() as u64;
        let after = self.rng.below(len + 3);
        let until = if self.rng.chance(50) {
            len
        } else {
            self.rng.below(len + 3)
        };
        let key = self
            .rng
            .chance(40)
            .then(|| self.rng.pick(&KEYS).to_string());
        let limit = 1 + self.rng.below(12) as usize;
        let head = self
            .ledger
            .read_head(&context, key.as_deref().unwrap_or(""))
            .await
            .unwrap();
        let at = self.at();
        assert_eq!(head, len, "{at}: head of {context}");
        let (got, _) = self
            .ledger
            .read_chunk(&context, after, until, key.as_deref(), limit, usize::MAX)
            .await
            .unwrap();
        let want: Vec<u64> = self
            .model
            .entries(&context)
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .filter(|(s, e)| *s > after && *s <= until && key.as_deref().is_none_or(|k| e.key == k))
            .map(|(s, _)| s)
            .take(limit)
            .collect();
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            want,
            "{at}: read {context} after {after} until {until} key {key:?} limit {limit}"
        );
        for e in &got {
            self.model.check(&context, e, &at);
        }
    }

    /// Reads a whole context and checks its chain from genesis, its head
    /// and every entry.
    async fn verify(&mut self, context: &str) {
        let at = self.at();
        let len = self.model.entries(context).len() as u64;
        let (got, _) = self
            .ledger
            .read_chunk(context, 0, u64::MAX, None, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert_eq!(got.len() as u64, len, "{at}: entries of {context}");
        let mut head = Head::empty(context);
        for e in &got {
            head.check_next(context, e)
                .unwrap_or_else(|err| panic!("{at}: {context}: {err}"));
            head.advance(e);
            self.model.check(context, e, &at);
        }
        let stored = self
            .ledger
            .head(context)
            .await
            .unwrap()
            .unwrap_or_else(|| Head::empty(context));
        assert!(
            stored.same_history(&head),
            "{at}: the stored head of {context} is the fold: {stored:?} {head:?}"
        );
        assert_eq!(
            stored.loaded.map(|l| (l.through, l.signer)),
            self.model
                .loaded
                .get(context)
                .map(|t| (*t, self.ledger.public_key())),
            "{at}: what the head of {context} says was loaded"
        );
    }

    async fn snapshot_and_load(&mut self) {
        let at = self.at();
        if self.model.snapshots.is_empty() || self.rng.chance(40) {
            let source = self.rng.pick(&CONTEXTS).to_string();
            let snap = self.ledger.snapshot(&source).await.unwrap();
            let held = self.model.entries(&source).to_vec();
            assert_eq!(snap.head.sequence, held.len() as u64, "{at}");
            self.model.snapshots.push((source, snap.bytes, held));
            return;
        }
        let (_, bytes, held) = self.rng.pick(&self.model.snapshots).clone();
        let target = self.rng.pick(&CONTEXTS).to_string();
        let current = self.model.entries(&target).to_vec();
        match self.rng.below(4) {
            0 => {
                // A corrupt snapshot changes nothing.
                let mut bad = bytes.clone();
                let i = self.rng.below(bad.len() as u64) as usize;
                bad[i] ^= 1 << self.rng.below(8);
                let e = self
                    .ledger
                    .load(target.clone(), bad, false, false)
                    .await
                    .expect_err("a corrupt snapshot is refused");
                assert!(matches!(e, LedgerError::InvalidArgument(_)), "{at}: {e}");
            }
            1 if !current.is_empty() => {
                let e = self
                    .ledger
                    .load(target.clone(), bytes, true, false)
                    .await
                    .expect_err("fail_if_exists into a non-empty context");
                assert!(matches!(e, LedgerError::AlreadyExists(_)), "{at}: {e}");
            }
            _ => {
                let got = self.ledger.load(target.clone(), bytes, false, false).await;
                let overlap = current.len().min(held.len());
                let differs = (0..overlap).find(|&i| current[i].origin != held[i].origin);
                match differs {
                    Some(i) => {
                        let e = got.expect_err("a diverging snapshot is refused");
                        assert!(
                            matches!(&e, LedgerError::FailedPrecondition(m)
                                if m.contains(&format!("entry {} differs", i + 1))),
                            "{at}: {e}"
                        );
                    }
                    None => {
                        let l = got.unwrap_or_else(|e| panic!("{at}: load refused: {e}"));
                        let restored = held.len().saturating_sub(current.len());
                        assert_eq!(l.restored, restored as u64, "{at}");
                        let entries = self.model.contexts.entry(target.clone()).or_default();
                        entries.extend_from_slice(&held[overlap..]);
                        assert_eq!(l.latest_sequence, entries.len() as u64, "{at}");
                        if restored > 0 {
                            let through = entries.len() as u64;
                            self.model.loaded.insert(target.clone(), through);
                        }
                    }
                }
            }
        }
        self.verify(&target).await;
    }

    async fn watch(&mut self) {
        let context = self.rng.pick(&CONTEXTS).to_string();
        let len = self.model.entries(&context).len() as u64;
        let from = self.rng.below(len + 2);
        let key = self
            .rng
            .chance(30)
            .then(|| self.rng.pick(&KEYS).to_string());
        let mut watch = self
            .ledger
            .watch(context.clone(), key.clone(), from)
            .unwrap();
        // Appends while the watch catches up and goes live.
        for _ in 0..self.rng.below(4) {
            let new = new_entry(&mut self.rng, self.model.next_origin);
            self.ledger
                .append(context.clone(), new.clone(), None)
                .await
                .unwrap();
            self.model.push(&context, &new);
        }
        let want: Vec<u64> = self
            .model
            .entries(&context)
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .filter(|(s, e)| *s > from && key.as_deref().is_none_or(|k| e.key == k))
            .map(|(s, _)| s)
            .collect();
        let at = self.at();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap_or_else(|_| panic!("{at}: the watch stalled after {got:?}, want {want:?}"))
                .expect("the watch ended early")
                .unwrap();
            self.model.check(&context, &e, &at);
            got.push(e.sequence);
        }
        assert_eq!(got, want, "{at}: watch {context} from {from} key {key:?}");
    }
}

/// A ledger over `store` that signs with `signer` (kept across restarts,
/// as a server's key file is).
fn ledger(store: Arc<dyn Store>, signer: &Arc<HeadSigner>) -> Arc<Ledger> {
    Ledger::with_signer(
        store,
        LedgerConfig::default(),
        signer.clone(),
        Arc::new(SystemClock),
    )
}

async fn run_case(backend: &mut dyn Backend, seed: u64, steps: usize) {
    let signer = Arc::new(HeadSigner::from_seed([7; 32]));
    let mut run = Run {
        rng: Rng(seed),
        model: Model::default(),
        ledger: ledger(backend.open(), &signer),
        seed,
        step: 0,
    };
    for step in 0..steps {
        run.step = step;
        match run.rng.below(100) {
            0..=34 => run.append().await,
            35..=49 => run.batch().await,
            50..=64 => run.read().await,
            65..=76 => run.snapshot_and_load().await,
            77..=86 => run.watch().await,
            87..=96 => {
                let c = run.rng.pick(&CONTEXTS).to_string();
                run.verify(&c).await;
            }
            _ => {
                run.ledger
                    .shutdown()
                    .await
                    .unwrap_or_else(|e| panic!("{}: shutdown: {e}", run.at()));
                // Let go of the old store before reopening it.
                run.ledger = ledger(Arc::new(MemoryStore::new()), &signer);
                run.ledger = ledger(backend.open(), &signer);
            }
        }
    }
    for c in CONTEXTS {
        run.verify(c).await;
    }
    run.ledger.shutdown().await.unwrap();
}

/// Runs the configured number of seeded cases; the seed of a failing case
/// is in its panic message (and replays with CONVERGE_LEDGER_MODEL_SEED).
async fn run_cases(mut make: impl FnMut() -> Option<Box<dyn Backend>>, cases: usize, steps: usize) {
    let seeds: Vec<u64> = match std::env::var("CONVERGE_LEDGER_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("CONVERGE_LEDGER_MODEL_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..cases as u64).map(|i| base ^ (i * 0x9E37)).collect()
        }
    };
    for seed in seeds {
        let Some(mut backend) = make() else { return };
        eprintln!(
            "model run on {}: seed {seed} ({steps} steps; replay with CONVERGE_LEDGER_MODEL_SEED={seed})",
            backend.name()
        );
        run_case(backend.as_mut(), seed, steps).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_memory_match_the_model() {
    run_cases(
        || Some(Box::new(Memory(Arc::new(MemoryStore::new())))),
        env_usize("CONVERGE_LEDGER_MODEL_CASES", 8),
        env_usize("CONVERGE_LEDGER_MODEL_STEPS", 300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_embedded_storage_with_restarts_match_the_model() {
    run_cases(
        || Some(Box::new(Embedded(tempfile::tempdir().unwrap()))),
        env_usize("CONVERGE_LEDGER_MODEL_CASES", 4),
        env_usize("CONVERGE_LEDGER_MODEL_STEPS", 300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_postgres_with_restarts_match_the_model() {
    let mut n = 0;
    run_cases(
        || {
            n += 1;
            let schema = TestSchema::create(&format!("model_{n}"))?;
            Some(Box::new(Postgres(schema)))
        },
        env_usize("CONVERGE_LEDGER_MODEL_CASES", 2),
        env_usize("CONVERGE_LEDGER_MODEL_STEPS", 200),
    )
    .await;
}
