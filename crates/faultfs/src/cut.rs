//! Power cuts: what of the current state a machine would find on its disk
//! after losing power, by the durability model of the crate documentation.

use std::collections::BTreeMap;

use crate::content::SECTOR_BYTES;
use crate::model::{Body, Id, Model, ROOT};
use crate::rng::SplitMix64;

/// What a power cut keeps of the writes that were not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Nothing: every file is its durable content and size, every
    /// directory its durable entries.
    DropUnsynced,
    /// A torn cut: for each file with unsynced changes, the size is the
    /// durable or the current one (a coin), and each 512-byte sector whose
    /// current content differs from the durable one takes its current
    /// content with probability 1/2. Directory entries are as after
    /// [`PowerCut::DropUnsynced`]. The same seed over the same state gives
    /// the same result.
    Torn {
        /// Seeds the coins.
        seed: u64,
    },
}

/// What a power cut threw away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CutReport {
    /// Files that had unsynced content or size.
    pub files_unsynced: u64,
    /// 512-byte sectors whose current content was not durable.
    pub sectors_unsynced: u64,
    /// Of those, the sectors a torn cut kept (within the chosen size).
    pub sectors_kept: u64,
    /// Files whose size became their current size under a torn cut.
    pub sizes_kept: u64,
    /// Directory entries that went back to their durable state.
    pub names_reverted: u64,
    /// Objects (files, directories, symlinks) that no durable name reaches
    /// and that are gone.
    pub objects_lost: u64,
}

impl Model {
    /// Applies a power cut: the durable state becomes the whole state.
    /// Every handle is invalid afterwards (the processes were killed).
    pub(crate) fn power_cut(&mut self, cut: PowerCut) -> CutReport {
        let mut report = CutReport::default();
        let mut coins = match cut {
            PowerCut::DropUnsynced => None,
            PowerCut::Torn { seed } => Some(SplitMix64::new(seed)),
        };
        // In id order, so the coins fall the same way for the same state.
        for object in self.objects.values_mut() {
            match &mut object.body {
                Body::File { current, durable } => {
                    let sectors = durable.differing_sectors(current);
                    if sectors.is_empty() && durable.size() == current.size() {
                        *current = durable.clone();
                        continue;
                    }
                    report.files_unsynced += 1;
                    report.sectors_unsynced += sectors.len() as u64;
                    if let Some(coins) = &mut coins {
                        let size = if coins.coin() {
                            report.sizes_kept += 1;
                            current.size()
                        } else {
                            durable.size()
                        };
                        let mut torn = durable.clone();
                        torn.set_size(size);
                        for sector in sectors {
                            if coins.coin() && sector * SECTOR_BYTES < size {
                                torn.copy_sector(current, sector);
                                report.sectors_kept += 1;
                            }
                        }
                        *durable = torn;
                    }
                    *current = durable.clone();
                }
                Body::Dir {
                    current, durable, ..
                } => {
                    let changed = current.iter().filter(|(n, c)| durable.get(*n) != Some(c));
                    let removed = durable.keys().filter(|n| !current.contains_key(*n));
                    report.names_reverted += (changed.count() + removed.count()) as u64;
                    *current = durable.clone();
                }
                Body::Symlink { .. } => {}
            }
            object.open = 0;
        }
        self.renames.clear();
        self.handles.clear();
        report.objects_lost = self.relink();
        self.stats.power_cuts += 1;
        report
    }

