//! The filesystem's state, owned by the test process: every object with
//! its durable and current version, and the operations the kernel asks
//! for, each answered with the errno a POSIX filesystem would give.
//!
//! Nothing here knows about FUSE sessions or mounts; `fs.rs` translates
//! requests into these calls, `cut.rs` applies power cuts.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use crate::content::{Content, PAGE_BYTES, SECTOR_BYTES};

/// An object's identity; also its inode number. Never reused while the
/// state lives (power cuts included), so a stale number finds nothing
/// rather than another file.
pub(crate) type Id = u64;
/// The root directory (FUSE's root inode number).
pub(crate) const ROOT: Id = 1;
/// Longest name in a directory, as on ext4.
pub(crate) const NAME_BYTES_MAX: usize = 255;
/// `statfs` capacity when no space limit is set: 1 TiB.
const CAPACITY_BYTES_DEFAULT: u64 = 1 << 40;
/// `statfs` inode capacity.
const OBJECTS_MAX: u64 = 1 << 20;

/// When changes to a directory's entries become durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirSync {
    /// Only when the directory itself is fsynced (`fsync` on a descriptor
    /// of the directory): strict POSIX, as LazyFS and ALICE assume.
    #[default]
    Strict,
    /// Also when a file is fsynced: the entries that name it (added or
    /// removed) and the entries that name each directory above it become
    /// durable, as ext4's journal commit makes them.
    OnFileFsync,
}

/// Counters and current figures of a mounted [`crate::FaultFs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Successful `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// Successful `fsync` calls on directories.
    pub fsyncdirs: u64,
    /// `fsync`/`fsyncdir` calls answered `EIO` by [`crate::FaultFs::fail_fsync`].
    pub failed_syncs: u64,
    /// Power cuts so far.
    pub power_cuts: u64,
    /// 512-byte sectors whose current content is not durable.
    pub unsynced_sectors: u64,
    /// Files whose current size is not durable.
    pub unsynced_sizes: u64,
    /// Directory entries (name → object) whose current state is not durable:
    /// added, removed or pointing elsewhere.
    pub unsynced_names: u64,
    /// Regular files in the current namespace (or still open).
    pub files: u64,
    /// Directories in the current namespace, the root included.
    pub dirs: u64,
    /// Bytes allocated to current file contents (what the space limit counts).
    pub used_bytes: u64,
}

impl Stats {
    /// Bytes in [`Stats::unsynced_sectors`].
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_sectors * SECTOR_BYTES
    }
}

/// Ownership, permissions and times. Not versioned: a power cut keeps them
/// as last set (the durability contract covers content, size and names).
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    pub(crate) crtime: SystemTime,
}

impl Meta {
    pub(crate) fn new(mode: u32, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm: (mode & 0o7777) as u16,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// What an object is, with both versions of what the contract versions.
#[derive(Debug)]
pub(crate) enum Body {
    File {
        current: Content,
        durable: Content,
    },
    Dir {
        current: BTreeMap<OsString, Id>,
        durable: BTreeMap<OsString, Id>,
        /// The directory holding it in the current namespace.
        parent: Id,
    },
    Symlink {
        target: OsString,
    },
}

#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) body: Body,
    pub(crate) meta: Meta,
    /// Names in the current namespace (a directory: 1 while linked).
    pub(crate) links: u32,
    /// Open handles; the object outlives its last name while one is open.
    pub(crate) open: u32,
}

impl Object {
    fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
            Body::Symlink { .. } => FileType::Symlink,
        }
    }
}

/// An open file or directory.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) id: Id,
    /// Opened with `O_APPEND`: every write goes to the end.
    append: bool,
    /// A directory's entries as of `opendir`, so a listing is consistent
    /// while the directory changes.
    listing: Option<Vec<(Id, FileType, OsString)>>,
}

/// Attribute changes of one `setattr`.
#[derive(Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<TimeOrNow>,
    pub(crate) mtime: Option<TimeOrNow>,
}

/// What `statfs` reports, in 4 KiB blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Statfs {
    pub(crate) blocks: u64,
    pub(crate) bfree: u64,
    pub(crate) files: u64,
    pub(crate) ffree: u64,
}

