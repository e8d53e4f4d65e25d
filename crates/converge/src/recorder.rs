//! Records a converge-core run into one ledger context while it runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use converge_core::experience_store::ExperienceEvent;
use converge_core::{
    ContextFact, ContextState, Engine, ExperienceEventObserver, StreamingCallback,
};
use converge_ledger_client::{
    BatchEntry, BatchOptions, Client, ClientError, ClientOptions, GetOptions,
};
use converge_pack::PayloadRegistry;
use tokio::sync::{Notify, oneshot, watch};

use crate::Error;
use crate::codec::{
    FactCollector, context_from_parts, context_key_name, decode_wire_fact, encode_fact,
    parse_context_key,
};

/// Entry key of recorded experience events.
pub const EXPERIENCE_KEY: &str = "experience";

/// Most entries per AppendBatch when the server does not say.
const BATCH_ENTRIES_DEFAULT: usize = 4096;
/// Most bytes of keys, payloads and metadata per AppendBatch (a single
/// larger entry goes alone), and at most half the server's request limit.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Entries and bytes per batch for a server that reports these limits (0:
/// not reported).
pub(crate) fn batch_limits(entries_max: u32, request_bytes_max: u64) -> (usize, usize) {
    let entries = match entries_max {
        0 => BATCH_ENTRIES_DEFAULT,
        n => n as usize,
    };
    let bytes = match request_bytes_max {
        0 => BATCH_BYTES,
        n => BATCH_BYTES.min(usize::try_from(n / 2).unwrap_or(usize::MAX)),
    };
    (entries, bytes.max(1))
}

/// What [`Recorder`] does when the engine announces a fact or event while
/// its buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// The engine's thread waits until the writer has made room: the run
    /// slows down to the ledger's pace and nothing is lost. The time spent
    /// waiting is reported in [`RecordStats::waited`].
    #[default]
    Wait,
    /// Recording stops at the first fact or event that does not fit: the
    /// ledger keeps everything before it (a gapless prefix of the run, in
    /// order) and nothing after it, the engine runs on at full speed, and
    /// [`Recorder::flush`] returns [`Error::BufferFull`] with the number of
    /// facts and events left out.
    Fail,
}

/// How a [`Recorder`] buffers and connects.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    /// Facts and events held between the engine and the ledger (at least 1).
    pub capacity: usize,
    /// What happens when the buffer is full.
    pub on_full: OnFull,
    /// The writer defers to the engine while it is adding facts: it starts
    /// writing once nothing was announced for this long, or the buffer is
    /// half full, or the recorder is flushed or finished. Facts therefore
    /// reach the ledger right after each burst (a merge phase), and the
    /// writer does not compete with the engine for CPU during one.
    /// `Duration::ZERO`: write each fact as soon as it arrives.
    pub quiet: Duration,
    /// Options of the recorder's own ledger connection.
    pub client: ClientOptions,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            on_full: OnFull::Wait,
            quiet: Duration::from_millis(10),
            client: ClientOptions::default(),
        }
    }
}

/// What a recorder did so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordStats {
    /// The ledger context of the run.
    pub context: String,
    /// Entries the context held when the recorder connected.
    pub start_sequence: u64,
    /// Facts accepted into the buffer.
    pub facts: u64,
    /// Experience events accepted into the buffer.
    pub events: u64,
    /// Entries written to the ledger by this recorder.
    pub written: u64,
    /// Facts and events announced by the engine that will not be recorded
    /// (buffer full with [`OnFull::Fail`], a failed write, or after
    /// [`Recorder::finish`]).
    pub unrecorded: u64,
    /// Sequence of the last entry written (0: none yet).
    pub last_sequence: u64,
    /// Total time the engine waited for buffer space ([`OnFull::Wait`]).
    pub waited: Duration,
    /// The most facts and events buffered at once.
    pub high_water: usize,
}

