//! Dense projections at decode batch sizes: `linear_gemv`, which streams the
//! weight once for up to [`GEMV_MAX_ROWS`] rows of x, and can end in the
//! bias add or the SwiGLU that follows a projection ([`Epilogue`]): one
//! launch fewer each, bit-identical to the two.
//!
//! It can also begin with the RMSNorm (or residual add and RMSNorm) whose
//! output it reads ([`NormPrologue`], [`gemv_normed`]): every block computes
//! the normed rows exactly as the catalog's norm kernel would, so the norm's
//! own launch goes, and the result is the same bits. It is on for
//! projections of at most [`NORM_PROLOGUE_MAX_WEIGHT_BYTES`] of weights
//! (measured in the models, see there); `KILN_NORM_FUSION=0` turns it off.
//!
//! A MoE layer's router projection can also end in the router itself
//! ([`RouterEpilogue`], [`gemv_normed_routed`]): the last block to finish
//! runs the catalog router on the logits, bit for bit its own launch, and
//! may append the stacked shared expert's column. Where it runs by default
//! is [`RouterFusion`] (measured in the models, see there).
//!
//! The kernel is kiln-candle's own (`kernels/linear_gemv.cu`), not a catalog
//! op yet: the models call it for every projection at decode, and larger T
//! (prefill) goes to cuBLAS.

use candle_core::Tensor;
use kiln_kernels::reference::topk::SigmoidRouting;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// The most rows of x the kernel takes (it keeps one partial sum per row in registers).
pub const GEMV_MAX_ROWS: usize = 8;

/// The kernel's source (its header states the math and the launch rule).
pub const SOURCE: &str = include_str!("../../kernels/linear_gemv.cu");

/// Whether [`gemv`] takes `x[T, K]` against `w[N, K]` (kernel dtypes, T ≤ 8,
/// K a whole number of w's 16-byte vectors, both starting 16-byte aligned).
pub fn gemv_applies(x: &Tensor, w: &Tensor) -> bool {
    let (Ok((t, k)), Ok((n, k2))) = (x.dims2(), w.dims2()) else {
        return false;
    };
    // The kernel's vector is 16 bytes of w (and the same number of x values).
    let vec = 16 / w.dtype().size_in_bytes().max(1);
    // A contiguous view is passed as it is; anything else is copied (aligned) first.
    let aligned = |t: &Tensor| {
        !t.is_contiguous()
            || (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(16)
    };
    if !aligned(x) || !aligned(w) {
        return false;
    }
    (1..=GEMV_MAX_ROWS).contains(&t)
        && k == k2
        && n >= 1
        && k % vec == 0
        && kernel_dtype("linear_gemv", x.dtype()).is_ok()
        && kernel_dtype("linear_gemv", w.dtype()).is_ok()
}

/// What `linear_gemv` does after the projection (the kernel header's
/// epilogues), each rounding as the launch it replaces would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// The projection as it is.
    Plain,
    /// `+ bias[n]`, as a separate dtype add of the rounded projection.
    Bias,
    /// `silu(gate) * up` of a packed `[gate; up]` weight (`swiglu_packed`'s
    /// rounding, silu in the dtype): `[T, N/2]` out.
    SwiGlu,
}

/// Weight rows per warp for an `n`-row weight: one while that leaves SMs
/// idle (routers, small projections), two above; the gated form takes its
/// rows in (gate, up) pairs, so always two.
pub fn rows_per_warp(n: usize, epilogue: Epilogue) -> usize {
    if epilogue == Epilogue::SwiGlu || n >= 4096 {
        2
    } else {
        1
    }
}

/// The K loop's unroll of every projection (the kernel's `KILN_UNROLL`
/// default): how many steps' weight loads a warp issues before their
/// multiply-adds.
pub const DEFAULT_GEMV_UNROLL: usize = 4;

/// [`DEFAULT_GEMV_UNROLL`], or `KILN_GEMV_UNROLL` (1, 2, 4, 8 or 16) where
/// set, for an A/B in one binary (read once per process, said when set; any
/// other value is a loud warning and takes no effect).
pub fn gemv_unroll() -> usize {
    static UNROLL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *UNROLL.get_or_init(|| {
        let Ok(v) = std::env::var("KILN_GEMV_UNROLL") else {
            return DEFAULT_GEMV_UNROLL;
        };
        match v.trim().parse::<usize>() {
            Ok(u) if [1, 2, 4, 8, 16].contains(&u) => {
                eprintln!("kiln: KILN_GEMV_UNROLL={u}: the projections' K loops unroll by {u}");
                u
            }
            _ => {
                eprintln!(
                    "kiln: WARNING: KILN_GEMV_UNROLL={v:?} is not 1, 2, 4, 8 or 16 and took no effect; \
                     the projections' K loops unroll by {DEFAULT_GEMV_UNROLL}"
                );
                DEFAULT_GEMV_UNROLL
            }
        }
    })
}

/// The compile inputs for an `n × k` weight of `dtype`, x of the same dtype.
pub fn build(n: usize, k: usize, dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    build_with(n, k, dtype, dtype, Epilogue::Plain)
}

/// The compile inputs for an `n × k` weight (and output) of `w_dtype`, x of
/// `x_dtype` (widened exactly: GLM's f32 router on the bf16 hidden state),
/// and `epilogue` (the bias is a runtime pointer: it builds as [`Epilogue::Plain`]).
pub fn build_with(
    n: usize,
    k: usize,
    w_dtype: kiln_kernels::DType,
    x_dtype: kiln_kernels::DType,
    epilogue: Epilogue,
) -> kiln_kernels::KernelBuild {
    let rpw = rows_per_warp(n, epilogue);
    let mut defines = vec![
        w_dtype.define(),
        ("KILN_N".into(), n.to_string()),
        ("KILN_K".into(), k.to_string()),
        ("KILN_RPW".into(), rpw.to_string()),
    ];
    let mut name = format!("linear_gemv_{w_dtype}_N{n}_K{k}_RPW{rpw}");
    let unroll = gemv_unroll();
    if unroll != DEFAULT_GEMV_UNROLL {
        defines.push(("KILN_UNROLL".into(), unroll.to_string()));
        name += &format!("_u{unroll}");
    }
    if x_dtype != w_dtype {
        let (_, x_type) = x_dtype.define();
        defines.push(("KILN_X_DTYPE".into(), x_type));
        name += &format!("_x{x_dtype}");
    }
    if epilogue == Epilogue::SwiGlu {
        defines.push(("KILN_GATED".into(), "1".into()));
        name += "_swiglu";
    }
    kiln_kernels::KernelBuild {
        name: name + ".cu",
        entry: "linear_gemv".into(),
        source: SOURCE.into(),
        defines,
    }
}

