//! The type-erased view of a target's op that the evaluator works with: the
//! kernel's pointer parameters in signature order, how to draw adversarial
//! inputs, the float64 reference, and the bytes a launch must move.

use kiln_kernels::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How one buffer's elements are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElemKind {
    /// The target's storage dtype (`scalar_t`).
    Dtype(DType),
    /// `float`.
    F32,
    /// `unsigned int`.
    U32,
    /// `int`.
    I32,
}

impl ElemKind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemKind::Dtype(d) => d.size(),
            _ => 4,
        }
    }

    /// Rounds a value to what this kind can store.
    pub fn round(self, v: f64) -> f64 {
        match self {
            ElemKind::Dtype(d) => d.round(v),
            ElemKind::F32 => v as f32 as f64,
            ElemKind::U32 | ElemKind::I32 => v.round(),
        }
    }

    /// A drawn sample as this kind holds it, rounded through f32: any value
    /// the kind holds is a valid input, and the 16-bit conversions from f32
    /// are a few bit operations where those from f64 cost most of a draw.
    pub fn round_drawn(self, v: f64) -> f64 {
        let f = v as f32;
        match self {
            ElemKind::Dtype(DType::BF16) => half::bf16::from_f32(f).to_f64(),
            ElemKind::Dtype(DType::F16) => half::f16::from_f32(f).to_f64(),
            _ => self.round(v),
        }
    }
}

/// Whether the kernel reads or writes a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Read only: must be bit-identical after the launch.
    Input,
    /// Written: filled with a sentinel before every launch and checked after.
    Output,
    /// Read and updated in place (a recurrent state): drawn like an input,
    /// given every launch its own copy, restored to the drawn values before
    /// every launch, and checked like an output after it.
    InOut,
}

impl Role {
    /// Drawn as an input: the kernel reads what it holds before the launch.
    pub fn is_read(self) -> bool {
        matches!(self, Role::Input | Role::InOut)
    }

    /// Checked after the launch against the reference's outputs.
    pub fn is_written(self) -> bool {
        matches!(self, Role::Output | Role::InOut)
    }
}

/// One pointer parameter of the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferSpec {
    /// The parameter's name in the catalog signature.
    pub name: String,
    /// Element storage.
    pub kind: ElemKind,
    /// Read or written.
    pub role: Role,
    /// Elements for this shape (0: the kernel must not touch it; a null pointer is passed).
    pub len: usize,
}

/// Host values of one buffer, held as f64 (exact for every kind used).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBuffer {
    /// Element storage.
    pub kind: ElemKind,
    /// The values.
    pub values: Vec<f64>,
}

impl HostBuffer {
    /// Encodes the values (each exactly a value of the kind) as device bytes
    /// (little endian); large buffers
    /// (expert weights: hundreds of millions of values) in parallel.
    pub fn to_bytes(&self) -> Vec<u8> {
        const PAR_MIN: usize = 1 << 20;
        if self.values.len() < PAR_MIN {
            return Self::encode(self.kind, &self.values);
        }
        self.values
            .par_chunks(PAR_MIN)
            .map(|c| Self::encode(self.kind, c))
            .collect::<Vec<_>>()
            .concat()
    }

    fn encode(kind: ElemKind, values: &[f64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * kind.size());
        for &v in values {
            match kind {
                // Through f32: the values are the kind's own (exact in f32), and
                // the conversions from f32 are far cheaper than those from f64.
                ElemKind::Dtype(DType::BF16) => {
                    out.extend(half::bf16::from_f32(v as f32).to_bits().to_le_bytes())
                }
                ElemKind::Dtype(DType::F16) => {
                    out.extend(half::f16::from_f32(v as f32).to_bits().to_le_bytes())
                }
                ElemKind::Dtype(DType::F32) | ElemKind::F32 => out.extend((v as f32).to_le_bytes()),
                ElemKind::U32 => out.extend((v as u32).to_le_bytes()),
                ElemKind::I32 => out.extend((v as i32).to_le_bytes()),
            }
        }
        out
    }

    /// Decodes device bytes.
    pub fn from_bytes(kind: ElemKind, bytes: &[u8]) -> Self {
        let values = match kind {
            ElemKind::Dtype(DType::BF16) => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
                .collect(),
            ElemKind::Dtype(DType::F16) => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
                .collect(),
            ElemKind::Dtype(DType::F32) | ElemKind::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            ElemKind::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            ElemKind::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        };
        Self { kind, values }
    }
}

/// The input distributions verification draws from, one per trial in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Standard normal.
    Normal,
    /// Magnitudes spread log-uniformly over 1e-3..1e3, random signs.
    Wide,
    /// Mostly negative values with a few large positive ones.
    Skewed,
    /// Values from a handful of levels: exact ties everywhere.
    Ties,
    /// Standard normal scaled by 1e-3: rows whose mean square is near the
    /// norms' epsilon, where a kernel that drops or misplaces it is wrong.
    Tiny,
}

