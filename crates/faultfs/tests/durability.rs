//! The durability model through the kernel: real files, real `fsync`, real
//! power cuts.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{mount, mount_with, sync_dir, write_synced};
use converge_ledger_faultfs::{DirSync, Options, PowerCut};

fn read(path: &std::path::Path) -> Vec<u8> {
    fs::read(path).expect("read")
}

#[test]
fn a_fsynced_file_in_a_fsynced_directory_survives_a_power_cut() {
    let Some(m) = mount("a_fsynced_file_in_a_fsynced_directory_survives_a_power_cut") else {
        return;
    };
    write_synced(&m.join("f"), b"kept");
    sync_dir(m.path()).unwrap();
    let report = m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("f")), b"kept");
    assert_eq!(report.files_unsynced, 0);
    assert_eq!(report.names_reverted, 0);
}

#[test]
fn an_unsynced_write_is_gone_after_a_power_cut() {
    let Some(m) = mount("an_unsynced_write_is_gone_after_a_power_cut") else {
        return;
    };
    write_synced(&m.join("f"), b"durable");
    sync_dir(m.path()).unwrap();
    let mut f = OpenOptions::new().append(true).open(m.join("f")).unwrap();
    f.write_all(b" and lost").unwrap();
    drop(f);
    assert_eq!(read(&m.join("f")), b"durable and lost");
    assert_eq!(m.fs.stats().unsynced_sectors, 1);
    let report = m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("f")), b"durable");
    assert_eq!(report.files_unsynced, 1);
    assert_eq!(m.fs.stats().unsynced_sectors, 0);
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_is_gone_after_a_power_cut() {
    let Some(m) = mount("a_file_fsynced_in_a_directory_never_fsynced_is_gone_after_a_power_cut")
    else {
        return;
    };
    write_synced(&m.join("f"), b"content durable, name not");
    let report = m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(!m.join("f").exists());
    assert_eq!(report.names_reverted, 1);
    assert_eq!(report.objects_lost, 1);
}

#[test]
fn a_file_stays_once_its_directory_is_fsynced() {
    let Some(m) = mount("a_file_stays_once_its_directory_is_fsynced") else {
        return;
    };
    File::create(m.join("empty")).unwrap();
    write_synced(&m.join("f"), b"both durable");
    sync_dir(m.path()).unwrap();
    assert_eq!(m.fs.stats().unsynced_names, 0);
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("f")), b"both durable");
    assert_eq!(
        read(&m.join("empty")),
        b"",
        "a name alone is durable, empty"
    );
}

#[test]
fn a_file_in_a_new_directory_needs_the_new_directory_and_its_parent_fsynced() {
    let Some(m) = mount("a_file_in_a_new_directory_needs_the_new_directory_and_its_parent_fsynced")
    else {
        return;
    };
    fs::create_dir(m.join("d")).unwrap();
    write_synced(&m.join("d/f"), b"x");
    sync_dir(&m.join("d")).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(!m.join("d").exists(), "the parent never named d durably");

    fs::create_dir(m.join("d")).unwrap();
    write_synced(&m.join("d/f"), b"x");
    sync_dir(m.path()).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(m.join("d").is_dir());
    assert!(!m.join("d/f").exists(), "d itself was never fsynced");

    write_synced(&m.join("d/f"), b"x");
    sync_dir(&m.join("d")).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("d/f")), b"x");
}

#[test]
fn a_rename_over_a_file_reverts_without_a_directory_fsync_and_sticks_with_one() {
    let Some(m) =
        mount("a_rename_over_a_file_reverts_without_a_directory_fsync_and_sticks_with_one")
    else {
        return;
    };
    write_synced(&m.join("current"), b"old");
    sync_dir(m.path()).unwrap();

    write_synced(&m.join("tmp"), b"new");
    fs::rename(m.join("tmp"), m.join("current")).unwrap();
    assert_eq!(read(&m.join("current")), b"new");
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("current")), b"old", "the old name is back");
    assert!(!m.join("tmp").exists(), "tmp was never durably named");

    write_synced(&m.join("tmp"), b"new");
    fs::rename(m.join("tmp"), m.join("current")).unwrap();
    sync_dir(m.path()).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("current")), b"new");
    assert!(!m.join("tmp").exists());
}

#[test]
fn a_rename_between_directories_is_durable_when_either_is_fsynced() {
    let Some(m) = mount("a_rename_between_directories_is_durable_when_either_is_fsynced") else {
        return;
    };
    fs::create_dir(m.join("a")).unwrap();
    fs::create_dir(m.join("b")).unwrap();
    write_synced(&m.join("a/f"), b"moved");
    sync_dir(&m.join("a")).unwrap();
    sync_dir(m.path()).unwrap();
    fs::rename(m.join("a/f"), m.join("b/f")).unwrap();
    sync_dir(&m.join("a")).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(!m.join("a/f").exists());
    assert_eq!(
        read(&m.join("b/f")),
        b"moved",
        "never under no name, never under two"
    );
}

