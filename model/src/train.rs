//! What training a model needs beyond Burn's optimizers: the language-modelling loss and the
//! learning-rate schedule of the BitNet b1.58 recipe.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean negative log-likelihood of `targets` under `logits`, in nats per token.
///
/// # Shapes
/// - `logits`: `[batch, len, vocab]`
/// - `targets`: `[batch, len]`
/// - output: `[1]`
pub fn next_token_loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let log_probs = log_softmax(logits, 2);
    log_probs.gather(2, targets.unsqueeze_dim(2)).mean().neg()
}

/// Linear warm-up to `peak`, then cosine decay to `floor` at `total` steps.
///
/// A pure function of the step (rather than Burn's stateful schedulers) so a resumed run picks
/// up the exact rate without replaying the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Rate at the end of warm-up.
    pub peak: f64,
    /// Rate at the last step.
    pub floor: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl WarmupCosine {
    /// The learning rate of step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.floor + (self.peak - self.floor) * cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_cosine_decay() {
        let schedule = WarmupCosine {
            peak: 1e-3,
            floor: 1e-4,
            warmup: 10,
            total: 110,
        };
        assert!((schedule.at(0) - 1e-4).abs() < 1e-12);
        assert!((schedule.at(9) - 1e-3).abs() < 1e-12);
        assert!((schedule.at(60) - 5.5e-4).abs() < 1e-12);
        assert!((schedule.at(110) - 1e-4).abs() < 1e-12);
        assert!((schedule.at(500) - 1e-4).abs() < 1e-12);
        assert!((1..200).all(|s| schedule.at(s) <= schedule.at(s - 1) || s < 10));
    }
}
