//! Fans newly durable entries out to the watchers of their context.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use converge_ledger_core::Entry;
use tokio::sync::watch;

/// Bounds of the hub's buffers.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Most entries kept per watched context.
    pub ring_entries_max: usize,
    /// Most bytes (by [`Entry::approximate_size`]) kept per watched context;
    /// the newest entry is kept even when it alone is larger.
    pub ring_bytes_max: usize,
    /// Most bytes kept over all watched contexts; past it, the context being
    /// published keeps only its newest entry.
    pub total_bytes_max: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            ring_entries_max: 1024,
            ring_bytes_max: 8 * 1024 * 1024,
            total_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// Fans newly durable entries out to the watchers of their context.
///
/// One ring of recent entries per watched context, shared by all of its
/// watchers (entries behind `Arc`, so a thousand watchers cost one copy),
/// bounded in entries and bytes, per context and over all of them. A
/// watcher asks for the entry after the last one it handled; if the ring no
/// longer holds it (the watcher fell behind, or entries arrived with a gap)
/// it is told so and reads from storage instead, which holds everything
/// published: memory stays bounded and no entry is lost. A ring exists only
/// while its context has subscribers; the last one to leave frees it.
pub struct Hub {
    state: Mutex<State>,
    limits: HubLimits,
}

#[derive(Default)]
struct State {
    rings: HashMap<Arc<str>, Ring>,
    /// Bytes held by every ring.
    bytes: usize,
}

struct Ring {
    /// Consecutive sequences, oldest first, ending at `last` (or empty).
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// Highest sequence published for this context (0: none yet), so
    /// entries appended elsewhere (another node) can be published from
    /// storage without re-reading what was already sent.
    last: u64,
    /// The lowest head a subscriber read: where publishing another node's
    /// entries must start so that a waiting subscriber is served live (once
    /// `last` is above it, `last` is where). Unknown (`None`) until a
    /// subscriber reports its head; nothing is published from storage
    /// before, since every subscriber still reads storage up to the head.
    floor: Option<u64>,
    /// Notifications of another node's entries declined because no
    /// subscriber had reported its head yet. A subscriber whose head read
    /// overlapped one reads its head again: its read may predate the
    /// entries, which nothing else would publish.
    declined: u64,
    subscribers: usize,
    /// Carries `last`; subscribers wait on it.
    published: watch::Sender<u64>,
}

/// What [`Subscription::next_after`] found.
#[derive(Debug)]
pub enum Live {
    /// The entry right after the one asked about.
    Entry(Arc<Entry>),
    /// Entries after the one asked about were published but are no longer
    /// held (or arrived after a gap): read them from storage.
    Behind,
}

/// A subscriber of one context; dropping it leaves the hub.
pub struct Subscription {
    hub: Arc<Hub>,
    context: Arc<str>,
    published: watch::Receiver<u64>,
}

impl Hub {
    /// A hub with these buffer bounds.
    pub fn new(limits: HubLimits) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            limits: HubLimits {
                ring_entries_max: limits.ring_entries_max.max(1),
                ..limits
            },
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to `context`. Every entry published after this call is
    /// delivered by [`Subscription::next_after`] (or reported as
    /// [`Live::Behind`]).
    pub fn subscribe(self: &Arc<Self>, context: &str) -> Subscription {
        let mut state = self.lock();
        let name: Arc<str> = match state.rings.get_key_value(context) {
            Some((name, _)) => name.clone(),
            None => Arc::from(context),
        };
        let ring = state.rings.entry(name.clone()).or_insert_with(|| Ring {
            entries: VecDeque::new(),
            bytes: 0,
            last: 0,
            floor: None,
            declined: 0,
            subscribers: 0,
            published: watch::channel(0).0,
        });
        ring.subscribers += 1;
        Subscription {
            hub: self.clone(),
            context: name,
            published: ring.published.subscribe(),
        }
    }

