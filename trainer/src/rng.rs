//! A small seeded RNG (xoshiro256++ seeded by splitmix64) whose whole state is
//! four `u64`s, so checkpoints can save and restore it exactly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

/// SplitMix64: the seeding stream of [`Rng`], and a generator of its own where a plain stream
/// of u64s from one seed is all that is needed (the validation split).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = SplitMix64(seed);
        Rng { s: [x.next_u64(), x.next_u64(), x.next_u64(), x.next_u64()] }
    }

    /// An independent stream for a named purpose, so adding one use of randomness
    /// does not shift the others (e.g. init vs shuffling vs dropout).
    pub fn derive(seed: u64, stream: &str) -> Rng {
        let mut h = seed ^ 0xA076_1D64_78BD_642F;
        for b in stream.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
        }
        Rng::new(h)
    }

    /// The stream rank `rank` of `world` draws `purpose` from for one step, and the shared state
    /// after the step. One rank draws from the state itself (its draws advance it: `None`);
    /// several each draw from their own fork, and the state advances by the one draw that forked
    /// them, alike on every rank.
    pub fn for_rank(&self, purpose: &str, rank: usize, world: usize) -> (Rng, Option<Rng>) {
        if world == 1 {
            return (self.clone(), None);
        }
        let mut next = self.clone();
        let fork = Rng::derive(next.next_u64(), &format!("{purpose}-rank-{rank}"));
        (fork, Some(next))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_state_roundtrips() {
        let mut a = Rng::new(7);
        let _ = a.next_u64();
        let saved = serde_json::to_string(&a).unwrap();
        let mut b: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Rng::derive(7, "init").next_u64(), Rng::derive(7, "dropout").next_u64());
        let mean: f64 = (0..10000).map(|_| a.next_f64()).sum::<f64>() / 10000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }
}
