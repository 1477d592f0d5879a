//! The decoder and the causal language model on top of it.

use burn::module::Module;
use burn::nn::Initializer;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use std::ops::Range;
use std::sync::Arc;

use bitnet_backend::{HalfMatrix, Int8Matrix, Isa};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::attention::Attention;
use crate::bitlinear::{BitLinear, BitLinearConfig};
use crate::cache::{CacheType, KvCache, LayerCache};
use crate::config::BitNetConfig;
use crate::error::{ModelError, Result};
use crate::feed_forward::FeedForward;
use crate::norm::{RmsNorm, RmsNormConfig};
use crate::pool::with_pool_awake;
use crate::profile::Laps;
use crate::rope::RotaryEmbedding;

/// One pre-norm decoder block: `h = x + attn(norm(x))`, `out = h + ffn(norm(h))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the feed-forward block.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: FeedForward,
}

impl DecoderLayer {
    /// Packs the layer's trainable projections (see [`BitLinear::pack`]).
    pub fn pack(self) -> Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.pack()?,
            mlp: self.mlp.pack()?,
            ..self
        })
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]`
    /// - output: `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<2>, &Tensor<2>),
        cache: &mut LayerCache,
        start: usize,
    ) -> Result<Tensor<3>> {
        let attended =
            self.self_attn
                .forward_normed(&self.input_layernorm, x.clone(), rope, cache, start)?;
        let h = x + attended;
        let mut laps = Laps::start(&cache.profile);
        let ffn = self
            .mlp
            .forward_normed(&self.post_attention_layernorm, h.clone())?;
        laps.lap(&mut cache.profile, |p| &mut p.feed_forward);
        Ok(h + ffn)
    }
}

/// Positions up to which the LM head uses its 16-bit copy: decode reads the whole table for one
/// row, where halving its bytes pays; long prefills and full logits use the f32 matmul.
const HEAD_COPY_MAX_ROWS: usize = 8;

/// A BitNet causal language model: embedding, decoder layers, final norm and a float LM head.
#[derive(Module, Debug)]
pub struct BitNetModel {
    /// Token embedding, `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Separate LM head (Burn layout `[hidden, vocab]`); `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// The LM head's weights in 16 bits, `[vocab, hidden]`, when that copy is exact (see
    /// [`BitNetModel::with_half_head`]); used for a few rows at a time, as in decode. A copy:
    /// it does not follow later changes to the head's weights.
    #[module(skip)]
    pub half_head: Option<Arc<HalfMatrix>>,
    /// An int8 copy of the LM head, used instead of the f32 and 16-bit ones when set (opt-in,
    /// not lossless: see [`BitNetModel::with_int8_head`]).
    #[module(skip)]
    pub int8_head: Option<Arc<Int8Matrix>>,
    /// What [`BitNetModel::new_cache`] stores (see [`BitNetModel::with_cache_type`]).
    #[module(skip)]
    pub cache_type: CacheType,
    /// RoPE frequencies.
    #[module(skip)]
    pub rope: RotaryEmbedding,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: BitNetConfig,
}

impl BitNetConfig {
    /// A randomly initialized model (ternary projections from uniform latent weights).
    pub fn init(&self, device: &Device) -> Result<BitNetModel> {
        self.build(
            |linear| linear.init(device),
            EmbeddingConfig::new(self.vocab_size, self.hidden_size),
            device,
        )
    }

