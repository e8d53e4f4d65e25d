//! `latest_state`, version 1: the worldline's state at the last receipt
//! folded, key by key, with its pair count and byte total.
//!
//! No running state hash is stored: it could not be checked without
//! recomputing it anyway. [`state_hash`] streams the pairs in key order
//! through a [`StateHasher`] instead, and checks the stored count and
//! total on the way.
//!
//! | table | key after `latest_state/1/<worldline>/` | value |
//! |---|---|---|
//! | meta | `meta/` | `u64 pair_count ‖ u64 state_bytes` |
//! | pairs | `pair/` state key `\0` | the value |
//!
//! Costs: a commitment, a failed outcome or a rejection writes nothing (but
//! the checkpoint). A succeeded outcome with `u` updates reads the meta and
//! `u` values and writes `u` pairs and the meta. Queries: [`value`] one
//! read; [`head`] two; [`pairs`] one range; [`state_hash`] two reads and
//! one range per [`HASH_PAIRS_PER_READ`] pairs.

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader};
use crate::keys::{Key, KeyReader};
use crate::page::scan;
use crate::{
    Cursor, Direction, KvRead, KvTxn, OutcomeStatus, Page, Projection, Receipt, ReceiptBody,
    StateHasher, StateUpdate, WorldlineError, WorldlineId, WorldlineLimits, read_checkpoint,
};

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatestState;

const NAME: &str = "latest_state";
const VERSION: u32 = 1;

/// Pairs read per range while hashing: bounds the memory of a hash to this
/// many values (64 MiB at the 1 MiB value limit; far less in practice).
pub const HASH_PAIRS_PER_READ: usize = 64;

fn meta_key(w: &WorldlineId) -> Key {
    Key::table(NAME, VERSION, w, "meta")
}

fn pairs_prefix(w: &WorldlineId) -> Key {
    Key::table(NAME, VERSION, w, "pair")
}

fn pair_key(w: &WorldlineId, key: &str) -> Vec<u8> {
    pairs_prefix(w).str(key).into_bytes()
}

/// Pair count and byte total, as stored.
fn read_meta(kv: &dyn KvRead, w: &WorldlineId) -> Result<(u64, u64), WorldlineError> {
    let Some(v) = kv.get(meta_key(w).bytes())? else {
        return Ok((0, 0));
    };
    let decode = || {
        let mut r = Reader::new(&v, "latest_state meta");
        let m = (r.u64("pair_count")?, r.u64("state_bytes")?);
        r.finish()?;
        Ok(m)
    };
    decode().map_err(|e: WorldlineError| e.in_stored(format_args!("latest_state of worldline {w}")))
}

fn shrunk_below_zero(w: &WorldlineId) -> WorldlineError {
    WorldlineError::corrupt(format!(
        "latest_state of worldline {w}: the stored pair count or byte total is below what its pairs hold"
    ))
}

impl Projection for LatestState {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn apply(&self, receipt: &Receipt, txn: &mut KvTxn<'_>) -> Result<(), WorldlineError> {
        let ReceiptBody::Outcome(o) = &receipt.body else {
            return Ok(());
        };
        if o.status != OutcomeStatus::Succeeded || o.state_updates.is_empty() {
            return Ok(());
        }
        let w = &receipt.worldline;
        let (mut count, mut bytes) = read_meta(txn, w)?;
        for u in &o.state_updates {
            let key = pair_key(w, u.key());
            // Read through the transaction: an earlier update of the same
            // key in this outcome is seen.
            if let Some(old) = txn.get(&key)? {
                count = count.checked_sub(1).ok_or_else(|| shrunk_below_zero(w))?;
                bytes = bytes
                    .checked_sub((u.key().len() + old.len()) as u64)
                    .ok_or_else(|| shrunk_below_zero(w))?;
            }
            match u {
                StateUpdate::Put { key: k, value } => {
                    count += 1;
                    bytes += (k.len() + value.len()) as u64;
                    txn.put(key, value.clone());
                }
                StateUpdate::Delete { .. } => txn.delete(key),
            }
        }
        let mut meta = Vec::with_capacity(16);
        meta.put_u64(count);
        meta.put_u64(bytes);
        txn.put(meta_key(w).into_bytes(), meta);
        Ok(())
    }
}

/// What the projection reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHead {
    /// The last receipt folded.
    pub through_seq: u64,
    /// Its hash.
    pub through_hash: Digest,
    /// Number of pairs.
    pub pair_count: u64,
    /// Total key and value bytes.
    pub state_bytes: u64,
}

/// The value of `key` at the last receipt folded.
pub fn value(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    key: &str,
) -> Result<Option<Vec<u8>>, WorldlineError> {
    kv.get(&pair_key(worldline, key))
}

/// What the projection reflects; `None` before the first receipt.
pub fn head(kv: &dyn KvRead, worldline: &WorldlineId) -> Result<Option<StateHead>, WorldlineError> {
    let Some(c) = read_checkpoint(kv, &LatestState, worldline)? else {
        return Ok(None);
    };
    let (pair_count, state_bytes) = read_meta(kv, worldline)?;
    Ok(Some(StateHead {
        through_seq: c.through_seq,
        through_hash: c.through_hash,
        pair_count,
        state_bytes,
    }))
}

