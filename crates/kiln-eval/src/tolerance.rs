//! Scale-aware, per-dtype comparison of a device output against the float64
//! reference, and the check that inputs are untouched after a launch.
//!
//! # The numbers
//!
//! Element `i` passes when `|out_i - ref_i| <= atol_scale * max|ref| + rtol * |ref_i|`,
//! where the evaluator takes `max|ref|` over the element's own row
//! ([`compare_rows`]): a row of small values gets the slack of its own size,
//! never that of the largest row in the buffer.
//! The numbers per dtype (and per op) are chosen in ONE place,
//! `kiln_kernels::tolerance`, which says why; the catalog's GPU tests and the
//! evaluator use the same ones ([`Tolerance::for_dtype`] converts them).
//!
//! An all-zero output can never pass a non-zero reference: with `atol_scale +
//! rtol < 1`, the element holding `max|ref|` fails. When the reference is all
//! zeros the tolerance is [`ZERO_REFERENCE_ATOL`], so only (signed) zeros pass.
//! Any NaN or Inf in the output fails, whatever the reference.

use kiln_kernels::DType;
use serde::{Deserialize, Serialize};

/// Absolute tolerance used when the whole reference is zero: only exact zeros pass.
pub const ZERO_REFERENCE_ATOL: f64 = 0.0;

/// The tolerance of one output buffer: `atol_scale * max|ref| + rtol * |ref_i|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute part, as a fraction of the reference's largest magnitude.
    pub atol_scale: f64,
    /// Relative part, as a fraction of the element's own reference magnitude.
    pub rtol: f64,
}

impl Tolerance {
    /// The documented tolerance for outputs stored as `dtype` (see the module docs).
    pub fn for_dtype(dtype: DType) -> Self {
        kiln_kernels::Tolerance::for_dtype(dtype).into()
    }

    /// The allowed absolute error of an element with reference `r` in a buffer whose largest magnitude is `scale`.
    pub fn allowed(&self, r: f64, scale: f64) -> f64 {
        if scale == 0.0 {
            ZERO_REFERENCE_ATOL
        } else {
            self.atol_scale * scale + self.rtol * r.abs()
        }
    }
}

impl From<kiln_kernels::Tolerance> for Tolerance {
    fn from(t: kiln_kernels::Tolerance) -> Self {
        Tolerance {
            atol_scale: t.atol,
            rtol: t.rtol,
        }
    }
}

/// Error statistics of a passing comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompareStats {
    /// Elements compared.
    pub elements: usize,
    /// `max|ref|`.
    pub scale: f64,
    /// Largest `|out - ref|`.
    pub max_abs_err: f64,
    /// Largest `|out - ref| / |ref|` over elements with a non-zero reference.
    pub max_rel_err: f64,
}

/// Why an output did not match its reference.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToleranceError {
    /// Output and reference lengths differ (an evaluator bug, not the candidate's).
    #[error("output has {output} elements, reference has {reference}")]
    LengthMismatch {
        /// Output length.
        output: usize,
        /// Reference length.
        reference: usize,
    },
    /// The reference itself is not finite (an evaluator bug, not the candidate's).
    #[error("reference element {index} is {value}, not finite")]
    ReferenceNotFinite {
        /// Index.
        index: usize,
        /// Value.
        value: f64,
    },
    /// The output holds NaN or Inf (the NaN sentinel means "never written").
    #[error("output element {index} is {value} (expected {expected}); {count} elements are NaN or Inf (NaN usually means the element was never written)")]
    NonFinite {
        /// First bad index.
        index: usize,
        /// Its value.
        value: f64,
        /// The reference there.
        expected: f64,
        /// How many elements are not finite.
        count: usize,
    },
    /// Finite but out of tolerance.
    #[error("output element {index} is {value}, expected {expected} (allowed error {allowed:.3e}); {failures} of {elements} elements out of tolerance, max abs error {max_abs_err:.3e}, max rel error {max_rel_err:.3e}")]
    OutOfTolerance {
        /// First failing index.
        index: usize,
        /// Its value.
        value: f64,
        /// The reference there.
        expected: f64,
        /// The tolerance there.
        allowed: f64,
        /// Number of failing elements.
        failures: usize,
        /// Elements compared.
        elements: usize,
        /// Largest absolute error.
        max_abs_err: f64,
        /// Largest relative error (non-zero references only).
        max_rel_err: f64,
    },
}