#[test]
fn a_hard_link_refuses_an_existing_name_and_is_durable_with_its_directory() {
    let Some(m) = mount("a_hard_link_refuses_an_existing_name_and_is_durable_with_its_directory")
    else {
        return;
    };
    write_synced(&m.join("key.tmp"), b"secret");
    fs::hard_link(m.join("key.tmp"), m.join("key")).unwrap();
    let err = fs::hard_link(m.join("key.tmp"), m.join("key")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(fs::metadata(m.join("key")).unwrap().nlink(), 2);
    fs::remove_file(m.join("key.tmp")).unwrap();
    sync_dir(m.path()).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("key")), b"secret");
    assert!(!m.join("key.tmp").exists());
    assert_eq!(fs::metadata(m.join("key")).unwrap().nlink(), 1);

    fs::hard_link(m.join("key"), m.join("copy")).unwrap();
    fs::remove_file(m.join("key")).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(m.join("key").exists(), "the unlink was not durable");
    assert!(!m.join("copy").exists(), "nor was the link");
}

/// Writes 64 sectors over 64 durable sectors of the same size, cuts with
/// `seed`, and returns which sectors kept the new bytes.
fn torn_sectors(seed: u64) -> Option<Vec<bool>> {
    let m = mount("torn_cuts_with_one_seed_are_reproducible_and_keep_some_but_not_all")?;
    write_synced(&m.join("f"), &[0u8; 64 * 512]);
    sync_dir(m.path()).unwrap();
    fs::write(m.join("f"), [0xffu8; 64 * 512]).unwrap();
    let report = m.fs.power_cut(PowerCut::Torn { seed }).unwrap();
    assert_eq!(report.sectors_unsynced, 64);
    let bytes = read(&m.join("f"));
    assert_eq!(bytes.len(), 64 * 512, "the size was durable");
    let kept: Vec<bool> = bytes.chunks(512).map(|s| s[0] == 0xff).collect();
    for (sector, kept) in bytes.chunks(512).zip(&kept) {
        assert!(
            sector.iter().all(|&b| b == if *kept { 0xff } else { 0 }),
            "whole sectors"
        );
    }
    assert_eq!(
        report.sectors_kept,
        kept.iter().filter(|k| **k).count() as u64
    );
    Some(kept)
}

#[test]
fn torn_cuts_with_one_seed_are_reproducible_and_keep_some_but_not_all() {
    let Some(first) = torn_sectors(42) else {
        return;
    };
    let again = torn_sectors(42).unwrap();
    assert_eq!(first, again, "the same seed tears the same sectors");
    let kept = first.iter().filter(|k| **k).count();
    assert!(0 < kept && kept < 64, "kept {kept} of 64");
    assert_ne!(
        first,
        torn_sectors(43).unwrap(),
        "another seed tears others"
    );
}

#[test]
fn a_torn_cut_past_the_durable_size_reads_lost_sectors_as_zeros() {
    let Some(m) = mount("a_torn_cut_past_the_durable_size_reads_lost_sectors_as_zeros") else {
        return;
    };
    File::create(m.join("f")).unwrap();
    sync_dir(m.path()).unwrap();
    fs::write(m.join("f"), [7u8; 16 * 512]).unwrap();
    // Seeds whose size coin keeps the current size keep it whole.
    for seed in 0..64 {
        let report = m.fs.power_cut(PowerCut::Torn { seed }).unwrap();
        let bytes = read(&m.join("f"));
        if report.sizes_kept == 1 {
            assert_eq!(bytes.len(), 16 * 512);
            assert!(bytes.chunks(512).all(|s| s == [7; 512] || s == [0; 512]));
            return;
        }
        assert!(bytes.is_empty());
        fs::write(m.join("f"), [7u8; 16 * 512]).unwrap();
    }
    panic!("no seed of 64 kept the current size");
}

#[test]
fn fail_fsync_gives_eio_to_fsync_and_fsyncdir_and_makes_nothing_durable() {
    let Some(m) = mount("fail_fsync_gives_eio_to_fsync_and_fsyncdir_and_makes_nothing_durable")
    else {
        return;
    };
    let eio = Some(libc::EIO);
    m.fs.fail_fsync(true);
    let mut f = File::create(m.join("f")).unwrap();
    f.write_all(b"never durable").unwrap();
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), eio);
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), eio);
    assert_eq!(sync_dir(m.path()).unwrap_err().raw_os_error(), eio);
    assert_eq!(m.fs.stats().failed_syncs, 3);
    drop(f);
    m.fs.fail_fsync(false);
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert!(!m.join("f").exists());
    write_synced(&m.join("g"), b"fine again");
    sync_dir(m.path()).unwrap();
    assert_eq!(m.fs.stats().fsyncs, 1);
}

