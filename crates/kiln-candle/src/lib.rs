//! kiln on candle: custom ops over the catalog, the Qwen3-MoE, GLM-4.7-Flash
//! and LFM2-MoE models, synthetic checkpoints, and `kiln validate`, which
//! proves a kernel on a real model (decode tokens/s and token identity)
//! before it may enter the default catalog.
//!
//! Not built yet: `kiln models synth` and `kiln validate` say so and exit
//! non-zero. Nothing else in the workspace depends on this crate.