/// Compares `output` to `reference` with `tol`; see the module docs for the rule.
pub fn compare(
    output: &[f64],
    reference: &[f64],
    tol: &Tolerance,
) -> Result<CompareStats, ToleranceError> {
    if output.len() != reference.len() {
        return Err(ToleranceError::LengthMismatch {
            output: output.len(),
            reference: reference.len(),
        });
    }
    if let Some((index, &value)) = reference.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        return Err(ToleranceError::ReferenceNotFinite { index, value });
    }
    let non_finite = output.iter().filter(|o| !o.is_finite()).count();
    if let Some(index) = output.iter().position(|o| !o.is_finite()) {
        return Err(ToleranceError::NonFinite {
            index,
            value: output[index],
            expected: reference[index],
            count: non_finite,
        });
    }
    let scale = reference.iter().fold(0.0f64, |m, r| m.max(r.abs()));
    let mut stats = CompareStats {
        elements: output.len(),
        scale,
        max_abs_err: 0.0,
        max_rel_err: 0.0,
    };
    let mut first: Option<(usize, f64)> = None;
    let mut failures = 0;
    for (i, (&o, &r)) in output.iter().zip(reference).enumerate() {
        let err = (o - r).abs();
        stats.max_abs_err = stats.max_abs_err.max(err);
        if r != 0.0 {
            stats.max_rel_err = stats.max_rel_err.max(err / r.abs());
        }
        let allowed = tol.allowed(r, scale);
        if err > allowed {
            failures += 1;
            first.get_or_insert((i, allowed));
        }
    }
    match first {
        None => Ok(stats),
        Some((index, allowed)) => Err(ToleranceError::OutOfTolerance {
            index,
            value: output[index],
            expected: reference[index],
            allowed,
            failures,
            elements: stats.elements,
            max_abs_err: stats.max_abs_err,
            max_rel_err: stats.max_rel_err,
        }),
    }
}

/// [`compare`] row by row: each row of `row_len` elements is scaled by its
/// own largest reference magnitude, so a row of small values gets the slack
/// of its own size, not of the largest row in the buffer. `rows` limits the
/// check to those row indices (all rows when `None`); errors name the row.
pub fn compare_rows(
    output: &[f64],
    reference: &[f64],
    row_len: usize,
    rows: Option<&[usize]>,
    tol: &Tolerance,
) -> Result<(), RowError> {
    if output.len() != reference.len() {
        return Err(RowError {
            row: 0,
            error: ToleranceError::LengthMismatch {
                output: output.len(),
                reference: reference.len(),
            },
        });
    }
    let row_len = if row_len == 0 || !output.len().is_multiple_of(row_len) {
        output.len().max(1)
    } else {
        row_len
    };
    let n_rows = output.len().div_ceil(row_len);
    let all: Vec<usize>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all = (0..n_rows).collect();
            &all
        }
    };
    for &row in rows.iter().filter(|&&r| r < n_rows) {
        let span = row * row_len..((row + 1) * row_len).min(output.len());
        compare(&output[span.clone()], &reference[span], tol)
            .map_err(|error| RowError { row, error })?;
    }
    Ok(())
}

/// A row that failed [`compare_rows`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row}: {error}")]
pub struct RowError {
    /// The row index.
    pub row: usize,
    /// What failed in it (element indices are within the row).
    pub error: ToleranceError,
}

/// An input buffer that changed during a launch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputMutated {
    /// A byte differs.
    #[error("input `{input}` was modified by the kernel: byte {offset} changed from {before:#04x} to {after:#04x} (inputs are read-only)")]
    Modified {
        /// Which input.
        input: String,
        /// First differing byte offset.
        offset: usize,
        /// The byte before the launch.
        before: u8,
        /// The byte after.
        after: u8,
    },
    /// The byte lengths differ (an evaluator bug).
    #[error("input `{input}` was {before} bytes before the launch and {after} after")]
    LengthChanged {
        /// Which input.
        input: String,
        /// Length before.
        before: usize,
        /// Length after.
        after: usize,
    },
}

