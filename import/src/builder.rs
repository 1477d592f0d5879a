//! Builds a [`BitNetModel`] from any checkpoint format through one naming scheme.
//!
//! Every format (HF directory, GGUF, our converted file) is a [`WeightSource`] that answers for
//! the canonical tensor names — HF's, with BitNet b1.58 2B4T's sub-norm names
//! (`self_attn.attn_sub_norm`, `mlp.ffn_sub_norm`) — so shapes are checked and layers assembled
//! in one place.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use bitnet_backend::{HalfMatrix, I2sWeights};
use bitnet_model::{
    Attention, BitLinear, BitNetConfig, BitNetModel, CacheType, DecoderLayer, FeedForward, RmsNorm,
    RotaryEmbedding,
};
use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{ImportError, Result};

/// Checkpoints smaller than this load without a progress bar.
const PROGRESS_MIN_BYTES: usize = 64 << 20;

/// Tensors of one checkpoint, looked up by canonical name.
pub(crate) trait WeightSource {
    /// A float tensor as f32, after checking its shape.
    fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// The ternary matrix `{prefix}.weight` of shape `[n, k]`, packed as I2_S.
    fn ternary(&self, prefix: &str, n: usize, k: usize) -> Result<I2sWeights>;

    /// Tensors the model did not ask for (an error unless empty).
    fn unused(&self) -> Vec<String>;

    /// Bytes of tensor data (decides whether loading shows a progress bar).
    fn total_bytes(&self) -> usize;
}

/// Builds the model `config` describes from `source`, failing on anything missing, misshapen or
/// left over.
pub(crate) fn build_model(
    source: &dyn WeightSource,
    config: &BitNetConfig,
    device: &Device,
) -> Result<BitNetModel> {
    config.validate()?;
    let progress = progress_bar(config.num_hidden_layers as u64 + 2, source.total_bytes());
    let builder = Builder {
        source,
        config,
        device,
    };
    let model = builder.model(&progress)?;
    progress.finish_and_clear();
    let unused = source.unused();
    if !unused.is_empty() {
        return Err(ImportError::ExtraTensors(unused));
    }
    Ok(model)
}

fn progress_bar(steps: u64, bytes: usize) -> ProgressBar {
    if bytes < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    // indicatif draws nothing when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("loading {bar:40} {pos}/{len} layers {msg}") {
        bar.set_style(style);
    }
    bar
}

/// The LM head `[vocab, hidden]` in 16 bits, if that is exact (see `BitNetModel::half_head`).
fn half_matrix(values: &[f32], c: &BitNetConfig) -> Option<HalfMatrix> {
    HalfMatrix::from_f32_exact(values, c.vocab_size, c.hidden_size)
}

/// The tensors of a file a model has read, to list the ones it did not (a file with tensors
/// the model has no place for is not the model it claims to be).
#[derive(Default)]
pub(crate) struct UsedNames(RefCell<BTreeSet<String>>);

impl UsedNames {
    pub(crate) fn mark(&self, name: &str) {
        self.0.borrow_mut().insert(name.to_string());
    }

    /// The names in `all` not marked, in their order.
    pub(crate) fn unused<'a>(&self, all: impl Iterator<Item = &'a String>) -> Vec<String> {
        let used = self.0.borrow();
        all.filter(|name| !used.contains(*name)).cloned().collect()
    }
}

/// The canonical name of layer `i`'s tensors start with this.
pub(crate) fn layer_prefix(i: usize) -> String {
    format!("model.layers.{i}")
}

struct Builder<'a> {
    source: &'a dyn WeightSource,
    config: &'a BitNetConfig,
    device: &'a Device,
}

impl Builder<'_> {
    fn model(&self, progress: &ProgressBar) -> Result<BitNetModel> {
        let c = self.config;
        let embed = self
            .source
            .float("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        // The 16-bit head copy is made from the values as read, before they become a tensor
        // (reading a tensor back would copy the whole table once more).
        let mut half_head = c.tie_word_embeddings.then(|| half_matrix(&embed, c));
        progress.inc(1);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let layer = self.layer(i);
                progress.inc(1);
                layer
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = self.norm("model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            let values = self
                .source
                .float("lm_head.weight", &[c.vocab_size, c.hidden_size])?;
            half_head = Some(half_matrix(&values, c));
            let weight = self.tensor(values, c.vocab_size, c.hidden_size);
            Some(Linear {
                weight: Param::from_tensor(weight.transpose()),
                bias: None,
            })
        };
        progress.inc(1);
        Ok(BitNetModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(self.tensor(embed, c.vocab_size, c.hidden_size)),
            },
            layers,
            norm,
            lm_head,
            half_head: half_head.flatten().map(Arc::new),
            int8_head: None,
            cache_type: CacheType::default(),
            rope: RotaryEmbedding::new(c),
            config: c.clone(),
        })
    }

    fn layer(&self, i: usize) -> Result<DecoderLayer> {
        let c = self.config;
        let p = layer_prefix(i);
        let (h, head_dim) = (c.hidden_size, c.head_dim());
        let q_width = c.num_attention_heads * head_dim;
        let kv_width = c.num_key_value_heads * head_dim;
        let sub_norm = |name: &str, width| {
            c.sub_norms
                .then(|| self.norm(&format!("{p}.{name}"), width, c.rms_norm_eps))
                .transpose()
        };
        Ok(DecoderLayer {
            input_layernorm: self.norm(&format!("{p}.input_layernorm"), h, c.rms_norm_eps)?,
            self_attn: Attention {
                q_proj: self.linear(&format!("{p}.self_attn.q_proj"), q_width, h)?,
                k_proj: self.linear(&format!("{p}.self_attn.k_proj"), kv_width, h)?,
                v_proj: self.linear(&format!("{p}.self_attn.v_proj"), kv_width, h)?,
                o_proj: self.linear(&format!("{p}.self_attn.o_proj"), h, q_width)?,
                sub_norm: sub_norm("self_attn.attn_sub_norm", q_width)?,
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim,
            },
            post_attention_layernorm: self.norm(
                &format!("{p}.post_attention_layernorm"),
                h,
                c.rms_norm_eps,
            )?,
            mlp: FeedForward {
                gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, h)?,
                up_proj: self.linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, h)?,
                down_proj: self.linear(&format!("{p}.mlp.down_proj"), h, c.intermediate_size)?,
                sub_norm: sub_norm("mlp.ffn_sub_norm", c.intermediate_size)?,
                activation: c.activation,
            },
        })
    }

    /// A float matrix `[rows, cols]` on the device.
    fn tensor(&self, values: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, [rows, cols]), self.device)
    }

    /// An RMSNorm whose gain is `{prefix}.weight`.
    fn norm(&self, prefix: &str, width: usize, eps: f64) -> Result<RmsNorm> {
        let values = self.source.float(&format!("{prefix}.weight"), &[width])?;
        let weight = Tensor::from_data(TensorData::new(values, [width]), self.device);
        Ok(RmsNorm::from_weight(weight, eps))
    }

    /// A ternary projection `[n, k]`, with its own pre-norm when the spec asks for one.
    fn linear(&self, prefix: &str, n: usize, k: usize) -> Result<BitLinear> {
        let weights = self.source.ternary(prefix, n, k)?;
        let norm = self
            .config
            .linear
            .rms_norm_eps
            .map(|eps| self.norm(&format!("{prefix}.rms_norm"), k, eps))
            .transpose()?;
        Ok(BitLinear::from_i2s(
            weights,
            &self.config.linear,
            norm,
            self.device,
        )?)
    }
}
