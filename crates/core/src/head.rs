use std::fmt;

use crate::entry::entry_hash;
use crate::{DecodeError, Digest, Entry, Frontier, NewEntry, PublicKey, Reader, genesis_hash};

/// The tip of a context: everything needed to append the next entry and to
/// prove the history so far, without reading any entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Sequence of the last entry; 0 for an empty context.
    pub sequence: u64,
    /// Hash of the last entry; the genesis hash for an empty context.
    pub hash: Digest,
    /// Lamport clock of the last entry; 0 for an empty context.
    pub lamport: u64,
    /// Timestamp of the last entry; 0 for an empty context.
    pub appended_at_ns: u64,
    /// Merkle tree over all entry hashes; `frontier.size() == sequence`.
    pub frontier: Frontier,
    /// Whether, and from where, history of this context was loaded from a
    /// snapshot rather than appended through this ledger: signed with the
    /// head, so that a signature over loaded history never reads as the
    /// server's own account of what it was given to append. Not part of
    /// the fold of the entries (the entries are the same either way).
    pub loaded: Option<LoadedFrom>,
}

/// History that was loaded: the entries up to `through` came from a
/// snapshot signed by `signer` (the last Load that wrote entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedFrom {
    /// Entries `1..=through` were loaded, not appended here.
    pub through: u64,
    /// The key that signed the snapshot they came from.
    pub signer: PublicKey,
}

/// Why an entry does not extend a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainError {
    /// The sequence of the entry that failed (or that was expected).
    pub sequence: u64,
    /// What was wrong with it.
    pub reason: String,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sequence {}: {}", self.sequence, self.reason)
    }
}

impl std::error::Error for ChainError {}

/// Version 2 adds [`Head::loaded`]; version 1 records read as never loaded.
const HEAD_VERSION: u8 = 2;

impl Head {
    /// The head of a context with no entries.
    pub fn empty(context: &str) -> Head {
        Head {
            sequence: 0,
            hash: genesis_hash(context),
            lamport: 0,
            appended_at_ns: 0,
            frontier: Frontier::new(),
            loaded: None,
        }
    }

    /// Whether `other` is the same history: every field but
    /// [`Head::loaded`], which says where history came from, not what it is.
    pub fn same_history(&self, other: &Head) -> bool {
        self.sequence == other.sequence
            && self.hash == other.hash
            && self.lamport == other.lamport
            && self.appended_at_ns == other.appended_at_ns
            && self.frontier == other.frontier
    }

    /// The entry that appending `new` at server time `now_ns` produces. Pure:
    /// the head does not move until [`Head::advance`].
    pub fn next_entry(&self, context: &str, new: NewEntry, now_ns: u64) -> Entry {
        let sequence = self.sequence + 1;
        let appended_at_ns = now_ns.max(self.appended_at_ns);
        let lamport = self.lamport.max(new.lamport).saturating_add(1);
        let hash = entry_hash(
            context,
            sequence,
            &new.key,
            &new.payload,
            &new.metadata,
            appended_at_ns,
            lamport,
            &self.hash,
        );
        Entry {
            sequence,
            key: new.key,
            payload: new.payload,
            metadata: new.metadata,
            appended_at_ns,
            lamport,
            prev_hash: self.hash,
            hash,
        }
    }

    /// Moves the head past `entry`, which must be the entry that directly
    /// follows it (checked by [`Head::check_next`] or produced by
    /// [`Head::next_entry`]).
    pub fn advance(&mut self, entry: &Entry) {
        self.advance_with(entry, |_, _, _| {});
    }

    /// [`Head::advance`], reporting the Merkle subtrees the entry completes
    /// as `(level, index, root)` (see [`Frontier::push_leaf_hash_with`]).
    pub fn advance_with(&mut self, entry: &Entry, completed: impl FnMut(u8, u64, &Digest)) {
        debug_assert_eq!(entry.sequence, self.sequence + 1);
        debug_assert_eq!(entry.prev_hash, self.hash);
        self.sequence = entry.sequence;
        self.hash = entry.hash;
        self.lamport = entry.lamport;
        self.appended_at_ns = entry.appended_at_ns;
        self.frontier
            .push_leaf_hash_with(crate::merkle::leaf_hash(&entry.hash.0), completed);
    }

