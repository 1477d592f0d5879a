//! Per-token absmax int8 quantization of activations, exactly as the references compute it.
//!
//! For each row (token) `x` of length `k`: `amax = max(|x|)` floored at `1e-5`,
//! `scale = 127 / amax`, `q = clamp(round_half_even(x * scale), -128, 127)`.
//!
//! The two reference engines evaluate `127 / amax` differently, and the last bit of the scale
//! moves both `q` (on ties) and the output, so the rule is part of the weight format
//! ([`ActivationScale`]).

use std::cell::Cell;

use rayon::prelude::*;

use crate::aligned::AlignedBytes;
use crate::error::{Result, TernaryError};
use crate::glu::FfnActivation;
use crate::norm::rms_norm_row;
use crate::vectorize::{FloatLoop, lane_max_by, vectorized};

/// Smallest `amax` used for the scale, so an all-zero row quantizes to zeros instead of NaN.
pub const AMAX_FLOOR: f32 = 1e-5;

/// How `127 / amax` is evaluated in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ActivationScale {
    /// `(1 / amax) * 127`, two f32 roundings: PyTorch evaluates `127 / tensor` as
    /// `tensor.reciprocal() * 127`, so HF transformers (BitLinear, AutoBitLinear) and 1bitLLM do this.
    #[default]
    Reciprocal,
    /// `127 / amax` rounded once: bitnet.cpp divides in f64 and rounds to f32, which for a quotient
    /// of two f32 values always equals the correctly rounded f32 division (f64 has > 2*24+2 bits).
    Quotient,
}

impl ActivationScale {
    /// The quantization scale of a row whose largest magnitude is `amax`.
    #[inline]
    pub fn scale(self, amax: f32) -> f32 {
        let amax = amax.max(AMAX_FLOOR);
        match self {
            Self::Reciprocal => (1.0 / amax) * 127.0,
            Self::Quotient => 127.0 / amax,
        }
    }
}

/// Quantized activations of `m` tokens, each row zero-padded to `k_padded` columns so the kernels
/// can run whole blocks; padding contributes nothing to any sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizedActivations {
    /// Tokens (rows).
    pub m: usize,
    /// Real columns per row.
    pub k: usize,
    /// Columns per row in `q`, a multiple of the kernel block.
    pub k_padded: usize,
    /// int8 values, `[m, k_padded]`, starting on a cache line (as the kernels load them).
    pub q: AlignedBytes<i8>,
    /// Per-row scales `127 / amax`, `[m]`.
    pub scales: Vec<f32>,
    /// Per-row sums of `q`, `[m]` (the I2_S kernels subtract them to undo the `+1` code offset).
    pub sums: Vec<i32>,
}

impl QuantizedActivations {
    /// Quantizes `x` (`[m, k]`, row-major) into rows padded to `k_padded`.
    ///
    /// # Panics
    /// If `x.len() != m * k` or `k_padded < k`: callers validate shapes first.
    pub fn new(x: &[f32], m: usize, k: usize, k_padded: usize, rule: ActivationScale) -> Self {
        Self::from_source(&ActivationSource::Plain(x), m, k, k_padded, rule)
    }

