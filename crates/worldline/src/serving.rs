//! Projection versions: which version of each projection is answered
//! from, and how a new version replaces the old one (`docs/design.md` §18,
//! "Projection versions").
//!
//! A change to what a projection stores is a new version, under its own
//! key prefix. The derived space holds one *serving record* under
//! [`SERVING_KEY`]: the version each projection answers queries from.
//! While a projection's serving version is older than the version this
//! code builds, both are folded (the old one stays current, so queries
//! keep their answers and their freshness), the new one from genesis.
//! Once the new version has caught up with the old one on every
//! worldline, one guarded write moves the serving record to it; the old
//! version's keys are then deleted. Every fold guards its write with the
//! serving record it read, and every query checks it did not move while it
//! ran, so no node folds or answers from a version that another node has
//! retired.

use std::collections::BTreeMap;

use crate::codec::{Put, Reader};
use crate::keys::{prefix_end, projection_prefix};
use crate::{Direction, KvRead, Projection, WorldlineError, projections};

/// Where the serving record lives in the derived space. `_` sorts before
/// every projection name (lowercase ASCII), so the record is outside every
/// projection's key range.
pub const SERVING_KEY: &[u8] = b"_serving";

const MAGIC: &[u8; 4] = b"WLLV";
const FORMAT: u8 = 1;
/// Projections a serving record names, at most.
const NAMES_MAX: usize = 64;
/// Bytes of a projection name, at most.
const NAME_BYTES_MAX: usize = 64;

/// Earlier versions of the projections that this code still reads and
/// folds, so that they keep answering while their successor rebuilds.
pub fn superseded() -> [&'static dyn Projection; 1] {
    [&crate::capability_grants::CapabilityGrants::V1]
}

/// Every version of every projection this code knows, oldest first per
/// name.
fn known() -> impl Iterator<Item = &'static dyn Projection> {
    superseded().into_iter().chain(projections())
}

/// The version `version` of projection `name`, if this code knows it.
pub fn projection_version(name: &str, version: u32) -> Option<&'static dyn Projection> {
    known().find(|p| p.name() == name && p.version() == version)
}

/// The version of each projection that queries are answered from, and
/// since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    /// Name → (version, when the record moved to it in ns since the Unix
    /// epoch; 0 when it was the record's first version).
    versions: BTreeMap<String, (u32, u64)>,
}

/// A serving record as read from the derived space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredServing {
    /// The stored bytes (`None`: no record yet), for a guarded write.
    pub bytes: Option<Vec<u8>>,
    /// The record; without one, what [`Serving::initial`] finds.
    pub serving: Serving,
}

impl Serving {
    /// Every projection at the version this code builds.
    pub fn current() -> Serving {
        Serving {
            versions: projections()
                .into_iter()
                .map(|p| (p.name().to_owned(), (p.version(), 0)))
                .collect(),
        }
    }

    /// The record a store without one starts from: per projection, the
    /// oldest known version that has stored anything (a store written
    /// before the record existed), else the version this code builds.
    pub fn initial(kv: &dyn KvRead) -> Result<Serving, WorldlineError> {
        let mut serving = Serving::current();
        for p in superseded() {
            let current = serving.version(p.name());
            if p.version() < current && holds_any(kv, p)? {
                serving
                    .versions
                    .insert(p.name().to_owned(), (p.version(), 0));
            }
        }
        Ok(serving)
    }

    /// The stored record, or the one [`Serving::initial`] finds.
    pub fn load(kv: &dyn KvRead) -> Result<StoredServing, WorldlineError> {
        Serving::from_stored(kv, kv.get(SERVING_KEY)?)
    }

    /// The record stored as `bytes` (read at [`SERVING_KEY`]), or without
    /// one what [`Serving::initial`] finds in `kv`.
    pub fn from_stored(
        kv: &dyn KvRead,
        bytes: Option<Vec<u8>>,
    ) -> Result<StoredServing, WorldlineError> {
        match bytes {
            Some(bytes) => Ok(StoredServing {
                serving: Serving::decode(&bytes)
                    .map_err(|e| e.in_stored("the projections' serving record"))?,
                bytes: Some(bytes),
            }),
            None => Ok(StoredServing {
                bytes: None,
                serving: Serving::initial(kv)?,
            }),
        }
    }

    /// The version `name` is answered from: the recorded one, or for a
    /// projection the record does not name (added after it was written),
    /// the version this code builds.
    pub fn version(&self, name: &str) -> u32 {
        match self.versions.get(name) {
            Some((v, _)) => *v,
            None => projections()
                .into_iter()
                .find(|p| p.name() == name)
                .map_or(0, |p| p.version()),
        }
    }

    /// When `name`'s queries moved to the version they are answered from
    /// (ns since the Unix epoch; 0: that version was the first recorded).
    pub fn since_ns(&self, name: &str) -> u64 {
        self.versions.get(name).map_or(0, |(_, since)| *since)
    }

