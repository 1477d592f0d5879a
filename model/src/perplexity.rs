//! Perplexity of a token sequence in windows, like llama.cpp's `llama-perplexity` (and the
//! sliding-window form of HF's evaluation recipe).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::model::BitNetModel;

/// One window of the sequence: `tokens[start..start + len]`, scoring the predictions of the
/// tokens at offsets `first..len` (each from the tokens before it in the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First token of the window.
    pub start: usize,
    /// Tokens in the window.
    pub len: usize,
    /// Offset of the first scored token (at least 1: the first token has no context).
    pub first: usize,
}

/// Windows over `n` tokens of `ctx` tokens each.
///
/// Without a stride, the text is cut into whole chunks of `ctx` tokens and the second half of
/// each is scored, every prediction seeing at least `ctx / 2` tokens (llama-perplexity's rule).
/// With a stride, windows start every `stride` tokens and score only tokens no earlier window
/// scored, so every token after the first is scored once.
pub fn windows(n: usize, ctx: usize, stride: Option<usize>) -> Result<Vec<Window>> {
    if ctx < 2 {
        return Err(ModelError::Perplexity(format!(
            "a window needs at least 2 tokens, got {ctx}"
        )));
    }
    match stride {
        None => {
            if n < ctx {
                return Err(ModelError::Perplexity(format!(
                    "the text has {n} tokens, fewer than one window of {ctx}"
                )));
            }
            Ok((0..n / ctx)
                .map(|i| Window {
                    start: i * ctx,
                    len: ctx,
                    first: ctx / 2,
                })
                .collect())
        }
        Some(stride) => {
            // A stride of a whole window would leave each window's first token unscored.
            if stride == 0 || stride >= ctx {
                return Err(ModelError::Perplexity(format!(
                    "the stride must be between 1 and {} (below the window size {ctx}), got \
                     {stride}",
                    ctx - 1
                )));
            }
            if n < 2 {
                return Err(ModelError::Perplexity(format!(
                    "the text has {n} tokens: nothing to predict"
                )));
            }
            let mut out = Vec::new();
            let mut scored_to = 1;
            let mut start = 0;
            while scored_to < n {
                let len = ctx.min(n - start);
                out.push(Window {
                    start,
                    len,
                    first: scored_to - start,
                });
                scored_to = start + len;
                start += stride;
            }
            Ok(out)
        }
    }
}

/// Negative log-likelihoods (nats) of `tokens[first..]`, each predicted from the tokens before
/// it, in one forward pass over `tokens` from an empty context.
///
/// Makes a cache for the pass; to score many windows, make one with
/// [`BitNetModel::new_cache`] and use [`token_nll_with_cache`].
pub fn token_nll(model: &BitNetModel, tokens: &[u32], first: usize) -> Result<Vec<f64>> {
    let mut cache = model.new_cache(1, tokens.len())?;
    token_nll_with_cache(model, &mut cache, tokens, first)
}

/// [`token_nll`] in `cache` (a batch of one, emptied first, its buffers kept): one cache of the
/// window size reused across windows, as llama-perplexity keeps one context, spares each window
/// allocating a new cache and faulting its pages in as it is written.
///
/// # Errors
/// As [`token_nll`], and [`ModelError::ContextOverflow`] if `tokens` do not fit the cache.
pub fn token_nll_with_cache(
    model: &BitNetModel,
    cache: &mut KvCache,
    tokens: &[u32],
    first: usize,
) -> Result<Vec<f64>> {
    if first == 0 || first >= tokens.len() {
        return Err(ModelError::Perplexity(format!(
            "scoring from token {first} of {}: the first scored token needs context and a target",
            tokens.len()
        )));
    }
    cache.clear();
    let device = model.embed_tokens.weight.val().device();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    // Only the positions that predict a scored token go through the LM head.
    let len = tokens.len();
    let logits = model.forward_positions(input, cache, first - 1..len - 1)?;
    let vocab = logits.dims()[2];
    let log_probs = log_softmax(logits, 2)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Unsupported(format!("reading log-probabilities: {e:?}")))?;
    Ok(log_probs
        .chunks_exact(vocab)
        .zip(&tokens[first..])
        .map(|(row, &target)| -(row[target as usize] as f64))
        .collect())
}

/// Perplexity and its standard error from per-token NLLs (the error of the mean NLL, carried
/// through `exp` to first order, as llama-perplexity reports it).
pub fn perplexity(nll: &[f64]) -> (f64, f64) {
    let n = nll.len() as f64;
    let mean = nll.iter().sum::<f64>() / n;
    let variance = nll.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let ppl = mean.exp();
    (ppl, ppl * (variance / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_score_their_second_half() {
        let w = windows(10, 4, None).unwrap();
        assert_eq!(
            w,
            [
                Window {
                    start: 0,
                    len: 4,
                    first: 2
                },
                Window {
                    start: 4,
                    len: 4,
                    first: 2
                }
            ]
        );
        assert!(windows(3, 4, None).is_err());
    }

    #[test]
    fn strided_windows_score_every_token_once() {
        for (n, ctx, stride) in [(10, 4, 2), (11, 4, 3), (5, 8, 3), (9, 4, 1)] {
            let w = windows(n, ctx, Some(stride)).unwrap();
            let scored: Vec<usize> = w
                .iter()
                .flat_map(|w| w.start + w.first..w.start + w.len)
                .collect();
            assert_eq!(
                scored,
                (1..n).collect::<Vec<_>>(),
                "n={n} ctx={ctx} stride={stride}"
            );
            assert!(
                w.iter()
                    .all(|w| w.len <= ctx && w.first >= 1 && w.start + w.len <= n)
            );
        }
        assert!(windows(10, 4, Some(4)).is_err());
        assert!(windows(10, 4, Some(0)).is_err());
    }

    #[test]
    fn perplexity_of_constant_nll() {
        let (ppl, se) = perplexity(&[2f64.ln(); 8]);
        assert!((ppl - 2.0).abs() < 1e-12 && se.abs() < 1e-12);
    }
}
