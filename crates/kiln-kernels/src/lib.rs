//! kiln's kernel catalog: one CUDA source per kernel family, its launch rule,
//! a typed Rust op over device buffers, and a CPU float64 reference of the
//! same math.