/// Records a run: every fact the engine adds and every experience event it
/// emits becomes one entry of a ledger context, in the engine's order.
///
/// | entry | key | payload | metadata |
/// |---|---|---|---|
/// | fact | its context key (`Seeds`, `Hypotheses`, ...) | the fact's `WireContextFact` as JSON | `cycle`, `fact_id` |
/// | experience event | `experience` | the `ExperienceEvent` as JSON | `cycle`, `kind` |
///
/// The engine's callbacks only move the fact or event into a bounded
/// buffer; a writer on the recorder's own thread, with its own connection,
/// takes everything buffered and appends it as one ordered, atomic batch
/// per round trip (AppendBatch), so ledger order is engine order and the
/// ledger keeps pace with the engine. Each batch is conditional on the
/// last sequence the recorder wrote: the recorder owns its context while
/// it records, and an entry appended there by anyone else stops the
/// recording with an error rather than interleaving with the run. The
/// work is never hidden: [`Recorder::flush`] waits until everything
/// announced so far is in the ledger and returns the first error, and
/// [`OnFull`] says what a full buffer does. Batches carry idempotency
/// keys, so the client's retries never duplicate an entry.
///
/// Cloning is cheap; clones share the buffer and the writer. When the last
/// clone is dropped the writer still writes what is buffered, then stops;
/// call [`Recorder::finish`] to wait for that and learn the outcome.
#[derive(Clone)]
pub struct Recorder {
    handle: Arc<Handle>,
}

/// Closes the buffer when the last [`Recorder`] clone goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Boxed, so that the buffer moves pointers, not large values.
enum Item {
    Fact {
        cycle: u32,
        fact: Box<ContextFact>,
    },
    Event {
        cycle: u32,
        event: Box<ExperienceEvent>,
    },
}

/// Why recording stopped early.
#[derive(Clone)]
enum Refusal {
    BufferFull,
    Closed,
    Failed(Error),
}

struct Queue {
    items: VecDeque<Item>,
    accepted: u64,
    facts: u64,
    events: u64,
    unrecorded: u64,
    refusal: Option<Refusal>,
    waited: Duration,
    high_water: usize,
    /// Flushes waiting: write without waiting for quiet.
    flushing: u32,
}

#[derive(Clone, Default)]
struct Progress {
    written: u64,
    last_sequence: u64,
    error: Option<Error>,
    stopped: bool,
}

struct Shared {
    context: String,
    capacity: usize,
    on_full: OnFull,
    quiet: Duration,
    start_sequence: Mutex<u64>,
    queue: Mutex<Queue>,
    /// Signalled when the writer takes items (room in the buffer) or stops.
    space: Condvar,
    /// Signalled when items arrive or the buffer closes.
    items: Notify,
    progress: watch::Sender<Progress>,
    cycle: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Item) {
        let mut q = self.lock();
        let mut waiting_since: Option<Instant> = None;
        loop {
            if q.refusal.is_some() {
                q.unrecorded += 1;
                break;
            }
            if q.items.len() < self.capacity {
                match &item {
                    Item::Fact { .. } => q.facts += 1,
                    Item::Event { .. } => q.events += 1,
                }
                q.items.push_back(item);
                q.accepted += 1;
                let len = q.items.len();
                q.high_water = q.high_water.max(len);
                drop(q);
                // Wake the writer only when it may be waiting for this: the
                // buffer was empty, or just became half full.
                if len == 1 || len * 2 == self.capacity || len * 2 == self.capacity + 1 {
                    self.items.notify_one();
                }
                return;
            }
            match self.on_full {
                OnFull::Fail => {
                    q.refusal = Some(Refusal::BufferFull);
                    q.unrecorded += 1;
                    break;
                }
                OnFull::Wait => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    q = self.space.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.waited += since.elapsed();
                    waiting_since = Some(Instant::now());
                }
            }
        }
    }

    fn close(&self) {
        let mut q = self.lock();
        if q.refusal.is_none() {
            q.refusal = Some(Refusal::Closed);
        }
        drop(q);
        self.items.notify_one();
        self.space.notify_all();
    }

    /// Takes the next batch; `None` when the buffer is closed and empty.
    /// `seen` is the writer's last observation of the count of accepted
    /// items and when it made it: the engine is quiet when that count has
    /// not moved for `quiet` (so the engine's thread never reads a clock).
    async fn next_batch(&self, seen: &mut (u64, Instant), max: usize) -> Option<Vec<Item>> {
        enum Next {
            Batch(Vec<Item>),
            Done,
            Sleep(Duration),
            Wait,
        }
        loop {
            let next = {
                let mut q = self.lock();
                if q.items.is_empty() {
                    if q.refusal.is_some() {
                        Next::Done
                    } else {
                        Next::Wait
                    }
                } else {
                    if q.accepted != seen.0 {
                        *seen = (q.accepted, Instant::now());
                    }
                    let since = seen.1.elapsed();
                    let now = since >= self.quiet
                        || q.flushing > 0
                        || q.refusal.is_some()
                        || q.items.len() * 2 >= self.capacity;
                    if now {
                        let n = q.items.len().min(max);
                        Next::Batch(q.items.drain(..n).collect())
                    } else {
                        Next::Sleep(self.quiet - since)
                    }
                }
            };
            match next {
                Next::Batch(batch) => {
                    self.space.notify_all();
                    return Some(batch);
                }
                Next::Done => return None,
                // A flush, a close or a half-full buffer ends the wait early.
                Next::Sleep(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = self.items.notified() => {}
                    }
                }
                Next::Wait => self.items.notified().await,
            }
        }
    }

    /// The writer failed: nothing more is recorded.
    fn fail(&self, error: Error, lost: u64) {
        let mut q = self.lock();
        let buffered = q.items.len() as u64;
        q.items.clear();
        q.unrecorded += buffered + lost;
        q.refusal = Some(Refusal::Failed(error.clone()));
        drop(q);
        self.space.notify_all();
        self.progress.send_modify(|p| p.error = Some(error));
    }

    fn stats(&self) -> RecordStats {
        let p = self.progress.borrow().clone();
        let q = self.lock();
        RecordStats {
            context: self.context.clone(),
            start_sequence: *self
                .start_sequence
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            facts: q.facts,
            events: q.events,
            written: p.written,
            unrecorded: q.unrecorded,
            last_sequence: p.last_sequence,
            waited: q.waited,
            high_water: q.high_water,
        }
    }
}

