//! Choosing the next token from logits: llama.cpp's sampler chain (repetition penalty, top-k,
//! top-p, min-p, temperature, draw) with a seeded generator, or greedy argmax at temperature 0.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};

/// Sampling parameters; the defaults are llama-cli's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0` keeps all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (`1` keeps all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (`0` keeps all).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (`1` is off).
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random draw: the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (always the most likely token).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(ModelError::Sampling(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad(format!("min-p {} must be in [0, 1)", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat penalty {} must be > 0",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// A sampler with its own random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `config.seed`.
    pub fn new(config: SamplerConfig) -> Result<Self> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self { config, rng })
    }

    /// The parameters.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The next token given the logits of the last position and the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        self.penalize(&mut logits, history);
        if self.config.temperature == 0.0 {
            return argmax(&logits);
        }
        let candidates = self.candidates(&logits);
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut threshold = self.rng.random::<f32>() * total;
        for &(id, weight) in &candidates {
            if threshold < weight {
                return id;
            }
            threshold -= weight;
        }
        candidates.last().map_or(0, |c| c.0)
    }

    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.config.repeat_penalty;
        if penalty == 1.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.config.repeat_last_n)..];
        let mut seen = recent.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = if *logit > 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
    }

    /// The tokens that survive top-k, top-p and min-p, most likely first, with their
    /// unnormalized probabilities at the configured temperature.
    fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut kept: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let k = self.config.top_k;
        if k > 0 && k < kept.len() {
            kept.select_nth_unstable_by(k - 1, by_logit);
            kept.truncate(k);
        }
        kept.sort_unstable_by(by_logit);
        let Some(&(_, max)) = kept.first() else {
            return vec![(0, 1.0)];
        };
        // Probabilities at temperature 1 decide top-p and min-p, as in llama.cpp's chain.
        let probs: Vec<f32> = kept.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = kept.len();
        if self.config.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cumulative += p / total;
                if cumulative >= self.config.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.config.min_p > 0.0 {
            keep = keep.min(
                probs
                    .iter()
                    .take_while(|&&p| p >= self.config.min_p)
                    .count(),
            );
        }
        kept.truncate(keep.max(1));
        let t = self.config.temperature;
        kept.iter()
            .map(|&(id, logit)| (id, ((logit - max) / t).exp()))
            .collect()
    }
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = i;
        }
    }
    best as u32
}