/// The RMSNorm a projection may compute in its prologue (the kernel
/// header's `KILN_NORM`), as the catalog norm kernel named would.
#[derive(Debug, Clone, Copy)]
pub enum NormPrologue<'a> {
    /// `rmsnorm(x) * w` (the catalog `rmsnorm`) of the projection's input x.
    RmsNorm {
        /// The norm weight, `[K]`.
        w: &'a Tensor,
        /// Added to the mean square.
        eps: f64,
    },
    /// `h = x + residual`, returned as the new residual, then `rmsnorm(h) * w`
    /// (the catalog `add_rmsnorm`).
    AddRmsNorm {
        /// The residual stream, `[T, K]`.
        residual: &'a Tensor,
        /// The norm weight, `[K]`.
        w: &'a Tensor,
        /// Added to the mean square.
        eps: f64,
    },
}

impl NormPrologue<'_> {
    /// The kernel's `KILN_NORM` value.
    fn kind(&self) -> u8 {
        match self {
            Self::RmsNorm { .. } => 1,
            Self::AddRmsNorm { .. } => 2,
        }
    }

    fn w(&self) -> &Tensor {
        match self {
            Self::RmsNorm { w, .. } | Self::AddRmsNorm { w, .. } => w,
        }
    }

    fn eps(&self) -> f64 {
        match self {
            Self::RmsNorm { eps, .. } | Self::AddRmsNorm { eps, .. } => *eps,
        }
    }

    /// The catalog configuration of the norm this prologue stands for: its
    /// defines (eps, rounding rule) are the prologue's, and a pack or
    /// discovered kernel that replaces its build turns the prologue off.
    fn config(
        &self,
        d: usize,
        dtype: kiln_kernels::DType,
    ) -> kiln_kernels::ops::norm::RmsNormConfig {
        kiln_kernels::ops::norm::RmsNormConfig::new(d, self.eps(), dtype)
    }

    /// The build of the norm's own launch (what [`gemv_normed`] replaces).
    fn norm_build(
        &self,
        d: usize,
        dtype: kiln_kernels::DType,
    ) -> Option<kiln_kernels::KernelBuild> {
        use kiln_kernels::ops::norm::AddRmsNormConfig;
        use kiln_kernels::ops::OpConfig;
        let c = self.config(d, dtype);
        match self {
            Self::RmsNorm { .. } => c.build().ok(),
            Self::AddRmsNorm { .. } => AddRmsNormConfig(c).build().ok(),
        }
    }
}

/// The compile inputs of a projection that begins with `norm` ([`build_with`]
/// plus the prologue's defines: `KILN_NORM` and the norm's eps and rounding
/// rule, as the catalog norm kernel of x's dtype is built with them).
pub fn build_normed(
    n: usize,
    k: usize,
    w_dtype: kiln_kernels::DType,
    x_dtype: kiln_kernels::DType,
    epilogue: Epilogue,
    norm: &NormPrologue,
) -> kiln_kernels::KernelBuild {
    use kiln_kernels::ops::OpConfig;
    let mut b = build_with(n, k, w_dtype, x_dtype, epilogue);
    let kind = norm.kind();
    b.defines.push(("KILN_NORM".into(), kind.to_string()));
    let mut tag = String::new();
    for (name, value) in norm.config(k, x_dtype).op_defines() {
        if name == "KILN_D" {
            continue; // the norm runs over K
        }
        tag += &format!("_{value}");
        b.defines.push((name, value));
    }
    b.name = format!("{}_norm{kind}{tag}.cu", b.name.trim_end_matches(".cu"));
    b
}

/// Whether the norm prologue is on: `KILN_NORM_FUSION=0` turns it off (the
/// norms then run as their own launches, for an A/B in one binary); read
/// once per process, said loudly when off.
pub fn norm_fusion_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !super::fusion_switched_off(
            "KILN_NORM_FUSION",
            "the RMSNorms before the projections run as their own launches",
        )
    })
}

/// The most weight bytes of a projection that takes the norm prologue.
///
/// Every block of the projection computes the norm before its first
/// multiply-add, so the prologue's latency is paid once per wave of blocks,
/// while the launch it saves is paid once. Measured on an H100 (2026-12-07,
/// graph decode, same tokens): the prologue on projections of at most 21 MB
/// made Qwen3-30B-A3B 3.3 % and GLM-4.7-Flash 9 % faster, and on GLM-4-9B's
/// 38 MB qkv and 224 MB gate/up projections 0.5 % slower. The limit sits
/// between the two; `KILN_NORM_PROLOGUE_MAX_MIB` moves it (for an A/B).
pub const NORM_PROLOGUE_MAX_WEIGHT_BYTES: usize = 32 << 20;

/// [`NORM_PROLOGUE_MAX_WEIGHT_BYTES`], or `KILN_NORM_PROLOGUE_MAX_MIB` MiB
/// where set (read once per process, said when set).
pub fn norm_prologue_max_weight_bytes() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let Ok(v) = std::env::var("KILN_NORM_PROLOGUE_MAX_MIB") else {
            return NORM_PROLOGUE_MAX_WEIGHT_BYTES;
        };
        match v.trim().parse::<usize>() {
            Ok(mib) => {
                eprintln!(
                    "kiln: KILN_NORM_PROLOGUE_MAX_MIB={mib}: the norm prologue applies to projections of at most {mib} MiB"
                );
                mib << 20
            }
            Err(_) => {
                eprintln!(
                    "kiln: WARNING: KILN_NORM_PROLOGUE_MAX_MIB={v:?} is not a whole number of MiB and took no effect; the limit stays {} MiB",
                    NORM_PROLOGUE_MAX_WEIGHT_BYTES >> 20
                );
                NORM_PROLOGUE_MAX_WEIGHT_BYTES
            }
        }
    })
}

/// The most shared memory the normed rows may take: a launch asks for no
/// more than the default dynamic limit.
pub const NORMED_ROWS_MAX_BYTES: usize = 48 * 1024;

/// Whether [`gemv_normed`] takes `x` normed by `norm` into a projection on
/// `w` with `epilogue`: the switch is on, w holds at most
/// [`norm_prologue_max_weight_bytes`], [`gemv_applies`] holds (x in w's
/// dtype, or narrower for a plain projection: GLM-4.7-Flash's f32 router),
/// 256 ≤ K ≤ 4096 (the norm's row fits one block), the normed rows fit
/// [`NORMED_ROWS_MAX_BYTES`], the norm's shapes match, and no pack or
/// discovered kernel replaces the norm (its build would then silently not run).
pub fn norm_prologue_applies(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    epilogue: Epilogue,
) -> bool {
    if !norm_fusion_enabled()
        || w.elem_count() * w.dtype().size_in_bytes() > norm_prologue_max_weight_bytes()
        || !gemv_applies(x, w)
    {
        return false;
    }
    let Ok((_, k)) = x.dims2() else { return false };
    let Ok(dtype) = kernel_dtype("linear_gemv", x.dtype()) else {
        return false;
    };
    prologue_mismatch(x, norm, w, epilogue).is_none()
        && k % 8 == 0
        && norm
            .norm_build(k, dtype)
            .is_some_and(|b| !super::pack::replaced(&b))
}

