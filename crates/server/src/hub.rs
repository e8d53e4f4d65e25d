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
    channels: Mutex<HashMap<Arc<str>, broadcast::Sender<Arc<Entry>>>>,
    buffer: usize,
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
        if let Some(tx) = channels.get(context) {
            return tx.subscribe();
        }
        // Forget contexts nobody watches any more before adding one, so the
        // map is bounded by the number of watched contexts.
        channels.retain(|_, tx| tx.receiver_count() > 0);
        let (tx, rx) = broadcast::channel(self.buffer);
        channels.insert(Arc::from(context), tx);
        rx
    }

    /// Publishes durable entries in commit order.
    pub fn publish(&self, entries: &[(Arc<str>, Arc<Entry>)]) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.is_empty() {
            return;
        }
        for (context, entry) in entries {
            if let Some(tx) = channels.get(context) {
                // An error only means nobody is subscribed right now.
                let _ = tx.send(entry.clone());
            }
        }
    }

    /// Number of contexts with a live channel.
    pub fn watched_contexts(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