/// Marks the writer stopped however it ends (also on a panic), so that
/// nobody waits for it forever.
struct StoppedGuard(Arc<Shared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        let buffered = q.items.len() as u64;
        q.items.clear();
        q.unrecorded += buffered;
        if q.refusal.is_none() {
            q.refusal = Some(Refusal::Closed);
        }
        drop(q);
        self.0.space.notify_all();
        self.0.progress.send_modify(|p| p.stopped = true);
    }
}

fn encode_item(item: Item) -> Result<BatchEntry, Error> {
    Ok(match item {
        Item::Fact { cycle, fact } => BatchEntry {
            key: context_key_name(fact.key()),
            payload: encode_fact(&fact)?,
            metadata: BTreeMap::from([
                ("cycle".to_owned(), cycle.to_string()),
                ("fact_id".to_owned(), fact.id().as_str().to_owned()),
            ]),
        },
        Item::Event { cycle, event } => BatchEntry {
            key: EXPERIENCE_KEY.to_owned(),
            payload: serde_json::to_vec(&event)
                .map_err(|e| Error::Encode(format!("experience event: {e}")))?,
            metadata: BTreeMap::from([
                ("cycle".to_owned(), cycle.to_string()),
                ("kind".to_owned(), format!("{:?}", event.kind())),
            ]),
        },
    })
}

/// Appends `batch` right after the last entry this recorder wrote: one
/// conditional AppendBatch, so ledger order is engine order and an entry
/// appended to the context by anyone else stops the recording instead of
/// interleaving with it.
async fn send(shared: &Shared, client: &Client, batch: Vec<BatchEntry>) -> Result<(), Error> {
    let expected = shared.progress.borrow().last_sequence;
    let n = batch.len() as u64;
    let result = client
        .append_batch(
            &shared.context,
            batch,
            BatchOptions {
                expected_sequence: Some(expected),
                ..BatchOptions::default()
            },
        )
        .await
        .map_err(|e| match e {
            e @ ClientError::HeadMismatch { .. } => Error::ledger(
                format!(
                    "recording into {:?}: something else appended to the run's context",
                    shared.context
                ),
                e,
            ),
            e => Error::ledger(format!("recording into {:?}", shared.context), e),
        })?;
    let last = result.entries.last().map_or(expected, |e| e.sequence);
    shared.progress.send_modify(|p| {
        p.written += n;
        p.last_sequence = last;
    });
    Ok(())
}

/// Bytes of an entry as a batch counts them.
pub(crate) fn entry_bytes(e: &BatchEntry) -> usize {
    e.key.len()
        + e.payload.len()
        + e.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + 64
}

