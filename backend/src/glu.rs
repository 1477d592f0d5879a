//! The gated activation of a feed-forward block, `act(gate) * up`, on the rayon pool.
//!
//! Burn's element-wise ops run on one thread and call libm's `expf` per value: in prefill that
//! was ~10% of the time. Here the values are split over the pool (in decode a few thousand per
//! layer are not worth a wake-up) and `exp` is a branch-free polynomial the compiler vectorizes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::vectorize::{FloatLoop, vectorized};

/// The gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FfnActivation {
    /// `silu(gate) * up` (Llama, 1bitLLM).
    Silu,
    /// `relu(gate)^2 * up` (BitNet b1.58 2B4T, Falcon-E).
    Relu2,
}

/// Values per rayon task; a tensor of at most this many runs on the calling thread (one decode
/// token's FFN width, e.g. 8640 at 3B, is not worth waking the pool for).
const CHUNK: usize = 16_384;

impl FfnActivation {
    /// `act(gate) * up` for one value, in the order of operations of Burn's ops
    /// (`silu(g) = g * sigmoid(g)`, `relu(g)^2 = r * r`); `relu^2` gives their bits, `silu`
    /// is within a few ulps of them (the `exp` differs).
    #[inline(always)]
    pub fn gated(self, gate: f32, up: f32) -> f32 {
        match self {
            Self::Silu => gate * sigmoid(gate) * up,
            Self::Relu2 => {
                // A comparison, as in `exp_non_positive`: NaN gives 0 either way.
                let r = if gate > 0.0 { gate } else { 0.0 };
                r * r * up
            }
        }
    }

    /// `act(gate[i]) * up[i]` for every `i`.
    ///
    /// # Panics
    /// If the slices differ in length: callers check shapes first.
    pub fn apply(self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = gate.to_vec();
        self.apply_in_place(&mut out, up);
        out
    }

    /// `gate[i] = act(gate[i]) * up[i]` for every `i`: a uniquely owned gate tensor is
    /// overwritten rather than a new buffer of the FFN's width allocated (and its pages
    /// faulted in) per layer.
    ///
    /// # Panics
    /// If the slices differ in length: callers check shapes first.
    pub fn apply_in_place(self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len(), "gate and up must have one length");
        let run = |(gate, up): (&mut [f32], &[f32])| {
            vectorized(GatedSlice {
                activation: self,
                gate: None,
                up,
                out: gate,
            })
        };
        if gate.len() <= CHUNK {
            run((gate, up));
        } else {
            gate.par_chunks_mut(CHUNK)
                .zip(up.par_chunks(CHUNK))
                .for_each(run);
        }
    }

    /// `out[i] = act(gate[i]) * up[i]` on the calling thread: one row of a feed-forward block,
    /// computed just before it is quantized (written where it is wanted: copying the gate
    /// there first to activate it in place was 0.8% of a 700M prefill).
    pub(crate) fn apply_row(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        vectorized(GatedSlice {
            activation: self,
            gate: Some(gate),
            up,
            out,
        })
    }
}

/// `out[i] = act(gate[i]) * up[i]` over one slice, the gate read from `out` itself if `gate` is
/// `None`.
struct GatedSlice<'a> {
    activation: FfnActivation,
    gate: Option<&'a [f32]>,
    up: &'a [f32],
    out: &'a mut [f32],
}

impl FloatLoop for GatedSlice<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            activation,
            gate,
            up,
            out,
        } = self;
        match gate {
            Some(gate) => {
                assert!(gate.len() == out.len() && up.len() == out.len());
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = activation.gated(g, u);
                }
            }
            None => {
                for (o, &u) in out.iter_mut().zip(up) {
                    *o = activation.gated(*o, u);
                }
            }
        }
    }
}

/// The logistic function without overflow: `exp` only ever sees a non-positive argument.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_non_positive(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

/// `exp(x)` for `x <= 0` within 2 ulps (Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// a polynomial for `exp(r)`, then `2^n` from its bits), 0 below `ln(2^-126)`. No branches or
/// libm calls, so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so `n * LN2_HI` is exact for the `n` that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SMALLEST: f32 = -87.33655; // ln of the smallest normal f32
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    // A comparison rather than `f32::max`, whose NaN rule costs a compare and a blend per
    // vector; for a NaN `x` both give `SMALLEST`.
    let clamped = if x > SMALLEST { x } else { SMALLEST };
    let shifted = clamped * LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    // `n` read from the bits rather than by a float-to-int cast, which would not vectorize.
    let n_bits = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    let two_n = f32::from_bits(n_bits << 23);
    if x < SMALLEST { 0.0 } else { exp_r * two_n }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    #[test]
    fn every_path_gives_the_same_bits() {
        let gate: Vec<f32> = (0..1037).map(|i| (i as f32 - 500.0) * 0.07).collect();
        let up: Vec<f32> = (0..1037).map(|i| (i % 13) as f32 - 6.25).collect();
        for activation in [FfnActivation::Silu, FfnActivation::Relu2] {
            // In place (the gate in `out`) and from a separate gate.
            let run = |isa, in_place: bool| {
                let mut out = if in_place {
                    gate.clone()
                } else {
                    vec![f32::NAN; gate.len()]
                };
                let (gate, up) = ((!in_place).then_some(&gate[..]), &up[..]);
                let out_ref = &mut out;
                vectorized_on(
                    isa,
                    GatedSlice {
                        activation,
                        gate,
                        up,
                        out: out_ref,
                    },
                );
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let want = run(Isa::Scalar, true);
            for isa in Isa::supported() {
                assert_eq!(run(isa, true), want, "{isa}, in place");
                assert_eq!(run(isa, false), want, "{isa}, from the gate");
            }
        }
    }

    #[test]
    fn parallel_and_serial_values_agree_and_follow_the_formula() {
        let gate: Vec<f32> = (0..20_000).map(|i| (i as f32 - 10_000.0) * 0.003).collect();
        let up: Vec<f32> = (0..20_000).map(|i| (i % 17) as f32 - 8.5).collect();
        for activation in [FfnActivation::Silu, FfnActivation::Relu2] {
            let all = activation.apply(&gate, &up);
            let small = activation.apply(&gate[..100], &up[..100]);
            assert_eq!(all[..100], small[..]);
            for (i, &y) in all.iter().enumerate() {
                let (g, u) = (gate[i] as f64, up[i] as f64);
                let want = match activation {
                    FfnActivation::Silu => g / (1.0 + (-g).exp()) * u,
                    FfnActivation::Relu2 => g.max(0.0).powi(2) * u,
                };
                assert!((y as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}");
            }
        }
        let extremes = FfnActivation::Silu.apply(&[-1e30, 1e30, f32::MIN], &[1.0, 1.0, 1.0]);
        assert_eq!(extremes[..2], [-0.0, 1e30]);
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        for i in 0..=1_000_000 {
            let x = -87.3 * i as f32 / 1e6;
            let (got, want) = (exp_non_positive(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert_eq!(exp_non_positive(-100.0), 0.0);
        assert_eq!(exp_non_positive(f32::NEG_INFINITY), 0.0);
    }
}