/// Why `norm` cannot run in the prologue of the projection of x on w with
/// `epilogue` (its shapes and sizes), or `None` when it can: the norm
/// weight `[K]` and the residual (of an add-RMSNorm) in x's shape and dtype,
/// x in w's dtype unless the projection is plain, 256 ≤ K ≤ 4096, and the
/// normed rows within [`NORMED_ROWS_MAX_BYTES`].
fn prologue_mismatch(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    epilogue: Epilogue,
) -> Option<String> {
    let k = x.dims().last().copied().unwrap_or(0);
    let residual_fits = match norm {
        NormPrologue::RmsNorm { .. } => true,
        NormPrologue::AddRmsNorm { residual, .. } => {
            residual.shape() == x.shape() && residual.dtype() == x.dtype()
        }
    };
    let fits = norm.w().dims() == [k]
        && norm.w().dtype() == x.dtype()
        && residual_fits
        && (x.dtype() == w.dtype() || epilogue == Epilogue::Plain)
        && (256..=4096).contains(&k)
        && x.elem_count() * x.dtype().size_in_bytes() <= NORMED_ROWS_MAX_BYTES;
    (!fits).then(|| {
        format!(
            "a norm prologue over x {:?} ({:?}) with norm weight {:?} into w {:?} ({:?}): \
             the norm weight and any residual in x's shape and dtype, x in w's dtype unless \
             the projection is plain, 256 <= K <= 4096, x at most {NORMED_ROWS_MAX_BYTES} bytes",
            x.dims(),
            x.dtype(),
            norm.w().dims(),
            w.dims(),
            w.dtype()
        )
    })
}

/// Whether the fused epilogues are on: `KILN_GEMV_FUSION=0` turns them off
/// (the bias add and SwiGLU then run as their own launches, for an A/B in
/// one binary); read once per process, said loudly when off.
pub fn fusion_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !super::fusion_switched_off(
            "KILN_GEMV_FUSION",
            "the projections' bias adds and SwiGLUs run as their own launches",
        )
    })
}

/// `x[T, K] · w[N, K]ᵀ → [T, N]` in w's dtype, f32 accumulation, one
/// rounding (see [`gemv_applies`]); x may be another dtype, widened exactly.
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    run(x, w, None, Epilogue::Plain)
}

/// [`gemv`] plus `bias[N]` in one launch, bit-identical to the projection
/// followed by a dtype `broadcast_add` (x, w and bias of one dtype).
pub fn gemv_bias(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    run(x, w, Some(bias), Epilogue::Bias)
}

/// `swiglu_packed(x · w_gate_upᵀ)` in one launch, `[T, N/2]` out,
/// bit-identical to the two launches (x and w of one dtype, N even).
pub fn gemv_swiglu(x: &Tensor, w_gate_up: &Tensor) -> Result<Tensor> {
    run(x, w_gate_up, None, Epilogue::SwiGlu)
}

/// What [`gemv_normed`] returns.
#[derive(Debug)]
pub struct NormedProjection {
    /// The projection.
    pub y: Tensor,
    /// The new residual `x + residual` of an add-RMSNorm prologue.
    pub residual: Option<Tensor>,
    /// The normed rows, when they were asked for.
    pub normed: Option<Tensor>,
}

/// The projection ([`gemv`], [`gemv_bias`] or [`gemv_swiglu`] by `epilogue`)
/// of x normed by `norm`, in one launch: bit for bit the norm's own launch
/// followed by the projection (see [`norm_prologue_applies`]). With
/// `keep_normed` the normed rows come back too (a MoE layer's router
/// projection hands them to the experts).
pub fn gemv_normed(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    keep_normed: bool,
) -> Result<NormedProjection> {
    let op = "linear_gemv";
    if let Some(why) = prologue_mismatch(x, norm, w, epilogue) {
        return Err(op_error(op, why));
    }
    if x.device().is_cpu() {
        // The two launches it replaces, composed: what the fused kernel must equal.
        let (normed, residual) = match norm {
            NormPrologue::RmsNorm { w: nw, eps } => (super::norm::rms_norm(x, nw, *eps)?, None),
            NormPrologue::AddRmsNorm {
                residual,
                w: nw,
                eps,
            } => {
                let (n, h) = super::norm::add_rms_norm(x, residual, nw, *eps)?;
                (n, Some(h))
            }
        };
        return Ok(NormedProjection {
            y: run(&normed, w, bias, epilogue)?,
            residual,
            normed: keep_normed.then_some(normed),
        });
    }
    let (p, _) = launch_normed(x, norm, w, bias, epilogue, keep_normed, None)?;
    Ok(p)
}

/// [`gemv_normed`]'s launch, with a router epilogue when given: the
/// projection, then the routing `(weights, indices)` if asked for.
fn launch_normed(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    keep_normed: bool,
    router: Option<RouterLaunch>,
) -> Result<(NormedProjection, Option<(Tensor, Tensor)>)> {
    let op = "linear_gemv";
    let o = operands(x, w, bias, epilogue)?;
    let residual = match norm {
        NormPrologue::RmsNorm { .. } => None,
        NormPrologue::AddRmsNorm { residual, .. } => Some(residual.contiguous()?),
    };
    let nw = norm.w().contiguous()?;
    let routed = router.is_some();
    let mut out = launch(
        &o,
        epilogue,
        Some(Prologue {
            norm,
            residual: residual.as_ref(),
            w: &nw,
            keep_normed,
        }),
        router,
    )?
    .into_iter();
    let y = out.next().ok_or_else(|| op_error(op, "no output"))?;
    let residual = if residual.is_some() { out.next() } else { None };
    let normed = if keep_normed { out.next() } else { None };
    let routing = if routed {
        let weights = out
            .next()
            .ok_or_else(|| op_error(op, "no router weights"))?;
        let indices = out
            .next()
            .ok_or_else(|| op_error(op, "no router indices"))?;
        Some((weights, indices))
    } else {
        None
    };
    Ok((
        NormedProjection {
            y,
            residual,
            normed,
        },
        routing,
    ))
}

/// The router a projection of router logits may run in its last block (the
/// kernel header's `KILN_ROUTER`): the catalog router of the same
/// configuration, on the logits as the projection wrote them, bit for bit its
/// own launch, so that launch goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterEpilogue {
    /// `softmax_topk` (Qwen3-MoE).
    Softmax {
        /// Experts per token.
        k: usize,
        /// Renormalise the K weights.
        renorm: bool,
    },
    /// `sigmoid_topk` with one expert group (GLM-4.7-Flash, LFM2); its
    /// selection bias comes with the launch.
    Sigmoid(SigmoidRouting),
}

impl RouterEpilogue {
    /// The kernel's `KILN_ROUTER` value.
    fn kind(&self) -> u8 {
        match self {
            Self::Softmax { .. } => 1,
            Self::Sigmoid(_) => 2,
        }
    }

    /// Experts per token.
    pub fn k(&self) -> usize {
        match self {
            Self::Softmax { k, .. } => *k,
            Self::Sigmoid(routing) => routing.k,
        }
    }

