//! RMSNorm over the last dimension, one pass per row, rows spread over the rayon pool.
//!
//! Burn's `x.square().mean_dim(..) + eps` chain is six single-threaded ops, each allocating a
//! tensor; in 2-thread prefill the norms then ran while the other thread waited.

use crate::vectorize::{FloatLoop, filled_in_chunks, lane_dot, vectorized};

/// Values per rayon task; a tensor of at most this many runs on the calling thread (decode).
const TASK_VALUES: usize = 16_384;

/// `weight * (x * (1 / sqrt(mean(x^2) + epsilon)))` for each row of `x` (`[rows, d]` with
/// `d = weight.len()`), in the order of operations of Burn's ops for the same formula. The sum
/// of squares runs in sixteen lanes, so the last bits may differ from Burn's reduction.
///
/// # Panics
/// If `weight` is empty or `x.len()` is not a multiple of its length: callers check shapes.
pub fn rms_norm(x: &[f32], weight: &[f32], epsilon: f64) -> Vec<f32> {
    let d = weight.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rows of x must match the weight"
    );
    let epsilon = epsilon as f32;
    // Whole rows per task.
    let task = TASK_VALUES.div_ceil(d) * d;
    filled_in_chunks(x.len(), task, |index, y| {
        let x = &x[index * task..][..y.len()];
        vectorized(NormRows {
            y,
            x,
            weight,
            epsilon,
        })
    })
}

/// [`rms_norm`] of one row `x` into `y` (same length as `weight`), with the same bits.
pub(crate) fn rms_norm_row(x: &[f32], weight: &[f32], epsilon: f64, y: &mut [f32]) {
    debug_assert!(x.len() == weight.len() && y.len() == weight.len());
    vectorized(NormRows {
        y,
        x,
        weight,
        epsilon: epsilon as f32,
    })
}

/// RMSNorm of whole rows of `x` into `y`.
struct NormRows<'a> {
    y: &'a mut [f32],
    x: &'a [f32],
    weight: &'a [f32],
    epsilon: f32,
}

impl FloatLoop for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let d = self.weight.len();
        for (y, x) in self.y.chunks_exact_mut(d).zip(self.x.chunks_exact(d)) {
            let inv_rms = 1.0 / (lane_dot(x, x) / d as f32 + self.epsilon).sqrt();
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(self.weight) {
                *y = w * (x * inv_rms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    #[test]
    fn every_path_gives_the_same_bits() {
        let d = 1543;
        let weight: Vec<f32> = (0..d).map(|i| 0.25 + (i % 7) as f32 / 3.0).collect();
        let x: Vec<f32> = (0..d * 3)
            .map(|i| ((i * 31) % 97) as f32 / 9.0 - 5.0)
            .collect();
        let run = |isa| {
            let mut y = vec![0f32; x.len()];
            let (x, weight) = (&x[..], &weight[..]);
            vectorized_on(
                isa,
                NormRows {
                    y: &mut y,
                    x,
                    weight,
                    epsilon: 1e-6,
                },
            );
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let want = run(Isa::Scalar);
        for isa in Isa::supported() {
            assert_eq!(run(isa), want, "{isa}");
        }
    }

    #[test]
    fn rows_are_normalized_alike_on_one_thread_and_on_the_pool() {
        let d = 37;
        let weight: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 10.0).collect();
        let x: Vec<f32> = (0..d * 1000)
            .map(|i| ((i * 7919) % 201) as f32 - 100.0)
            .collect();
        let all = rms_norm(&x, &weight, 1e-6);
        let first = rms_norm(&x[..d * 3], &weight, 1e-6);
        assert_eq!(all[..d * 3], first[..]);
        for (row, (y, x)) in all.chunks(d).zip(x.chunks(d)).enumerate() {
            let mean = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (mean + 1e-6).sqrt();
            for ((&y, &x), &w) in y.iter().zip(x).zip(&weight) {
                let want = w as f64 * x as f64 * inv;
                assert!(
                    (y as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{row}"
                );
            }
        }
        // An all-zero row is zero, not NaN.
        assert_eq!(rms_norm(&[0.0; 4], &[1.0; 4], 1e-5), vec![0.0; 4]);
    }
}
