//! A seeded generator and the inputs it makes.

/// splitmix64: small, seeded, good enough to drive tests.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with this percent probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Every truncation of `bytes`, every byte flipped three ways, and
/// `random` random edits (bytes changed, inserted, removed; lengths
/// rewritten to large values), each passed to `check`.
pub fn mutations(bytes: &[u8], random: usize, mut check: impl FnMut(&[u8])) {
    for n in 0..bytes.len() {
        check(&bytes[..n]);
    }
    for i in 0..bytes.len() {
        for x in [0x01, 0x80, 0xFF] {
            let mut b = bytes.to_vec();
            b[i] ^= x;
            check(&b);
        }
    }
    let mut rng = Rng(0xF022 ^ bytes.len() as u64);
    for _ in 0..random {
        let mut b = bytes.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(b.len() as u64 + 1) as usize;
            match rng.below(4) {
                0 if at < b.len() => b[at] = rng.next() as u8,
                1 => b.insert(at, rng.next() as u8),
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ if at + 4 <= b.len() => {
                    let big = *rng.pick(&[u32::MAX, 1 << 31, 1 << 20, 65536, 257]);
                    b[at..at + 4].copy_from_slice(&big.to_be_bytes());
                }
                _ => {}
            }
        }
        check(&b);
    }
}

/// `count` random byte strings of random lengths up to `len_max`, some
/// starting with `prefix` (a valid magic and version), so decoders get past
/// their first check.
pub fn arbitrary(
    seed: u64,
    prefix: &[u8],
    count: usize,
    len_max: usize,
    mut check: impl FnMut(&[u8]),
) {
    let mut rng = Rng(seed);
    for _ in 0..count {
        let len = rng.below(len_max as u64 + 1) as usize;
        let mut b = rng.bytes(len);
        if rng.chance(50) {
            let mut p = prefix.to_vec();
            p.append(&mut b);
            b = p;
        }
        check(&b);
    }
}