    /// Checks that `entry` validly follows this head in `context`: next
    /// sequence, linked to this head's hash, its hash recomputes, its time does
    /// not go backwards and its Lamport clock moves forward.
    pub fn check_next(&self, context: &str, entry: &Entry) -> Result<(), ChainError> {
        self.check_link(entry)?;
        let computed = entry.compute_hash(context);
        if computed != entry.hash {
            return Err(ChainError {
                sequence: entry.sequence,
                reason: format!(
                    "content hashes to {computed} but the entry claims {}",
                    entry.hash
                ),
            });
        }
        Ok(())
    }

    /// [`Head::check_next`] without recomputing the entry's hash (for
    /// callers that check hashes elsewhere, e.g. in parallel): next
    /// sequence, linked to this head's hash, time not going backwards,
    /// Lamport clock moving forward.
    pub fn check_link(&self, entry: &Entry) -> Result<(), ChainError> {
        let fail = |reason: String| {
            Err(ChainError {
                sequence: self.sequence + 1,
                reason,
            })
        };
        if entry.sequence != self.sequence + 1 {
            return fail(format!(
                "expected sequence {}, found {}",
                self.sequence + 1,
                entry.sequence
            ));
        }
        self.check_follows(&entry.prev_hash, entry.appended_at_ns, entry.lamport)
            .map_err(|reason| ChainError {
                sequence: self.sequence + 1,
                reason,
            })
    }

    /// The link part of [`Head::check_link`], for an entry known only by
    /// its previous hash, time and Lamport clock: it links to this head's
    /// hash, its time does not go backwards, its Lamport clock moves
    /// forward. The error says which.
    pub fn check_follows(
        &self,
        prev_hash: &Digest,
        appended_at_ns: u64,
        lamport: u64,
    ) -> Result<(), String> {
        if *prev_hash != self.hash {
            return Err(format!(
                "previous hash {prev_hash} does not link to {}",
                self.hash
            ));
        }
        if appended_at_ns < self.appended_at_ns {
            return Err(format!(
                "timestamp {appended_at_ns} is earlier than the previous entry's {}",
                self.appended_at_ns
            ));
        }
        if lamport <= self.lamport {
            return Err(format!(
                "Lamport clock {lamport} does not advance past {}",
                self.lamport
            ));
        }
        Ok(())
    }

    /// The Merkle root over all entries.
    pub fn merkle_root(&self) -> Digest {
        self.frontier.root()
    }