    /// The catalog router's own launch over `e` logits of `dtype`: its
    /// defines (the epilogue's) and its build (a pack or discovered kernel
    /// that replaces it turns the epilogue off).
    fn catalog(
        &self,
        e: usize,
        dtype: kiln_kernels::DType,
    ) -> (Vec<(String, String)>, Option<kiln_kernels::KernelBuild>) {
        use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
        use kiln_kernels::ops::OpConfig;
        fn both<C: OpConfig>(c: C) -> (Vec<(String, String)>, Option<kiln_kernels::KernelBuild>) {
            (c.op_defines(), c.build().ok())
        }
        match self {
            Self::Softmax { k, renorm } => both(SoftmaxTopkConfig {
                e,
                k: *k,
                renorm: *renorm,
                dtype,
            }),
            Self::Sigmoid(routing) => both(SigmoidTopkConfig { routing: *routing }),
        }
    }
}

/// A count of finished blocks for one call site of a router epilogue: one
/// u32 on the device, zero between launches (the last block sets it back),
/// so it is allocated once, outside any graph capture, and kept.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct BlocksDone(Tensor);

impl BlocksDone {
    /// A zero count on `dev`.
    pub fn new(dev: &candle_core::Device) -> Result<Self> {
        Ok(Self(Tensor::zeros(1, candle_core::DType::U32, dev)?))
    }
}

/// A router epilogue and its call site's count, for [`launch`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Clone, Copy)]
struct RouterLaunch<'a> {
    router: &'a RouterEpilogue,
    /// Whether the routing also gets `append_shared_expert`'s column.
    append_shared: bool,
    /// The sigmoid router's selection bias.
    select_bias: Option<&'a Tensor>,
    blocks_done: &'a BlocksDone,
}

/// Where the router epilogue runs: by default only where it also writes
/// the stacked shared expert's column, so it replaces two launches;
/// `KILN_ROUTER_FUSION=1` runs it wherever it fits, `=0` nowhere (for an
/// A/B in one binary). Read once per process, said when set.
///
/// Measured on an H100 (2026-12-08, graph decode, 100 tokens, median of 5
/// runs, two interleaved rounds, the same tokens): in place of the router's
/// launch and `append_shared_expert`'s, GLM-4.7-Flash 1.8 % faster (207.5
/// to 211.2 tok/s); in place of the router's launch alone, Qwen3-30B-A3B
/// 0.9 % slower (283.5 to 280.9) and LFM2-8B-A1B 1.0 % slower (616.3 to
/// 609.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterFusion {
    /// Nowhere (`KILN_ROUTER_FUSION=0`).
    Off,
    /// Where it also appends the shared expert's column (the default).
    WithSharedExpert,
    /// Wherever it fits (`KILN_ROUTER_FUSION=1`).
    On,
}

impl RouterFusion {
    /// Whether a router epilogue with (or without) the shared expert's
    /// column runs.
    pub fn runs(self, append_shared: bool) -> bool {
        match self {
            Self::Off => false,
            Self::WithSharedExpert => append_shared,
            Self::On => true,
        }
    }
}

/// The process's [`RouterFusion`], from `KILN_ROUTER_FUSION`.
pub fn router_fusion() -> RouterFusion {
    static MODE: std::sync::OnceLock<RouterFusion> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("KILN_ROUTER_FUSION").as_deref() {
        Err(_) => RouterFusion::WithSharedExpert,
        Ok("1") => {
            eprintln!("kiln: KILN_ROUTER_FUSION=1: every MoE router that fits runs in its projection's last block");
            RouterFusion::On
        }
        Ok("0") => {
            eprintln!("kiln: KILN_ROUTER_FUSION=0: the MoE routers run as their own launches");
            RouterFusion::Off
        }
        Ok(v) => {
            eprintln!(
                "kiln: WARNING: KILN_ROUTER_FUSION={v:?} is neither 0 nor 1 and took no effect; \
                 the routers run in their projection only where it also appends the shared expert"
            );
            RouterFusion::WithSharedExpert
        }
    })
}

/// Why `router` cannot follow the projection on `w` (its logits' shape and
/// dtype against the router's), or `None` when it can: `E = N ≤ 256`,
/// `1 ≤ K ≤ min(E, 32)`, one expert group, the logits (w's dtype) in the
/// routing's dtype, and the bias `[E]` f32.
fn router_mismatch(
    w: &Tensor,
    router: &RouterEpilogue,
    select_bias: Option<&Tensor>,
    append_shared: bool,
) -> Option<String> {
    let e = w.dims().first().copied().unwrap_or(0);
    let k = router.k();
    let fits = (1..=256).contains(&e)
        && (1..=e.min(32)).contains(&k)
        && k + (append_shared as usize) <= 32
        && match (router, select_bias) {
            (RouterEpilogue::Softmax { .. }, None) => true,
            (RouterEpilogue::Sigmoid(routing), Some(bias)) => {
                routing.e == e
                    && routing.n_group == 1
                    && kernel_dtype("linear_gemv", w.dtype()).ok() == Some(routing.dtype)
                    && bias.dims() == [e]
                    && bias.dtype() == candle_core::DType::F32
            }
            _ => false,
        };
    (!fits).then(|| {
        format!(
            "a router epilogue ({router:?}) after a projection on w {:?} ({:?}): E = N <= 256, \
             1 <= K <= min(E, 32) (K <= 31 with the shared expert's column), one expert \
             group, the logits in the routing's dtype, an f32 bias of E values for a sigmoid \
             router and none for a softmax one",
            w.dims(),
            w.dtype()
        )
    })
}

/// Whether [`gemv_normed_routed`] takes the router projection of `x` normed
/// by `norm` on `w`, followed by `router`: [`router_fusion`] runs it, the
/// norm prologue applies ([`norm_prologue_applies`]), the router fits its
/// logits, and no pack or discovered kernel replaces the router (or
/// `append_shared_expert`, where its column is asked for).
pub fn router_epilogue_applies(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    router: &RouterEpilogue,
    select_bias: Option<&Tensor>,
    append_shared: bool,
) -> bool {
    if !router_fusion().runs(append_shared) || !norm_prologue_applies(x, norm, w, Epilogue::Plain) {
        return false;
    }
    let Ok(dtype) = kernel_dtype("linear_gemv", w.dtype()) else {
        return false;
    };
    router_mismatch(w, router, select_bias, append_shared).is_none()
        && (!append_shared || !super::pack::replaced(&super::moe::append_shared_expert_build()))
        && router
            .catalog(w.dims()[0], dtype)
            .1
            .is_some_and(|b| !super::pack::replaced(&b))
}