    /// A model for quantization-aware training: every projection keeps latent float weights
    /// (see [`BitLinearConfig::init_trainable`]) and the embedding starts at `N(0, 0.02)` as in
    /// the BitNet/Llama recipes. Build it on an autodiff device (`Device::autodiff`) to train,
    /// then [`BitNetModel::pack`] it for inference.
    pub fn init_trainable(&self, device: &Device) -> Result<BitNetModel> {
        self.build(
            |linear| linear.init_trainable(device),
            EmbeddingConfig::new(self.vocab_size, self.hidden_size).with_initializer(
                Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                },
            ),
            device,
        )
    }

    fn build(
        &self,
        init_linear: impl Fn(BitLinearConfig) -> Result<BitLinear>,
        embedding: EmbeddingConfig,
        device: &Device,
    ) -> Result<BitNetModel> {
        self.validate()?;
        let (hidden, head_dim) = (self.hidden_size, self.head_dim());
        let linear = |d_input, d_output| {
            init_linear(BitLinearConfig::new(d_input, d_output, self.linear.clone()))
        };
        let norm = |width| {
            RmsNormConfig::new(width)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let sub_norm = |width| self.sub_norms.then(|| norm(width));
        let layers = (0..self.num_hidden_layers)
            .map(|_| {
                Ok(DecoderLayer {
                    input_layernorm: norm(hidden),
                    self_attn: Attention {
                        q_proj: linear(hidden, self.num_attention_heads * head_dim)?,
                        k_proj: linear(hidden, self.num_key_value_heads * head_dim)?,
                        v_proj: linear(hidden, self.num_key_value_heads * head_dim)?,
                        o_proj: linear(self.num_attention_heads * head_dim, hidden)?,
                        sub_norm: sub_norm(self.num_attention_heads * head_dim),
                        heads: self.num_attention_heads,
                        kv_heads: self.num_key_value_heads,
                        head_dim,
                    },
                    post_attention_layernorm: norm(hidden),
                    mlp: FeedForward {
                        gate_proj: linear(hidden, self.intermediate_size)?,
                        up_proj: linear(hidden, self.intermediate_size)?,
                        down_proj: linear(self.intermediate_size, hidden)?,
                        sub_norm: sub_norm(self.intermediate_size),
                        activation: self.activation,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BitNetModel {
            embed_tokens: embedding.init(device),
            layers,
            norm: norm(hidden),
            lm_head: (!self.tie_word_embeddings).then(|| {
                LinearConfig::new(hidden, self.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            half_head: None,
            int8_head: None,
            cache_type: CacheType::F32,
            rope: RotaryEmbedding::new(self),
            config: self.clone(),
        })
    }
}

/// Per-layer residual streams of one forward pass, for comparing against a reference.
#[derive(Debug, Clone)]
pub struct HiddenStates {
    /// Embedding output, `[batch, len, hidden]`.
    pub embed: Tensor<3>,
    /// Residual stream after each decoder layer.
    pub layers: Vec<Tensor<3>>,
    /// Output of the final norm.
    pub final_norm: Tensor<3>,
}

impl BitNetModel {
    /// The inference model a trained one stands for: every trainable projection packed into
    /// I2_S (see [`BitLinear::pack`]); float parts are kept as they are.
    pub fn pack(self) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .map(DecoderLayer::pack)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, ..self })
    }

    /// An empty KV cache for `batch` sequences of up to `context` positions, storing the
    /// model's [`CacheType`].
    ///
    /// # Errors
    /// If the model's device has no tensors of that type.
    pub fn new_cache(&self, batch: usize, context: usize) -> Result<KvCache> {
        KvCache::new(
            self.layers.len(),
            batch,
            self.config.num_key_value_heads,
            self.config.head_dim(),
            context,
            self.cache_type,
            &self.device(),
        )
    }

    /// The device the model's weights are on.
    fn device(&self) -> Device {
        self.embed_tokens.weight.val().device()
    }

    /// Makes [`BitNetModel::new_cache`] (and so generation, perplexity and the examples) keep
    /// keys and values as `cache_type`. [`CacheType::F16`] halves the cache's memory and what
    /// decode reads of it; it is not lossless (each key and value is rounded to f16 once).
    ///
    /// # Errors
    /// If the model's device has no tensors of that type (NdArray has no f16).
    pub fn with_cache_type(mut self, cache_type: CacheType) -> Result<Self> {
        cache_type.check(&self.device())?;
        self.cache_type = cache_type;
        Ok(self)
    }

    /// Logits of every new position, attending to everything already in `cache`.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, len]`
    /// - output: `[batch, len, vocab]`
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<3>> {
        let (h, _) = self.run(tokens, cache, false)?;
        Ok(self.profiled_head(h, cache))
    }

    /// Logits of the last new position only: what generation needs, without running the LM
    /// head over the whole prompt.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, len]`
    /// - output: `[batch, vocab]`
    pub fn forward_last(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<2>> {
        let [_, len] = tokens.dims();
        let logits = self.forward_positions(tokens, cache, len.saturating_sub(1)..len)?;
        Ok(logits.squeeze_dim(1))
    }

    /// Logits of the new positions in `positions` only (indices into the `len` new tokens):
    /// what scoring needs (perplexity scores half of each window), without running the LM head
    /// over the rest. Every position still goes through the layers and into the cache.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, len]`
    /// - output: `[batch, positions.len(), vocab]`
    pub fn forward_positions(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        positions: Range<usize>,
    ) -> Result<Tensor<3>> {
        let [_, len] = tokens.dims();
        // No tokens at all is `run`'s error to report.
        if len > 0 && (positions.is_empty() || positions.end > len) {
            return Err(ModelError::Config(format!(
                "logits of positions {positions:?} asked of {len} new tokens"
            )));
        }
        let (h, _) = self.run(tokens, cache, false)?;
        let [batch, _, hidden] = h.dims();
        Ok(self.profiled_head(h.slice([0..batch, positions, 0..hidden]), cache))
    }

    /// [`BitNetModel::forward`] that also returns every layer's residual stream.
    pub fn forward_with_hidden(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<(Tensor<3>, HiddenStates)> {
        let (h, hidden) = self.run(tokens, cache, true)?;
        Ok((
            self.profiled_head(h, cache),
            hidden.expect("hidden states were requested"),
        ))
    }

    /// Logits of a whole sequence from an empty context (no cache kept).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, len]`
    /// - output: `[batch, len, vocab]`
    pub fn forward_full(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [batch, len] = tokens.dims();
        self.forward(tokens, &mut self.new_cache(batch, len)?)
    }

    /// The final norm's output for the new tokens, with the pool kept awake between the
    /// layers' parallel calls ([`with_pool_awake`]).
    fn run(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        keep_hidden: bool,
    ) -> Result<(Tensor<3>, Option<HiddenStates>)> {
        with_pool_awake(|| self.run_layers(tokens, cache, keep_hidden))
    }

    fn run_layers(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        keep_hidden: bool,
    ) -> Result<(Tensor<3>, Option<HiddenStates>)> {
        let [_, len] = tokens.dims();
        if len == 0 {
            return Err(ModelError::EmptyInput);
        }
        self.check_tokens(&tokens)?;
        cache.check_room(len)?;
        let start = cache.len();
        let device = tokens.device();
        let (cos, sin) = self.rope.cos_sin(start, len, &device);

        let mut x = self.embed_tokens.forward(tokens);
        let embed = keep_hidden.then(|| x.clone());
        let mut layer_states = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, (&cos, &sin), cache.layer_mut(index), start)?;
            if keep_hidden {
                layer_states.push(x.clone());
            }
        }
        cache.advance(len);
        let h = self.norm.forward(x)?;
        let hidden = embed.map(|embed| HiddenStates {
            embed,
            layers: layer_states,
            final_norm: h.clone(),
        });
        Ok((h, hidden))
    }

    /// [`BitNetModel::lm_head`], timed into `cache`'s profile when it keeps one.
    fn profiled_head(&self, h: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let mut laps = Laps::start(&cache.profile);
        let logits = self.lm_head(h);
        laps.lap(&mut cache.profile, |p| &mut p.head);
        logits
    }

    /// The float LM head (tied to the embedding when there is no separate head).
    ///
    /// # Shapes
    /// - `h`: `[batch, len, hidden]`
    /// - output: `[batch, len, vocab]`
    pub fn lm_head(&self, h: Tensor<3>) -> Tensor<3> {
        if let Some(logits) = self.head_copy_logits(&h) {
            return logits;
        }
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => {
                // `W · hᵀ` with the embedding as stored: transposing the `[vocab, hidden]` table
                // instead would copy all of it on every call (half of decode time at 32k vocab).
                let [batch, len, hidden] = h.dims();
                let weight = self.embed_tokens.weight.val();
                let vocab = weight.dims()[0];
                let columns = h.reshape([batch * len, hidden]).transpose();
                weight
                    .matmul(columns)
                    .transpose()
                    .reshape([batch, len, vocab])
            }
        }
    }

    /// Keeps a 16-bit copy of the LM head (the tied embedding or the separate head) when every
    /// weight is exactly an F16 or a BF16, as in bitnet.cpp's files (F16 embeddings) and HF's
    /// BF16 checkpoints. Decode then reads half the bytes per token and multiplies the same
    /// values; only the order of summation differs from the f32 matmul. Otherwise the model is
    /// returned unchanged. The importers build the same copy while they read the weights; call
    /// this for a model built otherwise, and again after training the head's weights (the copy
    /// does not follow them; calls with gradients never use it).
    pub fn with_half_head(mut self) -> Self {
        let (values, rows, cols) = self.head_values();
        self.half_head = values
            .and_then(|values| HalfMatrix::from_f32_exact(&values, rows, cols))
            .map(Arc::new);
        self
    }

    /// Keeps an int8 copy of the LM head (per-row scales; each position's hidden state
    /// quantized to int8 per token) and drops the 16-bit one: decode then reads half of F16's
    /// bytes for the head (on the 3B layout at two threads, ~10% of a token's time). Used for
    /// every position without gradients, so prefill, decode and perplexity see the same head.
    /// Not lossless: on the golden checkpoints logits move by at most 1.2% (mean 0.3%) of their
    /// largest magnitude, within the hard limit but not the strict tier, so greedy choices
    /// between near-equal logits can change. Like the 16-bit copy, it does not follow later
    /// training of the head.
    ///
    /// # Errors
    /// If the head's weights are not finite f32 values, or the hidden size is beyond what the
    /// int8 sums hold.
    pub fn with_int8_head(mut self) -> Result<Self> {
        let (values, rows, cols) = self.head_values();
        let values = values.ok_or_else(|| {
            ModelError::Unsupported("the LM head's weights are not f32 values".into())
        })?;
        self.int8_head = Some(Arc::new(Int8Matrix::quantize(&values, rows, cols)?));
        self.half_head = None;
        Ok(self)
    }

    /// Bytes one decode step reads when `cached` positions are already in the cache: every
    /// layer's packed codes and norm weights, the LM head in the format decode uses, one
    /// embedding row, and the keys and values (of the model's [`CacheType`]) of the
    /// `cached + 1` positions attended.
    /// Over a step's time, the memory bandwidth decode draws.
    pub fn decode_bytes(&self, cached: usize) -> u64 {
        let value_bytes = self.cache_type.value_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|layer| {
                let (attn, mlp) = (&layer.self_attn, &layer.mlp);
                let linears = [
                    &attn.q_proj,
                    &attn.k_proj,
                    &attn.v_proj,
                    &attn.o_proj,
                    &mlp.gate_proj,
                    &mlp.up_proj,
                    &mlp.down_proj,
                ];
                let norms = [&layer.input_layernorm, &layer.post_attention_layernorm]
                    .into_iter()
                    .chain(attn.sub_norm.as_ref())
                    .chain(mlp.sub_norm.as_ref());
                let kv = 2 * attn.kv_heads * attn.head_dim * value_bytes * (cached + 1);
                linears.iter().map(|l| l.weight_bytes()).sum::<usize>()
                    + norms.map(RmsNorm::weight_bytes).sum::<usize>()
                    + kv
            })
            .sum();
        let [vocab, hidden] = self.embed_tokens.weight.dims();
        let head = match (&self.int8_head, &self.half_head) {
            (Some(head), _) => head.bytes(),
            (None, Some(head)) => head.bytes(),
            (None, None) => 4 * vocab * hidden,
        };
        (layers + self.norm.weight_bytes() + head + 4 * hidden) as u64
    }

    /// The format decode's LM head reads: `"int8"`, `"f16"`, `"bf16"` or `"f32"`.
    pub fn head_format(&self) -> &'static str {
        match (&self.int8_head, &self.half_head) {
            (Some(_), _) => "int8",
            (None, Some(head)) => head.format(),
            (None, None) => "f32",
        }
    }

    /// The LM head's weights as `[vocab, hidden]` f32 values (`None` if they are another type),
    /// with that shape.
    fn head_values(&self) -> (Option<Vec<f32>>, usize, usize) {
        let weight = match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.embed_tokens.weight.val(),
        };
        let [rows, cols] = weight.dims();
        (weight.into_data().try_to_vec::<f32>().ok(), rows, cols)
    }

    /// Logits from the head copies without gradients: the int8 copy for any number of
    /// positions (its logits differ from the f32 head's, so prefill, decode and perplexity all
    /// use it alike), the 16-bit one for up to [`HEAD_COPY_MAX_ROWS`]; `None` where the f32
    /// matmul is the better (or the only) choice.
    fn head_copy_logits(&self, h: &Tensor<3>) -> Option<Tensor<3>> {
        let [batch, len, _] = h.dims();
        let half_head = self
            .half_head
            .as_ref()
            .filter(|_| batch * len <= HEAD_COPY_MAX_ROWS);
        if h.is_require_grad() || (self.int8_head.is_none() && half_head.is_none()) {
            return None;
        }
        let x = h.clone().into_data().try_to_vec::<f32>().ok()?;
        let isa = Isa::selected().ok()?;
        let (logits, vocab) = match (&self.int8_head, half_head) {
            (Some(head), _) => (head.matvec(isa, &x).ok()?, head.shape()[0]),
            (None, Some(head)) => (head.matvec(isa, &x).ok()?, head.shape()[0]),
            (None, None) => return None,
        };
        Some(Tensor::from_data(
            TensorData::new(logits, [batch, len, vocab]),
            &h.device(),
        ))
    }

    fn check_tokens(&self, tokens: &Tensor<2, Int>) -> Result<()> {
        let vocab = self.config.vocab_size;
        let data = tokens.clone().into_data();
        let bad = data
            .iter::<i64>()
            .enumerate()
            .find(|(_, t)| *t < 0 || *t as usize >= vocab);
        match bad {
            Some((position, token)) => Err(ModelError::TokenOutOfRange {
                token,
                position,
                vocab,
            }),
            None => Ok(()),
        }
    }
}
