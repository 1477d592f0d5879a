//! Rotary position embedding as HF computes it (`rotate_half`, the two halves of each head).

use bitnet_backend::rotary_embedding;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{BitNetConfig, Llama3RopeScaling};

/// Inverse frequencies of one head and the cos/sin rows they give for any position range.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// The frequencies of `config` (base `rope_theta`, Llama 3 scaling when present).
    pub fn new(config: &BitNetConfig) -> Self {
        let dim = config.head_dim();
        // HF: 1 / base^(arange(0, dim, 2) / dim), each step in f32.
        let base = config.rope_theta as f32;
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect::<Vec<f32>>();
        let mut inv_freq = match &config.rope_scaling {
            Some(scaling) => llama3_scaled(&inv_freq, scaling),
            None => inv_freq,
        };
        if let Some(factors) = &config.rope_freq_factors {
            inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        Self { inv_freq }
    }

    /// The inverse frequencies, `[head_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` of `position * inv_freq`, each half repeated as HF's `cat(freqs, freqs)`.
    ///
    /// # Shapes
    /// - outputs: `[len, head_dim]`
    pub fn cos_sin(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * 2 * half);
        let mut sin = Vec::with_capacity(len * 2 * half);
        for pos in start..start + len {
            let angles: Vec<f32> = self.inv_freq.iter().map(|f| f * pos as f32).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [len, 2 * half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// Rotates queries or keys: `x * cos + rotate_half(x) * sin`.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, len, head_dim]`
    /// - `cos`, `sin`: `[len, head_dim]`
    /// - output: `[batch, heads, len, head_dim]`
    pub fn apply(
        x: Tensor<4>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
    ) -> crate::error::Result<Tensor<4>> {
        Ok(rotary_embedding(x, cos, sin)?)
    }
}

/// Llama 3's rule: long wavelengths are divided by `factor`, short ones kept, and the band
/// between them interpolated.
fn llama3_scaled(inv_freq: &[f32], s: &Llama3RopeScaling) -> Vec<f32> {
    let old_context = s.original_max_position_embeddings as f32;
    let factor = s.factor as f32;
    let (low, high) = (s.low_freq_factor as f32, s.high_freq_factor as f32);
    let low_freq_wavelen = old_context / low;
    let high_freq_wavelen = old_context / high;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}
