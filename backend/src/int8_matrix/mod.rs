//! An int8 copy of a float matrix for the LM head of decode, opt-in because it is not lossless.
//!
//! Decode reads the whole `[vocab, hidden]` head once per token; at two threads that read is
//! what limits the speed, so halving it again (after [`crate::HalfMatrix`]'s 16 bits) is worth
//! a small loss. Each row keeps its own scale (`max|row| / 127`, values rounded half to even),
//! and each token of activations is quantized like a BitLinear input (per-token absmax, the
//! rule of [`ActivationScale::Quotient`]), so a logit is one exact int32 dot product times two
//! scales: `y[r] = acc[r] * (row_scale[r] / x_scale)`. Every path computes the same integers
//! and finishes them with the same code, so they give the same bits.
//!
//! On the golden checkpoints logits move by at most 1.2% (mean 0.3%) of their largest
//! magnitude: within the manifest's hard limit (10% / 1%), not the strict tier the 16-bit head
//! keeps.

use rayon::prelude::*;

use crate::error::{Result, TernaryError};
use crate::kernels::Isa;
use crate::quant::{ActivationScale, quantize_row, round_to_i8};
use crate::vectorize::{FloatLoop, vectorized_on};

/// Output rows per rayon task.
const ROWS_PER_TASK: usize = 256;
/// The largest magnitude of a stored weight: symmetric, so `-128` never occurs.
const WEIGHT_MAX: f32 = 127.0;
/// The most columns whose sum cannot overflow an i32: up to `128 * 127` per column.
const MAX_COLS: usize = i32::MAX as usize / (128 * 127);

/// A row-major `[rows, cols]` matrix of int8 values with one f32 scale per row.
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    /// `max|row| / 127`: a stored value times its row's scale approximates the original.
    row_scales: Vec<f32>,
}

