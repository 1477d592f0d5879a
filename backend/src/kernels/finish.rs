//! Turning exact sums into float outputs, `convention.output(sum - sum(q), x_scale, scale)` per
//! row and token, in the reference's order of operations (shared by every kernel family, so they
//! agree bit for bit), compiled for the selected path.

use std::mem::MaybeUninit;

use super::{BAND_TOKENS, FINISH_ROWS};
use crate::i2s::TernaryLayout;
use crate::quant::QuantizedActivations;
use crate::vectorize::{FloatLoop, filled_in_chunks, vectorized};

/// The float outputs `[m, n]` from sums `raw[r * m + t]` minus `offsets[t]` (if any): the
/// exact accumulators, in the reference's order of operations (shared by every kernel family,
/// so they agree bit for bit). Tokens are split across the rayon pool in bands.
pub(crate) fn finish_linear(
    layout: &TernaryLayout,
    x: &QuantizedActivations,
    raw: &[i32],
    offsets: Option<&[i32]>,
) -> Vec<f32> {
    let (m, n) = (x.m, layout.n);
    filled_in_chunks(m * n, BAND_TOKENS * n, |band, y| {
        let t0 = band * BAND_TOKENS;
        finish_band(layout, x, offsets, &raw[t0..], m, t0, y);
    })
}

/// Outputs `y` (`[tokens, n]`) of tokens `t0..` from their sums, `raw[r * stride + i]` for
/// row `r` and the band's token `i`. Rows go in blocks, so each cache line of sums serves every
/// token of the band, and each block is transposed first so that the loop computing outputs
/// runs over contiguous rows and its divisions vectorize.
fn finish_band(
    layout: &TernaryLayout,
    x: &QuantizedActivations,
    offsets: Option<&[i32]>,
    raw: &[i32],
    stride: usize,
    t0: usize,
    y: &mut [f32],
) {
    vectorized(FinishBand {
        layout,
        x,
        offsets,
        raw,
        stride,
        t0,
        y,
    })
}

/// The arguments of [`finish_band`], as a loop compiled for the selected path.
struct FinishBand<'a> {
    layout: &'a TernaryLayout,
    x: &'a QuantizedActivations,
    offsets: Option<&'a [i32]>,
    raw: &'a [i32],
    stride: usize,
    t0: usize,
    y: &'a mut [f32],
}

impl FloatLoop for FinishBand<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            layout,
            x,
            offsets,
            raw,
            stride,
            t0,
            y,
        } = self;
        let (n, scale, convention) = (layout.n, layout.scale, layout.convention);
        let tokens = y.len() / n;
        let mut block = [[0i32; FINISH_ROWS]; BAND_TOKENS];
        for r0 in (0..n).step_by(FINISH_ROWS) {
            let rows = FINISH_ROWS.min(n - r0);
            for r in 0..rows {
                let sums = &raw[(r0 + r) * stride..][..tokens];
                for (token, &sum) in block.iter_mut().zip(sums) {
                    token[r] = sum;
                }
            }
            for ((i, y), sums) in y.chunks_exact_mut(n).enumerate().zip(&block) {
                let t = t0 + i;
                let (x_scale, offset) = (x.scales[t], offsets.map_or(0, |o| o[t]));
                for (y, &sum) in y[r0..r0 + rows].iter_mut().zip(&sums[..rows]) {
                    *y = convention.output(sum - offset, x_scale, scale);
                }
            }
        }
    }
}

/// Outputs `y` (`[tokens, n]`) of tokens `t0..` from sums stored by token (`raw[i * n + r]`
/// for the band's token `i`), minus each token's `sum(q)`: the loop runs along contiguous rows
/// of both, so it needs no transpose.
pub(super) fn finish_tokens(
    layout: &TernaryLayout,
    x: &QuantizedActivations,
    raw: &[i32],
    t0: usize,
    y: &mut [MaybeUninit<f32>],
) {
    vectorized(FinishTokens {
        layout,
        x,
        raw,
        t0,
        y,
    })
}

/// The arguments of [`finish_tokens`], as a loop compiled for the selected path.
struct FinishTokens<'a> {
    layout: &'a TernaryLayout,
    x: &'a QuantizedActivations,
    raw: &'a [i32],
    t0: usize,
    y: &'a mut [MaybeUninit<f32>],
}

impl FloatLoop for FinishTokens<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            layout,
            x,
            raw,
            t0,
            y,
        } = self;
        let (n, scale, convention) = (layout.n, layout.scale, layout.convention);
        let rows = y.chunks_exact_mut(n).zip(raw.chunks_exact(n));
        for (i, (y, sums)) in rows.enumerate() {
            let (x_scale, offset) = (x.scales[t0 + i], x.sums[t0 + i]);
            for (y, &sum) in y.iter_mut().zip(sums) {
                y.write(convention.output(sum - offset, x_scale, scale));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i2s::ScaleConvention;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    fn bits(y: &[f32]) -> Vec<u32> {
        y.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn both_sum_layouts_give_the_same_bits_on_every_path() {
        let (n, tokens) = (131, 13);
        let x = QuantizedActivations {
            m: tokens,
            scales: (0..tokens).map(|t| 3.0 + t as f32 * 0.37).collect(),
            sums: (0..tokens as i32).map(|t| t * 5 - 20).collect(),
            ..Default::default()
        };
        // Sums stored by row (`[n, tokens]`) and the same sums stored by token.
        let by_row: Vec<i32> = (0..(n * tokens) as i32)
            .map(|i| (i * 7919) % 4001 - 2000)
            .collect();
        let by_token: Vec<i32> = (0..n * tokens)
            .map(|i| by_row[(i % n) * tokens + i / n])
            .collect();
        for convention in [ScaleConvention::Multiply, ScaleConvention::Divide] {
            let layout = TernaryLayout::new(n, 64, 0.71, convention).unwrap();
            let run = |isa, tokens_first: bool| {
                let mut y = vec![0f32; n * tokens];
                let (layout, x) = (&layout, &x);
                if tokens_first {
                    let raw = &by_token[..];
                    let mut out = vec![MaybeUninit::new(f32::NAN); y.len()];
                    let finish = FinishTokens {
                        layout,
                        x,
                        raw,
                        t0: 0,
                        y: &mut out,
                    };
                    vectorized_on(isa, finish);
                    // SAFETY: every value was initialized when `out` was made.
                    y = out
                        .into_iter()
                        .map(|v| unsafe { v.assume_init() })
                        .collect();
                } else {
                    let (offsets, raw) = (Some(&x.sums[..]), &by_row[..]);
                    let stride = tokens;
                    let band = FinishBand {
                        layout,
                        x,
                        offsets,
                        raw,
                        stride,
                        t0: 0,
                        y: &mut y,
                    };
                    vectorized_on(isa, band);
                }
                bits(&y)
            };
            let want = run(Isa::Scalar, false);
            for isa in Isa::supported() {
                assert_eq!(run(isa, false), want, "{isa}, by row");
                assert_eq!(run(isa, true), want, "{isa}, by token");
            }
            let t = 3;
            let sum = by_row[7 * tokens + t] - x.sums[t];
            let expected = convention.output(sum, x.scales[t], 0.71);
            assert_eq!(want[t * n + 7], expected.to_bits());
        }
    }
}
