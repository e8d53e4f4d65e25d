use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use converge_ledger_core::Entry;
use tokio::sync::broadcast;

/// Fans newly durable entries out to the watchers of their context.
///
/// One bounded broadcast channel per watched context. Entries are shared
/// (`Arc`), so a thousand watchers cost one copy. A watcher that falls more
/// than the buffer behind is told it lagged and reads from storage instead:
/// memory stays bounded and no entry is lost.
pub struct Hub {
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    buffer: usize,
}

struct Channel {
    tx: broadcast::Sender<Arc<Entry>>,
    /// Highest sequence published on this channel, so entries appended
    /// elsewhere (another node) can be published from storage without
    /// re-reading what was already sent.
    last: u64,
}

impl Hub {
    /// A hub buffering `buffer` entries per watched context.
    pub fn new(buffer: usize) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
        }
    }

    /// Subscribes to `context`. Every entry published after this call is
    /// delivered (or reported as lagged).
    pub fn subscribe(&self, context: &str) -> broadcast::Receiver<Arc<Entry>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(context) {
            return c.tx.subscribe();
        }
        // Forget contexts nobody watches any more before adding one, so the
        // map is bounded by the number of watched contexts.
        channels.retain(|_, c| c.tx.receiver_count() > 0);
        let (tx, rx) = broadcast::channel(self.buffer);
        channels.insert(Arc::from(context), Channel { tx, last: 0 });
        rx
    }

    /// Publishes durable entries in commit order.
    pub fn publish(&self, entries: &[(Arc<str>, Arc<Entry>)]) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.is_empty() {
            return;
        }
        for (context, entry) in entries {
            if let Some(c) = channels.get_mut(context) {
                // Watchers skip what they have seen and read storage on a
                // gap, so publishing the same entry twice (locally and from
                // another node's notification) is harmless.
                if entry.sequence > c.last {
                    c.last = entry.sequence;
                    // An error only means nobody is subscribed right now.
                    let _ = c.tx.send(entry.clone());
                }
            }
        }
    }

    /// The highest sequence published for `context`, if it is watched.
    pub fn last_published(&self, context: &str) -> Option<u64> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .get(context)
            .filter(|c| c.tx.receiver_count() > 0)
            .map(|c| c.last)
    }

    /// Contexts that have watchers now.
    pub fn watched(&self) -> Vec<Arc<str>> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .iter()
            .filter(|(_, c)| c.tx.receiver_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of contexts with a live channel.
    pub fn watched_contexts(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