    /// Recounts names and parents from the root after a cut and drops what
    /// no name reaches; returns how many objects were dropped.
    fn relink(&mut self) -> u64 {
        let mut links: BTreeMap<Id, u32> = BTreeMap::from([(ROOT, 1)]);
        let mut parents: BTreeMap<Id, Id> = BTreeMap::from([(ROOT, ROOT)]);
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let Some(Body::Dir { current, .. }) = self.objects.get(&dir).map(|o| &o.body) else {
                continue;
            };
            for &child in current.values() {
                let is_dir = matches!(
                    self.objects.get(&child).map(|o| &o.body),
                    Some(Body::Dir { .. })
                );
                let seen = links.entry(child).or_insert(0);
                *seen += 1;
                if is_dir {
                    // Renames become durable with both their names, so a
                    // directory never ends up with two.
                    assert_eq!(*seen, 1, "directory {child} has two durable names");
                    parents.insert(child, dir);
                    stack.push(child);
                }
            }
        }
        let before = self.objects.len();
        self.objects.retain(|id, _| links.contains_key(id));
        for (id, object) in &mut self.objects {
            object.links = links[id];
            if let Body::Dir { parent, .. } = &mut object.body {
                *parent = parents[id];
            }
        }
        (before - self.objects.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::model::{DirSync, Meta};

    fn meta() -> Meta {
        Meta::new(0o644, 0, 0)
    }

    fn file(m: &mut Model, name: &str) -> Id {
        m.create_file(ROOT, OsStr::new(name), meta()).unwrap().ino.0
    }

    fn read_all(m: &Model, id: Id) -> Vec<u8> {
        m.read(id, 0, u32::MAX).unwrap()
    }

    #[test]
    fn a_cut_keeps_fsynced_content_and_drops_the_rest() {
        let mut m = Model::new(DirSync::Strict);
        let id = file(&mut m, "f");
        m.fsyncdir(ROOT).unwrap();
        m.write(id, 0, 0, b"durable").unwrap();
        m.fsync(id).unwrap();
        m.write(id, 0, 7, b" and not").unwrap();
        let report = m.power_cut(PowerCut::DropUnsynced);
        assert_eq!(read_all(&m, id), b"durable");
        assert_eq!(report.files_unsynced, 1);
        assert_eq!(report.sectors_kept, 0);
    }

    #[test]
    fn a_rename_and_its_old_name_become_durable_together() {
        let mut m = Model::new(DirSync::Strict);
        let a = m.mkdir(ROOT, OsStr::new("a"), meta()).unwrap().ino.0;
        let b = m.mkdir(ROOT, OsStr::new("b"), meta()).unwrap().ino.0;
        let f = m.create_file(a, OsStr::new("f"), meta()).unwrap().ino.0;
        m.fsyncdir(ROOT).unwrap();
        m.fsyncdir(a).unwrap();
        m.rename(a, OsStr::new("f"), b, OsStr::new("g"), false)
            .unwrap();
        // Syncing only the new parent also drops the old name.
        m.fsyncdir(b).unwrap();
        m.power_cut(PowerCut::DropUnsynced);
        assert_eq!(m.lookup(b, OsStr::new("g")).unwrap().ino.0, f);
        assert!(m.lookup(a, OsStr::new("f")).is_err());
        assert_eq!(m.attr(f).unwrap().nlink, 1);
    }

    #[test]
    fn a_directory_moved_twice_has_one_durable_name() {
        let mut m = Model::new(DirSync::Strict);
        let a = m.mkdir(ROOT, OsStr::new("a"), meta()).unwrap().ino.0;
        let d = m.mkdir(ROOT, OsStr::new("d"), meta()).unwrap().ino.0;
        m.fsyncdir(ROOT).unwrap();
        m.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), false)
            .unwrap();
        m.rename(ROOT, OsStr::new("e"), a, OsStr::new("d"), false)
            .unwrap();
        m.fsyncdir(a).unwrap();
        m.power_cut(PowerCut::DropUnsynced);
        assert_eq!(m.lookup(a, OsStr::new("d")).unwrap().ino.0, d);
        assert!(m.lookup(ROOT, OsStr::new("d")).is_err());
        assert!(m.lookup(ROOT, OsStr::new("e")).is_err());
    }

    #[test]
    fn a_torn_cut_is_a_function_of_the_seed() {
        let run = |seed| {
            let mut m = Model::new(DirSync::Strict);
            let id = file(&mut m, "f");
            m.fsyncdir(ROOT).unwrap();
            // Same size before and after, so only the sectors are torn.
            m.write(id, 0, 0, &[0; 64 * 512]).unwrap();
            m.fsync(id).unwrap();
            m.write(id, 0, 0, &[1; 64 * 512]).unwrap();
            let report = m.power_cut(PowerCut::Torn { seed });
            (report, read_all(&m, id))
        };
        assert_eq!(run(3), run(3));
        let (report, _) = run(3);
        assert_eq!(report.sectors_unsynced, 64);
        assert_ne!(run(3).1, run(4).1);
    }

    #[test]
    fn objects_only_open_handles_reach_are_gone_after_a_cut() {
        let mut m = Model::new(DirSync::Strict);
        let id = file(&mut m, "f");
        let fh = m.open(id, 0, false).unwrap();
        m.unlink(ROOT, OsStr::new("f")).unwrap();
        assert!(m.attr(id).is_ok(), "an open file outlives its name");
        m.release(fh);
        assert!(m.attr(id).is_err());
        let id = file(&mut m, "g");
        m.open(id, 0, false).unwrap();
        let report = m.power_cut(PowerCut::DropUnsynced);
        assert_eq!(report.objects_lost, 1);
        assert!(m.attr(id).is_err());
    }
}