    /// The same record with `name` answered from `version` since `now_ns`.
    pub fn with(&self, name: &str, version: u32, now_ns: u64) -> Serving {
        let mut s = self.clone();
        s.versions.insert(name.to_owned(), (version, now_ns));
        s
    }

    /// The projection versions a fold keeps up to date: each projection's
    /// current version and, while it rebuilds, the older serving one. A
    /// projection served at a version newer than this code knows (a node
    /// of a later release switched it) is left to the nodes that know it.
    pub fn folded(&self) -> Vec<&'static dyn Projection> {
        let mut out = Vec::with_capacity(5);
        for p in projections() {
            let serving = self.version(p.name());
            if serving > p.version() {
                continue;
            }
            if serving < p.version()
                && let Some(old) = projection_version(p.name(), serving)
            {
                out.push(old);
            }
            out.push(p);
        }
        out
    }

    /// Pairs of (serving version, the version replacing it), one per
    /// projection still being rebuilt. The serving version is `None` when
    /// this code no longer knows it (a release that dropped it): nothing
    /// answers that projection until the new version has reached every
    /// worldline's head.
    pub fn switching(&self) -> Vec<(Option<&'static dyn Projection>, &'static dyn Projection)> {
        projections()
            .into_iter()
            .filter_map(|p| {
                let serving = self.version(p.name());
                (serving < p.version()).then(|| (projection_version(p.name(), serving), p))
            })
            .collect()
    }

    /// Known versions older than the one each projection is answered from,
    /// each with when it was retired (ns since the Unix epoch; 0: before
    /// the record): this release neither reads nor folds them; what they
    /// still store is deleted once no node of an earlier release can
    /// still be answering from them.
    pub fn retired(&self) -> Vec<(&'static dyn Projection, u64)> {
        known()
            .filter(|p| p.version() < self.version(p.name()))
            .map(|p| (p, self.since_ns(p.name())))
            .collect()
    }

    /// The projection version to answer `name`'s queries from.
    pub fn answering(&self, name: &str) -> Result<&'static dyn Projection, WorldlineError> {
        let version = self.version(name);
        projection_version(name, version).ok_or_else(|| WorldlineError::Unavailable {
            message: if projections()
                .into_iter()
                .any(|p| p.name() == name && p.version() > version)
            {
                format!(
                    "the {name} projection is answered from version {version}, which this server \
                     no longer reads; its version is being rebuilt from the receipts and answers \
                     once it has reached every worldline's head: retry"
                )
            } else {
                format!(
                    "the {name} projection is answered from version {version}, which this \
                     server does not build (a node of a later release switched it); ask a node \
                     of that release, or retry once this one is upgraded"
                )
            },
        })
    }

    /// `[4] "WLLV" | u8 1 | u32 count | count × (len32 name | u32 version |
    /// u64 since_ns)`, names in byte order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.versions.len() * 40);
        out.extend_from_slice(MAGIC);
        out.put_u8(FORMAT);
        out.put_count(self.versions.len());
        for (name, (version, since)) in &self.versions {
            out.put_len32(name.as_bytes());
            out.put_u32(*version);
            out.put_u64(*since);
        }
        out
    }

    /// Decodes [`Serving::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Serving, WorldlineError> {
        let mut r = Reader::new(bytes, "serving record");
        r.header(MAGIC, FORMAT)?;
        let n = r.count("projections", NAMES_MAX, 16)?;
        let mut versions = BTreeMap::new();
        let mut last: Option<String> = None;
        for i in 0..n {
            let name = r.str32(format_args!("projections[{i}].name"), NAME_BYTES_MAX)?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(WorldlineError::invalid(
                    format_args!("projections[{i}].name"),
                    format!("{name:?} is not a projection name (lowercase ASCII and `_`)"),
                ));
            }
            if last.as_deref().is_some_and(|l| l >= name) {
                return Err(WorldlineError::invalid(
                    format_args!("projections[{i}].name"),
                    format!("{name:?} is out of order or repeated"),
                ));
            }
            let version = r.u32(format_args!("projections[{i}].version"))?;
            let since = r.u64(format_args!("projections[{i}].since_ns"))?;
            last = Some(name.to_owned());
            versions.insert(name.to_owned(), (version, since));
        }
        r.finish()?;
        Ok(Serving { versions })
    }
}

/// Whether `projection` has stored anything, for any worldline.
pub fn holds_any(kv: &dyn KvRead, projection: &dyn Projection) -> Result<bool, WorldlineError> {
    let start = projection_prefix(projection.name(), projection.version());
    let end = prefix_end(&start);
    Ok(!kv.range(&start, &end, Direction::Forward, 1)?.is_empty())
}

