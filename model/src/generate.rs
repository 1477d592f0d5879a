//! Autoregressive generation over a KV cache that lives as long as the session, so a chat's
//! later turns only process their own tokens.

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::model::BitNetModel;
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;

/// Prompts are processed in chunks of this many tokens, which bounds the attention scores'
/// memory (`heads x chunk x context`) the way llama.cpp's batch size does.
pub const PREFILL_CHUNK: usize = 512;

/// When to stop generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Stop as soon as the text contains one of these (it is not part of the output).
    pub stop_strings: Vec<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS or end of turn).
    EndOfGeneration(u32),
    /// The text reached a stop string.
    StopString(String),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The context is full; nothing more fits in the KV cache.
    ContextFull,
}

/// Counts and timings of one generation, as llama.cpp prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens processed before the first new token.
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub generated_tokens: usize,
    /// Time spent on the prompt (and the first sample).
    pub prefill: Duration,
    /// Forward passes after the prompt (one per new token but the last).
    pub decode_steps: usize,
    /// Time spent on those passes and their sampling.
    pub decode: Duration,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill)
    }

    /// Decoded tokens per second.
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_steps, self.decode)
    }
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

impl std::fmt::Display for GenerationStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prompt: {} tokens in {:.3} s ({:.2} tok/s) | generated: {} tokens, decode {:.3} s ({:.2} tok/s)",
            self.prompt_tokens,
            self.prefill.as_secs_f64(),
            self.prefill_tokens_per_second(),
            self.generated_tokens,
            self.decode.as_secs_f64(),
            self.decode_tokens_per_second(),
        )
    }
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Every sampled token, the final end-of-generation token included.
    pub tokens: Vec<u32>,
    /// The text streamed to the caller (stop string and special tokens excluded).
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
    /// Counts and timings.
    pub stats: GenerationStats,
}

/// A model with its KV cache and the tokens already in it.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m BitNetModel,
    cache: KvCache,
    /// Tokens whose keys and values are in the cache.
    history: Vec<u32>,
    /// The last sampled token, which the model has not read yet.
    pending: Option<u32>,
}

impl<'m> Session<'m> {
    /// An empty session for up to `context` positions.
    ///
    /// # Errors
    /// If the model's device cannot hold its cache type (see [`BitNetModel::new_cache`]).
    pub fn new(model: &'m BitNetModel, context: usize) -> Result<Self> {
        Ok(Self {
            model,
            cache: model.new_cache(1, context)?,
            history: Vec::new(),
            pending: None,
        })
    }

    /// The context size in tokens.
    pub fn context(&self) -> usize {
        self.cache.context()
    }

    /// Tokens the model has read (or will read first: the last sampled token).
    pub fn tokens(&self) -> Vec<u32> {
        self.history.iter().copied().chain(self.pending).collect()
    }

    /// Forgets everything read so far.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.history.clear();
        self.pending = None;
    }

    /// Reads `tokens` (after any pending sampled token) and returns the logits that predict
    /// the next one. Fails with [`ModelError::ContextOverflow`] before computing anything when
    /// they do not fit.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let input: Vec<u32> = self.pending.iter().chain(tokens).copied().collect();
        if input.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        self.cache.check_room(input.len())?;
        let mut logits = Vec::new();
        for chunk in input.chunks(PREFILL_CHUNK) {
            logits = self.forward_last(chunk)?;
            self.history.extend_from_slice(chunk);
        }
        self.pending = None;
        Ok(logits)
    }

    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let device = self.model.embed_tokens.weight.val().device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
        let logits = self.model.forward_last(input, &mut self.cache)?;
        logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Unsupported(format!("reading logits: {e:?}")))
    }

    /// Reads `prompt` and samples new tokens until a stop condition, calling `on_text` with
    /// each piece of text as soon as it is complete UTF-8 and cannot be part of a stop string.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len() + usize::from(self.pending.is_some()),
            ..GenerationStats::default()
        };
        let start = Instant::now();
        let mut logits = self.feed(prompt)?;
        let mut text = StopStringFilter::new(&options.stop_strings);
        let mut stream = tokenizer.stream();
        let mut tokens = Vec::new();
        let mut step_start = start;
        let stop = loop {
            if tokens.len() == options.max_new_tokens {
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&logits, &self.history);
            tokens.push(token);
            self.pending = Some(token);
            if tokens.len() == 1 {
                stats.prefill = start.elapsed();
            } else {
                stats.decode += step_start.elapsed();
            }
            if tokenizer.is_end_of_generation(token) {
                break StopReason::EndOfGeneration(token);
            }
            if let Some(piece) = stream.push(token)?
                && let Some(found) = text.push(&piece, &mut on_text)
            {
                break StopReason::StopString(found);
            }
            if tokens.len() == options.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if self.history.len() + 1 > self.context() {
                break StopReason::ContextFull;
            }
            step_start = Instant::now();
            logits = self.feed(&[])?;
            stats.decode_steps += 1;
        };
        if stats.prefill.is_zero() {
            stats.prefill = start.elapsed();
        }
        stats.generated_tokens = tokens.len();
        let text = text.finish(&mut on_text);
        Ok(Generation {
            tokens,
            text,
            stop,
            stats,
        })
    }
}

/// Holds back streamed text that might be the start of a stop string.
struct StopStringFilter<'s> {
    stops: &'s [String],
    text: String,
    emitted: usize,
}

impl<'s> StopStringFilter<'s> {
    fn new(stops: &'s [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds `piece`; emits what is safe; returns the stop string once the text contains one.
    fn push(&mut self, piece: &str, on_text: &mut impl FnMut(&str)) -> Option<String> {
        let search_from = self.emitted;
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = found {
            self.text.truncate(search_from + at);
            self.emit(self.text.len(), on_text);
            return Some(stop.clone());
        }
        let held = self
            .stops
            .iter()
            .map(|stop| partial_suffix(&self.text[self.emitted..], stop))
            .max()
            .unwrap_or(0);
        self.emit(self.text.len() - held, on_text);
        None
    }

    fn emit(&mut self, end: usize, on_text: &mut impl FnMut(&str)) {
        if end > self.emitted {
            on_text(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    /// Emits whatever was held back and returns the whole text.
    fn finish(mut self, on_text: &mut impl FnMut(&str)) -> String {
        self.emit(self.text.len(), on_text);
        self.text
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, Option<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut filter = StopStringFilter::new(&stops);
        let mut out = Vec::new();
        let mut found = None;
        for piece in pieces {
            found = filter.push(piece, &mut |t| out.push(t.to_string()));
            if found.is_some() {
                break;
            }
        }
        let text = filter.finish(&mut |t| out.push(t.to_string()));
        (out, found, text)
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_streamed() {
        let (out, found, text) = run(&["User:"], &["Hi", " there\nUs", "er: more"]);
        assert_eq!(found.as_deref(), Some("User:"));
        assert_eq!(text, "Hi there\n");
        assert_eq!(out.concat(), "Hi there\n");
        assert!(out.iter().all(|p| !p.contains("Us")));
    }

    #[test]
    fn held_back_text_is_released_when_it_is_not_a_stop() {
        let (out, found, text) = run(&["STOP"], &["a ST", "ART b"]);
        assert_eq!(found, None);
        assert_eq!(out, ["a ", "START b"]);
        assert_eq!(text, "a START b");
    }

    #[test]
    fn multibyte_stop_strings_hold_back_on_character_boundaries() {
        let (out, found, _) = run(&["«end»"], &["x «", "end» y"]);
        assert_eq!(found.as_deref(), Some("«end»"));
        assert_eq!(out.concat(), "x ");
    }
}