async fn run_writer(shared: Arc<Shared>, client: Client, batch_max: usize, batch_bytes: usize) {
    let _guard = StoppedGuard(shared.clone());
    let mut seen = (0, Instant::now());
    while let Some(items) = shared.next_batch(&mut seen, batch_max).await {
        // Items drained but not yet written: lost if a write fails.
        let mut left = items.len() as u64;
        let mut batch = Vec::with_capacity(items.len());
        let mut bytes = 0usize;
        for item in items {
            let entry = match encode_item(item) {
                Ok(e) => e,
                Err(e) => {
                    shared.fail(e, left);
                    return;
                }
            };
            let size = entry_bytes(&entry);
            // Cut before an entry that would take the batch past the cap
            // (a single larger entry goes alone).
            if !batch.is_empty() && bytes + size > batch_bytes {
                let sent = batch.len() as u64;
                if let Err(e) = send(&shared, &client, std::mem::take(&mut batch)).await {
                    shared.fail(e, left);
                    return;
                }
                left -= sent;
                bytes = 0;
            }
            bytes += size;
            batch.push(entry);
        }
        if !batch.is_empty()
            && let Err(e) = send(&shared, &client, batch).await
        {
            shared.fail(e, left);
            return;
        }
    }
}

impl Recorder {
    /// Connects a recorder for the run context `context` to the ledger at
    /// `addr`. The writer runs on a thread of its own with its own
    /// connection, so an engine waiting for buffer space never blocks it,
    /// whatever runtime the engine runs on. Entries already in `context`
    /// (an earlier part of the run) stay; new ones follow them.
    pub async fn connect(
        addr: impl Into<String>,
        context: impl Into<String>,
        options: RecorderOptions,
    ) -> Result<Recorder, Error> {
        let addr = addr.into();
        let context = context.into();
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            context: context.clone(),
            capacity: options.capacity.max(1),
            on_full: options.on_full,
            quiet: options.quiet,
            start_sequence: Mutex::new(0),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                accepted: 0,
                facts: 0,
                events: 0,
                unrecorded: 0,
                refusal: None,
                waited: Duration::ZERO,
                high_water: 0,
                flushing: 0,
            }),
            space: Condvar::new(),
            items: Notify::new(),
            progress,
            cycle: AtomicU32::new(0),
        });
        let (ready, connected) = oneshot::channel::<Result<(), Error>>();
        let writer_shared = shared.clone();
        let client_options = options.client;
        std::thread::Builder::new()
            .name("ledger-recorder".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(Error::Runtime(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match Client::connect_with(addr, client_options).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready.send(Err(Error::ledger("connecting the recorder", e)));
                            return;
                        }
                    };
                    let head = client
                        .get(
                            &writer_shared.context,
                            GetOptions {
                                limit: 1,
                                ..GetOptions::default()
                            },
                        )
                        .await;
                    match head {
                        Ok(h) => {
                            *writer_shared
                                .start_sequence
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) = h.latest_sequence;
                            writer_shared
                                .progress
                                .send_modify(|p| p.last_sequence = h.latest_sequence);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(Error::ledger(
                                format!("reading the head of {:?}", writer_shared.context),
                                e,
                            )));
                            return;
                        }
                    }
                    let (batch_max, batch_bytes) = match client.server_info().await {
                        Ok(info) => batch_limits(info.batch_entries_max, info.request_bytes_max),
                        Err(_) => batch_limits(0, 0),
                    };
                    let _ = ready.send(Ok(()));
                    run_writer(writer_shared, client, batch_max, batch_bytes).await;
                });
            })
            .map_err(|e| Error::Runtime(e.to_string()))?;
        connected
            .await
            .map_err(|_| Error::Runtime("the recorder's thread ended while connecting".into()))??;
        Ok(Recorder {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Sets this recorder as `engine`'s streaming callback and experience
    /// event observer.
    pub fn attach(&self, engine: &mut Engine) {
        engine.set_streaming(Arc::new(self.clone()));
        engine.set_event_observer(Arc::new(self.clone()));
    }

    /// The run's ledger context.
    pub fn context(&self) -> &str {
        &self.shared().context
    }

    /// What was recorded so far (does not wait).
    pub fn stats(&self) -> RecordStats {
        self.shared().stats()
    }

    /// Waits until every fact and event announced before this call is in
    /// the ledger. Returns the first error instead: a failed write (nothing
    /// after it was recorded), a full buffer with [`OnFull::Fail`], or a
    /// finished recorder. Await it at the end of every run.
    pub async fn flush(&self) -> Result<RecordStats, Error> {
        let shared = self.shared();
        let target = {
            let mut q = shared.lock();
            q.flushing += 1;
            q.accepted
        };
        shared.items.notify_one();
        let mut rx = shared.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.written >= target || p.error.is_some() || p.stopped)
            .await
            .map(|p| p.clone())
            .map_err(|_| Error::Runtime("the recorder's writer is gone".into()));
        shared.lock().flushing -= 1;
        let progress = progress?;
        if let Some(e) = progress.error {
            return Err(e);
        }
        let q = shared.lock();
        match &q.refusal {
            Some(Refusal::BufferFull) => {
                return Err(Error::BufferFull {
                    capacity: shared.capacity,
                    unrecorded: q.unrecorded,
                });
            }
            Some(Refusal::Failed(e)) => return Err(e.clone()),
            Some(Refusal::Closed) if q.unrecorded > 0 || progress.written < target => {
                return Err(Error::Closed {
                    unrecorded: q.unrecorded,
                });
            }
            _ => {}
        }
        drop(q);
        Ok(shared.stats())
    }

    /// Flushes, then stops the writer: facts and events announced after this
    /// are not recorded (and counted in [`RecordStats::unrecorded`]).
    pub async fn finish(&self) -> Result<RecordStats, Error> {
        let result = self.flush().await;
        let shared = self.shared();
        shared.close();
        let mut rx = shared.progress.subscribe();
        let _ = rx.wait_for(|p| p.stopped).await;
        result
    }
}

