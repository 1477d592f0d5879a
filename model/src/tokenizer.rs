//! Text to token ids and back, for every vocabulary a BitNet checkpoint can carry.
//!
//! Hugging Face `tokenizer.json` files load as they are; the vocabularies stored in GGUF metadata
//! (SentencePiece tokens + scores, or byte-level BPE tokens + merges) are rebuilt as the
//! equivalent `tokenizers` pipeline, so both paths share one encoder and one streaming decoder.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{ModelError, Result};

/// SentencePiece's word-boundary marker, which stands for a space inside tokens.
const SPM_SPACE: &str = "\u{2581}";

/// Llama 3's pre-tokenizer split (also used by Falcon 3 and BitNet b1.58 2B4T).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn in the chat formats we support. llama.cpp treats the same
/// strings as end-of-generation even when the metadata names only one EOS token.
const END_OF_TURN_TOKENS: [&str; 4] = ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>"];

/// What kind of token a vocabulary entry is (the GGUF `tokenizer.ggml.token_type` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// The type of a GGUF token-type code.
    pub fn from_gguf(code: i32) -> Result<Self> {
        Ok(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "unknown token type code {other}"
                )));
            }
        })
    }
}

/// How byte-level BPE text is cut into words before merging (GGUF `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's built-in split.
    Gpt2,
    /// Llama 3's split regex.
    Llama3,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp associates with a `tokenizer.ggml.pre` name.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "default" | "gpt2" | "gpt-2" => Ok(Self::Gpt2),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
                Ok(Self::Llama3)
            }
            other => Err(ModelError::Tokenizer(format!(
                "unsupported pre-tokenizer `{other}` (supported: default, gpt2, llama-bpe, falcon3)"
            ))),
        }
    }
}

/// The merge rule of a vocabulary stored as plain token lists.
#[derive(Debug, Clone, PartialEq)]
pub enum VocabModel {
    /// SentencePiece BPE (Llama 2, 1bitLLM): one score per token; higher scores merge first.
    SentencePiece { scores: Vec<f32> },
    /// Byte-level BPE (GPT-2, Llama 3): ranked merges of two token texts.
    BytePairs {
        merges: Vec<(String, String)>,
        pre_tokenizer: PreTokenizer,
    },
}

/// The token ids that frame a sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// Every token that ends generation (EOS and end-of-turn tokens).
    pub eos: Vec<u32>,
    /// Whether a prompt starts with BOS.
    pub add_bos: bool,
}

/// A vocabulary as GGUF metadata stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerVocab {
    /// Token texts, indexed by id.
    pub tokens: Vec<String>,
    /// One type per token.
    pub types: Vec<TokenType>,
    /// How tokens merge.
    pub model: VocabModel,
    /// The unknown token (SentencePiece only).
    pub unknown: Option<u32>,
}

