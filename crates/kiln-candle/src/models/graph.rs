//! Graph-captured decode: a kiln model decodes a token with one CUDA graph
//! replay instead of ~800 launches from the host.
//!
//! The graph is the model's own eager step, captured from candle's stream:
//! - the token id and the position live in device buffers written before
//!   each replay (the embedding gather, the rope kernel and `kv_cache_write`
//!   read them there);
//! - the one launch argument that changes per token, decode attention's
//!   `past`, is logged at capture ([`Param::Position`](crate::ops)) and set
//!   on the graph's nodes before each replay, as llama.cpp updates its graph
//!   in place instead of capturing again;
//! - intermediates are allocated stream-ordered during capture, so they
//!   become the graph's own memory at fixed addresses;
//! - candle uploads a non-contiguous layout's dims and strides from the host
//!   per op; with its graph cache on, the warm-up step uploads them once and
//!   the capture reuses those copies, so nothing host-side is baked in.
//!
//! Order of a graph's life: the first single-token step runs eagerly (the
//! warm-up: kernels compiled, layouts uploaded), the second captures and
//! replays, every later one only replays. A pack change captures again.
//! A capture that fails is an error naming the layer and op, never a silent
//! eager fallback.
//!
//! The invariant a model must keep: every tensor a step reads that was made
//! outside the step (weights, KV caches, cached constants) lives as long as
//! the model, at one address. A cache that evicts an entry leaves the graph
//! reading freed memory.

use candle_core::Tensor;

use super::decoder::DecoderStack;
use crate::error::Result;

/// A decode graph of one model instance (batch 1, its KV cache's max length),
/// one capture per kernel pack.
pub struct DecodeGraph {
    /// Whether single-token steps replay it (off: eager steps; the captures are kept).
    pub on: bool,
    #[cfg(feature = "cuda")]
    inner: cuda::Graph,
}

impl std::fmt::Debug for DecodeGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodeGraph")
    }
}