/// The whole state.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) objects: BTreeMap<Id, Object>,
    next_id: Id,
    /// Renames not yet durable: the old and the new name of each become
    /// durable together (fsyncing either directory syncs both), so a cut
    /// never leaves an object under both names, or a directory with two
    /// parents.
    pub(crate) renames: Vec<[(Id, OsString); 2]>,
    pub(crate) handles: HashMap<u64, Handle>,
    next_handle: u64,
    dir_sync: DirSync,
    pub(crate) fail_fsync: bool,
    pub(crate) space_limit_bytes: Option<u64>,
    pub(crate) stats: Stats,
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn resolve(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Model {
    /// An empty filesystem: the root directory, durable.
    pub(crate) fn new(dir_sync: DirSync) -> Model {
        let mut objects = BTreeMap::new();
        objects.insert(
            ROOT,
            Object {
                body: Body::Dir {
                    current: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    parent: ROOT,
                },
                meta: Meta::new(0o755, 0, 0),
                links: 1,
                open: 0,
            },
        );
        Model {
            objects,
            next_id: ROOT + 1,
            renames: Vec::new(),
            handles: HashMap::new(),
            next_handle: 1,
            dir_sync,
            fail_fsync: false,
            space_limit_bytes: None,
            stats: Stats::default(),
        }
    }

    fn object(&self, id: Id) -> Result<&Object, Errno> {
        self.objects.get(&id).ok_or(Errno::ENOENT)
    }

    fn object_mut(&mut self, id: Id) -> Result<&mut Object, Errno> {
        self.objects.get_mut(&id).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: Id) -> Result<&BTreeMap<OsString, Id>, Errno> {
        match &self.object(dir)?.body {
            Body::Dir { current, .. } => Ok(current),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: Id) -> Result<&mut BTreeMap<OsString, Id>, Errno> {
        match &mut self.object_mut(dir)?.body {
            Body::Dir { current, .. } => Ok(current),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn child(&self, dir: Id, name: &OsStr) -> Result<Id, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn content_mut(&mut self, id: Id) -> Result<&mut Content, Errno> {
        match &mut self.object_mut(id)?.body {
            Body::File { current, .. } => Ok(current),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Symlink { .. } => Err(Errno::EINVAL),
        }
    }

    /// Attributes as `stat` shows them.
    pub(crate) fn attr(&self, id: Id) -> Result<FileAttr, Errno> {
        let object = self.object(id)?;
        let (size, blocks, nlink) = match &object.body {
            Body::File { current, .. } => (
                current.size(),
                current.allocated_bytes() / SECTOR_BYTES,
                object.links,
            ),
            Body::Dir { current, .. } => {
                let subdirs = current
                    .values()
                    .filter(|c| {
                        matches!(self.objects.get(c).map(|o| &o.body), Some(Body::Dir { .. }))
                    })
                    .count() as u32;
                let nlink = if object.links == 0 { 0 } else { 2 + subdirs };
                (current.len() as u64, 0, nlink)
            }
            Body::Symlink { target } => (target.len() as u64, 0, object.links),
        };
        let m = &object.meta;
        Ok(FileAttr {
            ino: INodeNo(id),
            size,
            blocks,
            atime: m.atime,
            mtime: m.mtime,
            ctime: m.ctime,
            crtime: m.crtime,
            kind: object.kind(),
            perm: m.perm,
            nlink,
            uid: m.uid,
            gid: m.gid,
            rdev: 0,
            blksize: PAGE_BYTES as u32,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: Id, name: &OsStr) -> Result<FileAttr, Errno> {
        if name.len() > NAME_BYTES_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        self.attr(self.child(parent, name)?)
    }

    /// Bytes allocated to the current content of every file that is named
    /// or open.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.objects
            .values()
            .filter(|o| o.links > 0 || o.open > 0)
            .map(|o| match &o.body {
                Body::File { current, .. } => current.allocated_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// `ENOSPC` unless `bytes` more fit under the space limit; a new name
    /// needs room for at least one page.
    fn check_space(&self, bytes: u64) -> Result<(), Errno> {
        match self.space_limit_bytes {
            Some(limit) if self.used_bytes().saturating_add(bytes) > limit => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// Adds a new object under `parent/name` (current namespace only).
    fn add(&mut self, parent: Id, name: &OsStr, body: Body, meta: Meta) -> Result<Id, Errno> {
        check_name(name)?;
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.check_space(PAGE_BYTES)?;
        let id = self.next_id;
        self.next_id += 1;
        self.objects.insert(
            id,
            Object {
                body,
                meta,
                links: 1,
                open: 0,
            },
        );
        self.entries_mut(parent)?.insert(name.to_owned(), id);
        self.object_mut(parent)?.meta.touch();
        Ok(id)
    }

    pub(crate) fn create_file(
        &mut self,
        parent: Id,
        name: &OsStr,
        meta: Meta,
    ) -> Result<FileAttr, Errno> {
        let body = Body::File {
            current: Content::default(),
            durable: Content::default(),
        };
        let id = self.add(parent, name, body, meta)?;
        self.attr(id)
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: Id,
        name: &OsStr,
        meta: Meta,
    ) -> Result<FileAttr, Errno> {
        self.entries(parent)?;
        let body = Body::Dir {
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent,
        };
        let id = self.add(parent, name, body, meta)?;
        self.attr(id)
    }

    pub(crate) fn symlink(
        &mut self,
        parent: Id,
        name: &OsStr,
        target: &OsStr,
        meta: Meta,
    ) -> Result<FileAttr, Errno> {
        let body = Body::Symlink {
            target: target.to_owned(),
        };
        let id = self.add(parent, name, body, meta)?;
        self.attr(id)
    }

    pub(crate) fn readlink(&self, id: Id) -> Result<Vec<u8>, Errno> {
        match &self.object(id)?.body {
            Body::Symlink { target } => Ok(target.as_encoded_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// A second name for a file (`link(2)`): fails with `EEXIST` if the new
    /// name exists, which is what makes `link` an atomic create-if-absent.
    pub(crate) fn link(&mut self, id: Id, parent: Id, name: &OsStr) -> Result<FileAttr, Errno> {
        check_name(name)?;
        if matches!(self.object(id)?.body, Body::Dir { .. }) {
            return Err(Errno::EPERM);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.check_space(PAGE_BYTES)?;
        self.entries_mut(parent)?.insert(name.to_owned(), id);
        self.object_mut(parent)?.meta.touch();
        let object = self.object_mut(id)?;
        object.links += 1;
        object.meta.ctime = SystemTime::now();
        self.attr(id)
    }

    pub(crate) fn unlink(&mut self, parent: Id, name: &OsStr) -> Result<(), Errno> {
        let id = self.child(parent, name)?;
        if matches!(self.object(id)?.body, Body::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        self.entries_mut(parent)?.remove(name);
        self.object_mut(parent)?.meta.touch();
        let object = self.object_mut(id)?;
        object.links -= 1;
        object.meta.ctime = SystemTime::now();
        self.collect_garbage();
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: Id, name: &OsStr) -> Result<(), Errno> {
        let id = self.child(parent, name)?;
        if !self.entries(id)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.entries_mut(parent)?.remove(name);
        self.object_mut(parent)?.meta.touch();
        self.object_mut(id)?.links = 0;
        self.collect_garbage();
        Ok(())
    }

    /// Whether `dir` is `ancestor` or lies below it (current namespace).
    fn is_within(&self, mut dir: Id, ancestor: Id) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.objects.get(&dir).map(|o| &o.body) {
                Some(Body::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    /// `rename(2)`, replacing an existing target as POSIX says, or failing
    /// with `EEXIST` when `no_replace` (`RENAME_NOREPLACE`).
    pub(crate) fn rename(
        &mut self,
        parent: Id,
        name: &OsStr,
        new_parent: Id,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        let id = self.child(parent, name)?;
        let target = self.entries(new_parent)?.get(new_name).copied();
        if target == Some(id) {
            return Ok(());
        }
        if no_replace && target.is_some() {
            return Err(Errno::EEXIST);
        }
        let moving_dir = matches!(self.object(id)?.body, Body::Dir { .. });
        if moving_dir && self.is_within(new_parent, id) {
            return Err(Errno::EINVAL);
        }
        if let Some(target) = target {
            match (&self.object(target)?.body, moving_dir) {
                (Body::Dir { current, .. }, true) if !current.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Body::Dir { .. }, true) => {}
                (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
                (_, true) => return Err(Errno::ENOTDIR),
                (_, false) => {}
            }
            let replaced = self.object_mut(target)?;
            replaced.links = if moving_dir { 0 } else { replaced.links - 1 };
            replaced.meta.ctime = SystemTime::now();
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), id);
        let object = self.object_mut(id)?;
        object.meta.ctime = SystemTime::now();
        if let Body::Dir { parent: p, .. } = &mut object.body {
            *p = new_parent;
        }
        self.object_mut(parent)?.meta.touch();
        self.object_mut(new_parent)?.meta.touch();
        self.renames
            .push([(parent, name.to_owned()), (new_parent, new_name.to_owned())]);
        if target.is_some() {
            self.collect_garbage();
        }
        Ok(())
    }

    pub(crate) fn setattr(&mut self, id: Id, set: SetAttr) -> Result<FileAttr, Errno> {
        if let Some(size) = set.size {
            let content = self.content_mut(id)?;
            content.set_size(size);
        }
        let meta = &mut self.object_mut(id)?.meta;
        if let Some(mode) = set.mode {
            meta.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            meta.uid = uid;
        }
        if let Some(gid) = set.gid {
            meta.gid = gid;
        }
        if let Some(t) = set.atime {
            meta.atime = resolve(t);
        }
        if let Some(t) = set.mtime {
            meta.mtime = resolve(t);
        } else if set.size.is_some() {
            meta.mtime = SystemTime::now();
        }
        meta.ctime = SystemTime::now();
        self.attr(id)
    }

    /// Opens `id` (a file, or with `dir` a directory); returns the handle.
    pub(crate) fn open(&mut self, id: Id, flags: i32, dir: bool) -> Result<u64, Errno> {
        let listing = match (&self.object(id)?.body, dir) {
            (Body::Dir { .. }, true) => Some(self.listing(id)?),
            (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
            (_, true) => return Err(Errno::ENOTDIR),
            (_, false) => None,
        };
        self.object_mut(id)?.open += 1;
        let fh = self.next_handle;
        self.next_handle += 1;
        let append = flags & libc::O_APPEND != 0;
        self.handles.insert(
            fh,
            Handle {
                id,
                append,
                listing,
            },
        );
        Ok(fh)
    }

    pub(crate) fn release(&mut self, fh: u64) {
        if let Some(handle) = self.handles.remove(&fh)
            && let Some(object) = self.objects.get_mut(&handle.id)
        {
            object.open -= 1;
            if object.open == 0 && object.links == 0 {
                self.collect_garbage();
            }
        }
    }

    /// `.`, `..` and the entries of `dir`, in name order.
    fn listing(&self, dir: Id) -> Result<Vec<(Id, FileType, OsString)>, Errno> {
        let (entries, parent) = match &self.object(dir)?.body {
            Body::Dir {
                current, parent, ..
            } => (current, *parent),
            _ => return Err(Errno::ENOTDIR),
        };
        let mut out = vec![
            (dir, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, id) in entries {
            let kind = self.object(*id)?.kind();
            out.push((*id, kind, name.clone()));
        }
        Ok(out)
    }

    /// Entries of an open directory from index `offset` on.
    pub(crate) fn readdir(
        &self,
        fh: u64,
        dir: Id,
        offset: u64,
    ) -> Result<Vec<(Id, FileType, OsString)>, Errno> {
        let listing = match self.handles.get(&fh).and_then(|h| h.listing.as_ref()) {
            Some(listing) => listing.clone(),
            None => self.listing(dir)?,
        };
        Ok(listing.into_iter().skip(offset as usize).collect())
    }

    pub(crate) fn read(&self, id: Id, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        match &self.object(id)?.body {
            Body::File { current, .. } => Ok(current.read(offset, len.into())),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Symlink { .. } => Err(Errno::EINVAL),
        }
    }

    pub(crate) fn write(
        &mut self,
        id: Id,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let append = self
            .handles
            .get(&fh)
            .is_some_and(|h| h.append && h.id == id);
        let content = self.content_mut(id)?;
        let offset = if append { content.size() } else { offset };
        let missing = content.missing_pages(offset, data.len() as u64);
        self.check_space(missing * PAGE_BYTES)?;
        self.content_mut(id)?.write(offset, data);
        self.object_mut(id)?.meta.touch();
        Ok(data.len() as u32)
    }

    /// `fallocate(2)` modes 0 and `FALLOC_FL_KEEP_SIZE`.
    pub(crate) fn fallocate(
        &mut self,
        id: Id,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let missing = self.content_mut(id)?.missing_pages(offset, len);
        self.check_space(missing * PAGE_BYTES)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        self.content_mut(id)?.allocate(offset, len, keep_size);
        self.object_mut(id)?.meta.ctime = SystemTime::now();
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its current content and size become
    /// durable (and, with [`DirSync::OnFileFsync`], the names of it).
    pub(crate) fn fsync(&mut self, id: Id) -> Result<(), Errno> {
        if self.fail_fsync {
            self.stats.failed_syncs += 1;
            return Err(Errno::EIO);
        }
        match &mut self.object_mut(id)?.body {
            Body::File { current, durable } => *durable = current.clone(),
            Body::Dir { .. } => return self.fsyncdir(id),
            Body::Symlink { .. } => {}
        }
        if self.dir_sync == DirSync::OnFileFsync {
            let names = self.names_up_from(id);
            self.sync_names(names);
        }
        self.stats.fsyncs += 1;
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable, and with them
    /// the other name of each rename that touched them.
    pub(crate) fn fsyncdir(&mut self, id: Id) -> Result<(), Errno> {
        if self.fail_fsync {
            self.stats.failed_syncs += 1;
            return Err(Errno::EIO);
        }
        let names: Vec<(Id, OsString)> = match &self.object(id)?.body {
            Body::Dir {
                current, durable, ..
            } => current
                .keys()
                .chain(durable.keys())
                .map(|n| (id, n.clone()))
                .collect(),
            _ => return Err(Errno::ENOTDIR),
        };
        self.sync_names(names);
        self.stats.fsyncdirs += 1;
        Ok(())
    }

    /// Every name of `id` (current or durable), and the current name of
    /// each directory above those that hold it now.
    fn names_up_from(&self, id: Id) -> Vec<(Id, OsString)> {
        let mut out = Vec::new();
        let mut holders = Vec::new();
        for (&dir, object) in &self.objects {
            if let Body::Dir {
                current, durable, ..
            } = &object.body
            {
                for (name, &child) in current.iter().chain(durable.iter()) {
                    if child == id {
                        out.push((dir, name.clone()));
                    }
                }
                if current.values().any(|&c| c == id) {
                    holders.push(dir);
                }
            }
        }
        for mut dir in holders {
            while dir != ROOT {
                let Some(Body::Dir { parent, .. }) = self.objects.get(&dir).map(|o| &o.body) else {
                    break;
                };
                let parent = *parent;
                match self
                    .entries(parent)
                    .ok()
                    .and_then(|e| e.iter().find(|(_, c)| **c == dir))
                {
                    Some((name, _)) => out.push((parent, name.clone())),
                    None => break,
                }
                dir = parent;
            }
        }
        out
    }

    /// Makes each name's current state durable, following renames: the
    /// other name of a rename becomes durable with this one.
    fn sync_names(&mut self, mut work: Vec<(Id, OsString)>) {
        while let Some((dir, name)) = work.pop() {
            if let Some(Object {
                body: Body::Dir {
                    current, durable, ..
                },
                ..
            }) = self.objects.get_mut(&dir)
            {
                match current.get(&name) {
                    Some(&child) => durable.insert(name.clone(), child),
                    None => durable.remove(&name),
                };
            }
            let mut i = 0;
            while i < self.renames.len() {
                let pair = &self.renames[i];
                let touched = pair.iter().position(|(d, n)| *d == dir && *n == name);
                match touched {
                    Some(side) => {
                        let pair = self.renames.swap_remove(i);
                        let [a, b] = pair;
                        work.push(if side == 0 { b } else { a });
                    }
                    None => i += 1,
                }
            }
        }
        self.collect_garbage();
    }

    /// Drops every object that no name (current or durable) and no open
    /// handle can reach: nothing could read it now or after a cut.
    pub(crate) fn collect_garbage(&mut self) {
        let mut reachable = std::collections::BTreeSet::new();
        let mut stack: Vec<Id> = vec![ROOT];
        stack.extend(
            self.objects
                .iter()
                .filter(|(_, o)| o.open > 0)
                .map(|(id, _)| *id),
        );
        while let Some(id) = stack.pop() {
            if !reachable.insert(id) {
                continue;
            }
            if let Some(Object {
                body: Body::Dir {
                    current, durable, ..
                },
                ..
            }) = self.objects.get(&id)
            {
                stack.extend(current.values().chain(durable.values()).copied());
            }
        }
        self.objects.retain(|id, _| reachable.contains(id));
    }

    pub(crate) fn statfs(&self) -> Statfs {
        let capacity = self.space_limit_bytes.unwrap_or(CAPACITY_BYTES_DEFAULT);
        let blocks = capacity / PAGE_BYTES;
        let used = self.used_bytes().div_ceil(PAGE_BYTES);
        Statfs {
            blocks,
            bfree: blocks.saturating_sub(used),
            files: OBJECTS_MAX,
            ffree: OBJECTS_MAX.saturating_sub(self.objects.len() as u64),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        for object in self.objects.values() {
            let live = object.links > 0 || object.open > 0;
            match &object.body {
                Body::File { current, durable } => {
                    stats.unsynced_sectors += durable.differing_sectors(current).len() as u64;
                    stats.unsynced_sizes += u64::from(durable.size() != current.size());
                    stats.files += u64::from(live);
                }
                Body::Dir {
                    current, durable, ..
                } => {
                    let changed = current.iter().filter(|(n, c)| durable.get(*n) != Some(c));
                    let removed = durable.keys().filter(|n| !current.contains_key(*n));
                    stats.unsynced_names += (changed.count() + removed.count()) as u64;
                    stats.dirs += u64::from(live);
                }
                Body::Symlink { .. } => {}
            }
        }
        stats.used_bytes = self.used_bytes();
        stats
    }
}

/// One change a power cut would lose, for messages and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsynced {
    /// A directory entry whose current state is not durable.
    Name {
        /// Path of the entry from the mount's root (current names).
        path: String,
        /// What the durable entry is (`None`: absent).
        durable: Option<u64>,
        /// What the current entry is (`None`: absent).
        current: Option<u64>,
    },
    /// A file whose current content or size is not durable.
    Content {
        /// Path of one of its names (current, else durable).
        path: String,
        /// Inode number.
        ino: u64,
        /// 512-byte sectors that differ.
        sectors: u64,
        /// Durable size.
        durable_size: u64,
        /// Current size.
        current_size: u64,
    },
}

impl std::fmt::Display for Unsynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsynced::Name {
                path,
                durable,
                current,
            } => match (durable, current) {
                (None, Some(c)) => {
                    write!(f, "{path}: created (inode {c}), its directory not fsynced")
                }
                (Some(d), None) => {
                    write!(f, "{path}: removed (inode {d}), its directory not fsynced")
                }
                (Some(d), Some(c)) => write!(f, "{path}: now inode {c}, durably inode {d}"),
                (None, None) => write!(f, "{path}: unchanged"),
            },
            Unsynced::Content {
                path,
                ino,
                sectors,
                durable_size,
                current_size,
            } => write!(
                f,
                "{path} (inode {ino}): {sectors} sectors not fsynced, size {current_size} (durably {durable_size})"
            ),
        }
    }
}

impl Model {
    /// The path of a directory from the root, by current names.
    fn path_of_dir(&self, mut dir: Id) -> String {
        let mut parts = Vec::new();
        while dir != ROOT {
            let Some(Body::Dir { parent, .. }) = self.objects.get(&dir).map(|o| &o.body) else {
                break;
            };
            let name = self
                .entries(*parent)
                .ok()
                .and_then(|e| e.iter().find(|(_, c)| **c == dir).map(|(n, _)| n.clone()));
            match name {
                Some(n) => parts.push(n.to_string_lossy().into_owned()),
                None => {
                    parts.push(format!("<unlinked directory {dir}>"));
                    break;
                }
            }
            dir = *parent;
        }
        parts.reverse();
        parts.join("/")
    }

    fn join(&self, dir: Id, name: &OsStr) -> String {
        let base = self.path_of_dir(dir);
        let name = name.to_string_lossy();
        if base.is_empty() {
            name.into_owned()
        } else {
            format!("{base}/{name}")
        }
    }

    /// Every change a power cut would lose now.
    pub(crate) fn unsynced(&self) -> Vec<Unsynced> {
        let mut out = Vec::new();
        let mut names: BTreeMap<Id, String> = BTreeMap::new();
        for (&dir, object) in &self.objects {
            if let Body::Dir {
                current, durable, ..
            } = &object.body
            {
                for (name, &id) in durable.iter().chain(current.iter()) {
                    names.entry(id).or_insert_with(|| self.join(dir, name));
                }
                let keys: std::collections::BTreeSet<&OsString> =
                    current.keys().chain(durable.keys()).collect();
                for name in keys {
                    let (d, c) = (durable.get(name).copied(), current.get(name).copied());
                    if d != c {
                        out.push(Unsynced::Name {
                            path: self.join(dir, name),
                            durable: d,
                            current: c,
                        });
                    }
                }
            }
        }
        for (&id, object) in &self.objects {
            if let Body::File { current, durable } = &object.body {
                let sectors = durable.differing_sectors(current).len() as u64;
                if sectors > 0 || durable.size() != current.size() {
                    out.push(Unsynced::Content {
                        path: names
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| format!("<inode {id}>")),
                        ino: id,
                        sectors,
                        durable_size: durable.size(),
                        current_size: current.size(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta::new(0o644, 0, 0)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn link_refuses_an_existing_name_even_if_the_kernel_did_not() {
        let mut m = Model::new(DirSync::Strict);
        let a = m.create_file(ROOT, name("a"), meta()).unwrap().ino.0;
        m.create_file(ROOT, name("b"), meta()).unwrap();
        assert_eq!(m.link(a, ROOT, name("b")), Err(Errno::EEXIST));
        assert_eq!(m.link(a, ROOT, name("c")).unwrap().nlink, 2);
    }

    #[test]
    fn rename_follows_posix_for_targets() {
        let mut m = Model::new(DirSync::Strict);
        let d = m.mkdir(ROOT, name("d"), meta()).unwrap().ino.0;
        m.mkdir(d, name("sub"), meta()).unwrap();
        m.create_file(ROOT, name("f"), meta()).unwrap();
        m.create_file(ROOT, name("g"), meta()).unwrap();
        assert_eq!(
            m.rename(ROOT, name("f"), ROOT, name("g"), true),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            m.rename(ROOT, name("f"), ROOT, name("d"), false),
            Err(Errno::EISDIR)
        );
        assert_eq!(
            m.rename(ROOT, name("d"), d, name("x"), false),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            m.rename(ROOT, name("d"), ROOT, name("g"), false),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(m.rmdir(ROOT, name("d")), Err(Errno::ENOTEMPTY));
        m.rename(ROOT, name("f"), ROOT, name("g"), false).unwrap();
        assert!(m.lookup(ROOT, name("f")).is_err());
        assert_eq!(m.attr(ROOT).unwrap().nlink, 3);
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused() {
        let mut m = Model::new(DirSync::Strict);
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        assert_eq!(
            m.create_file(ROOT, name(&long), meta()).unwrap_err(),
            Errno::ENAMETOOLONG
        );
    }
}