    /// Publishes durable entries in commit order (per context in sequence
    /// order). Publishing an entry twice (locally and from another node's
    /// notification) is harmless: sequences at or below the last published
    /// one are ignored.
    pub fn publish(&self, entries: &[(Arc<str>, Arc<Entry>)]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.rings.is_empty() {
            return;
        }
        let mut touched: Vec<&Arc<str>> = Vec::new();
        for (context, entry) in entries {
            let Some(ring) = state.rings.get_mut(context) else {
                continue;
            };
            if entry.sequence <= ring.last {
                continue;
            }
            if entry.sequence != ring.last + 1 {
                // A gap: what the ring holds no longer ends where the new
                // entry starts; subscribers that need the gap read storage.
                state.bytes -= ring.bytes;
                ring.entries.clear();
                ring.bytes = 0;
            }
            let size = entry.approximate_size();
            ring.entries.push_back(entry.clone());
            ring.bytes += size;
            state.bytes += size;
            ring.last = entry.sequence;
            let over_total = state.bytes > self.limits.total_bytes_max;
            while ring.entries.len() > 1
                && (ring.entries.len() > self.limits.ring_entries_max
                    || ring.bytes > self.limits.ring_bytes_max
                    || over_total)
            {
                let old = ring.entries.pop_front().expect("more than one entry");
                let size = old.approximate_size();
                ring.bytes -= size;
                state.bytes -= size;
            }
            if touched.last() != Some(&context) {
                touched.push(context);
            }
        }
        for context in touched {
            if let Some(ring) = state.rings.get(context) {
                ring.published.send_replace(ring.last);
            }
        }
    }

    /// Where entries that another node appended to `context` must be
    /// published from (everything above the returned sequence), or `None`
    /// if nobody here needs them: the context is not watched, or no watcher
    /// has read its head yet (each reads storage up to it, and reads its
    /// head again if its read overlapped this call: see
    /// [`Subscription::note_head`]).
    pub fn remote_start(&self, context: &str) -> Option<u64> {
        let mut state = self.lock();
        let ring = state.rings.get_mut(context)?;
        match (ring.last, ring.floor) {
            (0, None) => {
                ring.declined += 1;
                None
            }
            (0, floor) => floor,
            (last, floor) => Some(last.max(floor.unwrap_or(0))),
        }
    }

    /// Contexts that have subscribers now.
    pub fn watched(&self) -> Vec<Arc<str>> {
        self.lock().rings.keys().cloned().collect()
    }

    /// Number of contexts with a ring.
    pub fn watched_contexts(&self) -> usize {
        self.lock().rings.len()
    }

