//! A float matrix kept in 16 bits when that loses nothing, with a parallel matrix-vector
//! product: the LM head of decode, which reads the whole `[vocab, hidden]` table per token.
//!
//! bitnet.cpp's files (and our dummy models) hold the embedding in F16; HF's 2B4T in BF16. When
//! every value round-trips exactly through one of those, keeping that copy halves the bytes
//! the head reads per token and the products are those of the f32 values, so logits change only
//! by the order of summation. Both paths sum in the same fixed order (eight lanes, four
//! accumulators, fused multiply-adds, one reduction tree), so they give the same bits.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Result, TernaryError};
use crate::kernels::Isa;

/// Lanes per vector and independent accumulators: the summation order both paths follow.
const LANES: usize = 8;
const ACCUMULATORS: usize = 4;
/// Output rows per rayon task.
const ROWS_PER_TASK: usize = 256;

/// The 16-bit format a [`HalfMatrix`] holds.
#[derive(Debug, Clone)]
enum Values {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// A row-major `[rows, cols]` matrix stored exactly in F16 or BF16.
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    rows: usize,
    cols: usize,
    values: Values,
}

impl HalfMatrix {
    /// The matrix in F16 if every value is exactly an F16, else in BF16 if exactly a BF16,
    /// else `None` (a 16-bit copy would change the model).
    pub fn from_f32_exact(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if values.len() != rows.checked_mul(cols)? {
            return None;
        }
        let values = if let Some(halves) = f16_exact(values) {
            Values::F16(halves)
        } else if values.par_iter().all(|v| v.to_bits() & 0xffff == 0) {
            // The low half of every f32 is zero: the upper half is the BF16 of the same value.
            Values::Bf16(
                values
                    .par_iter()
                    .map(|v| bf16::from_bits((v.to_bits() >> 16) as u16))
                    .collect(),
            )
        } else {
            return None;
        };
        Some(Self { rows, cols, values })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The bytes a product reads: two per value.
    pub fn bytes(&self) -> usize {
        2 * self.rows * self.cols
    }

    /// The storage format: `"f16"` or `"bf16"`.
    pub fn format(&self) -> &'static str {
        match self.values {
            Values::F16(_) => "f16",
            Values::Bf16(_) => "bf16",
        }
    }

    /// `y[t][r] = sum_c M[r][c] * x[t][c]` for each of the `x.len() / cols` vectors in `x`,
    /// rows split across the rayon pool, on `isa` (any path that is not scalar uses AVX2 with
    /// FMA and F16C).
    ///
    /// # Shapes
    /// - `x`: `[m, cols]`, row-major
    /// - output: `[m, rows]`, row-major
    pub fn matvec(&self, isa: Isa, x: &[f32]) -> Result<Vec<f32>> {
        if self.cols == 0 || !x.len().is_multiple_of(self.cols) {
            return Err(TernaryError::Shape(format!(
                "{} activations are not a whole number of rows of {}",
                x.len(),
                self.cols
            )));
        }
        let path = Path::for_isa(isa)?;
        let m = x.len() / self.cols;
        let mut y = vec![0f32; m * self.rows];
        for (x, y) in x.chunks_exact(self.cols).zip(y.chunks_exact_mut(self.rows)) {
            y.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(task, y)| {
                    let first = task * ROWS_PER_TASK;
                    let rows = first * self.cols..(first + y.len()) * self.cols;
                    match &self.values {
                        Values::F16(v) => path.dots(&v[rows], x, y),
                        Values::Bf16(v) => path.dots(&v[rows], x, y),
                    }
                });
        }
        Ok(y)
    }
}

/// `values` in F16 if each one converts there and back to the same bits. Chunks on the pool
/// with `half`'s slice conversions (F16C when the CPU has it): a model load runs this over the
/// whole embedding, which per-value conversions made slower than the rest of the load.
fn f16_exact(values: &[f32]) -> Option<Vec<f16>> {
    const CHUNK: usize = 4096;
    let mut halves = vec![f16::ZERO; values.len()];
    let exact = halves
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .all(|(halves, values)| {
            halves.convert_from_f32_slice(values);
            let mut back = [0f32; CHUNK];
            let back = &mut back[..values.len()];
            halves.convert_to_f32_slice(back);
            back.iter()
                .zip(values)
                .all(|(b, v)| b.to_bits() == v.to_bits())
        });
    exact.then_some(halves)
}

