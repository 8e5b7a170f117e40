//! Dense projections at decode batch sizes: `linear_gemv`, which streams the
//! weight once for up to [`GEMV_MAX_ROWS`] rows of x, and can end in the
//! bias add or the SwiGLU that follows a projection ([`Epilogue`]): one
//! launch fewer each, bit-identical to the two.
//!
//! The kernel is kiln-candle's own (`kernels/linear_gemv.cu`), not a catalog
//! op yet: the models call it for every projection at decode, and larger T
//! (prefill) goes to cuBLAS.

use candle_core::Tensor;

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

fn run(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Tensor> {
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
    let dtype = kernel_dtype(op, w.dtype())?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    if x.device().is_cpu() {
        // The unfused ops, composed: what the fused kernel must equal.
        let (xv, wv) = (host::values(&x)?, host::values(&w)?);
        let mut out = vec![0f64; t * n];
        for r in 0..t {
            for c in 0..n {
                let s: f64 = (0..k).map(|i| xv[r * k + i] * wv[c * k + i]).sum();
                out[r * n + c] = dtype.round(s);
            }
        }
        let y = host::tensor(out, (t, n), w.dtype(), x.device())?;
        return match (epilogue, &bias) {
            (Epilogue::Bias, Some(b)) => Ok(y.broadcast_add(b)?),
            (Epilogue::SwiGlu, _) => super::swiglu::swiglu_packed(&y),
            _ => Ok(y),
        };
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, run_kernel, sm_count, Param};
        use std::collections::BTreeMap;
        let dev = cuda_device(op, &x)?;
        let x_dtype = kernel_dtype(op, x.dtype())?;
        let func = function(&dev, &build_with(n, k, dtype, x_dtype, epilogue))?;
        let line = launch_line()?;
        let vars: BTreeMap<String, i64> = [
            ("N", n as i64),
            ("RPW", rows_per_warp(n, epilogue) as i64),
            ("T", t as i64),
            ("SMS", sm_count(&dev)? as i64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let dims = line
            .evaluate(&vars)
            .map_err(|e| op_error(op, format!("launch line: {e}")))?;
        let out = run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::In(&x),
                Param::In(&w),
                Param::Maybe(bias.as_ref()),
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(w.dtype(), (t, n_out).into())],
        )?;
        out.into_iter()
            .next()
            .ok_or_else(|| op_error(op, "no output"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = n_out;
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
}