/// The pairs whose key starts with `key_prefix` (`""`: all), in key order.
/// Continue with the returned cursor and the same `key_prefix`.
pub fn pairs(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    key_prefix: &str,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<(String, Vec<u8>)>, WorldlineError> {
    let prefix = [pairs_prefix(worldline).bytes(), key_prefix.as_bytes()].concat();
    let page = scan(kv, &prefix, &[], None, Direction::Forward, cursor, limit)?;
    let mut items = Vec::with_capacity(page.items.len());
    for (suffix, v) in page.items {
        let full = [key_prefix.as_bytes(), &suffix].concat();
        let mut r = KeyReader::new(&full, &[])?;
        items.push((r.str()?.to_owned(), v));
        r.finish()?;
    }
    Ok(Page {
        items,
        next: page.next,
    })
}

/// The state hash at the last receipt folded, with what it reflects;
/// `None` before the first receipt. Streams every pair in key order
/// through a [`StateHasher`], checking the stored pair count and byte
/// total ([`WorldlineError::Corrupt`] if they disagree). `kv` must read
/// one consistent snapshot.
pub fn state_hash(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
) -> Result<Option<(StateHead, Digest)>, WorldlineError> {
    let Some(head) = head(kv, worldline)? else {
        return Ok(None);
    };
    let mut hasher = StateHasher::new(head.pair_count);
    let mut bytes = 0u64;
    let mut cursor = None;
    loop {
        let page = pairs(kv, worldline, "", cursor.as_ref(), HASH_PAIRS_PER_READ)?;
        for (k, v) in &page.items {
            bytes += (k.len() + v.len()) as u64;
            hasher
                .push(k.as_bytes(), v)
                .map_err(|e| e.in_stored(format_args!("latest_state of worldline {worldline}")))?;
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if bytes != head.state_bytes {
        return Err(WorldlineError::corrupt(format!(
            "latest_state of worldline {worldline}: pairs hold {bytes} bytes but the meta says {}",
            head.state_bytes
        )));
    }
    let digest = hasher
        .finish()
        .map_err(|e| e.in_stored(format_args!("latest_state of worldline {worldline}")))?;
    Ok(Some((head, digest)))
}

/// Refuses `updates` if they would take the state past
/// `limits.state_bytes_max` ([`WorldlineError::StateLimit`]), computed from
/// this projection: one read of the meta and one per distinct key. Valid
/// only while the projection is folded to the worldline's head (a server
/// folds it in the same batch as each append).
pub fn check_updates(
    kv: &dyn KvRead,
    worldline: &WorldlineId,
    updates: &[StateUpdate],
    limits: &WorldlineLimits,
) -> Result<(), WorldlineError> {
    let (_, bytes) = read_meta(kv, worldline)?;
    let total = crate::state::bytes_after(bytes, updates, |key| {
        Ok(value(kv, worldline, key)?.map(|v| v.len()))
    })?;
    crate::state::check_total(total, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Chain, delete, fold, put};
    use crate::{NoLookup, Replay};

    fn chain() -> Chain {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &[], &[]);
        ch.outcome(
            &a,
            OutcomeStatus::Succeeded,
            vec![
                put("svc/a", "1"),
                put("svc/b", "22"),
                put("zone", "z"),
                put("svc/a", "333"),
            ],
        );
        let b = ch.commit("agent", true, &[], &[]);
        ch.outcome(&b, OutcomeStatus::Failed { reason: "x".into() }, vec![]);
        let c = ch.commit("agent", true, &[], &[]);
        ch.outcome(
            &c,
            OutcomeStatus::Succeeded,
            vec![delete("svc/b"), put("svc/c", "")],
        );
        ch
    }

    #[test]
    fn the_projection_holds_the_replayed_state_and_recomputes_its_hash() {
        let ch = chain();
        let kv = fold(&ch);
        let mut replay = Replay::genesis(ch.worldline, WorldlineLimits::default());
        for r in &ch.receipts {
            replay.apply(r, &NoLookup).unwrap();
        }
        let (head, hash) = state_hash(&kv, &ch.worldline).unwrap().unwrap();
        assert_eq!(hash, replay.state_hash());
        assert_eq!(head.through_seq, 6);
        assert_eq!(head.through_hash, ch.receipts[5].receipt_hash);
        assert_eq!(head.pair_count, replay.state().len() as u64);
        assert_eq!(head.state_bytes, replay.state().bytes());
        assert_eq!(
            value(&kv, &ch.worldline, "svc/a").unwrap(),
            Some(b"333".to_vec())
        );
        assert_eq!(value(&kv, &ch.worldline, "svc/b").unwrap(), None);
        assert_eq!(
            state_hash(&kv, &WorldlineId::derive(b"none")).unwrap(),
            None
        );
    }

    #[test]
    fn pairs_page_in_key_order_under_a_key_prefix() {
        let ch = chain();
        let kv = fold(&ch);
        let first = pairs(&kv, &ch.worldline, "svc/", None, 1).unwrap();
        assert_eq!(first.items, vec![("svc/a".to_owned(), b"333".to_vec())]);
        let rest = pairs(&kv, &ch.worldline, "svc/", first.next.as_ref(), 10).unwrap();
        assert_eq!(rest.items, vec![("svc/c".to_owned(), Vec::new())]);
        assert_eq!(rest.next, None);
        let all = pairs(&kv, &ch.worldline, "", None, 10).unwrap();
        assert_eq!(all.items.len(), 3);
    }

    #[test]
    fn an_update_that_would_pass_the_state_limit_is_refused_from_the_projection() {
        let ch = chain();
        let kv = fold(&ch);
        let (head, _) = state_hash(&kv, &ch.worldline).unwrap().unwrap();
        let limits = WorldlineLimits {
            state_bytes_max: head.state_bytes + 1,
            ..WorldlineLimits::default()
        };
        check_updates(&kv, &ch.worldline, &[put("q", "")], &limits).unwrap();
        let e = check_updates(&kv, &ch.worldline, &[put("q", "1")], &limits).unwrap_err();
        assert!(matches!(e, WorldlineError::StateLimit { .. }), "{e}");
        // Replacing a value counts only the difference.
        check_updates(&kv, &ch.worldline, &[put("svc/a", "4444")], &limits).unwrap();
    }
}