/// `build` with `router` in its last block: `KILN_ROUTER` and the catalog
/// router's defines for `n` experts whose logits are `dtype` (its `KILN_K`
/// as `KILN_TOPK`: `KILN_K` is the projection's row length; its `KILN_E` is
/// `KILN_N`).
fn with_router(
    mut build: kiln_kernels::KernelBuild,
    n: usize,
    dtype: kiln_kernels::DType,
    router: &RouterEpilogue,
    append_shared: bool,
) -> kiln_kernels::KernelBuild {
    let kind = router.kind();
    build.defines.push(("KILN_ROUTER".into(), kind.to_string()));
    let mut tag = String::new();
    for (name, value) in router.catalog(n, dtype).0 {
        let name = match name.as_str() {
            "KILN_E" => continue,
            "KILN_K" => "KILN_TOPK".to_string(),
            _ => name,
        };
        tag += &format!("_{value}");
        build.defines.push((name, value));
    }
    if append_shared {
        build
            .defines
            .push(("KILN_APPEND_SHARED".into(), "1".into()));
        tag += "_shared";
    }
    build.name = format!(
        "{}_router{kind}{tag}.cu",
        build.name.trim_end_matches(".cu")
    );
    build
}

/// The compile inputs of a router projection that begins with `norm` and
/// ends in `router` ([`build_normed`] of a plain projection, then the
/// router's defines), with `append_shared_expert`'s column where asked.
pub fn build_normed_routed(
    n: usize,
    k: usize,
    w_dtype: kiln_kernels::DType,
    x_dtype: kiln_kernels::DType,
    norm: &NormPrologue,
    router: &RouterEpilogue,
    append_shared: bool,
) -> kiln_kernels::KernelBuild {
    with_router(
        build_normed(n, k, w_dtype, x_dtype, Epilogue::Plain, norm),
        n,
        w_dtype,
        router,
        append_shared,
    )
}

/// What [`gemv_normed_routed`] returns.
#[derive(Debug)]
pub struct RoutedProjection {
    /// The router logits, the new residual and the normed rows.
    pub projection: NormedProjection,
    /// The router's weights, `[T, K]` f32.
    pub weights: Tensor,
    /// The router's expert indices, `[T, K]` u32.
    pub indices: Tensor,
}

/// A MoE layer's router in one launch: x normed by `norm` (the normed rows
/// kept, for the experts), projected on the router weight `w`, and routed by
/// `router` in the last block; bit for bit the norm's launch, the projection
/// and the router's launch (see [`router_epilogue_applies`]). A sigmoid
/// router takes its `select_bias`; `blocks_done` is the call site's own
/// count. With `append_shared` the routing also holds the stacked shared
/// expert's column, as `append_shared_expert` appends it (`[T, K + 1]`).
pub fn gemv_normed_routed(
    x: &Tensor,
    norm: &NormPrologue,
    w: &Tensor,
    router: &RouterEpilogue,
    select_bias: Option<&Tensor>,
    append_shared: bool,
    blocks_done: &BlocksDone,
) -> Result<RoutedProjection> {
    let op = "linear_gemv";
    if let Some(why) = prologue_mismatch(x, norm, w, Epilogue::Plain)
        .or_else(|| router_mismatch(w, router, select_bias, append_shared))
    {
        return Err(op_error(op, why));
    }
    if x.device().is_cpu() {
        // The three launches it replaces, composed: what the fused kernel must equal.
        let projection = gemv_normed(x, norm, w, None, Epilogue::Plain, true)?;
        let (weights, indices) = match (router, select_bias) {
            (RouterEpilogue::Softmax { k, renorm }, _) => {
                super::router::softmax_topk(&projection.y, *k, *renorm)?
            }
            (RouterEpilogue::Sigmoid(routing), Some(bias)) => {
                super::router::sigmoid_topk(&projection.y, bias, *routing)?
            }
            (RouterEpilogue::Sigmoid(_), None) => {
                return Err(op_error(op, "a sigmoid router without its bias"))
            }
        };
        let (weights, indices) = if append_shared {
            super::moe::append_shared_expert(&weights, &indices, w.dim(0)?)?
        } else {
            (weights, indices)
        };
        return Ok(RoutedProjection {
            projection,
            weights,
            indices,
        });
    }
    let (projection, routing) = launch_normed(
        x,
        norm,
        w,
        None,
        Epilogue::Plain,
        true,
        Some(RouterLaunch {
            router,
            append_shared,
            select_bias: select_bias.map(|b| b.contiguous()).transpose()?.as_ref(),
            blocks_done,
        }),
    )?;
    let (weights, indices) = routing.ok_or_else(|| op_error(op, "no routing"))?;
    Ok(RoutedProjection {
        projection,
        weights,
        indices,
    })
}

/// The device buffers of a norm prologue.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Prologue<'a> {
    norm: &'a NormPrologue<'a>,
    residual: Option<&'a Tensor>,
    w: &'a Tensor,
    /// Whether block 0 writes the normed rows out too.
    keep_normed: bool,
}

/// A projection's operands, checked ([`operands`]): contiguous, their shapes
/// agreeing with the epilogue.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Operands {
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    t: usize,
    k: usize,
    n: usize,
    /// Output columns (N, or N/2 for the gated form).
    n_out: usize,
    dtype: kiln_kernels::DType,
}