/// A 16-bit float both paths can widen.
trait Half: Copy + Send + Sync {
    /// BF16 (the upper half of an f32) rather than IEEE F16.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the AVX2 path only
    const BF16: bool;
    fn widen(self) -> f32;
}

impl Half for f16 {
    const BF16: bool = false;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Half for bf16 {
    const BF16: bool = true;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The instruction set one product runs on, checked once per call.
#[derive(Clone, Copy)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Path {
    fn for_isa(isa: Isa) -> Result<Self> {
        isa.check_supported()?;
        // Every vector path includes AVX2, FMA and F16C (`Isa::is_supported`), checked above.
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            return Ok(Self::Avx2);
        }
        Ok(Self::Scalar)
    }

    /// `y[r] = dot(rows[r], x)` for the `y.len()` rows of `x.len()` values in `rows`.
    fn dots<H: Half>(self, rows: &[H], x: &[f32], y: &mut [f32]) {
        for (row, y) in rows.chunks_exact(x.len()).zip(y) {
            *y = match self {
                Self::Scalar => scalar::dot(row, x),
                // SAFETY: `for_isa` chose this path only after checking AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                Self::Avx2 => unsafe { avx2::dot(row, x) },
            };
        }
    }
}

/// Sums eight lanes in the fixed tree both paths use: halves, then pairs, then the last two.
fn reduce_lanes(s: [f32; LANES]) -> f32 {
    let quad = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let pair = [quad[0] + quad[2], quad[1] + quad[3]];
    pair[0] + pair[1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_every_path_gives, random};

    #[test]
    fn every_path_gives_the_same_bits_on_awkward_shapes() {
        for (case, (rows, cols, m)) in [
            (1, 1, 1),
            (3, 7, 2),
            (300, 37, 1),
            (513, 96, 3),
            (17, 1031, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let values = random(rows * cols, case as u64, 0.1);
            let x = random(m * cols, 100 + case as u64, 0.1);
            let as_f16: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            // Beyond F16's range, so only BF16 holds them exactly.
            const BIG: f32 = 1048576.0;
            let as_bf16: Vec<f32> = values
                .iter()
                .map(|&v| bf16::from_f32(v * BIG).to_f32())
                .collect();
            for (name, exact, magnitude) in [("f16", as_f16, 1.0), ("bf16", as_bf16, BIG)] {
                let matrix = HalfMatrix::from_f32_exact(&exact, rows, cols).expect("exact");
                assert_eq!(matrix.format(), name);
                let want = matrix.matvec(Isa::Scalar, &x).unwrap();
                for (t, row) in want.chunks_exact(rows).enumerate() {
                    for (r, &y) in row.iter().enumerate() {
                        let naive: f64 = (0..cols)
                            .map(|c| exact[r * cols + c] as f64 * x[t * cols + c] as f64)
                            .sum();
                        assert!(
                            (y as f64 - naive).abs() < 1e-5 * magnitude as f64,
                            "{name} {rows}x{cols}"
                        );
                    }
                }
                let what = format!("{name} {rows}x{cols} m={m}");
                assert_every_path_gives(&want, &what, |isa| matrix.matvec(isa, &x).unwrap());
            }
        }
    }

    #[test]
    fn inexact_values_and_bad_shapes_are_refused() {
        assert!(HalfMatrix::from_f32_exact(&[0.1, 1.0], 1, 2).is_none());
        assert!(HalfMatrix::from_f32_exact(&[1.0, 2.0], 2, 2).is_none());
        let matrix = HalfMatrix::from_f32_exact(&[1.0, 2.0], 1, 2).unwrap();
        assert!(matrix.matvec(Isa::Scalar, &[1.0, 2.0, 3.0]).is_err());
        assert_eq!(matrix.matvec(Isa::Scalar, &[3.0, 4.0]).unwrap(), vec![11.0]);
    }
}
