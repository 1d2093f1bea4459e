//! A small, fast, seedable PRNG: xorshift64* seeded through splitmix64.
//!
//! Tests and load generators need data a broken server cannot echo back by accident (each
//! connection gets its own seed) and reproducible random choices (chunk sizes, accounts);
//! they need no cryptographic quality, so no `rand` crate.

/// xorshift64*: 64 bits of state, one multiply per output. The sequence is fixed by the
/// seed, so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        // splitmix64 spreads nearby seeds (connection 0, 1, 2, ...) far apart and never
        // yields the all-zero state xorshift cannot leave.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0); the tiny modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// A value in `lo..=hi` (`lo` <= `hi`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi, "range({lo}, {hi})");
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// `len` pseudo-random bytes fixed by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn seeds_give_distinct_reproducible_streams() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(1);
        assert_ne!(a.next_u64(), b.next_u64());
        assert_eq!(Rng::new(7).bytes(13), Rng::new(7).bytes(13));
        let mut buf = [0u8; 13];
        a.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert!((0..1000).all(|_| b.below(7) < 7));
        assert!((0..1000)
            .map(|_| b.range(3, 5))
            .all(|n| (3..=5).contains(&n)));
    }
}