/// Checks that one input buffer's raw bytes are identical before and after a launch.
pub fn check_input_unchanged(input: &str, before: &[u8], after: &[u8]) -> Result<(), InputMutated> {
    if before.len() != after.len() {
        return Err(InputMutated::LengthChanged {
            input: input.to_string(),
            before: before.len(),
            after: after.len(),
        });
    }
    match before.iter().zip(after).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(offset) => Err(InputMutated::Modified {
            input: input.to_string(),
            offset,
            before: before[offset],
            after: after[offset],
        }),
    }
}

/// Checks every `(name, before, after)` input; the first mutated one is reported.
pub fn check_inputs_unchanged<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a [u8], &'a [u8])>,
) -> Result<(), InputMutated> {
    inputs
        .into_iter()
        .try_for_each(|(name, before, after)| check_input_unchanged(name, before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16() -> Tolerance {
        Tolerance::for_dtype(DType::BF16)
    }

    #[test]
    fn numbers_come_from_the_catalog() {
        let k = kiln_kernels::Tolerance::for_dtype(kiln_kernels::DType::BF16);
        assert_eq!(bf16().rtol, k.rtol);
        assert_eq!(bf16().atol_scale, k.atol);
        for d in [DType::BF16, DType::F16, DType::F32] {
            let t = Tolerance::for_dtype(d);
            assert!(t.atol_scale + t.rtol < 1.0);
        }
    }

    #[test]
    fn exact_and_rounded_outputs_pass() {
        let r = [1.0, -2.0, 0.5, 100.0];
        let s = compare(&r, &r, &bf16()).expect("exact");
        assert_eq!(s.max_abs_err, 0.0);
        assert_eq!(s.scale, 100.0);
        // One bf16 rounding (relative 2^-8) on every element passes.
        let out: Vec<f64> = r.iter().map(|x| x * (1.0 + 2f64.powi(-8))).collect();
        let s = compare(&out, &r, &bf16()).expect("rounded");
        assert!((s.max_rel_err - 2f64.powi(-8)).abs() < 1e-12);
    }

    #[test]
    fn small_elements_get_the_scale_floor() {
        // Element 0 is tiny next to the max: its absolute error may be up to atol_scale * 100.
        let r = [1e-3, 100.0];
        let allowed = bf16().atol_scale * 100.0;
        let out = [1e-3 + 0.5 * allowed, 100.0];
        compare(&out, &r, &bf16()).expect("within atol_scale * max|ref|");
        let out = [1e-3 + 1.5 * allowed, 100.0];
        assert!(matches!(
            compare(&out, &r, &bf16()),
            Err(ToleranceError::OutOfTolerance { index: 0, .. })
        ));
    }

    #[test]
    fn fp8_precision_fails_bf16() {
        let r: Vec<f64> = (1..100).map(|i| i as f64 * 0.37).collect();
        let out: Vec<f64> = r.iter().map(|x| x * (1.0 + 2f64.powi(-4))).collect();
        assert!(compare(&out, &r, &bf16()).is_err());
    }

    #[test]
    fn all_zero_output_never_passes_a_nonzero_reference() {
        for d in [DType::BF16, DType::F16, DType::F32] {
            let r = [0.0, 1e-30, -3.0, 2.0];
            let err = compare(&[0.0; 4], &r, &Tolerance::for_dtype(d)).expect_err("zeros fail");
            assert!(
                matches!(
                    err,
                    ToleranceError::OutOfTolerance {
                        index: 2,
                        failures: 2,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn all_zero_reference_accepts_only_zeros() {
        let r = [0.0; 3];
        compare(&[0.0, -0.0, 0.0], &r, &bf16()).expect("zeros");
        let err = compare(&[0.0, 1e-300, 0.0], &r, &bf16()).expect_err("garbage");
        assert!(matches!(
            err,
            ToleranceError::OutOfTolerance { index: 1, .. }
        ));
    }

    #[test]
    fn nan_and_inf_fail_and_are_reported() {
        let r = [1.0, 2.0, 3.0];
        let err = compare(&[1.0, f64::NAN, f64::INFINITY], &r, &bf16()).expect_err("nan");
        match err {
            ToleranceError::NonFinite {
                index,
                expected,
                count,
                ..
            } => {
                assert_eq!((index, expected, count), (1, 2.0, 2));
            }
            other => panic!("{other:?}"),
        }
        let msg = compare(&[f64::NEG_INFINITY], &[0.0], &bf16())
            .expect_err("inf")
            .to_string();
        assert!(msg.contains("output element 0 is -inf"), "{msg}");
    }

    #[test]
    fn failure_report_has_first_index_and_max_errors() {
        let r = [1.0, 2.0, 3.0, 4.0];
        let out = [1.0, 2.5, 3.0, 5.0];
        match compare(&out, &r, &bf16()).expect_err("fails") {
            ToleranceError::OutOfTolerance {
                index,
                value,
                expected,
                failures,
                max_abs_err,
                max_rel_err,
                elements,
                ..
            } => {
                assert_eq!(
                    (index, value, expected, failures, elements),
                    (1, 2.5, 2.0, 2, 4)
                );
                assert_eq!(max_abs_err, 1.0);
                assert_eq!(max_rel_err, 0.25);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn evaluator_bugs_are_distinct() {
        assert!(matches!(
            compare(&[1.0], &[1.0, 2.0], &bf16()),
            Err(ToleranceError::LengthMismatch { .. })
        ));
        assert!(matches!(
            compare(&[1.0], &[f64::NAN], &bf16()),
            Err(ToleranceError::ReferenceNotFinite { .. })
        ));
        compare(&[], &[], &bf16()).expect("empty compares");
    }

    #[test]
    fn input_integrity() {
        let a = [1u8, 2, 3, 4];
        check_input_unchanged("x", &a, &a).expect("same");
        let err = check_input_unchanged("w", &a, &[1, 2, 9, 4]).expect_err("changed");
        assert_eq!(
            err,
            InputMutated::Modified {
                input: "w".into(),
                offset: 2,
                before: 3,
                after: 9
            }
        );
        assert!(err
            .to_string()
            .contains("input `w` was modified by the kernel: byte 2"));
        assert!(matches!(
            check_input_unchanged("x", &a, &a[..3]),
            Err(InputMutated::LengthChanged { .. })
        ));
        let b = [0u8; 2];
        let err = check_inputs_unchanged([("x", &a[..], &a[..]), ("w", &b[..], &[0u8, 1][..])])
            .expect_err("second");
        assert!(matches!(err, InputMutated::Modified { ref input, offset: 1, .. } if input == "w"));
        // NaN payloads differ bitwise even though both are NaN: compared as bytes, they differ.
        let n1 = f32::from_bits(0x7fc0_0000).to_le_bytes();
        let n2 = f32::from_bits(0x7fc0_0001).to_le_bytes();
        assert!(check_input_unchanged("x", &n1, &n2).is_err());
    }

    #[test]
    fn rows_are_scaled_by_their_own_magnitude() {
        let tol = Tolerance {
            atol_scale: 0.01,
            rtol: 0.0,
        };
        // Row 0 is large, row 1 small; an error of 0.5 in row 1 is within 1% of
        // the buffer's largest value but far outside 1% of its own row.
        let reference = [100.0, -80.0, 1.0, 0.5];
        let output = [100.0, -80.0, 1.5, 0.5];
        compare(&output, &reference, &tol).expect("whole-buffer scale hides it");
        let err = compare_rows(&output, &reference, 2, None, &tol).expect_err("row scale");
        assert_eq!(err.row, 1, "{err}");
        // Only the listed rows are checked.
        compare_rows(&output, &reference, 2, Some(&[0]), &tol).expect("row 0 is fine");
        // A buffer that is not row-shaped is one row, scaled by its largest value.
        compare_rows(&output[..3], &reference[..3], 2, None, &tol).expect("one row");
    }
}
