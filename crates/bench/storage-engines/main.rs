//! storebench: fjall 3 vs redb 4 for an append-only, hash-chained ledger.
//!
//! Usage (each invocation is one process; see REPORT.md):
//!   storebench lat   <engine> <dir> <commits>                       scenario 1
//!   storebench tput  <engine> <dir> <batch> <total> <cap_secs>      scenario 2 (+5 disk size)
//!   storebench fill  <engine> <dir> <total> <nctx> <ctx0> <batch> <cap_secs> [crash]
//!   storebench scan  <engine> <dir> <ctx>                           scenario 3
//!   storebench open  <engine> <dir>                                 scenario 4
//!
//! engines: fjall    = one WriteBatch per group, batch.durability(Some(SyncAll)) -> commit fsyncs
//!          fjall-p  = WriteBatch commit (default Buffer) then db.persist(SyncAll)
//!          redb     = one WriteTransaction per group, Durability::Immediate (default)
//!          redb-qr  = same, plus set_quick_repair(true) (2-phase commit, fast crash recovery)
//!
//! Env: CACHE_MB (default 256) block/page cache for both engines.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

// ---------------------------------------------------------------- workload

const PAYLOAD: usize = 256;
const HEADER: usize = 74; // 8 seq + 8 ts + 32 prev hash + 24 misc + 2 flags
const HEAD_LEN: usize = 100;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

#[derive(Default)]
struct Batch {
    entries: Vec<([u8; 12], Vec<u8>)>,  // ctx BE ++ seq BE -> ~330 B
    hidx: Vec<([u8; 32], [u8; 12])>,    // entry hash -> ctx/seq
    kidx: Vec<Vec<u8>>,                 // ctx ++ keystr ++ 0 ++ seq -> ()
    heads: Vec<([u8; 4], Vec<u8>)>,     // ctx -> head (~100 B)
}
impl Batch {
    fn records(&self) -> usize {
        self.entries.len() + self.hidx.len() + self.kidx.len() + self.heads.len()
    }
}

struct Gen {
    rng: Rng,
    nctx: u32,
    ctx0: u32,
    next_seq: Vec<u64>,
    prev_hash: Vec<[u8; 32]>,
    rr: u32,
}

impl Gen {
    fn new(nctx: u32, ctx0: u32, seed: u64, start_seq: Vec<u64>) -> Self {
        Gen {
            rng: Rng(seed | 1),
            nctx,
            ctx0,
            next_seq: start_seq,
            prev_hash: vec![[0u8; 32]; nctx as usize],
            rr: 0,
        }
    }

    fn batch(&mut self, n: usize) -> Batch {
        let mut b = Batch {
            entries: Vec::with_capacity(n),
            hidx: Vec::with_capacity(n),
            kidx: Vec::with_capacity(n),
            heads: Vec::new(),
        };
        let mut touched = vec![false; self.nctx as usize];
        for _ in 0..n {
            let ci = (self.rr % self.nctx) as usize;
            self.rr = self.rr.wrapping_add(1);
            touched[ci] = true;
            let ctx = self.ctx0 + ci as u32;
            let seq = self.next_seq[ci];
            self.next_seq[ci] += 1;

            let mut key = [0u8; 12];
            key[..4].copy_from_slice(&ctx.to_be_bytes());
            key[4..].copy_from_slice(&seq.to_be_bytes());

            let mut hash = [0u8; 32];
            self.rng.fill(&mut hash); // stand-in for sha256(prev || payload)

            let mut val = vec![0u8; HEADER + PAYLOAD];
            val[0..8].copy_from_slice(&seq.to_be_bytes());
            val[8..16].copy_from_slice(&(seq ^ 0x5555).to_be_bytes());
            val[16..48].copy_from_slice(&self.prev_hash[ci]);
            val[48..72].copy_from_slice(&hash[..24]);
            val[72..74].copy_from_slice(&[1, 0]);
            self.rng.fill(&mut val[HEADER..]);
            self.prev_hash[ci] = hash;

            let keystr = format!("acct:{:06}", self.rng.next() % 10_000);
            let mut kk = Vec::with_capacity(4 + keystr.len() + 1 + 8);
            kk.extend_from_slice(&ctx.to_be_bytes());
            kk.extend_from_slice(keystr.as_bytes());
            kk.push(0);
            kk.extend_from_slice(&seq.to_be_bytes());

            b.entries.push((key, val));
            b.hidx.push((hash, key));
            b.kidx.push(kk);
        }
        for (ci, t) in touched.iter().enumerate() {
            if *t {
                let ctx = self.ctx0 + ci as u32;
                let mut hv = vec![0u8; HEAD_LEN];
                hv[..8].copy_from_slice(&(self.next_seq[ci] - 1).to_be_bytes());
                hv[8..40].copy_from_slice(&self.prev_hash[ci]);
                self.rng.fill(&mut hv[40..]);
                b.heads.push((ctx.to_be_bytes(), hv));
            }
        }
        b
    }
}

