//! `capability_grants`: effective permissions over time.
//!
//! A commitment's granted capabilities are granted to its proposer from
//! that receipt on; its revoked capabilities are withdrawn from its
//! proposer from that receipt on. A capability is *in force* for an actor
//! over a half-open interval of receipts `[grant, revoke)`. Granting what
//! is in force, or revoking what is not, is recorded in the history but
//! changes no interval (the in-force answer names the grant that opened the
//! interval).
//!
//! | table | key after `capability_grants/<version>/<worldline>/` | value |
//! |---|---|---|
//! | events | `event/` u64 seq, u8 kind, actor `\0`, capability `\0` | event value |
//! | events by actor | `actor_event/` actor `\0`, u64 seq, u8 kind, capability `\0` | event value |
//! | intervals | `interval/` actor `\0`, capability `\0`, u64 grant seq | interval value |
//! | pairs | `pair/` actor `\0`, capability `\0` | version 1: empty; version 2: the latest interval |
//! | changes | `change/` u64 time, u64 seq | — |
//!
//! Event value: `u64 time ‖ [32] receipt hash ‖ u8 effective (1: it opened
//! or closed an interval)`; kind 1 grant, 2 revoke. Interval value:
//! `[32] grant hash ‖ u64 grant time ‖ u8 0 | u8 1 ‖ u64 revoke seq ‖ [32]
//! revoke hash ‖ u64 revoke time`. A version 2 pair value is `u64 grant
//! seq ‖ interval value` of the pair's latest interval.
//!
//! The two versions differ only in the pair value. Version 1 found a
//! pair's latest interval with a reverse range read over its intervals,
//! which an LSM store answers by merging every table of the keyspace (14 %
//! of the projector's time under a stream of grants, BENCHMARKS.md);
//! version 2 keeps it in the pair, a point read that bloom filters answer.
//! Version 1 is still read and folded while version 2 rebuilds beside it
//! (`docs/design.md` §18, "Projection versions").
//!
//! Costs: a commitment with `g` grants and `r` revocations reads one key
//! per capability (version 1: one key range) and writes at most
//! `4 (g + r) + 1` keys; outcomes cost nothing.
//! [`CapabilityGrants::in_force_at_seq`] reads one range of pairs, and for
//! each pair on the page whose latest interval started after `seq` (version
//! 1: every pair) one range more (pairs ever granted, in force or not: a
//! page may hold fewer grants than its limit);
//! [`CapabilityGrants::in_force_at_time`] one range more;
//! [`CapabilityGrants::history`] one range.

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader};
use crate::keys::{Key, KeyReader};
use crate::page::scan;
use crate::{
    Cursor, Direction, KvRead, KvTxn, Page, Projection, Receipt, ReceiptBody, WorldlineError,
    WorldlineId,
};

/// The projection, in one of its versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapabilityGrants {
    version: u32,
}

impl CapabilityGrants {
    /// Version 1: a pair's latest interval found by a reverse range read.
    pub const V1: CapabilityGrants = CapabilityGrants { version: 1 };
    /// Version 2: a pair's latest interval kept in the pair.
    pub const V2: CapabilityGrants = CapabilityGrants { version: 2 };
    /// The version a server builds.
    pub const CURRENT: CapabilityGrants = CapabilityGrants::V2;

    /// The known version `version`, if it is one.
    pub fn of_version(version: u32) -> Option<CapabilityGrants> {
        [CapabilityGrants::V1, CapabilityGrants::V2]
            .into_iter()
            .find(|g| g.version == version)
    }

    fn pair_holds_latest(&self) -> bool {
        self.version >= 2
    }
}

impl Default for CapabilityGrants {
    fn default() -> Self {
        CapabilityGrants::CURRENT
    }
}

const NAME: &str = "capability_grants";

const KIND_GRANT: u8 = 1;
const KIND_REVOKE: u8 = 2;

/// A receipt that granted or revoked something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventRef {
    /// Its sequence.
    pub seq: u64,
    /// Its receipt hash.
    pub receipt_hash: Digest,
    /// Its time.
    pub timestamp_ns: u64,
}

/// A capability in force for an actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Who holds it (the proposer of the granting commitment).
    pub actor: String,
    /// The capability.
    pub capability: String,
    /// The receipt that granted it (opened the interval).
    pub granted: EventRef,
    /// The later receipt that revoked it, if one has been folded.
    pub revoked: Option<EventRef>,
}