impl DecodeGraph {
    /// A graph for the model on `dev` (not captured until its second step).
    pub fn new(dev: &candle_core::Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            Ok(Self {
                on: true,
                inner: cuda::Graph::new(dev)?,
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = dev;
            Err(crate::Error::Config(
                "graph decode needs a CUDA build of kiln (feature `cuda`); pass --eager".into(),
            ))
        }
    }
}

/// One decode step of `m` through its graph: token `id` at position `pos`.
/// The returned logits live in the graph's output buffer: read them before
/// the next step.
pub(crate) fn step<M: DecoderStack + ?Sized>(m: &mut M, id: u32, pos: usize) -> Result<Tensor> {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let Some(mut g) = m.decoder_mut().graph.take() else {
        return Err(crate::Error::Config("graph decode is off".into()));
    };
    #[cfg(feature = "cuda")]
    let out = g.inner.step(m, id, pos);
    #[cfg(not(feature = "cuda"))]
    let out = Err(crate::Error::Config(format!(
        "graph decode needs a CUDA build (token {id} at {pos})"
    )));
    m.decoder_mut().graph = Some(g);
    out
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::ffi::c_void;

    use candle_core::{CudaDevice, DType, Device, Tensor};
    use cudarc::driver::sys;
    use cudarc::driver::CudaGraph;

    use super::DecoderStack;
    use crate::error::{Error, Result};
    use crate::models::decoder::run_step;
    use crate::ops::device::{take_position_args, write_values, PositionArg};
    use crate::ops::pack;

    pub(super) struct Graph {
        dev: CudaDevice,
        /// The token id, u32 `[1]`.
        ids: Tensor,
        /// The position, i32 `[1]` (the rope kernel's and the cache write's).
        positions: Tensor,
        /// Pack generations whose warm-up ran, with the vocabulary size.
        warm: Vec<(u64, usize)>,
        /// One capture per pack generation.
        captured: Vec<Captured>,
    }

    struct Captured {
        graph: CudaGraph,
        generation: u64,
        /// The graph's output: f32 `[vocab]`.
        logits: Tensor,
        /// Nodes whose position argument is set per replay.
        nodes: Vec<PositionNode>,
    }

    /// A kernel node with a position argument, and the argument array that
    /// [`Captured::set_position`] hands the driver.
    struct PositionNode {
        node: sys::CUgraphNode,
        params: sys::CUDA_KERNEL_NODE_PARAMS,
        args: Vec<*mut c_void>,
        index: usize,
        value: Box<i32>,
    }

    impl Graph {
        pub(super) fn new(dev: &Device) -> Result<Self> {
            let Device::Cuda(d) = dev else {
                return Err(Error::Config(format!(
                    "graph decode needs a CUDA device, not {dev:?}; pass --eager"
                )));
            };
            if d.is_event_tracking() {
                return Err(Error::Config(
                    "graph decode needs candle's cross-stream event tracking off before the \
                     model is built (kiln_candle::models::single_stream)"
                        .into(),
                ));
            }
            Ok(Self {
                dev: d.clone(),
                ids: Tensor::zeros(1, DType::U32, dev)?,
                positions: Tensor::zeros(1, DType::I32, dev)?,
                warm: Vec::new(),
                captured: Vec::new(),
            })
        }

        pub(super) fn step<M: DecoderStack + ?Sized>(
            &mut self,
            m: &mut M,
            id: u32,
            pos: usize,
        ) -> Result<Tensor> {
            let max_len = m.decoder().caches.first().map_or(0, |c| c.max_len());
            if pos >= max_len {
                return Err(Error::Config(format!(
                    "position {pos} is beyond the KV cache ({max_len}); pass a larger --max-len"
                )));
            }
            write_values(&self.ids, &[id])?;
            write_values(&self.positions, &[pos as i32])?;
            let generation = pack::generation();
            if let Some(c) = self
                .captured
                .iter_mut()
                .find(|c| c.generation == generation)
            {
                c.set_position(pos)?;
                c.graph
                    .launch()
                    .map_err(kiln_cuda::CudaError::driver("cuGraphLaunch"))?;
                for cache in &mut m.decoder_mut().caches {
                    cache.set_len(pos + 1);
                }
                return Ok(c.logits.clone());
            }
            if let Some(&(_, vocab)) = self.warm.iter().find(|w| w.0 == generation) {
                let c = self.capture(m, pos, generation, vocab)?;
                let logits = c.logits.clone();
                self.captured.push(c);
                return Ok(logits);
            }
            // Warm-up: an eager step that compiles every kernel and leaves
            // candle's layout uploads in its graph cache.
            let _cache = self.dev.enable_cuda_graph_htod_cache();
            let out = run_step(m, &self.ids, Some(&self.positions), pos)?;
            self.warm.push((generation, out.dim(0)?));
            Ok(out)
        }

        /// Captures one step at `pos`, then replays it (capture runs nothing).
        fn capture<M: DecoderStack + ?Sized>(
            &mut self,
            m: &mut M,
            pos: usize,
            generation: u64,
            vocab: usize,
        ) -> Result<Captured> {
            let logits = Tensor::zeros(vocab, DType::F32, &Device::Cuda(self.dev.clone()))?;
            let stream = self.dev.cuda_stream();
            let _cache = self.dev.enable_cuda_graph_htod_cache();
            let _ = take_position_args();
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(kiln_cuda::CudaError::driver("cuStreamBeginCapture"))?;
            let body = run_step(m, &self.ids, Some(&self.positions), pos)
                .and_then(|out| Ok(logits.slice_set(&out, 0, 0)?));
            // The capture always ends, so a failed one leaves the stream usable.
            let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
            let logged = take_position_args();
            if let Err(e) = body {
                return Err(Error::Capture(format!("{e}")));
            }
            let graph = match ended {
                Ok(Some(g)) => g,
                Ok(None) => return Err(Error::Capture("the capture recorded nothing".into())),
                Err(e) => {
                    return Err(Error::Capture(format!(
                        "{e}: an op synchronised or used another stream while capturing"
                    )))
                }
            };
            let nodes = position_nodes(&graph, &logged, pos)?;
            let mut c = Captured {
                graph,
                generation,
                logits,
                nodes,
            };
            c.set_position(pos)?;
            c.graph
                .launch()
                .map_err(kiln_cuda::CudaError::driver("cuGraphLaunch"))?;
            Ok(c)
        }
    }

    impl Captured {
        /// Sets every position argument for a step at `pos`.
        fn set_position(&mut self, pos: usize) -> Result<()> {
            let exec = self.graph.cu_graph_exec();
            for n in &mut self.nodes {
                *n.value = pos as i32;
                n.args[n.index] = (&mut *n.value as *mut i32).cast();
                n.params.kernelParams = n.args.as_mut_ptr();
                // SAFETY: `exec` is this graph's; the node is one of its kernel
                // nodes; `args` holds one pointer per kernel parameter, each to
                // a live value (the driver copies them during the call).
                unsafe { sys::cuGraphExecKernelNodeSetParams_v2(exec, n.node, &n.params) }
                    .result()
                    .map_err(kiln_cuda::CudaError::driver(
                        "cuGraphExecKernelNodeSetParams",
                    ))?;
            }
            Ok(())
        }
    }

    /// The kernel nodes of `graph` that launched a logged position argument.
    /// Every logged launch must be found exactly once, holding the captured value.
    fn position_nodes(
        graph: &CudaGraph,
        logged: &[PositionArg],
        pos: usize,
    ) -> Result<Vec<PositionNode>> {
        let driver = |call: &'static str| kiln_cuda::CudaError::driver(call);
        let g = graph.cu_graph();
        let mut count = 0usize;
        // SAFETY: `g` is a live graph owned by `graph`; the node array is sized by the first call.
        unsafe { sys::cuGraphGetNodes(g, std::ptr::null_mut(), &mut count) }
            .result()
            .map_err(driver("cuGraphGetNodes"))?;
        let mut all = vec![std::ptr::null_mut(); count];
        unsafe { sys::cuGraphGetNodes(g, all.as_mut_ptr(), &mut count) }
            .result()
            .map_err(driver("cuGraphGetNodes"))?;
        let mut nodes = Vec::new();
        for node in all.into_iter().take(count) {
            let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            unsafe { sys::cuGraphNodeGetType(node, &mut kind) }
                .result()
                .map_err(driver("cuGraphNodeGetType"))?;
            if kind != sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
                continue;
            }
            // SAFETY: a kernel node; the params are plain data the driver fills.
            let mut params: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
            unsafe { sys::cuGraphKernelNodeGetParams_v2(node, &mut params) }
                .result()
                .map_err(driver("cuGraphKernelNodeGetParams"))?;
            let Some(arg) = logged.iter().find(|a| a.func == params.func as usize) else {
                continue;
            };
            if params.kernelParams.is_null() {
                return Err(Error::Capture(
                    "a position-taking kernel node has no argument array".into(),
                ));
            }
            // SAFETY: the node's argument array has one entry per kernel
            // parameter (`arg.count`, from the launch that made it) and lives
            // as long as the graph; entry `index` is an `int`.
            let args: Vec<*mut c_void> =
                unsafe { std::slice::from_raw_parts(params.kernelParams, arg.count) }.to_vec();
            let captured = unsafe { *(args[arg.index] as *const i32) };
            if captured != pos as i32 || arg.value != pos as i32 {
                return Err(Error::Capture(format!(
                    "a position argument was captured as {captured} (logged {}) at position {pos}",
                    arg.value
                )));
            }
            nodes.push(PositionNode {
                node,
                params,
                args,
                index: arg.index,
                value: Box::new(captured),
            });
        }
        if nodes.len() != logged.len() {
            return Err(Error::Capture(format!(
                "{} launches took the position, {} graph nodes were found for them",
                logged.len(),
                nodes.len()
            )));
        }
        Ok(nodes)
    }
}
