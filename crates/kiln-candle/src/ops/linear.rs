//! Dense projections at decode batch sizes: `linear_gemv`, which streams the
//! weight once for up to [`GEMV_MAX_ROWS`] rows of x.
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

/// Output rows per warp for an `n`-row weight: one while that leaves SMs
/// idle (routers, small projections), two above.
pub fn rows_per_warp(n: usize) -> usize {
    if n >= 4096 {
        2
    } else {
        1
    }
}

/// The compile inputs for an `n × k` weight of `dtype`, x of the same dtype.
pub fn build(n: usize, k: usize, dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    build_mixed(n, k, dtype, dtype)
}

/// The compile inputs for an `n × k` weight (and output) of `w_dtype` and x of
/// `x_dtype`, widened exactly (GLM's f32 router on the bf16 hidden state).
pub fn build_mixed(
    n: usize,
    k: usize,
    w_dtype: kiln_kernels::DType,
    x_dtype: kiln_kernels::DType,
) -> kiln_kernels::KernelBuild {
    let rpw = rows_per_warp(n);
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
    kiln_kernels::KernelBuild {
        name: name + ".cu",
        entry: "linear_gemv".into(),
        source: SOURCE.into(),
        defines,
    }
}

/// `x[T, K] · w[N, K]ᵀ → [T, N]` in w's dtype, f32 accumulation, one
/// rounding (see [`gemv_applies`]); x may be another dtype, widened exactly.
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
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
    let dtype = kernel_dtype(op, w.dtype())?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    if x.device().is_cpu() {
        let (xv, wv) = (host::values(&x)?, host::values(&w)?);
        let mut out = vec![0f64; t * n];
        for r in 0..t {
            for c in 0..n {
                let s: f64 = (0..k).map(|i| xv[r * k + i] * wv[c * k + i]).sum();
                out[r * n + c] = dtype.round(s);
            }
        }
        return host::tensor(out, (t, n), w.dtype(), x.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, run_kernel, sm_count, Param};
        use std::collections::BTreeMap;
        let dev = cuda_device(op, &x)?;
        let x_dtype = kernel_dtype(op, x.dtype())?;
        let func = function(&dev, &build_mixed(n, k, dtype, x_dtype))?;
        let line = launch_line()?;
        let vars: BTreeMap<String, i64> = [
            ("N", n as i64),
            ("RPW", rows_per_warp(n) as i64),
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
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(w.dtype(), (t, n).into())],
        )?;
        out.into_iter()
            .next()
            .ok_or_else(|| op_error(op, "no output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

/// The kernel's launch line, parsed once.
pub fn launch_line() -> Result<&'static kiln_kernels::LaunchLine> {
    static LINE: std::sync::OnceLock<std::result::Result<kiln_kernels::LaunchLine, String>> =
        std::sync::OnceLock::new();
    LINE.get_or_init(|| kiln_kernels::LaunchLine::parse_source(SOURCE).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| op_error("linear_gemv", format!("launch line: {e}")))
}