fn operands(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Operands> {
    let op = "linear_gemv";
    if !gemv_applies(x, w) {
        return Err(op_error(
            op,
            format!(
                "x {:?} ({:?}) and w {:?} ({:?}) do not fit (T ≤ {GEMV_MAX_ROWS}, same dtype, K in 16-byte vectors)",
                x.dims(),
                x.dtype(),
                w.dims(),
                w.dtype()
            ),
        ));
    }
    let (t, k) = x.dims2()?;
    let n = w.dim(0)?;
    if epilogue != Epilogue::Plain && x.dtype() != w.dtype() {
        return Err(op_error(
            op,
            format!(
                "a fused {epilogue:?} takes x in w's dtype ({:?}, got {:?})",
                w.dtype(),
                x.dtype()
            ),
        ));
    }
    let n_out = match epilogue {
        Epilogue::SwiGlu if n % 2 == 1 => {
            return Err(op_error(
                op,
                format!("a [gate; up] weight of {n} rows (odd)"),
            ));
        }
        Epilogue::SwiGlu => n / 2,
        _ => n,
    };
    let bias = match (epilogue, bias) {
        (Epilogue::Bias, Some(b)) => {
            if b.dims() != [n] || b.dtype() != w.dtype() {
                return Err(op_error(
                    op,
                    format!(
                        "bias {:?} ({:?}) for {n} rows of {:?}",
                        b.dims(),
                        b.dtype(),
                        w.dtype()
                    ),
                ));
            }
            Some(b.contiguous()?)
        }
        (Epilogue::Bias, None) => return Err(op_error(op, "a bias epilogue without a bias")),
        _ => None,
    };
    Ok(Operands {
        x: x.contiguous()?,
        w: w.contiguous()?,
        bias,
        t,
        k,
        n,
        n_out,
        dtype: kernel_dtype(op, w.dtype())?,
    })
}

fn run(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Tensor> {
    let o = operands(x, w, bias, epilogue)?;
    if o.x.device().is_cpu() {
        // The unfused ops, composed: what the fused kernel must equal.
        let (t, k, n) = (o.t, o.k, o.n);
        let (xv, wv) = (host::values(&o.x)?, host::values(&o.w)?);
        let mut out = vec![0f64; t * n];
        for r in 0..t {
            for c in 0..n {
                let s: f64 = (0..k).map(|i| xv[r * k + i] * wv[c * k + i]).sum();
                out[r * n + c] = o.dtype.round(s);
            }
        }
        let y = host::tensor(out, (t, n), o.w.dtype(), o.x.device())?;
        return match (epilogue, &o.bias) {
            (Epilogue::Bias, Some(b)) => Ok(y.broadcast_add(b)?),
            (Epilogue::SwiGlu, _) => super::swiglu::swiglu_packed(&y),
            _ => Ok(y),
        };
    }
    launch(&o, epilogue, None, None)?
        .into_iter()
        .next()
        .ok_or_else(|| op_error("linear_gemv", "no output"))
}

/// Launches `linear_gemv` on checked operands (with a norm prologue and a
/// router epilogue when given): the projection, then the new residual of an
/// add-RMSNorm prologue, the normed rows if kept, and the router's weights
/// and indices.
fn launch(
    o: &Operands,
    epilogue: Epilogue,
    prologue: Option<Prologue>,
    router: Option<RouterLaunch>,
) -> Result<Vec<Tensor>> {
    let op = "linear_gemv";
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, run_kernel, sm_count, Param};
        use std::collections::BTreeMap;
        let (t, k, n) = (o.t, o.k, o.n);
        let dev = cuda_device(op, &o.x)?;
        let build = match &prologue {
            Some(p) => build_normed(
                n,
                k,
                o.dtype,
                kernel_dtype(op, o.x.dtype())?,
                epilogue,
                p.norm,
            ),
            None => build_with(n, k, o.dtype, kernel_dtype(op, o.x.dtype())?, epilogue),
        };
        let build = match &router {
            Some(r) => with_router(build, n, o.dtype, r.router, r.append_shared),
            None => build,
        };
        let func = function(&dev, &build)?;
        let line = launch_line()?;
        // The bytes of one normed row in shared memory (none without a prologue).
        let xs = if prologue.is_some() {
            k * o.x.dtype().size_in_bytes()
        } else {
            0
        };
        let vars: BTreeMap<String, i64> = [
            ("N", n as i64),
            ("RPW", rows_per_warp(n, epilogue) as i64),
            ("T", t as i64),
            ("SMS", sm_count(&dev)? as i64),
            ("XS", xs as i64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let dims = line
            .evaluate(&vars)
            .map_err(|e| op_error(op, format!("launch line: {e}")))?;
        // Outputs in the order of their parameters: the projection, then the
        // new residual and the normed rows where the prologue writes them.
        let mut outputs = vec![(o.w.dtype(), (t, o.n_out).into())];
        let mut out_if = |on: bool| {
            if on {
                outputs.push((o.x.dtype(), (t, k).into()));
                Param::Out
            } else {
                Param::Maybe(None)
            }
        };
        let (residual, nw, new_residual, normed_out) = match &prologue {
            Some(p) => (
                Param::Maybe(p.residual),
                Param::In(p.w),
                out_if(p.residual.is_some()),
                out_if(p.keep_normed),
            ),
            None => (
                Param::Maybe(None),
                Param::Maybe(None),
                Param::Maybe(None),
                Param::Maybe(None),
            ),
        };
        let (select_bias, topk_weights, topk_indices, blocks_done) = match &router {
            Some(r) => {
                let k = r.router.k() + r.append_shared as usize;
                outputs.push((candle_core::DType::F32, (t, k).into()));
                outputs.push((candle_core::DType::U32, (t, k).into()));
                (
                    Param::Maybe(r.select_bias),
                    Param::Out,
                    Param::Out,
                    Param::InPlace(&r.blocks_done.0),
                )
            }
            None => (
                Param::Maybe(None),
                Param::Maybe(None),
                Param::Maybe(None),
                Param::Maybe(None),
            ),
        };
        run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::In(&o.x),
                Param::In(&o.w),
                Param::Maybe(o.bias.as_ref()),
                Param::Out,
                Param::I32(t as i32),
                residual,
                nw,
                new_residual,
                normed_out,
                select_bias,
                topk_weights,
                topk_indices,
                blocks_done,
            ],
            &outputs,
        )
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (o, epilogue, prologue, router);
        Err(super::no_cuda(op))
    }
}

