//! The GPU worker: the only process that loads and runs candidate kernels.
//! The parent (`eval::worker_client`) talks to it over pipes and kills it on a
//! hang, a crash or a sticky CUDA error.

pub mod device_set;
pub mod evaluate;
pub mod measure;
pub mod prefix_replay;
pub mod serve;
pub mod timed_outputs;

pub use evaluate::{evaluate, WorkerCache};
pub use measure::Device;
pub use serve::{serve, start_device, Exit, ServeError};