    /// Quantizes the `m` rows of `k` values that `source` gives (computing each one just before
    /// it is quantized) into rows padded to `k_padded`.
    ///
    /// # Panics
    /// If the source does not hold `m * k` values or `k_padded < k`: callers validate shapes
    /// first.
    pub fn from_source(
        source: &ActivationSource<'_>,
        m: usize,
        k: usize,
        k_padded: usize,
        rule: ActivationScale,
    ) -> Self {
        assert_eq!(source.len(), m * k, "activation length must be m * k");
        assert!(k_padded >= k, "k_padded must be at least k");
        let mut out = Self {
            m,
            k,
            k_padded,
            q: AlignedBytes::zeroed(m * k_padded),
            ..Self::default()
        };
        if k == 0 {
            out.scales.resize(m, rule.scale(0.0));
            out.sums.resize(m, 0);
            return out;
        }
        let quantize = |scratch: &mut Vec<f32>, (t, q): (usize, &mut [i8])| {
            quantize_row(source.row(t, k, scratch), &mut q[..k], rule)
        };
        if m > 1 {
            // Prefill quantizes [tokens, hidden] per layer: rows are independent, so spread
            // them over the pool. One row (decode) is too little work to share.
            out.q
                .par_chunks_exact_mut(k_padded)
                .enumerate()
                .map_init(Vec::new, quantize)
                .unzip_into_vecs(&mut out.scales, &mut out.sums);
        } else {
            thread_local! {
                // Reused: decode quantizes a fused row four times per layer per token.
                static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
            }
            // Taken rather than borrowed, so a nested call on this thread gets its own.
            let mut scratch = SCRATCH.take();
            (out.scales, out.sums) = out
                .q
                .chunks_exact_mut(k_padded)
                .enumerate()
                .map(|row| quantize(&mut scratch, row))
                .unzip();
            SCRATCH.set(scratch);
        }
        out
    }

    /// The padded int8 row of token `t`.
    pub fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.k_padded..(t + 1) * self.k_padded]
    }
}

/// The float rows a [`QuantizedActivations`] is made from: the input as it is, or the float
/// work that precedes a ternary layer done one row at a time just before that row is quantized.
/// A fused row stays in L1 between the two; done as separate ops, a 128-token prefill wrote each
/// normalized (or activated) tensor of up to megabytes out and read it back, and the norms, the
/// gated activation and the quantization were 4-5% of a 700M prefill. Each row gets the bits the
/// separate ops give it ([`crate::norm::rms_norm`], [`FfnActivation::apply`]).
#[derive(Debug, Clone, Copy)]
pub enum ActivationSource<'a> {
    /// `[m, k]` values, quantized as they are.
    Plain(&'a [f32]),
    /// `[m, k]` values, each row RMS-normalized first.
    Normed {
        /// The rows.
        x: &'a [f32],
        /// The norm.
        norm: NormWeight<'a>,
    },
    /// `act(gate) * up` of `[m, k]` values each, then RMS-normalized if `norm` is set: the input
    /// of a feed-forward block's down projection.
    Gated {
        /// Gate projection outputs.
        gate: &'a [f32],
        /// Up projection outputs.
        up: &'a [f32],
        /// The gate's activation.
        activation: FfnActivation,
        /// The norm before the down projection (2B4T `ffn_sub_norm`), if any.
        norm: Option<NormWeight<'a>>,
    },
}

/// The parameters of an RMSNorm ([`crate::norm::rms_norm`]).
#[derive(Debug, Clone, Copy)]
pub struct NormWeight<'a> {
    /// Per-feature gain, one per column.
    pub weight: &'a [f32],
    /// Added to the mean square.
    pub epsilon: f64,
}

impl ActivationSource<'_> {
    /// Values the source gives: `m * k`.
    pub fn len(&self) -> usize {
        match self {
            Self::Plain(x) | Self::Normed { x, .. } => x.len(),
            Self::Gated { gate, .. } => gate.len(),
        }
    }

    /// Whether the source gives no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The width every row must have (a norm's weight), if the source has one.
    fn norm_width(&self) -> Option<usize> {
        match self {
            Self::Normed { norm, .. }
            | Self::Gated {
                norm: Some(norm), ..
            } => Some(norm.weight.len()),
            _ => None,
        }
    }

    /// Checks that the source gives `m` rows of `k` values (and a norm `k` wide).
    ///
    /// # Errors
    /// [`TernaryError::Shape`] naming what does not fit.
    pub fn check_rows(&self, m: usize, k: usize) -> Result<()> {
        let shape_error = |what: String| Err(TernaryError::Shape(what));
        if self.len() != m * k {
            return shape_error(format!(
                "activations have {} values, expected m={m} x k={k}",
                self.len()
            ));
        }
        if let Self::Gated { gate, up, .. } = self
            && gate.len() != up.len()
        {
            return shape_error(format!(
                "gate ({} values) and up ({}) must have one length",
                gate.len(),
                up.len()
            ));
        }
        match self.norm_width() {
            Some(width) if width != k => shape_error(format!(
                "RMSNorm weight of width {width} does not fit rows of {k} values"
            )),
            _ => Ok(()),
        }
    }

    /// Row `t` of `k` values: borrowed in place, or computed into `scratch`.
    fn row<'s>(&'s self, t: usize, k: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let at = t * k..(t + 1) * k;
        match *self {
            Self::Plain(x) => &x[at],
            Self::Normed { x, norm } => {
                scratch.resize(k, 0.0);
                rms_norm_row(&x[at], norm.weight, norm.epsilon, scratch);
                scratch
            }
            Self::Gated {
                gate,
                up,
                activation,
                norm,
            } => {
                scratch.resize(2 * k, 0.0);
                let (activated, normed) = scratch.split_at_mut(k);
                activation.apply_row(&gate[at.clone()], &up[at], activated);
                match norm {
                    Some(norm) => {
                        rms_norm_row(activated, norm.weight, norm.epsilon, normed);
                        normed
                    }
                    None => activated,
                }
            }
        }
    }
}