/// The kernel's launch line, parsed once.
pub fn launch_line() -> Result<&'static kiln_kernels::LaunchLine> {
    static LINE: std::sync::OnceLock<std::result::Result<kiln_kernels::LaunchLine, String>> =
        std::sync::OnceLock::new();
    LINE.get_or_init(|| kiln_kernels::LaunchLine::parse_source(SOURCE).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| op_error("linear_gemv", format!("launch line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use kiln_kernels::DType as KDType;

    /// The weight limit in the presets' terms: every projection after a norm
    /// that the H100 A/B (2026-12-07) ran faster with the prologue takes it;
    /// GLM-4-9B's two, which ran slower, do not.
    #[test]
    fn the_weight_limit_splits_the_presets_as_measured() {
        use crate::models::config::preset;
        let fits = |bytes: usize| bytes <= NORM_PROLOGUE_MAX_WEIGHT_BYTES;
        let dim = |v: &serde_json::Value, key: &str| {
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("preset without {key}")) as usize
        };
        let (bf16, f32) = (2, 4);

        let q = preset("qwen3-30b-a3b", None).expect("preset");
        let hidden = dim(&q, "hidden_size");
        let qkv = (dim(&q, "num_attention_heads") + 2 * dim(&q, "num_key_value_heads"))
            * dim(&q, "head_dim")
            * hidden
            * bf16;
        assert!(fits(qkv), "Qwen3 qkv: {qkv} bytes");
        assert!(fits(dim(&q, "num_experts") * hidden * bf16), "Qwen3 router");

        let g = preset("glm-4.7-flash", None).expect("preset");
        let hidden = dim(&g, "hidden_size");
        let heads = dim(&g, "num_attention_heads");
        let (q_rank, kv_rank) = (dim(&g, "q_lora_rank"), dim(&g, "kv_lora_rank"));
        let (nope, rope) = (dim(&g, "qk_nope_head_dim"), dim(&g, "qk_rope_head_dim"));
        let latent = (q_rank + kv_rank + rope) * hidden * bf16;
        let q_b = heads * (nope + rope) * q_rank * bf16;
        let kv_b = heads * (nope + dim(&g, "v_head_dim")) * kv_rank * bf16;
        for (name, bytes) in [("latent", latent), ("q_b", q_b), ("kv_b", kv_b)] {
            assert!(fits(bytes), "GLM-4.7-Flash {name}: {bytes} bytes");
        }
        assert!(
            fits(dim(&g, "n_routed_experts") * hidden * f32),
            "GLM-4.7-Flash router"
        );

        let c = preset("glm-4-9b", None).expect("preset");
        let hidden = dim(&c, "hidden_size");
        let qkv = (dim(&c, "num_attention_heads") + 2 * dim(&c, "multi_query_group_num"))
            * dim(&c, "kv_channels")
            * hidden
            * bf16;
        let gate_up = 2 * dim(&c, "ffn_hidden_size") * hidden * bf16;
        assert!(!fits(qkv), "GLM-4-9B qkv: {qkv} bytes");
        assert!(!fits(gate_up), "GLM-4-9B gate/up: {gate_up} bytes");
    }

    fn define<'a>(b: &'a kiln_kernels::KernelBuild, name: &str) -> Option<&'a str> {
        b.defines
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_epilogue_derives_its_build() {
        let plain = build_with(4608, 4096, KDType::BF16, KDType::BF16, Epilogue::Plain);
        let bias = build_with(4608, 4096, KDType::BF16, KDType::BF16, Epilogue::Bias);
        let gated = build_with(27392, 4096, KDType::BF16, KDType::BF16, Epilogue::SwiGlu);
        // The bias is a runtime pointer: the same compiled kernel.
        assert_eq!(plain, bias);
        // The default unroll is the source's own: no define, no new name.
        if gemv_unroll() == DEFAULT_GEMV_UNROLL {
            assert_eq!(define(&plain, "KILN_UNROLL"), None);
            assert!(!plain.name.contains("_u"), "{}", plain.name);
        }
        assert_eq!(define(&plain, "KILN_GATED"), None);
        assert_eq!(define(&gated, "KILN_GATED"), Some("1"));
        assert!(gated.name.ends_with("_swiglu.cu"), "{}", gated.name);
        // Row pairs: the gated form's rows per warp is even even where a plain
        // projection of that size takes one.
        assert_eq!(rows_per_warp(128, Epilogue::Plain), 1);
        assert_eq!(rows_per_warp(128, Epilogue::SwiGlu), 2);
        assert_eq!(define(&gated, "KILN_RPW"), Some("2"));
    }

    /// Seeded small values, exact in bf16.
    fn small(shape: (usize, usize), seed: usize) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("tensor")
    }

    #[test]
    fn fused_epilogues_on_the_host_are_the_unfused_ops() {
        let x = small((3, 16), 1);
        let w = small((8, 16), 2);
        let b = small((1, 8), 3).flatten_all().expect("bias");
        let y = gemv(&x, &w).expect("gemv");
        let values = |t: &Tensor| -> Vec<Vec<f32>> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
                .expect("values")
        };
        let with_bias = gemv_bias(&x, &w, &b).expect("bias");
        assert_eq!(
            values(&with_bias),
            values(&y.broadcast_add(&b).expect("add"))
        );
        let gated = gemv_swiglu(&x, &w).expect("swiglu");
        assert_eq!(gated.dims(), [3, 4]);
        let want = super::super::swiglu::swiglu_packed(&y).expect("swiglu");
        assert_eq!(values(&gated), values(&want));
    }

    #[test]
    fn misfit_epilogues_are_errors() {
        let x = small((1, 16), 1);
        // An odd [gate; up] weight.
        assert!(gemv_swiglu(&x, &small((7, 16), 2)).is_err());
        // A bias of the wrong length.
        let b = small((1, 5), 3).flatten_all().expect("bias");
        assert!(gemv_bias(&x, &small((8, 16), 2), &b).is_err());
    }

    #[test]
    fn a_norm_prologue_derives_its_build_from_the_norm_config() {
        use kiln_kernels::ops::norm::RmsNormConfig;
        use kiln_kernels::ops::OpConfig;
        let nw = small((1, 2048), 1).flatten_all().expect("w");
        let r = small((1, 2048), 2);
        let plain = build_with(4608, 2048, KDType::BF16, KDType::BF16, Epilogue::Bias);
        let rms = build_normed(
            4608,
            2048,
            KDType::BF16,
            KDType::BF16,
            Epilogue::Bias,
            &NormPrologue::RmsNorm { w: &nw, eps: 1e-6 },
        );
        let add = build_normed(
            4608,
            2048,
            KDType::BF16,
            KDType::BF16,
            Epilogue::Bias,
            &NormPrologue::AddRmsNorm {
                residual: &r,
                w: &nw,
                eps: 1e-6,
            },
        );
        assert_eq!(define(&rms, "KILN_NORM"), Some("1"));
        assert_eq!(define(&add, "KILN_NORM"), Some("2"));
        // eps and the rounding rule exactly as the catalog norm is built with them.
        let norm = RmsNormConfig::new(2048, 1e-6, KDType::BF16).op_defines();
        for (name, value) in norm.iter().filter(|(n, _)| n != "KILN_D") {
            assert_eq!(define(&add, name), Some(value.as_str()), "{name}");
        }
        // Distinct kernels: never mistaken for each other or for the plain projection.
        let names = [&plain.name, &rms.name, &add.name];
        assert!(names
            .iter()
            .enumerate()
            .all(|(i, a)| names[i + 1..].iter().all(|b| a != b)));
        let other_eps = build_normed(
            4608,
            2048,
            KDType::BF16,
            KDType::BF16,
            Epilogue::Bias,
            &NormPrologue::RmsNorm { w: &nw, eps: 1e-5 },
        );
        assert_ne!(other_eps.name, rms.name);
    }

    #[test]
    fn a_router_epilogue_derives_its_build_from_the_catalog_router() {
        use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
        use kiln_kernels::ops::OpConfig;
        let nw = small((1, 2048), 1).flatten_all().expect("w");
        let norm = NormPrologue::RmsNorm { w: &nw, eps: 1e-6 };
        let softmax = RouterEpilogue::Softmax { k: 8, renorm: true };
        let b = build_normed_routed(
            128,
            2048,
            KDType::BF16,
            KDType::BF16,
            &norm,
            &softmax,
            false,
        );
        assert_eq!(define(&b, "KILN_ROUTER"), Some("1"));
        // The router's K is KILN_TOPK; KILN_K stays the projection's row length.
        assert_eq!(define(&b, "KILN_TOPK"), Some("8"));
        assert_eq!(define(&b, "KILN_K"), Some("2048"));
        assert_eq!(define(&b, "KILN_N"), Some("128"));
        let catalog = SoftmaxTopkConfig {
            e: 128,
            k: 8,
            renorm: true,
            dtype: KDType::BF16,
        };
        assert_eq!(define(&b, "KILN_RENORM"), Some("1"));
        assert_eq!(catalog.op_defines().len(), 3, "E, K and RENORM");

        let routing = SigmoidTopkConfig::glm47_flash().routing;
        let sigmoid = RouterEpilogue::Sigmoid(routing);
        let g = build_normed_routed(
            routing.e,
            2048,
            KDType::F32,
            KDType::BF16,
            &norm,
            &sigmoid,
            true,
        );
        assert_eq!(define(&g, "KILN_ROUTER"), Some("2"));
        assert_eq!(define(&g, "KILN_APPEND_SHARED"), Some("1"));
        assert_eq!(define(&b, "KILN_APPEND_SHARED"), None);
        assert_eq!(
            define(&g, "KILN_TOPK"),
            Some(routing.k.to_string().as_str())
        );
        for (name, value) in (SigmoidTopkConfig { routing }).op_defines() {
            if name != "KILN_E" && name != "KILN_K" {
                assert_eq!(define(&g, &name), Some(value.as_str()), "{name}");
            }
        }
        // Distinct kernels from the normed projection alone and from each other.
        let plain = build_normed(
            128,
            2048,
            KDType::BF16,
            KDType::BF16,
            Epilogue::Plain,
            &norm,
        );
        let renorm_off = RouterEpilogue::Softmax {
            k: 8,
            renorm: false,
        };
        let off = build_normed_routed(
            128,
            2048,
            KDType::BF16,
            KDType::BF16,
            &norm,
            &renorm_off,
            false,
        );
        let names = [&plain.name, &b.name, &off.name];
        assert!(names
            .iter()
            .enumerate()
            .all(|(i, a)| names[i + 1..].iter().all(|b| a != b)));
    }

    #[test]
    fn the_router_epilogue_runs_by_default_only_where_it_takes_two_launches() {
        // The H100 A/B (2026-12-08): faster where it also appends the shared
        // expert's column, slower where it replaces the router's launch alone.
        assert!(RouterFusion::WithSharedExpert.runs(true));
        assert!(!RouterFusion::WithSharedExpert.runs(false));
        assert!(RouterFusion::On.runs(false) && RouterFusion::On.runs(true));
        assert!(!RouterFusion::Off.runs(true));
    }

    #[test]
    fn misfit_router_epilogues_are_errors() {
        let x = small((1, 256), 1);
        let nw = small((1, 256), 2).flatten_all().expect("w");
        let norm = NormPrologue::RmsNorm { w: &nw, eps: 1e-6 };
        let w = small((64, 256), 3);
        let bias = Tensor::zeros(64, DType::F32, &Device::Cpu).expect("bias");
        let done = BlocksDone::new(&Device::Cpu).expect("count");
        let mut routing = kiln_kernels::ops::topk::SigmoidTopkConfig::glm47_flash().routing;
        routing.dtype = KDType::BF16;
        let sigmoid = RouterEpilogue::Sigmoid(routing);
        // A sigmoid router without its bias, a softmax router with one.
        assert!(gemv_normed_routed(&x, &norm, &w, &sigmoid, None, false, &done).is_err());
        let softmax = RouterEpilogue::Softmax { k: 4, renorm: true };
        assert!(gemv_normed_routed(&x, &norm, &w, &softmax, Some(&bias), false, &done).is_err());
        // Grouped selection is the catalog kernel's alone.
        let mut grouped = routing;
        grouped.n_group = 8;
        grouped.topk_group = 4;
        let grouped = RouterEpilogue::Sigmoid(grouped);
        assert!(gemv_normed_routed(&x, &norm, &w, &grouped, Some(&bias), false, &done).is_err());
        // More than 256 experts, or K past 32.
        let wide = small((300, 256), 4);
        assert!(gemv_normed_routed(&x, &norm, &wide, &softmax, None, false, &done).is_err());
        let many = RouterEpilogue::Softmax {
            k: 40,
            renorm: true,
        };
        assert!(gemv_normed_routed(&x, &norm, &w, &many, None, false, &done).is_err());
        // What fits runs (on the host: the three ops composed).
        let r =
            gemv_normed_routed(&x, &norm, &w, &sigmoid, Some(&bias), true, &done).expect("fits");
        // With the shared expert's column: weight 1, index E.
        assert_eq!(r.weights.dims(), [1, routing.k + 1]);
        let last = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
                .expect("values")[0][routing.k]
        };
        assert_eq!(last(&r.weights), 1.0);
        assert_eq!(last(&r.indices), 64.0);
        // K = 32 leaves no lane for the shared expert's column.
        let full = RouterEpilogue::Softmax {
            k: 32,
            renorm: true,
        };
        assert!(gemv_normed_routed(&x, &norm, &w, &full, None, true, &done).is_err());
        assert!(r.projection.normed.is_some());
    }

    #[test]
    fn a_norm_prologue_on_the_host_is_the_norm_then_the_projection() {
        let x = small((2, 256), 1);
        let r = small((2, 256), 2);
        let nw = small((1, 256), 3).flatten_all().expect("w");
        let w = small((8, 256), 4);
        let values = |t: &Tensor| -> Vec<Vec<f32>> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
                .expect("values")
        };
        let p = gemv_normed(
            &x,
            &NormPrologue::RmsNorm { w: &nw, eps: 1e-6 },
            &w,
            None,
            Epilogue::Plain,
            true,
        )
        .expect("rmsnorm prologue");
        assert!(p.residual.is_none());
        let normed = super::super::norm::rms_norm(&x, &nw, 1e-6).expect("norm");
        assert_eq!(values(&p.y), values(&gemv(&normed, &w).expect("gemv")));
        assert_eq!(values(&p.normed.expect("kept")), values(&normed));
        let add = NormPrologue::AddRmsNorm {
            residual: &r,
            w: &nw,
            eps: 1e-6,
        };
        let p = gemv_normed(&x, &add, &w, None, Epilogue::SwiGlu, false).expect("add prologue");
        assert!(p.normed.is_none());
        let (y, h) = (p.y, p.residual);
        let (n, h2) = super::super::norm::add_rms_norm(&x, &r, &nw, 1e-6).expect("add norm");
        assert_eq!(values(&y), values(&gemv_swiglu(&n, &w).expect("swiglu")));
        assert_eq!(values(&h.expect("the new residual")), values(&h2));
        // Rows outside 256..=4096 are refused, not silently unfused.
        let short = small((1, 128), 5);
        let w_short = small((8, 128), 6);
        let nw_short = small((1, 128), 7).flatten_all().expect("w");
        assert!(gemv_normed(
            &short,
            &NormPrologue::RmsNorm {
                w: &nw_short,
                eps: 1e-6
            },
            &w_short,
            None,
            Epilogue::Plain,
            false,
        )
        .is_err());
        // An f32 weight on the bf16 row (GLM-4.7-Flash's router): a plain projection only.
        let w32 = w.to_dtype(DType::F32).expect("f32 weight");
        let rms = NormPrologue::RmsNorm { w: &nw, eps: 1e-6 };
        let p = gemv_normed(&x, &rms, &w32, None, Epilogue::Plain, false).expect("mixed plain");
        assert_eq!(
            values(&p.y),
            values(&gemv(&normed, &w32).expect("mixed gemv"))
        );
        assert!(gemv_normed(&x, &rms, &w32, None, Epilogue::SwiGlu, false).is_err());
        // So are rows that would not fit the launch's shared memory (8 x 4096 bf16).
        let (tall, w_tall) = (small((8, 4096), 8), small((8, 4096), 9));
        let nw_tall = small((1, 4096), 10).flatten_all().expect("w");
        let too_big = NormPrologue::RmsNorm {
            w: &nw_tall,
            eps: 1e-6,
        };
        assert!(gemv_normed(&tall, &too_big, &w_tall, None, Epilogue::Plain, false).is_err());
        let fits = tall.narrow(0, 0, 6).expect("6 rows");
        assert!(gemv_normed(&fits, &too_big, &w_tall, None, Epilogue::Plain, false).is_ok());
    }
}