    /// Bytes of entries the hub holds, over every context.
    pub fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Subscription {
    /// Where the hub's count of declined notifications stands (see
    /// [`Subscription::note_head`]): taken right before reading the head.
    pub fn declined(&self) -> u64 {
        let state = self.hub.lock();
        state.rings.get(&self.context).map_or(0, |r| r.declined)
    }

    /// Tells the hub the head this subscriber read from storage after
    /// subscribing, so entries another node appends above it are published
    /// (see [`Hub::remote_start`]). `declined` is what
    /// [`Subscription::declined`] said before the head was read. Returns
    /// `false` if a notification was declined since then: it may announce
    /// entries above `head` that will never be published, so read the head
    /// again and note it (that one is not declined: a head is known now).
    pub fn note_head(&self, head: u64, declined: u64) -> bool {
        let mut state = self.hub.lock();
        match state.rings.get_mut(&self.context) {
            Some(ring) => {
                ring.floor = Some(ring.floor.map_or(head, |f| f.min(head)));
                ring.declined == declined
            }
            None => true,
        }
    }

    /// Waits for the entry with sequence `after + 1`; [`Live::Behind`] when
    /// it was published but is no longer held.
    pub async fn next_after(&mut self, after: u64) -> Live {
        loop {
            self.published.borrow_and_update();
            {
                let state = self.hub.lock();
                let ring = state
                    .rings
                    .get(&self.context)
                    .expect("a ring lives as long as its subscribers");
                if ring.last > after {
                    let first = ring.entries.front().map_or(u64::MAX, |e| e.sequence);
                    return match after.checked_add(1).and_then(|s| s.checked_sub(first)) {
                        Some(i) if (i as usize) < ring.entries.len() => {
                            Live::Entry(ring.entries[i as usize].clone())
                        }
                        _ => Live::Behind,
                    };
                }
            }
            // The sender lives in the ring, which lives while we are
            // subscribed: `changed` only returns when something was
            // published.
            let _ = self.published.changed().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = self.hub.lock();
        let state = &mut *guard;
        let Some(ring) = state.rings.get_mut(&self.context) else {
            return;
        };
        ring.subscribers -= 1;
        if ring.subscribers == 0 {
            state.bytes -= ring.bytes;
            state.rings.remove(&self.context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_ledger_core::{Head, NewEntry};

    fn entries(context: &str, n: u64, payload_bytes: usize) -> Vec<(Arc<str>, Arc<Entry>)> {
        let mut head = Head::empty(context);
        let name: Arc<str> = Arc::from(context);
        (0..n)
            .map(|_| {
                let e = head.next_entry(
                    context,
                    NewEntry {
                        key: "k".into(),
                        payload: vec![7; payload_bytes],
                        metadata: Default::default(),
                        lamport: 0,
                    },
                    1,
                );
                head.advance(&e);
                (name.clone(), Arc::new(e))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_ring_is_bounded_in_bytes_and_freed_by_its_last_subscriber() {
        let hub = Hub::new(HubLimits {
            ring_entries_max: 1024,
            ring_bytes_max: 10 * 1024,
            total_bytes_max: usize::MAX,
        });
        let mut a = hub.subscribe("c");
        let b = hub.subscribe("c");
        let published = entries("c", 50, 1024);
        hub.publish(&published);
        let held = hub.buffered_bytes();
        assert!(held <= 10 * 1024, "{held} bytes held");
        assert!(held > 0);
        // The newest entries are held; older ones are reported as behind.
        assert!(matches!(a.next_after(49).await, Live::Entry(e) if e.sequence == 50));
        assert!(matches!(a.next_after(0).await, Live::Behind));
        drop(a);
        assert!(hub.buffered_bytes() > 0, "one subscriber is left");
        drop(b);
        assert_eq!(hub.buffered_bytes(), 0);
        assert_eq!(hub.watched_contexts(), 0);
    }

    #[tokio::test]
    async fn the_total_bound_keeps_only_the_newest_entry_of_each_context() {
        let hub = Hub::new(HubLimits {
            ring_entries_max: 1024,
            ring_bytes_max: usize::MAX,
            total_bytes_max: 4 * 1024,
        });
        let _a = hub.subscribe("a");
        let _b = hub.subscribe("b");
        hub.publish(&entries("a", 20, 1024));
        hub.publish(&entries("b", 20, 1024));
        assert!(hub.buffered_bytes() <= 4 * 1024 + 2 * 1200);
    }

    #[tokio::test]
    async fn another_nodes_entries_are_published_from_the_lowest_head_a_watcher_read() {
        let hub = Hub::new(HubLimits::default());
        let a = hub.subscribe("c");
        assert_eq!(hub.remote_start("c"), None, "nobody read a head yet");
        assert!(!a.note_head(1_000_000, 0), "a notification was declined");
        let b = hub.subscribe("c");
        let declined = b.declined();
        assert!(b.note_head(1_000_004, declined));
        assert_eq!(hub.remote_start("c"), Some(1_000_000));
        assert_eq!(hub.remote_start("unwatched"), None);
    }

    /// A watcher reads its head, another node appends and its notification
    /// arrives, and only then does the watcher report the head: the
    /// notification was declined (no head known), so the watcher is told to
    /// read its head again, which holds the entry. Every watcher whose read
    /// overlapped the notification is told, not only the first to report.
    #[tokio::test]
    async fn a_notification_declined_while_watchers_read_their_heads_makes_them_read_again() {
        let hub = Hub::new(HubLimits::default());
        let (a, b) = (hub.subscribe("c"), hub.subscribe("c"));
        let (da, db) = (a.declined(), b.declined());
        // Both read head 5; entry 6 is appended elsewhere and announced.
        assert_eq!(hub.remote_start("c"), None);
        assert!(!a.note_head(5, da), "a must read its head again");
        assert!(!b.note_head(5, db), "b must read its head again");
        // Read again (head 6), with a head known nothing is declined.
        let (da, db) = (a.declined(), b.declined());
        assert!(a.note_head(6, da) && b.note_head(6, db));
        assert_eq!(hub.remote_start("c"), Some(5));
        // A watcher whose read did not overlap a notification goes on.
        let late = hub.subscribe("c");
        let d = late.declined();
        assert!(late.note_head(7, d));
    }
}
