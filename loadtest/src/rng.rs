//! A small seedable generator, so every rider's choices follow from
//! `(seed, rider index, incarnation)` alone.
//!
//! That is what makes `--segment` exact: rider 17 draws the same stations,
//! intervals and drift whether it runs in one process or in segment 2 of 4,
//! so the segments of a run add up to the run of the whole.

/// SplitMix64: tiny, fast and good enough for load shaping (not for crypto).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one incarnation of one rider.
    pub(crate) fn for_rider(seed: u64, index: u64, incarnation: u32, stream: u64) -> Rng {
        let mut mix = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = mix.next_u64() ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut mix = Rng(a);
        let b = mix.next_u64() ^ u64::from(incarnation).wrapping_mul(0xA24B_AED4_963E_E407);
        let mut mix = Rng(b ^ stream.wrapping_mul(0x9FB2_1C65_1E98_DF25));
        Rng(mix.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi].
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// An index drawn with the given non-negative weights.
    pub(crate) fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_draws() {
        let mut a = Rng::for_rider(7, 3, 0, 1);
        let mut b = Rng::for_rider(7, 3, 0, 1);
        let mut c = Rng::for_rider(7, 4, 0, 1);
        let xa: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn weighted_follows_weights() {
        let mut r = Rng(1);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[r.weighted(&[40.0, 30.0, 20.0, 10.0])] += 1;
        }
        for (c, w) in counts.iter().zip([0.4, 0.3, 0.2, 0.1]) {
            let share = *c as f64 / 100_000.0;
            assert!((share - w).abs() < 0.01, "{counts:?}");
        }
    }
}