/// Up to `limit` keys `projection` still stores, for deleting a retired
/// version a batch at a time.
pub fn stored_keys(
    kv: &dyn KvRead,
    projection: &dyn Projection,
    limit: usize,
) -> Result<Vec<Vec<u8>>, WorldlineError> {
    let start = projection_prefix(projection.name(), projection.version());
    let end = prefix_end(&start);
    Ok(kv
        .range(&start, &end, Direction::Forward, limit)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability_grants::CapabilityGrants;
    use crate::testkit::{Chain, fold_into};
    use crate::{KvBatch, MemoryKv};

    fn previous_release() -> [&'static dyn Projection; 4] {
        let mut set = projections();
        for p in &mut set {
            if p.name() == "capability_grants" {
                *p = &CapabilityGrants::V1;
            }
        }
        set
    }

    fn chain() -> Chain {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("alice", true, &["net"], &[]);
        ch.outcome(
            &a,
            crate::OutcomeStatus::Succeeded,
            vec![crate::testkit::put("k", "1")],
        );
        ch.commit("alice", true, &[], &["net"]);
        ch
    }

    #[test]
    fn a_store_without_a_record_is_answered_from_the_oldest_version_it_holds() {
        let empty = MemoryKv::new();
        assert_eq!(Serving::initial(&empty).unwrap(), Serving::current());
        let old = fold_into(&chain(), &previous_release());
        let serving = Serving::initial(&old).unwrap();
        assert_eq!(serving.version("capability_grants"), 1);
        assert_eq!(serving.version("latest_state"), 1);
        assert_eq!(serving.answering("capability_grants").unwrap().version(), 1);
        let folded: Vec<(&str, u32)> = serving
            .folded()
            .iter()
            .map(|p| (p.name(), p.version()))
            .collect();
        assert_eq!(
            folded,
            vec![
                ("latest_state", 1),
                ("audit_index", 1),
                ("capability_grants", 1),
                ("capability_grants", 2),
                ("provenance_dag", 1)
            ]
        );
        assert_eq!(serving.switching().len(), 1);
        assert!(serving.switching()[0].0.is_some());
        assert!(serving.retired().is_empty());
        // Once switched, version 1 is retired and no longer folded.
        let switched = serving.with("capability_grants", 2, 77);
        assert_eq!(switched.since_ns("capability_grants"), 77);
        assert_eq!(switched.version("capability_grants"), 2);
        assert_eq!(switched.folded().len(), 4);
        assert!(switched.switching().is_empty());
        let retired: Vec<(u32, u64)> = switched
            .retired()
            .iter()
            .map(|(p, since)| (p.version(), *since))
            .collect();
        assert_eq!(retired, vec![(1, 77)]);
        assert!(holds_any(&old, &CapabilityGrants::V1).unwrap());
        assert!(!holds_any(&old, &CapabilityGrants::V2).unwrap());
        let keys = stored_keys(&old, &CapabilityGrants::V1, 3).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| k.starts_with(b"capability_grants/")));
    }

    #[test]
    fn a_version_newer_than_this_code_is_neither_folded_nor_answered() {
        let newer = Serving::current().with("capability_grants", 3, 1);
        assert!(
            newer
                .folded()
                .iter()
                .all(|p| p.name() != "capability_grants")
        );
        let Err(e) = newer.answering("capability_grants") else {
            panic!("version 3 is unknown here")
        };
        assert_eq!(e.code(), crate::ErrorCode::Unavailable);
        assert!(e.message().contains("version 3"), "{e}");
        assert!(newer.switching().is_empty());
    }

    #[test]
    fn a_version_older_than_this_code_knows_is_rebuilt_and_not_answered_meanwhile() {
        let dropped = Serving::current().with("latest_state", 0, 1);
        let switching = dropped.switching();
        assert_eq!(switching.len(), 1);
        assert!(switching[0].0.is_none());
        assert_eq!(switching[0].1.name(), "latest_state");
        assert!(
            dropped
                .folded()
                .iter()
                .any(|p| p.name() == "latest_state" && p.version() == 1)
        );
        let Err(e) = dropped.answering("latest_state") else {
            panic!("version 0 is unknown here")
        };
        assert_eq!(e.code(), crate::ErrorCode::Unavailable);
        assert!(e.message().contains("being rebuilt"), "{e}");
    }

    #[test]
    fn the_stored_record_wins_over_what_the_store_holds() {
        let mut kv = fold_into(&chain(), &previous_release());
        let mut batch = KvBatch::new();
        batch.put(SERVING_KEY.to_vec(), Serving::current().encode());
        kv.apply(batch);
        let loaded = Serving::load(&kv).unwrap();
        assert_eq!(loaded.serving, Serving::current());
        assert_eq!(loaded.bytes, Some(Serving::current().encode()));
        let none = Serving::load(&MemoryKv::new()).unwrap();
        assert_eq!(none.bytes, None);
    }

    #[test]
    fn serving_records_round_trip_and_damaged_ones_never_panic() {
        let s = Serving::current().with("capability_grants", 1, 12345);
        let b = s.encode();
        assert_eq!(Serving::decode(&b), Ok(s));
        crate::testkit::never_panics_on_mutations(&b, |m| {
            if let Ok(d) = Serving::decode(m) {
                assert_eq!(d.encode(), m);
            }
        });
        let mut bad = Serving::current();
        bad.versions.insert("Bad/Name".into(), (1, 0));
        assert!(Serving::decode(&bad.encode()).is_err());
    }
}
