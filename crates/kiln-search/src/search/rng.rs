//! The search's seeded random number generator, serialisable so a resumed
//! session continues the exact same random stream.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A ChaCha8 generator seeded from the session's `--seed`, whose position is saved with the tree.
///
/// In JSON it is `{"seed": u64, "stream": u64, "word_pos": "<decimal u128>"}`;
/// the position is a string because JSON numbers beyond 2^53 are not portable.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "RngRepr", try_from = "RngRepr")]
pub struct SearchRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl SearchRng {
    /// A generator at the start of the stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The seed this generator was created from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many 32-bit words have been drawn so far.
    pub fn word_pos(&self) -> u128 {
        self.rng.get_word_pos()
    }
}

impl PartialEq for SearchRng {
    fn eq(&self, other: &Self) -> bool {
        // The position, not the buffer state: a restored generator is equal
        // to the one it was saved from.
        self.seed == other.seed
            && self.rng.get_stream() == other.rng.get_stream()
            && self.rng.get_word_pos() == other.rng.get_word_pos()
    }
}

impl RngCore for SearchRng {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.rng.fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.rng.try_fill_bytes(dest)
    }
}

/// The saved form of [`SearchRng`].
#[derive(Serialize, Deserialize)]
struct RngRepr {
    seed: u64,
    stream: u64,
    word_pos: String,
}

impl From<SearchRng> for RngRepr {
    fn from(r: SearchRng) -> Self {
        Self {
            seed: r.seed,
            stream: r.rng.get_stream(),
            word_pos: r.rng.get_word_pos().to_string(),
        }
    }
}

impl TryFrom<RngRepr> for SearchRng {
    type Error = String;

    fn try_from(r: RngRepr) -> Result<Self, Self::Error> {
        let pos: u128 = r
            .word_pos
            .parse()
            .map_err(|_| format!("rng word_pos {:?} is not a decimal integer", r.word_pos))?;
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
        rng.set_stream(r.stream);
        rng.set_word_pos(pos);
        Ok(Self { seed: r.seed, rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_continues_the_stream() {
        let mut a = SearchRng::new(7);
        for _ in 0..13 {
            a.next_u32();
        }
        let text = serde_json::to_string(&a).expect("serialise rng");
        let mut b: SearchRng = serde_json::from_str(&text).expect("parse rng");
        assert_eq!(a, b);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn bad_position_is_an_error() {
        let r: Result<SearchRng, _> =
            serde_json::from_str(r#"{"seed":1,"stream":0,"word_pos":"x"}"#);
        assert!(r.is_err());
    }
}