impl StreamingCallback for Recorder {
    fn on_cycle_start(&self, cycle: u32) {
        self.shared().cycle.store(cycle, Ordering::Relaxed);
    }

    fn on_fact(&self, cycle: u32, fact: &ContextFact) {
        self.shared().push(Item::Fact {
            cycle,
            fact: Box::new(fact.clone()),
        });
    }

    fn on_cycle_end(&self, _cycle: u32, _facts_added: usize) {}
}

impl ExperienceEventObserver for Recorder {
    fn on_event(&self, event: &ExperienceEvent) {
        let shared = self.shared();
        shared.push(Item::Event {
            cycle: shared.cycle.load(Ordering::Relaxed),
            event: Box::new(event.clone()),
        });
    }
}

/// A run rebuilt from its ledger context.
#[derive(Debug)]
pub struct RestoredRun {
    /// The context holding every recorded fact, per key in recorded order
    /// (its version is the number of facts).
    pub context: ContextState,
    /// Distinct facts restored.
    pub facts: usize,
    /// Experience events in the record.
    pub events: usize,
    /// Entries read (the context's head when the read started).
    pub last_sequence: u64,
    /// The highest cycle recorded.
    pub last_cycle: u32,
}

/// Rebuilds the context of a run recorded by [`Recorder`] in `context`, to
/// continue it with `Engine::run`: suggestors that check the context for
/// their own contributions (converge's idempotency rule) do not run again
/// for work already recorded. Facts are decoded with `registry` (payload
/// types beyond converge-pack's must be registered in it). A fact recorded
/// twice identically counts once (the engine announces repeats too); two
/// different facts under one id are an error, as they are for the engine.
pub async fn restore_run(
    client: &Client,
    context: &str,
    registry: &PayloadRegistry,
) -> Result<RestoredRun, Error> {
    let mut collector = FactCollector::default();
    let mut events = 0usize;
    let mut last_cycle = 0u32;
    let mut failure: Option<Error> = None;
    let last_sequence = client
        .read_all(context, GetOptions::default(), |entry| {
            if failure.is_some() {
                return;
            }
            if let Some(cycle) = entry
                .metadata
                .get("cycle")
                .and_then(|c| c.parse::<u32>().ok())
            {
                last_cycle = last_cycle.max(cycle);
            }
            if entry.key == EXPERIENCE_KEY {
                events += 1;
                return;
            }
            let Some(key) = parse_context_key(&entry.key) else {
                return;
            };
            let step = decode_wire_fact(&entry.payload)
                .map_err(|e| Error::decode(context, entry.sequence, e))
                .and_then(|fact| {
                    if fact.key != key {
                        return Err(Error::decode(
                            context,
                            entry.sequence,
                            format!("a {:?} fact under key {:?}", fact.key, entry.key),
                        ));
                    }
                    collector.push(fact)
                });
            if let Err(e) = step {
                failure = Some(e);
            }
        })
        .await
        .map_err(|e| Error::ledger(format!("reading {context:?}"), e))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let facts = collector.len();
    let state = context_from_parts(
        collector.into_facts(),
        BTreeMap::new(),
        facts as u64,
        None,
        registry,
    )?;
    Ok(RestoredRun {
        context: state,
        facts,
        events,
        last_sequence,
        last_cycle,
    })
}