/// Grant or revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantEventKind {
    /// A commitment granted the capability.
    Grant,
    /// A commitment revoked it.
    Revoke,
}

/// One entry of the grant history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantEvent {
    /// The receipt.
    pub receipt: EventRef,
    /// Grant or revoke.
    pub kind: GrantEventKind,
    /// The actor it concerns.
    pub actor: String,
    /// The capability.
    pub capability: String,
    /// Whether it changed what is in force (`false`: a grant of what was in
    /// force, a revocation of what was not).
    pub effective: bool,
}

impl CapabilityGrants {
    fn table(&self, w: &WorldlineId, t: &str) -> Key {
        Key::table(NAME, self.version, w, t)
    }

    fn interval_prefix(&self, w: &WorldlineId, actor: &str, cap: &str) -> Key {
        self.table(w, "interval").str(actor).str(cap)
    }

    fn pair_key(&self, w: &WorldlineId, actor: &str, cap: &str) -> Vec<u8> {
        self.table(w, "pair").str(actor).str(cap).into_bytes()
    }
}

fn check_actor(actor: &str) -> Result<(), WorldlineError> {
    if actor.is_empty() || actor.as_bytes().contains(&0) {
        return Err(WorldlineError::invalid(
            "actor",
            format!("{actor:?} is not an identifier (empty, or holding NUL)"),
        ));
    }
    Ok(())
}

/// An interval as stored: its grant and its revocation, if any.
struct Interval {
    granted: EventRef,
    revoked: Option<EventRef>,
}

impl Interval {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(90);
        out.put_digest(&self.granted.receipt_hash);
        out.put_u64(self.granted.timestamp_ns);
        match &self.revoked {
            None => out.put_u8(0),
            Some(r) => {
                out.put_u8(1);
                out.put_u64(r.seq);
                out.put_digest(&r.receipt_hash);
                out.put_u64(r.timestamp_ns);
            }
        }
        out
    }

    fn decode(granted_seq: u64, bytes: &[u8]) -> Result<Interval, WorldlineError> {
        let mut r = Reader::new(bytes, "grant interval");
        let granted = EventRef {
            seq: granted_seq,
            receipt_hash: r.digest("granted.receipt_hash")?,
            timestamp_ns: r.u64("granted.timestamp_ns")?,
        };
        let revoked = match r.u8("revoked")? {
            0 => None,
            1 => Some(EventRef {
                seq: r.u64("revoked.seq")?,
                receipt_hash: r.digest("revoked.receipt_hash")?,
                timestamp_ns: r.u64("revoked.timestamp_ns")?,
            }),
            t => {
                return Err(WorldlineError::invalid(
                    "revoked",
                    format!("has unknown tag {t}"),
                ));
            }
        };
        r.finish()?;
        Ok(Interval { granted, revoked })
    }
}

impl CapabilityGrants {
    /// The latest interval of (actor, capability) that started at or
    /// before `seq`.
    fn latest_interval(
        &self,
        kv: &dyn KvRead,
        w: &WorldlineId,
        actor: &str,
        cap: &str,
        seq: u64,
    ) -> Result<Option<Interval>, WorldlineError> {
        let stored =
            |e: WorldlineError| e.in_stored(format_args!("capability_grants of worldline {w}"));
        if self.pair_holds_latest() {
            match kv.get(&self.pair_key(w, actor, cap))? {
                None => return Ok(None),
                Some(v) => {
                    let (granted_seq, latest) = decode_pair(&v).map_err(stored)?;
                    if granted_seq <= seq {
                        return Ok(Some(latest));
                    }
                }
            }
        }
        let prefix = self.interval_prefix(w, actor, cap);
        let page = scan(
            kv,
            prefix.bytes(),
            &[],
            Some(&seq.saturating_add(1).to_be_bytes()),
            Direction::Backward,
            None,
            1,
        )?;
        match page.items.first() {
            None => Ok(None),
            Some((suffix, v)) => {
                let mut k = KeyReader::new(suffix, &[])?;
                let granted_seq = k.u64()?;
                k.finish()?;
                Interval::decode(granted_seq, v).map(Some).map_err(stored)
            }
        }
    }
}