impl Int8Matrix {
    /// Quantizes `values` (`[rows, cols]`, row-major, finite) row by row.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || cols > MAX_COLS {
            return Err(TernaryError::Dimension(format!(
                "an int8 matrix needs 1 to {MAX_COLS} columns and at least one row, got \
                 [{rows}, {cols}]"
            )));
        }
        let expected = rows.checked_mul(cols).ok_or_else(|| {
            TernaryError::Dimension(format!("[{rows}, {cols}] overflows the address space"))
        })?;
        if values.len() != expected {
            return Err(TernaryError::Length {
                what: "int8 matrix values",
                expected,
                actual: values.len(),
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(TernaryError::Shape(format!(
                "int8 matrix value {} at index {index} is not finite",
                values[index]
            )));
        }
        let mut quantized = vec![0i8; expected];
        let row_scales = quantized
            .par_chunks_mut(cols)
            .zip(values.par_chunks(cols))
            .map(|(q, row)| quantize_weight_row(row, q))
            .collect();
        Ok(Self {
            rows,
            cols,
            values: quantized,
            row_scales,
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The bytes a product reads: the values and the per-row scales.
    pub fn bytes(&self) -> usize {
        self.values.len() + 4 * self.row_scales.len()
    }

    /// `y[t][r] ≈ sum_c M[r][c] * x[t][c]` for each of the `x.len() / cols` vectors in `x`:
    /// each vector quantized to int8, exact int32 dot products with the rows (split across the
    /// rayon pool) on `isa`, scaled by the row's and the vector's scales.
    ///
    /// # Shapes
    /// - `x`: `[m, cols]`, row-major
    /// - output: `[m, rows]`, row-major
    pub fn matvec(&self, isa: Isa, x: &[f32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.cols) {
            return Err(TernaryError::Shape(format!(
                "{} activations are not a whole number of rows of {}",
                x.len(),
                self.cols
            )));
        }
        isa.check_supported()?;
        let m = x.len() / self.cols;
        let mut y = vec![0f32; m * self.rows];
        let mut q = vec![0i8; self.cols];
        for (x, y) in x.chunks_exact(self.cols).zip(y.chunks_exact_mut(self.rows)) {
            if x.iter().any(|v| !v.is_finite()) {
                // Quantizing would turn a NaN into 0 and hide it; the float heads pass it on.
                y.fill(f32::NAN);
                continue;
            }
            let (x_scale, _) = quantize_row(x, &mut q, ActivationScale::Quotient);
            y.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(task, y)| {
                    let rows = task * ROWS_PER_TASK..task * ROWS_PER_TASK + y.len();
                    let values = &self.values[rows.start * self.cols..rows.end * self.cols];
                    let mut sums = [0i32; ROWS_PER_TASK];
                    let sums = &mut sums[..y.len()];
                    vectorized_on(
                        isa,
                        RowDots {
                            values,
                            q: &q,
                            sums,
                        },
                    );
                    let finish = y.iter_mut().zip(sums.iter()).zip(&self.row_scales[rows]);
                    for ((y, &sum), &row_scale) in finish {
                        *y = sum as f32 * (row_scale / x_scale);
                    }
                });
        }
        Ok(y)
    }
}

/// One row's values rounded half to even at `127 / max|row|`; returns the row's scale.
fn quantize_weight_row(row: &[f32], q: &mut [i8]) -> f32 {
    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let inverse = WEIGHT_MAX / amax;
    // The activations' rounding (half to even, in operations that vectorize): `round_ties_even`
    // is a libm call per value in the baseline target, most of `--int8-head`'s load time.
    for (q, &v) in q.iter_mut().zip(row) {
        *q = round_to_i8((v * inverse).clamp(-WEIGHT_MAX, WEIGHT_MAX));
    }
    amax / WEIGHT_MAX
}

/// `sums[r] = sum_c values[r][c] * q[c]`: portable int8 dot products that the compiler
/// vectorizes (widening multiply-adds) for the path's instruction set; integer sums do not
/// depend on the order, so every path agrees. Compiled for AVX-512 this streamed the 3B head at
/// 24 GiB/s on one core, faster than a hand-written `vpdpbusd` loop (18: the widening
/// multiply-adds keep up with memory, and the compiler's unrolling suits the prefetcher).
struct RowDots<'a> {
    values: &'a [i8],
    q: &'a [i8],
    sums: &'a mut [i32],
}

impl FloatLoop for RowDots<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        // No software prefetch: requesting each row 8 KiB ahead into L1 gained 5% on a Zen 5
        // core (31-32 -> 33 GiB/s on the 3B head) and cost 40% on Zen 4 (21-25 -> 13-15 GiB/s).
        for (row, sum) in self.values.chunks_exact(self.q.len()).zip(self.sums) {
            *sum = row
                .iter()
                .zip(self.q)
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_every_path_gives, random};

    #[test]
    fn every_path_gives_the_same_bits_and_the_exact_integer_sums() {
        let shapes = [
            (1, 1, 1),
            (3, 7, 2),
            (5, 64, 1),
            (300, 65, 1),
            (513, 127, 3),
            (17, 1031, 2),
        ];
        for (case, (rows, cols, m)) in shapes.into_iter().enumerate() {
            let mut values = random(rows * cols, case as u64, 0.5);
            // A zero row, and a row whose largest magnitude is negative.
            values[..cols].fill(0.0);
            if rows > 1 {
                values[cols] = -3.0;
            }
            let x = random(m * cols, 100 + case as u64, 0.5);
            let matrix = Int8Matrix::quantize(&values, rows, cols).unwrap();
            let want = matrix.matvec(Isa::Scalar, &x).unwrap();
            let mut q = vec![0i8; cols];
            for (x, want) in x.chunks_exact(cols).zip(want.chunks_exact(rows)) {
                let (x_scale, _) = quantize_row(x, &mut q, ActivationScale::Quotient);
                for (r, &y) in want.iter().enumerate() {
                    let row = &matrix.values[r * cols..(r + 1) * cols];
                    let exact: i64 = row.iter().zip(&q).map(|(&w, &v)| w as i64 * v as i64).sum();
                    let formula = exact as f32 * (matrix.row_scales[r] / x_scale);
                    assert_eq!(y.to_bits(), formula.to_bits(), "{rows}x{cols} row {r}");
                    // Each weight is off by at most half its row's step and each activation
                    // by half of its own: the products' errors bound the logit's.
                    let (dw, dx) = (0.5 * matrix.row_scales[r], 0.5 / x_scale);
                    let (mut float, mut bound) = (0f64, 1e-6f64);
                    for (&w, &v) in values[r * cols..(r + 1) * cols].iter().zip(x) {
                        float += w as f64 * v as f64;
                        bound += (w.abs() * dx + v.abs() * dw + dw * dx) as f64 * 1.001;
                    }
                    assert!(
                        (y as f64 - float).abs() <= bound,
                        "{y} vs {float} ± {bound}"
                    );
                }
            }
            for token in want.chunks_exact(rows) {
                assert_eq!(token[0], 0.0, "the zero row");
            }
            let what = format!("{rows}x{cols} m={m}");
            assert_every_path_gives(&want, &what, |isa| matrix.matvec(isa, &x).unwrap());
        }
    }

    #[test]
    fn non_finite_activations_give_nan_logits() {
        let matrix = Int8Matrix::quantize(&[1.0, 2.0, 3.0, 4.0], 2, 2).unwrap();
        let y = matrix
            .matvec(Isa::Scalar, &[f32::NAN, 1.0, 1.0, 1.0])
            .unwrap();
        assert!(y[0].is_nan() && y[1].is_nan());
        // The other token is unaffected: [1, 2] . [1, 1] and [3, 4] . [1, 1] within the rounding.
        assert!(
            (y[2] - 3.0).abs() < 0.03 && (y[3] - 7.0).abs() < 0.07,
            "{y:?}"
        );
    }

    #[test]
    fn weights_round_half_to_even_at_the_row_scale() {
        // max 127 gives scale 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2.
        let matrix = Int8Matrix::quantize(&[127.0, 0.5, 1.5, 2.5, -2.5], 1, 5).unwrap();
        assert_eq!(matrix.values, vec![127, 0, 2, 2, -2]);
        assert_eq!(matrix.row_scales, vec![1.0]);
        assert_eq!(matrix.bytes(), 5 + 4);
    }

    #[test]
    fn bad_shapes_and_values_are_refused() {
        assert!(matches!(
            Int8Matrix::quantize(&[], 0, 3),
            Err(TernaryError::Dimension(_))
        ));
        assert!(matches!(
            Int8Matrix::quantize(&[0.0; 4], 1, MAX_COLS + 1),
            Err(TernaryError::Dimension(_))
        ));
        assert!(matches!(
            Int8Matrix::quantize(&[1.0, 2.0, 3.0], 2, 2),
            Err(TernaryError::Length { .. })
        ));
        assert!(Int8Matrix::quantize(&[1.0, f32::NAN], 1, 2).is_err());
        let matrix = Int8Matrix::quantize(&[1.0, 2.0], 1, 2).unwrap();
        assert!(matches!(
            matrix.matvec(Isa::Scalar, &[1.0, 2.0, 3.0]),
            Err(TernaryError::Shape(_))
        ));
    }
}