/// An encoder/decoder with the special tokens and chat template of its model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// Llama 3's vocabulary is used the way it was trained (tiktoken) and the way llama.cpp
    /// runs it: a word that is itself a token is not re-merged. Copies of its `tokenizer.json`
    /// that lost the `ignore_merges` flag give other ids, so it is set for the Llama 3 split.
    pub fn from_json_file(path: &Path, special: SpecialTokens) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_json_str(&text, &path.display().to_string(), special)
    }

    /// Parses the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str, special: SpecialTokens) -> Result<Self> {
        let fail = |e: &dyn std::fmt::Display| ModelError::Tokenizer(format!("{origin}: {e}"));
        let mut json: serde_json::Value = serde_json::from_str(text).map_err(|e| fail(&e))?;
        let pre_tokenizer = json.get("pre_tokenizer").map(|p| p.to_string());
        if pre_tokenizer
            .is_some_and(|p| p.contains(&serde_json::Value::from(LLAMA3_SPLIT).to_string()))
            && let Some(model) = json.get_mut("model").and_then(|m| m.as_object_mut())
            && model.get("type").and_then(|t| t.as_str()) == Some("BPE")
        {
            model.insert("ignore_merges".into(), true.into());
        }
        let inner: tokenizers::Tokenizer = serde_json::from_value(json).map_err(|e| fail(&e))?;
        Ok(Self::with_end_of_turn(inner, special))
    }

    /// Rebuilds the tokenizer a vocabulary in GGUF metadata describes.
    pub fn from_vocab(vocab: TokenizerVocab, special: SpecialTokens) -> Result<Self> {
        let TokenizerVocab {
            tokens,
            types,
            model,
            unknown,
        } = vocab;
        if types.len() != tokens.len() {
            return Err(ModelError::Tokenizer(format!(
                "{} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let ids: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        if ids.len() != tokens.len() {
            return Err(ModelError::Tokenizer(
                "the vocabulary holds the same token text twice".into(),
            ));
        }
        let mut inner = match model {
            VocabModel::SentencePiece { scores } => {
                let unknown = unknown.and_then(|id| tokens.get(id as usize)).cloned();
                sentencepiece(ids, &tokens, &types, &scores, unknown)?
            }
            VocabModel::BytePairs {
                merges,
                pre_tokenizer,
            } => byte_level_bpe(ids, merges, pre_tokenizer)?,
        };
        let added = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(t, TokenType::Control | TokenType::UserDefined))
            .map(|(token, t)| AddedToken::from(token.clone(), *t == TokenType::Control));
        inner
            .add_special_tokens(added.collect::<Vec<_>>())
            .map_err(tokenizer_error)?;
        Ok(Self::with_end_of_turn(inner, special))
    }

    fn with_end_of_turn(inner: tokenizers::Tokenizer, special: SpecialTokens) -> Self {
        Self {
            inner,
            special: SpecialTokens::default(),
            chat_template: None,
        }
        .with_special(special)
    }

    /// Replaces BOS/EOS (end-of-turn tokens of the vocabulary are always added to EOS).
    pub fn with_special(mut self, mut special: SpecialTokens) -> Self {
        for text in END_OF_TURN_TOKENS {
            if let Some(id) = self.inner.token_to_id(text)
                && !special.eos.contains(&id)
            {
                special.eos.push(id);
            }
        }
        self.special = special;
        self
    }

    /// Attaches the chat template the model's files carry.
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self
    }

    /// The chat template from the model's files, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// BOS, EOS and whether prompts start with BOS.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether `token` ends generation.
    pub fn is_end_of_generation(&self, token: u32) -> bool {
        self.special.eos.contains(&token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token text, if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a token id, if the vocabulary has it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of `text`; special-token texts in it become their ids. With `add_bos`, the ids
    /// start with BOS when the model uses one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(tokenizer_error)?;
        let bos = self.special.bos.filter(|_| add_bos && self.special.add_bos);
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// The text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tokenizer_error)
    }

    /// A decoder that turns ids into text one at a time without splitting UTF-8 characters.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(true),
        }
    }
}

/// Incremental detokenization: each step returns the text that became complete.
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    /// Adds one token; returns the new text once it forms whole characters.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(tokenizer_error)
    }
}

/// SentencePiece BPE as Hugging Face converts it: a space marker prepended and substituted for
/// spaces, merges ranked by the score of the merged token, bytes as `<0xXX>` fallbacks.
fn sentencepiece(
    ids: Vocab,
    tokens: &[String],
    types: &[TokenType],
    scores: &[f32],
    unknown: Option<String>,
) -> Result<tokenizers::Tokenizer> {
    if scores.len() != tokens.len() {
        return Err(ModelError::Tokenizer(format!(
            "{} tokens but {} scores",
            tokens.len(),
            scores.len()
        )));
    }
    let merges = merges_from_scores(tokens, types, scores);
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        builder = builder.unk_token(unknown);
    }
    let model = builder.build().map_err(tokenizer_error)?;
    let mut inner = tokenizers::Tokenizer::new(model);
    let normalizer = NormalizerSequence::new(vec![
        Prepend::new(SPM_SPACE.into()).into(),
        Replace::new(" ", SPM_SPACE)
            .map_err(tokenizer_error)?
            .into(),
    ]);
    inner
        .with_normalizer(Some(normalizer))
        .map_err(tokenizer_error)?;
    inner.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new(SPM_SPACE, " ")
            .map_err(tokenizer_error)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ])));
    Ok(inner)
}

/// SentencePiece merges every adjacent pair whose concatenation is a normal token, best score
/// first; as a ranked merge list that is every split of every normal token into two normal
/// tokens, ordered by the whole token's score (ties by the pieces' ids, as HF's converter does).
fn merges_from_scores(
    tokens: &[String],
    types: &[TokenType],
    scores: &[f32],
) -> Vec<(String, String)> {
    let normal: HashMap<&str, u32> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, t))| **t == TokenType::Normal)
        .map(|(id, (token, _))| (token.as_str(), id as u32))
        .collect();
    let mut ranked = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types[id] != TokenType::Normal {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (normal.get(left), normal.get(right)) {
                ranked.push((scores[id], l, r, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn byte_level_bpe(
    ids: Vocab,
    merges: Vec<(String, String)>,
    pre_tokenizer: PreTokenizer,
) -> Result<tokenizers::Tokenizer> {
    let model = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(pre_tokenizer == PreTokenizer::Llama3)
        .build()
        .map_err(tokenizer_error)?;
    let mut inner = tokenizers::Tokenizer::new(model);
    match pre_tokenizer {
        PreTokenizer::Gpt2 => {
            inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        PreTokenizer::Llama3 => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tokenizer_error)?;
            inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
    }
    inner.with_decoder(Some(ByteLevel::default()));
    Ok(inner)
}
