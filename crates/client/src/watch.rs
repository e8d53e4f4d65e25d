use std::time::Duration;

use converge_ledger_core::Entry;
use converge_ledger_proto::context::v1 as pb;

use crate::client::{EntryCheck, entry_from_proto};
use crate::{Client, ClientError};

/// A watch that survives disconnects.
///
/// It remembers the last sequence it returned; when the stream breaks (the
/// connection drops, the server restarts or shuts down) it reopens the watch
/// from that sequence, so the caller sees every entry once, in order. It
/// gives up only after the configured attempts fail in a row, or on an error
/// that retrying cannot fix.
pub struct Watch {
    client: Client,
    context: String,
    key: String,
    last: u64,
    /// Sequence and hash of the last entry returned, to check chain links.
    last_entry: Option<(u64, converge_ledger_core::Digest)>,
    stream: Option<tonic::Streaming<pb::WatchEvent>>,
}

impl Watch {
    pub(crate) fn new(client: Client, context: &str, key: Option<&str>, from: u64) -> Watch {
        Watch {
            client,
            context: context.to_owned(),
            key: key.unwrap_or_default().to_owned(),
            last: from,
            last_entry: None,
            stream: None,
        }
    }

    /// The last sequence returned (or the starting point).
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// The next entry; `None` never happens while the server can be
    /// reached: a finished stream is reopened. Errors are final.
    pub async fn next(&mut self) -> Option<Result<Entry, ClientError>> {
        let mut failures = 0u32;
        let mut delay = self.client.options().backoff;
        loop {
            if self.stream.is_none() {
                match self
                    .client
                    .open_watch(&self.context, &self.key, self.last)
                    .await
                {
                    Ok(s) => self.stream = Some(s),
                    Err(e) if e.is_transient() && failures + 1 < self.client.options().attempts => {
                        failures += 1;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(event)) => {
                    let Some(entry) = event.entry else {
                        return Some(Err(ClientError::Protocol(
                            "watch event without an entry".into(),
                        )));
                    };
                    let entry = match entry_from_proto(entry) {
                        Ok(e) => e,
                        Err(e) => return Some(Err(e)),
                    };
                    if entry.sequence <= self.last {
                        // Already returned before a reconnect.
                        continue;
                    }
                    // Without a key filter every sequence must arrive.
                    let next = self.key.is_empty().then_some(self.last + 1);
                    let mut check = EntryCheck::resume(&self.context, self.last_entry, next);
                    if let Err(e) = check.check(&entry) {
                        return Some(Err(e));
                    }
                    self.last_entry = check.last();
                    self.last = entry.sequence;
                    return Some(Ok(entry));
                }
                // The server ended the stream (shutdown) or the connection
                // broke: reopen from the last sequence.
                Ok(None) => {
                    self.stream = None;
                    failures += 1;
                }
                Err(status) => {
                    self.stream = None;
                    let e = ClientError::from(status);
                    if !e.is_transient() || failures + 1 >= self.client.options().attempts {
                        return Some(Err(e));
                    }
                    failures += 1;
                }
            }
            if failures >= self.client.options().attempts {
                return Some(Err(ClientError::Unavailable(format!(
                    "watch of {:?} broke {failures} times in a row",
                    self.context
                ))));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