/// A version 2 pair value: `u64 grant seq ‖ interval`.
fn encode_pair(interval: &Interval) -> Vec<u8> {
    let mut out = Vec::with_capacity(98);
    out.put_u64(interval.granted.seq);
    out.extend_from_slice(&interval.encode());
    out
}

fn decode_pair(bytes: &[u8]) -> Result<(u64, Interval), WorldlineError> {
    let Some((seq, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(WorldlineError::invalid(
            "pair",
            format!("is {} bytes, shorter than its grant seq", bytes.len()),
        ));
    };
    let seq = u64::from_be_bytes(*seq);
    Ok((seq, Interval::decode(seq, rest)?))
}

fn event_value(r: &EventRef, effective: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    out.put_u64(r.timestamp_ns);
    out.put_digest(&r.receipt_hash);
    out.put_u8(u8::from(effective));
    out
}

impl Projection for CapabilityGrants {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn apply(&self, receipt: &Receipt, txn: &mut KvTxn<'_>) -> Result<(), WorldlineError> {
        let ReceiptBody::Commitment(c) = &receipt.body else {
            return Ok(());
        };
        let w = &receipt.worldline;
        let at = EventRef {
            seq: receipt.seq,
            receipt_hash: receipt.receipt_hash,
            timestamp_ns: receipt.timestamp_ns,
        };
        let actor = c.proposer.as_str();
        let mut changed = false;
        let events = c
            .granted_capabilities
            .iter()
            .map(|cap| (KIND_GRANT, cap))
            .chain(c.revoked_capabilities.iter().map(|cap| (KIND_REVOKE, cap)));
        for (kind, cap) in events {
            let latest = self.latest_interval(txn, w, actor, cap, receipt.seq)?;
            let open = latest.filter(|i| i.revoked.is_none());
            let changed_to = match (kind, open) {
                (KIND_GRANT, None) => Some(Interval {
                    granted: at,
                    revoked: None,
                }),
                (KIND_REVOKE, Some(mut interval)) => {
                    interval.revoked = Some(at);
                    Some(interval)
                }
                _ => None,
            };
            if let Some(interval) = &changed_to {
                txn.put(
                    self.interval_prefix(w, actor, cap)
                        .u64(interval.granted.seq)
                        .into_bytes(),
                    interval.encode(),
                );
                let pair = if self.pair_holds_latest() {
                    encode_pair(interval)
                } else {
                    Vec::new()
                };
                if self.pair_holds_latest() || kind == KIND_GRANT {
                    txn.put(self.pair_key(w, actor, cap), pair);
                }
            }
            let effective = changed_to.is_some();
            changed |= effective;
            let value = event_value(&at, effective);
            txn.put(
                self.table(w, "event")
                    .u64(receipt.seq)
                    .u8(kind)
                    .str(actor)
                    .str(cap)
                    .into_bytes(),
                value.clone(),
            );
            txn.put(
                self.table(w, "actor_event")
                    .str(actor)
                    .u64(receipt.seq)
                    .u8(kind)
                    .str(cap)
                    .into_bytes(),
                value,
            );
        }
        if changed {
            txn.put(
                self.table(w, "change")
                    .u64(receipt.timestamp_ns)
                    .u64(receipt.seq)
                    .into_bytes(),
                Vec::new(),
            );
        }
        Ok(())
    }
}

impl CapabilityGrants {
    /// The capabilities in force after receipt `seq` (for one actor, or for
    /// every actor), each with the receipt that granted it and the later one
    /// that revoked it, if any. Ordered by actor, then capability.
    pub fn in_force_at_seq(
        &self,
        kv: &dyn KvRead,
        worldline: &WorldlineId,
        actor: Option<&str>,
        seq: u64,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Grant>, WorldlineError> {
        let prefix = match actor {
            Some(a) => {
                check_actor(a)?;
                self.table(worldline, "pair").str(a)
            }
            None => self.table(worldline, "pair"),
        };
        let page = scan(
            kv,
            prefix.bytes(),
            &[],
            None,
            Direction::Forward,
            cursor,
            limit,
        )?;
        let mut items = Vec::new();
        for (suffix, _) in &page.items {
            let mut k = KeyReader::new(suffix, &[])?;
            let holder = match actor {
                Some(a) => a,
                None => k.str()?,
            };
            let cap = k.str()?;
            k.finish()?;
            if let Some(i) = self.latest_interval(kv, worldline, holder, cap, seq)?
                && i.revoked.is_none_or(|r| r.seq > seq)
            {
                items.push(Grant {
                    actor: holder.to_owned(),
                    capability: cap.to_owned(),
                    granted: i.granted,
                    revoked: i.revoked,
                });
            }
        }
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// The sequence of the last receipt at or before `time_ns` that changed
    /// what is in force; 0 if none did.
    pub fn seq_at_time(
        &self,
        kv: &dyn KvRead,
        worldline: &WorldlineId,
        time_ns: u64,
    ) -> Result<u64, WorldlineError> {
        let prefix = self.table(worldline, "change");
        let hi = time_ns.checked_add(1).map(u64::to_be_bytes);
        let page = scan(
            kv,
            prefix.bytes(),
            &[],
            hi.as_ref().map(|h| &h[..]),
            Direction::Backward,
            None,
            1,
        )?;
        match page.items.first() {
            None => Ok(0),
            Some((suffix, _)) => {
                let mut k = KeyReader::new(suffix, &[])?;
                let _time = k.u64()?;
                let seq = k.u64()?;
                k.finish()?;
                Ok(seq)
            }
        }
    }

    /// The capabilities in force at time `time_ns` (after every receipt
    /// appended at or before it): [`CapabilityGrants::in_force_at_seq`] at [`CapabilityGrants::seq_at_time`].
    pub fn in_force_at_time(
        &self,
        kv: &dyn KvRead,
        worldline: &WorldlineId,
        actor: Option<&str>,
        time_ns: u64,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Grant>, WorldlineError> {
        let seq = self.seq_at_time(kv, worldline, time_ns)?;
        if seq == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.in_force_at_seq(kv, worldline, actor, seq, cursor, limit)
    }

    /// The grant and revoke events (for one actor, or for every actor) in
    /// receipt order (`Direction::Backward`: latest first).
    pub fn history(
        &self,
        kv: &dyn KvRead,
        worldline: &WorldlineId,
        actor: Option<&str>,
        direction: Direction,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<GrantEvent>, WorldlineError> {
        let prefix = match actor {
            Some(a) => {
                check_actor(a)?;
                self.table(worldline, "actor_event").str(a)
            }
            None => self.table(worldline, "event"),
        };
        let page = scan(kv, prefix.bytes(), &[], None, direction, cursor, limit)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (suffix, v) in &page.items {
            let mut k = KeyReader::new(suffix, &[])?;
            let (seq, kind, holder, cap) = match actor {
                Some(a) => (k.u64()?, k.u8()?, a, k.str()?),
                None => {
                    let (seq, kind) = (k.u64()?, k.u8()?);
                    (seq, kind, k.str()?, k.str()?)
                }
            };
            k.finish()?;
            let decode = || {
                let mut r = Reader::new(v, "grant event");
                let e = (
                    r.u64("time")?,
                    r.digest("receipt_hash")?,
                    r.u8("effective")?,
                );
                r.finish()?;
                Ok(e)
            };
            let (timestamp_ns, receipt_hash, effective) =
                decode().map_err(|e: WorldlineError| {
                    e.in_stored(format_args!("capability_grants of worldline {worldline}"))
                })?;
            let kind = match kind {
                KIND_GRANT => GrantEventKind::Grant,
                KIND_REVOKE => GrantEventKind::Revoke,
                t => {
                    return Err(WorldlineError::corrupt(format!(
                        "capability_grants of worldline {worldline}: event kind {t} is unknown"
                    )));
                }
            };
            let effective = match effective {
                0 => false,
                1 => true,
                b => {
                    return Err(WorldlineError::corrupt(format!(
                        "capability_grants of worldline {worldline}: an event's effective flag is {b}, not 0 or 1"
                    )));
                }
            };
            items.push(GrantEvent {
                receipt: EventRef {
                    seq,
                    receipt_hash,
                    timestamp_ns,
                },
                kind,
                actor: holder.to_owned(),
                capability: cap.to_owned(),
                effective,
            });
        }
        Ok(Page {
            items,
            next: page.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Chain, fold_into};

    const BOTH: [CapabilityGrants; 2] = [CapabilityGrants::V1, CapabilityGrants::V2];

    fn caps(page: &Page<Grant>) -> Vec<(String, String, u64, Option<u64>)> {
        page.items
            .iter()
            .map(|g| {
                (
                    g.actor.clone(),
                    g.capability.clone(),
                    g.granted.seq,
                    g.revoked.map(|r| r.seq),
                )
            })
            .collect()
    }

    fn g(
        actor: &str,
        cap: &str,
        from: u64,
        until: Option<u64>,
    ) -> (String, String, u64, Option<u64>) {
        (actor.into(), cap.into(), from, until)
    }

    fn chain() -> Chain {
        let mut ch = Chain::new(b"w");
        ch.commit("alice", true, &["net"], &[]); // 1: alice net from 1
        ch.commit("bob", true, &["net", "disk"], &[]); // 2: bob net, disk from 2
        ch.commit("alice", true, &["net"], &[]); // 3: re-grant, no change
        ch.commit("alice", false, &["root"], &[]); // 4: rejected, nothing
        ch.commit("alice", true, &[], &["net", "disk"]); // 5: alice net until 5; disk was not hers
        ch.commit("alice", true, &["net"], &[]); // 6: alice net again from 6
        ch
    }

    #[test]
    fn capabilities_are_in_force_from_their_grant_until_their_revocation() {
        for grants in BOTH {
            in_force_from_grant_until_revocation(grants);
        }
    }

    fn in_force_from_grant_until_revocation(grants: CapabilityGrants) {
        let ch = chain();
        let kv = fold_into(&ch, &[&grants]);
        let w = &ch.worldline;
        let at = |actor: Option<&str>, seq| {
            caps(
                &grants
                    .in_force_at_seq(&kv, w, actor, seq, None, 100)
                    .unwrap(),
            )
        };
        assert_eq!(at(None, 0), vec![]);
        assert_eq!(at(None, 1), vec![g("alice", "net", 1, Some(5))]);
        assert_eq!(
            at(None, 4),
            vec![
                g("alice", "net", 1, Some(5)),
                g("bob", "disk", 2, None),
                g("bob", "net", 2, None)
            ]
        );
        assert_eq!(at(Some("alice"), 5), vec![]);
        assert_eq!(at(Some("alice"), 6), vec![g("alice", "net", 6, None)]);
        assert_eq!(at(Some("bob"), 6).len(), 2);
    }

    #[test]
    fn capabilities_in_force_at_a_time_are_those_after_every_receipt_until_then() {
        for grants in BOTH {
            in_force_at_a_time(grants);
        }
    }

    fn in_force_at_a_time(grants: CapabilityGrants) {
        let ch = chain();
        let kv = fold_into(&ch, &[&grants]);
        let w = &ch.worldline;
        let t = |seq: usize| ch.receipts[seq - 1].timestamp_ns;
        let at = |time| {
            caps(
                &grants
                    .in_force_at_time(&kv, w, Some("alice"), time, None, 100)
                    .unwrap(),
            )
        };
        assert_eq!(at(t(1) - 1), vec![]);
        assert_eq!(at(t(1)), vec![g("alice", "net", 1, Some(5))]);
        assert_eq!(at(t(5) - 1), vec![g("alice", "net", 1, Some(5))]);
        assert_eq!(at(t(5)), vec![]);
        assert_eq!(at(u64::MAX), vec![g("alice", "net", 6, None)]);
        assert_eq!(grants.seq_at_time(&kv, w, t(4)).unwrap(), 2);
    }

    #[test]
    fn the_history_records_every_grant_and_revocation_and_whether_it_changed_anything() {
        for grants in BOTH {
            history_of_grants_and_revocations(grants);
        }
    }

    fn history_of_grants_and_revocations(grants: CapabilityGrants) {
        let ch = chain();
        let kv = fold_into(&ch, &[&grants]);
        let w = &ch.worldline;
        let all = grants
            .history(&kv, w, None, Direction::Forward, None, 100)
            .unwrap();
        let summary: Vec<_> = all
            .items
            .iter()
            .map(|e| {
                (
                    e.receipt.seq,
                    e.kind,
                    e.actor.as_str(),
                    e.capability.as_str(),
                    e.effective,
                )
            })
            .collect();
        use GrantEventKind::{Grant as G, Revoke as R};
        assert_eq!(
            summary,
            vec![
                (1, G, "alice", "net", true),
                (2, G, "bob", "disk", true),
                (2, G, "bob", "net", true),
                (3, G, "alice", "net", false),
                (5, R, "alice", "disk", false),
                (5, R, "alice", "net", true),
                (6, G, "alice", "net", true),
            ]
        );
        let bob = grants
            .history(&kv, w, Some("bob"), Direction::Backward, None, 1)
            .unwrap();
        assert_eq!(bob.items[0].capability, "net");
        let more = grants
            .history(
                &kv,
                w,
                Some("bob"),
                Direction::Backward,
                bob.next.as_ref(),
                5,
            )
            .unwrap();
        assert_eq!(more.items.len(), 1);
        assert_eq!(more.next, None);
    }

    /// A long worldline of grants and revocations by a few actors over a
    /// few capabilities, from a fixed seed.
    fn busy_chain() -> Chain {
        let mut ch = Chain::new(b"busy");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let actors = ["alice", "bob", "carol"];
        let capabilities = ["net", "disk", "root", "gpu"];
        for _ in 0..300 {
            let actor = actors[next(3) as usize];
            let a = capabilities[next(4) as usize];
            let b = capabilities[next(4) as usize];
            match next(4) {
                0 => ch.commit(actor, true, &[a, b], &[]),
                1 => ch.commit(actor, true, &[], &[a]),
                2 if a != b => ch.commit(actor, true, &[a], &[b]),
                _ => ch.commit(actor, next(2) == 0, &[b], &[]),
            };
        }
        ch
    }

    #[test]
    fn version_2_answers_every_query_as_version_1_does() {
        let ch = busy_chain();
        let w = &ch.worldline;
        let (v1, v2) = (CapabilityGrants::V1, CapabilityGrants::V2);
        let (kv1, kv2) = (fold_into(&ch, &[&v1]), fold_into(&ch, &[&v2]));
        let head = ch.receipts.len() as u64;
        let mut open = 0;
        for seq in 0..=head + 1 {
            for actor in [None, Some("alice"), Some("bob"), Some("carol")] {
                let a = caps(&v1.in_force_at_seq(&kv1, w, actor, seq, None, 100).unwrap());
                let b = caps(&v2.in_force_at_seq(&kv2, w, actor, seq, None, 100).unwrap());
                assert_eq!(a, b, "in force at {seq} for {actor:?}");
                open += a.len();
            }
        }
        assert!(open > 1000, "the chain keeps grants in force ({open})");
        for direction in [Direction::Forward, Direction::Backward] {
            let a = v1.history(&kv1, w, None, direction, None, 10_000).unwrap();
            let b = v2.history(&kv2, w, None, direction, None, 10_000).unwrap();
            assert_eq!(a.items, b.items);
            assert!(
                a.items
                    .iter()
                    .any(|e| e.kind == GrantEventKind::Revoke && e.effective)
            );
        }
        // Only the pair values differ; every other record is the same.
        let strip = |kv: &crate::MemoryKv, version: u8| {
            kv.iter()
                .filter(|(k, _)| !k.windows(6).any(|x| x == b"/pair/"))
                .map(|(k, v)| {
                    let mut k = k.to_vec();
                    k[NAME.len() + 4] = version;
                    (k, v.to_vec())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&kv1, 0), strip(&kv2, 0));
    }

    #[test]
    fn version_2_finds_the_latest_interval_with_a_point_read() {
        struct Counting<'a> {
            kv: &'a crate::MemoryKv,
            ranges: std::cell::Cell<usize>,
        }
        impl KvRead for Counting<'_> {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
                self.kv.get(key)
            }
            fn range(
                &self,
                start: &[u8],
                end: &[u8],
                direction: Direction,
                limit: usize,
            ) -> Result<Vec<crate::KvPair>, WorldlineError> {
                self.ranges.set(self.ranges.get() + 1);
                self.kv.range(start, end, direction, limit)
            }
        }
        let ch = busy_chain();
        for (grants, ranges_expected) in
            [(CapabilityGrants::V1, true), (CapabilityGrants::V2, false)]
        {
            let mut kv = crate::MemoryKv::new();
            let mut ranges = 0;
            for r in &ch.receipts {
                let counting = Counting {
                    kv: &kv,
                    ranges: std::cell::Cell::new(0),
                };
                let mut batch = crate::KvBatch::new();
                crate::apply_receipt(&grants, r, &counting, &mut batch).unwrap();
                ranges += counting.ranges.get();
                kv.apply(batch);
            }
            assert_eq!(
                ranges > 0,
                ranges_expected,
                "version {}: {ranges} range reads",
                grants.version
            );
        }
    }
}
