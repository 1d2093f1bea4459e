//! A small, fast, seedable PRNG: xorshift64* seeded through splitmix64.
//!
//! Load generation needs bytes that a broken server cannot echo back by accident (so each
//! connection gets its own seed) and random choices (accounts, amounts); it needs no
//! cryptographic quality, so no `rand` crate.

/// xorshift64*: 64 bits of state, one multiply per output.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator whose sequence is fixed by `seed` (any value, zero included).
    pub(crate) fn new(seed: u64) -> XorShift {
        // splitmix64 spreads nearby seeds (connection 0, 1, 2, ...) far apart and never
        // yields the all-zero state xorshift cannot leave.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0); the tiny modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn seeds_give_distinct_streams() {
        let mut a = XorShift::new(0);
        let mut b = XorShift::new(1);
        assert_ne!(a.next_u64(), b.next_u64());
        let mut buf = [0u8; 13];
        a.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert!((0..1000).all(|_| b.below(7) < 7));
    }
}