/// Quantizes one row into `q` (same length), returning its scale and the sum of `q`.
pub fn quantize_row(x: &[f32], q: &mut [i8], rule: ActivationScale) -> (f32, i32) {
    vectorized(QuantizeRow { x, q, rule })
}

/// The arguments of [`quantize_row`], as a loop compiled for the selected path.
struct QuantizeRow<'a> {
    x: &'a [f32],
    q: &'a mut [i8],
    rule: ActivationScale,
}

impl FloatLoop for QuantizeRow<'_> {
    type Output = (f32, i32);

    #[inline(always)]
    fn run(self) -> (f32, i32) {
        let amax = abs_max(self.x);
        let scale = self.rule.scale(amax);
        let mut sum = 0i32;
        for (q, &v) in self.q.iter_mut().zip(self.x) {
            *q = round_to_i8((v * scale).clamp(-128.0, 127.0));
            sum += *q as i32;
        }
        (scale, sum)
    }
}

/// `max(|x|)` (0 for an empty slice; NaN values are skipped, as `f32::max` does).
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    lane_max_by(x, 0.0, f32::abs)
}

/// `y.round_ties_even() as i8` for `y` in [-128, 127], and 0 for NaN, in operations the
/// compiler vectorizes (`round_ties_even` is a libm call per value without SSE4.1 in the
/// baseline target, and float-to-int casts stay scalar). Adding 1.5 * 2^23 moves `y` where the
/// float spacing is 1, so the addition itself rounds to the nearest integer, ties to even, and
/// the integer is then the low bits of the sum (two's complement relative to the shifter's
/// bits). Clamping to [-128, 127] before rounding instead of after gives the same integers.
#[inline(always)]
pub(crate) fn round_to_i8(y: f32) -> i8 {
    const SHIFTER: f32 = 12_582_912.0;
    let y = if y.is_nan() { 0.0 } else { y };
    (y + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits()) as i8
}

#[cfg(test)]
mod tests {
    use super::{
        ActivationScale, ActivationSource, NormWeight, QuantizeRow, QuantizedActivations, abs_max,
        round_to_i8,
    };
    use crate::glu::FfnActivation;
    use crate::kernels::Isa;
    use crate::norm::rms_norm;
    use crate::test_support::random;
    use crate::vectorize::vectorized_on;

    #[test]
    fn every_source_quantizes_the_rows_the_separate_ops_give() {
        let (k, k_padded) = (300, 384);
        let weight: Vec<f32> = random(k, 1, 0.5).iter().map(|w| 1.0 + w).collect();
        let norm = NormWeight {
            weight: &weight,
            epsilon: 1e-5,
        };
        let rule = ActivationScale::Reciprocal;
        // One row runs on the calling thread, many on the pool.
        for m in [1, 45] {
            let (gate, up) = (random(m * k, 2, 3.0), random(m * k, 3, 3.0));
            let separate = |x: &[f32]| QuantizedActivations::new(x, m, k, k_padded, rule);
            let fused = |source| QuantizedActivations::from_source(&source, m, k, k_padded, rule);
            let normed = rms_norm(&gate, &weight, norm.epsilon);
            let want = separate(&normed);
            assert_eq!(fused(ActivationSource::Normed { x: &gate, norm }), want);
            for activation in [FfnActivation::Silu, FfnActivation::Relu2] {
                let activated = activation.apply(&gate, &up);
                let gated = |norm| ActivationSource::Gated {
                    gate: &gate,
                    up: &up,
                    activation,
                    norm,
                };
                assert_eq!(fused(gated(None)), separate(&activated));
                let want = separate(&rms_norm(&activated, &weight, norm.epsilon));
                assert_eq!(fused(gated(Some(norm))), want, "{activation:?}, m = {m}");
            }
        }
    }