/// `statfs` as `stat -f` shows it: (block size, total blocks, free blocks).
fn statfs(path: &std::path::Path) -> (u64, u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b %f"])
        .arg(path)
        .output()
        .expect("running stat -f");
    assert!(out.status.success(), "stat -f: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn the_space_limit_gives_enospc_and_statfs_reports_it() {
    let Some(m) = mount("the_space_limit_gives_enospc_and_statfs_reports_it") else {
        return;
    };
    m.fs.set_space_limit(Some(1 << 20));
    let (bsize, blocks, free) = statfs(m.path());
    assert_eq!(bsize * blocks, 1 << 20);
    assert_eq!(free, blocks);

    let mut f = File::create(m.join("f")).unwrap();
    f.write_all(&[1u8; 512 * 1024]).unwrap();
    let (_, _, free) = statfs(m.path());
    assert_eq!(free * bsize, 512 * 1024);
    let err = f.write_all(&[1u8; 1 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(f);
    // Full: no room for another name either, until space is freed.
    f_write_to_full(&m.join("f"));
    let err = File::create(m.join("g")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    fs::remove_file(m.join("f")).unwrap();
    File::create(m.join("g")).unwrap();

    m.fs.set_space_limit(None);
    let (bsize, blocks, _) = statfs(m.path());
    assert_eq!(bsize * blocks, 1 << 40);
}

/// Fills the rest of the space limit with `path`'s pages.
fn f_write_to_full(path: &std::path::Path) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    while f.write_all(&[2u8; 4096]).is_ok() {}
}

#[test]
fn reads_and_listings_see_current_state_before_a_cut() {
    let Some(m) = mount("reads_and_listings_see_current_state_before_a_cut") else {
        return;
    };
    fs::create_dir_all(m.join("a/b")).unwrap();
    fs::write(m.join("a/b/f"), b"hello").unwrap();
    fs::write(m.join("a/g"), b"").unwrap();
    std::os::unix::fs::symlink("b/f", m.join("a/link")).unwrap();
    let mut names: Vec<String> = fs::read_dir(m.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "g", "link"]);
    let mut s = String::new();
    File::open(m.join("a/link"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello");
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 3);
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("a/b/f"))
        .unwrap();
    f.set_len(2).unwrap();
    assert_eq!(read(&m.join("a/b/f")), b"he");
    assert_eq!(
        fs::remove_dir(m.join("a")).unwrap_err().kind(),
        ErrorKind::DirectoryNotEmpty
    );
    assert!(m.fs.stats().unsynced_names >= 4);
}

#[test]
fn an_open_file_survives_its_unlink_until_closed() {
    let Some(m) = mount("an_open_file_survives_its_unlink_until_closed") else {
        return;
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("f"))
        .unwrap();
    fs::remove_file(m.join("f")).unwrap();
    f.write_all(b"still here").unwrap();
    let mut s = String::new();
    use std::io::Seek;
    f.rewind().unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(m.fs.stats().files, 1);
    drop(f);
    // The kernel sends the release after close(2) returns.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.fs.stats().files != 0 {
        assert!(
            Instant::now() < deadline,
            "the file outlived its last close"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn with_dir_sync_on_file_fsync_a_fsynced_file_keeps_its_new_name() {
    let Some(m) = mount_with(
        "with_dir_sync_on_file_fsync_a_fsynced_file_keeps_its_new_name",
        Options::default().dir_sync(DirSync::OnFileFsync),
    ) else {
        return;
    };
    fs::create_dir(m.join("d")).unwrap();
    write_synced(&m.join("d/f"), b"ext4-like");
    File::create(m.join("unsynced")).unwrap();
    m.fs.power_cut(PowerCut::DropUnsynced).unwrap();
    assert_eq!(read(&m.join("d/f")), b"ext4-like");
    assert!(!m.join("unsynced").exists());
}

#[test]
fn a_power_cut_with_a_file_still_open_fails_and_says_why() {
    let Some(m) = mount("a_power_cut_with_a_file_still_open_fails_and_says_why") else {
        return;
    };
    let f = File::create(m.join("f")).unwrap();
    let err = m.fs.power_cut(PowerCut::DropUnsynced).unwrap_err();
    assert!(err.to_string().contains("still uses it"), "{err}");
    drop(f);
    let err = m.fs.power_cut(PowerCut::DropUnsynced).unwrap_err();
    assert!(err.to_string().contains("not mounted"), "{err}");
}
