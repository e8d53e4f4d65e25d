//! The bytes of one regular file: sparse 4 KiB pages shared copy-on-write
//! between the durable and the current version, so an fsync costs one
//! reference per page and a power cut compares only pages that differ.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes per page: the unit of allocation and of space accounting.
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Bytes per sector: the unit a torn write keeps or loses.
pub(crate) const SECTOR_BYTES: u64 = 512;
const SECTORS_PER_PAGE: u64 = PAGE_BYTES / SECTOR_BYTES;

type Page = [u8; PAGE_BYTES as usize];
const ZERO_PAGE: Page = [0; PAGE_BYTES as usize];

/// One version of a file.
///
/// Invariant: every byte at or past `size` inside a stored page is zero, so
/// a page reads the same whatever the size, and a missing page reads as
/// zeros (a hole).
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    size: u64,
    /// Page index → bytes. Pages past `size` exist only when preallocated
    /// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), and are zero.
    pages: BTreeMap<u64, Arc<Page>>,
}

impl Content {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of storage this version occupies.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE_BYTES
    }

    /// Up to `len` bytes from `offset`, stopping at the size.
    pub(crate) fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Vec::new();
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let (index, within) = (at / PAGE_BYTES, (at % PAGE_BYTES) as usize);
            let take = ((PAGE_BYTES - within as u64).min(end - at)) as usize;
            let page = self.pages.get(&index).map_or(&ZERO_PAGE, |p| &**p);
            out.extend_from_slice(&page[within..within + take]);
            at += take as u64;
        }
        out
    }

    /// Pages a write or preallocation of `len` bytes at `offset` would add.
    pub(crate) fn missing_pages(&self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let (first, last) = (offset / PAGE_BYTES, (offset + len - 1) / PAGE_BYTES);
        let present = self.pages.range(first..=last).count() as u64;
        last - first + 1 - present
    }

    /// Writes `data` at `offset`, growing the size if it ends past it.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (index, within) = (at / PAGE_BYTES, (at % PAGE_BYTES) as usize);
            let take = rest.len().min(PAGE_BYTES as usize - within);
            let page = Arc::make_mut(
                self.pages
                    .entry(index)
                    .or_insert_with(|| Arc::new(ZERO_PAGE)),
            );
            page[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    /// Truncates or extends (with a hole) to `size`.
    pub(crate) fn set_size(&mut self, size: u64) {
        if size < self.size {
            let keep_pages = size.div_ceil(PAGE_BYTES);
            self.pages.split_off(&keep_pages);
            let within = (size % PAGE_BYTES) as usize;
            if within != 0
                && let Some(last) = self.pages.get_mut(&(size / PAGE_BYTES))
            {
                Arc::make_mut(last)[within..].fill(0);
            }
        }
        self.size = size;
    }

    /// Allocates zero pages for `[offset, offset + len)`; grows the size to
    /// cover them unless `keep_size`.
    pub(crate) fn allocate(&mut self, offset: u64, len: u64, keep_size: bool) {
        if len == 0 {
            return;
        }
        for index in offset / PAGE_BYTES..=(offset + len - 1) / PAGE_BYTES {
            self.pages
                .entry(index)
                .or_insert_with(|| Arc::new(ZERO_PAGE));
        }
        if !keep_size {
            self.size = self.size.max(offset + len);
        }
    }

    /// Sector indices whose bytes differ between `self` and `other`, both
    /// read as zero past their sizes, in increasing order.
    pub(crate) fn differing_sectors(&self, other: &Content) -> Vec<u64> {
        let mut out = Vec::new();
        let mut indices: Vec<u64> = self
            .pages
            .keys()
            .chain(other.pages.keys())
            .copied()
            .collect();
        indices.sort_unstable();
        indices.dedup();
        for index in indices {
            let (a, b) = (self.pages.get(&index), other.pages.get(&index));
            if let (Some(a), Some(b)) = (a, b)
                && Arc::ptr_eq(a, b)
            {
                continue;
            }
            let a = a.map_or(&ZERO_PAGE, |p| &**p);
            let b = b.map_or(&ZERO_PAGE, |p| &**p);
            for s in 0..SECTORS_PER_PAGE {
                let range = (s * SECTOR_BYTES) as usize..((s + 1) * SECTOR_BYTES) as usize;
                if a[range.clone()] != b[range] {
                    out.push(index * SECTORS_PER_PAGE + s);
                }
            }
        }
        out
    }

    /// Copies sector `sector` from `from` (zeros past its size), clipped to
    /// this version's size.
    pub(crate) fn copy_sector(&mut self, from: &Content, sector: u64) {
        let start = sector * SECTOR_BYTES;
        if start >= self.size {
            return;
        }
        let len = SECTOR_BYTES.min(self.size - start);
        let mut bytes = from.read(start, len);
        bytes.resize(len as usize, 0);
        self.write(start, &bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_size_and_in_holes_are_zero_or_short() {
        let mut c = Content::default();
        c.write(10_000, b"abc");
        assert_eq!(c.size(), 10_003);
        assert_eq!(c.read(0, 4), vec![0; 4]);
        assert_eq!(c.read(10_000, 100), b"abc");
        assert!(c.read(20_000, 10).is_empty());
        assert_eq!(c.allocated_bytes(), PAGE_BYTES);
    }

    #[test]
    fn truncation_zeroes_the_tail_so_a_later_extension_reads_zeros() {
        let mut c = Content::default();
        c.write(0, &[7; 5000]);
        c.set_size(100);
        c.set_size(5000);
        assert_eq!(c.read(0, 100), vec![7; 100]);
        assert_eq!(c.read(100, 4900), vec![0; 4900]);
        assert_eq!(c.allocated_bytes(), PAGE_BYTES);
    }

    #[test]
    fn a_shared_version_is_not_changed_by_writes_to_its_copy() {
        let mut current = Content::default();
        current.write(0, &[1; 4096]);
        let durable = current.clone();
        current.write(600, &[2; 10]);
        assert_eq!(durable.read(600, 10), vec![1; 10]);
        assert_eq!(durable.differing_sectors(&current), vec![1]);
    }

    #[test]
    fn sectors_past_one_size_compare_against_zeros() {
        let mut a = Content::default();
        a.write(0, &[1; 512]);
        let mut b = a.clone();
        b.write(1024, &[0; 512]);
        assert!(
            a.differing_sectors(&b).is_empty(),
            "a zero sector equals a hole"
        );
        b.write(1536, &[3; 1]);
        assert_eq!(a.differing_sectors(&b), vec![3]);
    }

    #[test]
    fn copying_a_sector_is_clipped_to_the_size() {
        let mut from = Content::default();
        from.write(0, &[9; 1024]);
        let mut to = Content::default();
        to.set_size(700);
        to.copy_sector(&from, 1);
        assert_eq!(to.size(), 700);
        assert_eq!(to.read(512, 188), vec![9; 188]);
        to.copy_sector(&from, 2);
        assert_eq!(to.size(), 700);
    }
}