    #[test]
    fn sources_that_do_not_fit_are_shape_errors() {
        let (x, weight) = ([0.5f32; 12], [1.0f32; 4]);
        let norm = NormWeight {
            weight: &weight,
            epsilon: 1e-5,
        };
        assert!(
            ActivationSource::Normed { x: &x, norm }
                .check_rows(3, 4)
                .is_ok()
        );
        let err = ActivationSource::Plain(&x).check_rows(2, 4).unwrap_err();
        assert!(err.to_string().contains("12 values"), "{err}");
        let err = ActivationSource::Normed { x: &x, norm }
            .check_rows(2, 6)
            .unwrap_err();
        assert!(err.to_string().contains("width 4"), "{err}");
        let gated = ActivationSource::Gated {
            gate: &x,
            up: &x[..8],
            activation: FfnActivation::Relu2,
            norm: None,
        };
        assert!(
            gated
                .check_rows(3, 4)
                .unwrap_err()
                .to_string()
                .contains("one length")
        );
    }

    #[test]
    fn every_path_quantizes_to_the_same_bits() {
        for len in [1, 15, 16, 33, 1536, 4099] {
            // Halves and quarters of the scale's step hit ties; a NaN and an infinity included.
            let mut x: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 101) as f32 * 0.25 - 12.5)
                .collect();
            x[0] = f32::NAN;
            if len > 20 {
                x[20] = f32::INFINITY;
            }
            for rule in [ActivationScale::Reciprocal, ActivationScale::Quotient] {
                let run = |isa| {
                    let mut q = vec![0i8; len];
                    let (scale, sum) = vectorized_on(
                        isa,
                        QuantizeRow {
                            x: &x,
                            q: &mut q,
                            rule,
                        },
                    );
                    (scale.to_bits(), sum, q)
                };
                let want = run(Isa::Scalar);
                for isa in Isa::supported() {
                    assert_eq!(run(isa), want, "{isa}, len {len}");
                }
            }
        }
    }

    #[test]
    fn shifter_rounding_equals_round_ties_even() {
        // Every quarter in range (all ties included), then a dense sweep of arbitrary floats.
        let quarters = (-520..=520).map(|i| i as f32 * 0.25);
        let dense = (0..200_000).map(|i| -128.0 + i as f32 * (256.0 / 200_000.0) + 1e-4);
        for y in quarters
            .chain(dense)
            .chain([-0.0, 0.5, -0.5, 1.5, -2.5, 126.5, 127.0])
        {
            let want = y.round_ties_even().clamp(-128.0, 127.0) as i8;
            assert_eq!(round_to_i8(y.clamp(-128.0, 127.0)), want, "y = {y}");
        }
        for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7fc0_00ff)] {
            assert_eq!(round_to_i8(nan), 0);
        }
    }

    #[test]
    fn lane_maximum_equals_the_running_maximum() {
        for len in [0, 1, 15, 16, 17, 100, 1537] {
            let mut x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 211) as f32 - 105.5)
                .collect();
            if len > 3 {
                x[3] = f32::NAN;
            }
            let want = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(abs_max(&x).to_bits(), want.to_bits(), "len {len}");
        }
        assert_eq!(abs_max(&[f32::NAN; 20]), 0.0);
        assert_eq!(abs_max(&[-0.0; 20]).to_bits(), 0f32.to_bits());
    }
}
