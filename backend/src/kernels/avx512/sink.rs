//! Where the AVX-512 kernels put the exact sums they compute: stored as they are, or turned into
//! the layer's float outputs as they leave the registers.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::i2s::{ScaleConvention, TernaryLayout};
use crate::kernels::SumLayout;
use crate::quant::QuantizedActivations;

/// A destination for the sums of rows x tokens.
pub(super) trait SumSink {
    /// Whether one token's sums of consecutive rows go to consecutive places, so that the
    /// row-lane kernel can hand over sixteen of them at once ([`SumSink::put_lanes`]).
    fn rows_contiguous(&self) -> bool;

    /// The sum of row `r` and token `t`.
    fn put(&mut self, r: usize, t: usize, sum: i32);

    /// The sums of rows `r..r + 16` and token `t`, lane `i` holding row `r + i`'s.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, and [`SumSink::rows_contiguous`] is true.
    unsafe fn put_lanes(&mut self, r: usize, t: usize, sums: __m512i);
}

/// The sums themselves, where a [`SumLayout`] puts them in `out`.
pub(super) struct RawSums<'a> {
    pub(super) layout: SumLayout,
    pub(super) out: &'a mut [i32],
}

impl SumSink for RawSums<'_> {
    fn rows_contiguous(&self) -> bool {
        self.layout.row_stride == 1
    }

    #[inline(always)]
    fn put(&mut self, r: usize, t: usize, sum: i32) {
        self.out[self.layout.index(r, t)] = sum;
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn put_lanes(&mut self, r: usize, t: usize, sums: __m512i) {
        let out = &mut self.out[self.layout.index(r, t)..][..16];
        // SAFETY: `out` is sixteen writable i32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), sums) };
    }
}

/// The float outputs `y` (`[tokens, n]`) of a band of tokens, each computed from its sum as it
/// is put, as [`super::super::finish`] computes them (`convention.output(sum - sum(q), ..)`):
/// the sums of a prefill band (megabytes per layer) are then never stored and read back.
pub(super) struct FinishedSums<'a> {
    n: usize,
    weight_scale: f32,
    convention: ScaleConvention,
    /// The band's tokens' activation scales and sums of `q`.
    x_scales: &'a [f32],
    offsets: &'a [i32],
    y: &'a mut [MaybeUninit<f32>],
}

impl<'a> FinishedSums<'a> {
    /// The outputs of `layout`'s layer for tokens `t0..t0 + tokens` of `x`, `y` holding them.
    ///
    /// # Panics
    /// If `y` is not `tokens` rows of `n` values or `x` has no such tokens.
    pub(super) fn new(
        layout: &TernaryLayout,
        x: &'a QuantizedActivations,
        t0: usize,
        y: &'a mut [MaybeUninit<f32>],
    ) -> Self {
        let n = layout.n;
        let tokens = y.len() / n.max(1);
        assert_eq!(y.len(), tokens * n, "whole rows of outputs");
        Self {
            n,
            weight_scale: layout.scale,
            convention: layout.convention,
            x_scales: &x.scales[t0..t0 + tokens],
            offsets: &x.sums[t0..t0 + tokens],
            y,
        }
    }
}

impl SumSink for FinishedSums<'_> {
    fn rows_contiguous(&self) -> bool {
        true
    }

    #[inline(always)]
    fn put(&mut self, r: usize, t: usize, sum: i32) {
        let (x_scale, offset) = (self.x_scales[t], self.offsets[t]);
        let value = self
            .convention
            .output(sum - offset, x_scale, self.weight_scale);
        self.y[t * self.n + r].write(value);
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn put_lanes(&mut self, r: usize, t: usize, sums: __m512i) {
        let (x_scale, offset) = (self.x_scales[t], self.offsets[t]);
        // The operations of `ScaleConvention::output`, lane by lane: the same bits.
        let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_set1_epi32(offset)));
        let value = match self.convention {
            ScaleConvention::Multiply => _mm512_mul_ps(
                _mm512_div_ps(exact, _mm512_set1_ps(x_scale)),
                _mm512_set1_ps(self.weight_scale),
            ),
            ScaleConvention::Divide => {
                _mm512_div_ps(exact, _mm512_set1_ps(self.weight_scale * x_scale))
            }
        };
        let y = &mut self.y[t * self.n + r..][..16];
        // SAFETY: `y` is sixteen writable f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(y.as_mut_ptr().cast(), value) };
    }
}
