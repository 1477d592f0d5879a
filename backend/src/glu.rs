//! The gated activation of a feed-forward block, `act(gate) * up`, on the rayon pool.
//!
//! Burn's element-wise ops run on one thread; in prefill this step's `exp` calls were ~8% of
//! the time, and in decode a few thousand values per layer are not worth a pool wake-up.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FfnActivation {
    /// `silu(gate) * up` (Llama, 1bitLLM).
    Silu,
    /// `relu(gate)^2 * up` (BitNet b1.58 2B4T, Falcon-E).
    Relu2,
}

/// Values per rayon task; fewer in all run on the calling thread.
const CHUNK: usize = 8192;

impl FfnActivation {
    /// `act(gate) * up` for one value, in the order of operations of Burn's Flex backend
    /// (`silu(g) = g * sigmoid(g)`, `relu(g)^2 = r * r`), so both give the same bits.
    #[inline]
    pub fn gated(self, gate: f32, up: f32) -> f32 {
        match self {
            Self::Silu => gate * sigmoid(gate) * up,
            Self::Relu2 => {
                let r = gate.max(0.0);
                r * r * up
            }
        }
    }

    /// `act(gate[i]) * up[i]` for every `i`.
    ///
    /// # Panics
    /// If the slices differ in length: callers check shapes first.
    pub fn apply(self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        assert_eq!(gate.len(), up.len(), "gate and up must have one length");
        let mut out = vec![0f32; gate.len()];
        let run = |((out, gate), up): ((&mut [f32], &[f32]), &[f32])| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = self.gated(g, u);
            }
        };
        if gate.len() <= CHUNK {
            run(((&mut out, gate), up));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(gate.par_chunks(CHUNK))
                .zip(up.par_chunks(CHUNK))
                .for_each(run);
        }
        out
    }
}

/// The logistic function without overflow: `exp` only ever sees a non-positive argument.
#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