impl Distribution {
    /// Every distribution, in the order trials use them.
    pub const ALL: [Distribution; 5] = [
        Distribution::Normal,
        Distribution::Wide,
        Distribution::Skewed,
        Distribution::Ties,
        Distribution::Tiny,
    ];

    /// One sample (before rounding to the buffer's kind).
    pub fn sample(self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Distribution::Normal => normal(rng),
            Distribution::Wide => {
                let mag = 10f64.powf(rng.gen_range(-3.0..3.0));
                if rng.gen_bool(0.5) {
                    mag
                } else {
                    -mag
                }
            }
            Distribution::Skewed => {
                if rng.gen_bool(0.05) {
                    rng.gen_range(5.0..50.0)
                } else {
                    -rng.gen_range(0.0..4.0)
                }
            }
            Distribution::Ties => [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0][rng.gen_range(0..6)],
            Distribution::Tiny => 1e-3 * normal(rng),
        }
    }
}

/// A standard normal sample (ziggurat: verification draws millions per candidate).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(rand_distr::StandardNormal)
}

/// Samples per parallel stream of [`draw`]: below this a buffer is drawn
/// from `rng` itself.
const DRAW_CHUNK: usize = 1 << 16;

/// `n` values of `sample`, drawn in parallel from one stream per `chunk`
/// values, each seeded from `rng`: the result depends only on `rng` (and
/// `chunk`), however many threads draw it.
pub fn par_samples(
    n: usize,
    chunk: usize,
    rng: &mut ChaCha8Rng,
    sample: impl Fn(&mut ChaCha8Rng) -> f64 + Sync,
) -> Vec<f64> {
    let seeds: Vec<u64> = (0..n.div_ceil(chunk)).map(|_| rng.gen()).collect();
    seeds
        .par_iter()
        .enumerate()
        .flat_map_iter(|(ci, &seed)| {
            let len = chunk.min(n - ci * chunk);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..len).map(|_| sample(&mut rng)).collect::<Vec<f64>>()
        })
        .collect()
}

/// `n` samples of `dist`, rounded to `kind`. A large buffer (a KV cache, a
/// stack of expert outputs: millions of values, drawn every verification
/// trial) is drawn in parallel ([`par_samples`]).
pub fn draw(kind: ElemKind, n: usize, dist: Distribution, rng: &mut ChaCha8Rng) -> HostBuffer {
    let sample = |rng: &mut ChaCha8Rng| kind.round_drawn(dist.sample(rng));
    let values = if n <= DRAW_CHUNK {
        (0..n).map(|_| sample(rng)).collect()
    } else {
        par_samples(n, DRAW_CHUNK, rng, sample)
    };
    HostBuffer { kind, values }
}

/// `n` samples of `scale * N(0,1)`, rounded to `kind`.
pub fn draw_scaled(kind: ElemKind, n: usize, scale: f64, rng: &mut ChaCha8Rng) -> HostBuffer {
    HostBuffer {
        kind,
        values: (0..n)
            .map(|_| kind.round_drawn(scale * normal(rng)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bytes_round_trip_for_every_kind() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for kind in [
            ElemKind::Dtype(DType::BF16),
            ElemKind::Dtype(DType::F16),
            ElemKind::Dtype(DType::F32),
            ElemKind::F32,
        ] {
            let b = draw(kind, 100, Distribution::Wide, &mut rng);
            let back = HostBuffer::from_bytes(kind, &b.to_bytes());
            assert_eq!(b, back, "{kind:?}");
        }
        let idx = HostBuffer {
            kind: ElemKind::U32,
            values: vec![0.0, 7.0, 4294967295.0],
        };
        assert_eq!(HostBuffer::from_bytes(ElemKind::U32, &idx.to_bytes()), idx);
    }

    #[test]
    fn large_buffers_encode_in_parallel_exactly_as_serially() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let kind = ElemKind::Dtype(DType::BF16);
        let b = draw(kind, (1 << 20) * 2 + 5, Distribution::Normal, &mut rng);
        assert_eq!(b.to_bytes(), HostBuffer::encode(kind, &b.values));
        assert_eq!(HostBuffer::from_bytes(kind, &b.to_bytes()), b);
    }

    #[test]
    fn ties_distribution_produces_exact_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let b = draw(
            ElemKind::Dtype(DType::BF16),
            64,
            Distribution::Ties,
            &mut rng,
        );
        let distinct: std::collections::BTreeSet<u64> =
            b.values.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() <= 6);
    }
}