// ---------------------------------------------------------------- engines

trait Engine {
    fn commit(&mut self, b: &Batch);
    /// (count, checksum) of all entries of ctx
    fn scan_ctx(&self, ctx: u32) -> (u64, u64);
    fn get_head(&self, ctx: u32) -> Option<Vec<u8>>;
    /// optional work before a clean close (fjall: FJ_FLUSH_ON_CLOSE=1 flushes memtables)
    fn before_close(&self) {}
    fn info(&self) -> String {
        String::new()
    }
}

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|s| s.parse().ok())
}

fn cache_bytes() -> u64 {
    std::env::var("CACHE_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(256u64) * 1024 * 1024
}

fn ctx_range(ctx: u32) -> ([u8; 12], [u8; 12]) {
    let mut lo = [0u8; 12];
    lo[..4].copy_from_slice(&ctx.to_be_bytes());
    let mut hi = [0u8; 12];
    hi[..4].copy_from_slice(&(ctx + 1).to_be_bytes());
    (lo, hi)
}

#[inline]
fn touch(v: &[u8]) -> u64 {
    // touch every value byte, decode nothing
    v.iter().fold(0u64, |a, &b| a.wrapping_add(b as u64))
}

// ----- fjall 3

mod fj {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct Fjall {
        pub db: Database,
        entries: Keyspace,
        hidx: Keyspace,
        kidx: Keyspace,
        heads: Keyspace,
        persist_after: bool,
    }

    impl Fjall {
        pub fn open(dir: &Path, persist_after: bool) -> Self {
            let mut b = Database::builder(dir).cache_size(cache_bytes());
            if let Some(mb) = env_u64("FJ_JOURNAL_MB") {
                b = b.max_journaling_size(mb * 1024 * 1024); // default 512 MiB, min 64 MiB
            }
            let db = b.open().unwrap();
            let opts = || {
                let o = KeyspaceCreateOptions::default();
                match env_u64("FJ_MEMTABLE_MB") {
                    Some(mb) => o.max_memtable_size(mb * 1024 * 1024), // default 64 MiB
                    None => o,
                }
            };
            let ks = |n: &str| db.keyspace(n, opts).unwrap();
            let (entries, hidx, kidx, heads) = (ks("entries"), ks("hidx"), ks("kidx"), ks("heads"));
            Fjall { db, entries, hidx, kidx, heads, persist_after }
        }
    }

    impl Engine for Fjall {
        fn commit(&mut self, b: &Batch) {
            let mut wb = if self.persist_after {
                // default durability = Some(PersistMode::Buffer): write() to the journal, no fsync
                self.db.batch()
            } else {
                // fsync (fsync(2), not fdatasync) of the journal inside commit(), under the journal lock
                self.db.batch().durability(Some(PersistMode::SyncAll))
            };
            for (k, v) in &b.entries {
                wb.insert(&self.entries, k.as_slice(), v.as_slice());
            }
            for (k, v) in &b.hidx {
                wb.insert(&self.hidx, k.as_slice(), v.as_slice());
            }
            for k in &b.kidx {
                wb.insert(&self.kidx, k.as_slice(), &[][..]);
            }
            for (k, v) in &b.heads {
                wb.insert(&self.heads, k.as_slice(), v.as_slice());
            }
            wb.commit().unwrap();
            if self.persist_after {
                self.db.persist(PersistMode::SyncAll).unwrap();
            }
        }

        fn scan_ctx(&self, ctx: u32) -> (u64, u64) {
            let (lo, hi) = ctx_range(ctx);
            let (mut n, mut sum) = (0u64, 0u64);
            for g in self.entries.range(lo..hi) {
                let (_k, v) = g.into_inner().unwrap();
                sum = sum.wrapping_add(touch(&v));
                n += 1;
            }
            (n, sum)
        }

        fn get_head(&self, ctx: u32) -> Option<Vec<u8>> {
            self.heads.get(ctx.to_be_bytes()).unwrap().map(|s| s.to_vec())
        }

        fn info(&self) -> String {
            format!(
                " journals={} journal_bytes={} tables={}",
                self.db.journal_count(),
                self.db.journal_disk_space().unwrap_or(0),
                [&self.entries, &self.hidx, &self.kidx, &self.heads].iter().map(|k| k.table_count()).sum::<usize>()
            )
        }

        fn before_close(&self) {
            if env_u64("FJ_FLUSH_ON_CLOSE") == Some(1) {
                // #[doc(hidden)] API: seal + flush memtables so the journal can be dropped
                for k in [&self.entries, &self.hidx, &self.kidx, &self.heads] {
                    k.rotate_memtable_and_wait().unwrap();
                }
            }
        }
    }
}

// ----- redb 4

mod rd {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
    const HIDX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hidx");
    const KIDX: TableDefinition<&[u8], ()> = TableDefinition::new("kidx");
    const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads");

    pub struct Redb {
        pub db: Database,
        quick_repair: bool,
    }

    pub fn file(dir: &Path) -> PathBuf {
        dir.join("ledger.redb")
    }

    impl Redb {
        pub fn open(dir: &Path, quick_repair: bool) -> Self {
            std::fs::create_dir_all(dir).unwrap();
            let db = Database::builder()
                .set_cache_size(cache_bytes() as usize)
                .create(file(dir))
                .unwrap();
            // make sure all tables exist (cheap, one commit) -- only when first created
            let r = Redb { db, quick_repair };
            {
                let rtx = r.db.begin_read().unwrap();
                if rtx.open_table(HEADS).is_err() {
                    drop(rtx);
                    let tx = r.db.begin_write().unwrap();
                    tx.open_table(ENTRIES).unwrap();
                    tx.open_table(HIDX).unwrap();
                    tx.open_table(KIDX).unwrap();
                    tx.open_table(HEADS).unwrap();
                    tx.commit().unwrap();
                }
            }
            r
        }
    }

    impl Engine for Redb {
        fn commit(&mut self, b: &Batch) {
            let mut tx = self.db.begin_write().unwrap();
            // Durability::Immediate is the default: commit() = one fdatasync (1-phase + checksums)
            if self.quick_repair {
                tx.set_quick_repair(true); // implies 2-phase commit = 2 fdatasyncs
            }
            {
                let mut t = tx.open_table(ENTRIES).unwrap();
                for (k, v) in &b.entries {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                let mut t = tx.open_table(HIDX).unwrap();
                for (k, v) in &b.hidx {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                let mut t = tx.open_table(KIDX).unwrap();
                for k in &b.kidx {
                    t.insert(k.as_slice(), ()).unwrap();
                }
                let mut t = tx.open_table(HEADS).unwrap();
                for (k, v) in &b.heads {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }

        fn scan_ctx(&self, ctx: u32) -> (u64, u64) {
            let (lo, hi) = ctx_range(ctx);
            let rtx = self.db.begin_read().unwrap();
            let t = rtx.open_table(ENTRIES).unwrap();
            let (mut n, mut sum) = (0u64, 0u64);
            for r in t.range(lo.as_slice()..hi.as_slice()).unwrap() {
                let (_k, v) = r.unwrap();
                sum = sum.wrapping_add(touch(v.value()));
                n += 1;
            }
            (n, sum)
        }

        fn get_head(&self, ctx: u32) -> Option<Vec<u8>> {
            let rtx = self.db.begin_read().unwrap();
            let t = rtx.open_table(HEADS).unwrap();
            let b = ctx.to_be_bytes();
            t.get(b.as_slice()).unwrap().map(|g| g.value().to_vec())
        }
    }
}

fn open_engine(name: &str, dir: &Path) -> Box<dyn Engine> {
    match name {
        "fjall" => Box::new(fj::Fjall::open(dir, false)),
        "fjall-p" => Box::new(fj::Fjall::open(dir, true)),
        "redb" => Box::new(rd::Redb::open(dir, false)),
        "redb-qr" => Box::new(rd::Redb::open(dir, true)),
        _ => panic!("unknown engine {name}"),
    }
}

// ---------------------------------------------------------------- helpers

fn dir_size(p: &Path) -> u64 {
    let mut s = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                s += dir_size(&e.path());
            } else {
                s += m.len();
            }
        }
    }
    s
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn start_seqs(e: &dyn Engine, nctx: u32, ctx0: u32) -> Vec<u64> {
    (0..nctx)
        .map(|i| match e.get_head(ctx0 + i) {
            Some(h) => u64::from_be_bytes(h[..8].try_into().unwrap()) + 1,
            None => 0,
        })
        .collect()
}

// ---------------------------------------------------------------- main

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let cmd = a[1].as_str();
    let eng = a[2].as_str();
    let dir = PathBuf::from(&a[3]);
    let num = |i: usize| -> u64 { a[i].parse().unwrap() };

    match cmd {
        "lat" => {
            fresh(&dir);
            let n = num(4) as usize;
            let mut e = open_engine(eng, &dir);
            let mut g = Gen::new(1, 0, 42, vec![0]);
            let mut lat = Vec::with_capacity(n);
            let t0 = Instant::now();
            for _ in 0..n {
                let b = g.batch(1);
                let t = Instant::now();
                e.commit(&b);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let wall = t0.elapsed().as_secs_f64();
            let mean = lat.iter().sum::<f64>() / n as f64;
            lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
            println!(
                "RESULT lat engine={eng} commits={n} p50_us={:.0} p99_us={:.0} max_us={:.0} mean_us={:.0} wall_s={:.2}",
                pct(&lat, 0.50), pct(&lat, 0.99), lat[n - 1], mean, wall
            );
        }
        "tput" => {
            fresh(&dir);
            let bs = num(4) as usize;
            let total = num(5);
            let cap = num(6) as f64;
            let mut e = open_engine(eng, &dir);
            let mut g = Gen::new(16, 0, 7, vec![0; 16]);
            let mut done = 0u64;
            let mut recs = 0u64;
            let t0 = Instant::now();
            while done < total {
                let b = g.batch(bs.min((total - done) as usize));
                recs += b.records() as u64;
                e.commit(&b);
                done += b.entries.len() as u64;
                if t0.elapsed().as_secs_f64() > cap {
                    break;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let tc = Instant::now();
            drop(e);
            let close = tc.elapsed().as_secs_f64();
            println!(
                "RESULT tput engine={eng} batch={bs} entries={done} records={recs} secs={secs:.2} entries_per_s={:.0} close_s={close:.2} disk_bytes={}",
                done as f64 / secs,
                dir_size(&dir)
            );
        }
        "fill" => {
            // append `total` entries over nctx contexts (starting at ctx0), continuing existing chains
            let total = num(4);
            let nctx = num(5) as u32;
            let ctx0 = num(6) as u32;
            let bs = num(7) as usize;
            let cap = num(8) as f64;
            let crash = a.get(9).map(|s| s == "crash").unwrap_or(false);
            let mut e = open_engine(eng, &dir);
            let seqs = start_seqs(e.as_ref(), nctx, ctx0);
            let mut g = Gen::new(nctx, ctx0, 0xC0FFEE ^ seqs[0], seqs);
            let mut done = 0u64;
            let t0 = Instant::now();
            let mut capped = false;
            while done < total {
                let b = g.batch(bs.min((total - done) as usize));
                e.commit(&b);
                done += b.entries.len() as u64;
                if t0.elapsed().as_secs_f64() > cap {
                    capped = true;
                    break;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "RESULT fill engine={eng} entries={done} secs={secs:.2} entries_per_s={:.0} capped={capped} crash={crash}",
                done as f64 / secs
            );
            if crash {
                use std::io::Write;
                std::io::stdout().flush().unwrap();
                // last commit was durable; skip all destructors (no clean close)
                std::process::exit(0);
            }
            let tc = Instant::now();
            e.before_close();
            drop(e);
            println!("RESULT close_s={:.2} disk_bytes={}", tc.elapsed().as_secs_f64(), dir_size(&dir));
        }
        "scan" => {
            let ctx = num(4) as u32;
            let t = Instant::now();
            let e = open_engine(eng, &dir);
            let open_s = t.elapsed().as_secs_f64();
            let mut out = vec![];
            for _ in 0..2 {
                let t = Instant::now();
                let (n, sum) = black_box(e.scan_ctx(ctx));
                let s = t.elapsed().as_secs_f64();
                out.push((n, sum, s));
            }
            println!(
                "RESULT scan engine={eng} ctx={ctx} open_s={open_s:.3} n={} pass1_s={:.3} pass1_eps={:.0} pass2_s={:.3} pass2_eps={:.0} sum={}",
                out[0].0, out[0].2, out[0].0 as f64 / out[0].2, out[1].2, out[1].0 as f64 / out[1].2, out[0].1
            );
        }
        "open" => {
            let t = Instant::now();
            let e = open_engine(eng, &dir);
            let h = e.get_head(0);
            let open_s = t.elapsed().as_secs_f64();
            let seq = h.map(|h| u64::from_be_bytes(h[..8].try_into().unwrap()));
            let info = e.info();
            let tc = Instant::now();
            drop(e);
            println!(
                "RESULT open engine={eng} open_s={open_s:.3} head0_seq={seq:?} close_s={:.3} disk_bytes={}{info}",
                tc.elapsed().as_secs_f64(),
                dir_size(&dir)
            );
        }
        _ => panic!("unknown cmd"),
    }
}