    /// Stable encoding for storage: version, sequence, hash, Lamport,
    /// timestamp, frontier, then (version 2) `u8` 0, or 1 followed by the
    /// loaded-through sequence and the signer's key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 32 + 16 + 8 + 32 * 8 + 41);
        out.push(HEAD_VERSION);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.lamport.to_be_bytes());
        out.extend_from_slice(&self.appended_at_ns.to_be_bytes());
        self.frontier.encode_into(&mut out);
        match &self.loaded {
            None => out.push(0),
            Some(l) => {
                out.push(1);
                out.extend_from_slice(&l.through.to_be_bytes());
                out.extend_from_slice(&l.signer.0);
            }
        }
        out
    }

    /// Decodes [`Head::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Head, DecodeError> {
        let mut r = Reader::new(bytes, "stored head");
        let v = r.u8()?;
        if v != 1 && v != HEAD_VERSION {
            return Err(DecodeError(format!(
                "stored head has version {v}; this build reads versions 1 to {HEAD_VERSION}"
            )));
        }
        let mut head = Head {
            sequence: r.u64()?,
            hash: r.digest()?,
            lamport: r.u64()?,
            appended_at_ns: r.u64()?,
            frontier: Frontier::decode_from(&mut r)?,
            loaded: None,
        };
        if v >= 2 {
            head.loaded = match r.u8()? {
                0 => None,
                1 => Some(LoadedFrom {
                    through: r.u64()?,
                    signer: PublicKey(r.digest()?.0),
                }),
                f => {
                    return Err(DecodeError(format!(
                        "stored head has loaded flag {f}; 0 or 1 allowed"
                    )));
                }
            };
        }
        if head
            .loaded
            .is_some_and(|l| l.through == 0 || l.through > head.sequence)
        {
            return Err(DecodeError(format!(
                "stored head at sequence {} says history was loaded through {}",
                head.sequence,
                head.loaded.map_or(0, |l| l.through)
            )));
        }
        if head.frontier.size() != head.sequence {
            return Err(DecodeError(format!(
                "stored head is at sequence {} but its Merkle frontier has {} leaves",
                head.sequence,
                head.frontier.size()
            )));
        }
        if r.remaining() != 0 {
            return Err(DecodeError("stored head has trailing bytes".into()));
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;

    fn new(key: &str, lamport: u64) -> NewEntry {
        NewEntry {
            key: key.into(),
            payload: key.as_bytes().to_vec(),
            metadata: Metadata::new(),
            lamport,
        }
    }

    #[test]
    fn append_rule_sequence_time_lamport_and_chain() {
        let mut head = Head::empty("c");
        let e1 = head.next_entry("c", new("a", 0), 100);
        head.check_next("c", &e1).unwrap();
        head.advance(&e1);
        assert_eq!((e1.sequence, e1.lamport, e1.appended_at_ns), (1, 1, 100));
        assert_eq!(e1.prev_hash, genesis_hash("c"));
        // The clock going backwards does not move the timestamp back.
        let e2 = head.next_entry("c", new("b", 0), 50);
        assert_eq!(e2.appended_at_ns, 100);
        head.advance(&e2);
        // A received Lamport time pulls the clock forward.
        let e3 = head.next_entry("c", new("c", 40), 200);
        assert_eq!(e3.lamport, 41);
        head.check_next("c", &e3).unwrap();
        head.advance(&e3);
        let e4 = head.next_entry("c", new("d", 7), 200);
        assert_eq!(e4.lamport, 42);
        assert_eq!(e4.prev_hash, e3.hash);
        assert_eq!(Head::decode(&head.encode()).unwrap(), head);
        head.loaded = Some(LoadedFrom {
            through: 2,
            signer: PublicKey([5; 32]),
        });
        assert_eq!(Head::decode(&head.encode()).unwrap(), head);
    }

    #[test]
    fn version_1_heads_read_as_never_loaded() {
        let mut head = Head::empty("c");
        head.advance(&head.next_entry("c", new("a", 0), 100));
        let mut v1 = head.encode();
        v1[0] = 1;
        v1.pop(); // version 1 has no loaded flag
        assert_eq!(Head::decode(&v1).unwrap(), head);
    }

    #[test]
    fn check_next_rejects_every_kind_of_break() {
        let head = Head::empty("c");
        let good = head.next_entry("c", new("a", 0), 100);
        let mut e = good.clone();
        e.sequence = 2;
        assert!(head.check_next("c", &e).is_err());
        let mut e = good.clone();
        e.payload.push(0);
        assert!(
            head.check_next("c", &e)
                .unwrap_err()
                .reason
                .contains("hashes to")
        );
        let mut e = good.clone();
        e.prev_hash = Digest::ZERO;
        assert!(head.check_next("c", &e).is_err());
        assert!(head.check_next("other", &good).is_err());
        let mut h2 = head.clone();
        h2.advance(&good);
        let mut later = h2.next_entry("c", new("b", 0), 100);
        later.lamport = 1;
        later.hash = later.compute_hash("c");
        assert!(
            h2.check_next("c", &later)
                .unwrap_err()
                .reason
                .contains("Lamport")
        );
    }
}
