//! A Hugging Face checkpoint directory (config.json + safetensors) -> [`BitNetModel`].

use std::path::Path;

use bitnet_backend::{I2sWeights, TernaryError};
use bitnet_model::{
    Attention, BitLinear, BitNetConfig, BitNetModel, DecoderLayer, FeedForward, RmsNorm,
    RotaryEmbedding,
};
use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{ImportError, Result};
use crate::hf_config::{Family, read_config};
use crate::store::TensorStore;

/// Checkpoints smaller than this load without a progress bar.
const PROGRESS_MIN_BYTES: usize = 64 << 20;

/// Loads an HF checkpoint directory onto `device`.
///
/// Reads `config.json`, memory-maps `model.safetensors` (or the shards of
/// `model.safetensors.index.json`), repacks packed u8 weights and ternarizes latent ones into
/// I2_S, and fails on any missing, extra or misshapen tensor.
pub fn load_hf_model(dir: &Path, device: &Device) -> Result<BitNetModel> {
    if !dir.is_dir() {
        return Err(ImportError::MissingFile {
            what: "model directory",
            path: dir.to_path_buf(),
        });
    }
    let (config, family) = read_config(dir)?;
    let store = TensorStore::open_dir(dir)?;
    let progress = progress_bar(config.num_hidden_layers as u64 + 2, store.total_bytes());
    let loader = Loader {
        store: &store,
        config: &config,
        family,
        device,
    };
    let model = loader.model(&progress)?;
    progress.finish_and_clear();
    let unused = store.unused();
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

struct Loader<'a> {
    store: &'a TensorStore,
    config: &'a BitNetConfig,
    family: Family,
    device: &'a Device,
}

impl Loader<'_> {
    fn model(&self, progress: &ProgressBar) -> Result<BitNetModel> {
        let c = self.config;
        let embed = self.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
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
            // HF ties the head even when a copy is saved; the copy is not used.
            self.store.ignore("lm_head.weight");
            None
        } else {
            let weight = self.matrix("lm_head.weight", c.vocab_size, c.hidden_size)?;
            Some(Linear {
                weight: Param::from_tensor(weight.transpose()),
                bias: None,
            })
        };
        progress.inc(1);
        Ok(BitNetModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed),
            },
            layers,
            norm,
            lm_head,
            rope: RotaryEmbedding::new(c),
            config: c.clone(),
        })
    }

    fn layer(&self, i: usize) -> Result<DecoderLayer> {
        let c = self.config;
        let p = format!("model.layers.{i}");
        let (h, head_dim) = (c.hidden_size, c.head_dim());
        let q_width = c.num_attention_heads * head_dim;
        let kv_width = c.num_key_value_heads * head_dim;
        let sub_norm = |name: Option<&str>, width| {
            name.map(|n| self.norm(&format!("{p}.{n}"), width, c.rms_norm_eps))
                .transpose()
        };
        let (attn_sub, ffn_sub) = match self.family.sub_norm_names() {
            Some((attn, ffn)) => (Some(attn), Some(ffn)),
            None => (None, None),
        };
        self.store
            .ignore(&format!("{p}.self_attn.rotary_emb.inv_freq"));
        Ok(DecoderLayer {
            input_layernorm: self.norm(&format!("{p}.input_layernorm"), h, c.rms_norm_eps)?,
            self_attn: Attention {
                q_proj: self.linear(&format!("{p}.self_attn.q_proj"), q_width, h)?,
                k_proj: self.linear(&format!("{p}.self_attn.k_proj"), kv_width, h)?,
                v_proj: self.linear(&format!("{p}.self_attn.v_proj"), kv_width, h)?,
                o_proj: self.linear(&format!("{p}.self_attn.o_proj"), h, q_width)?,
                sub_norm: sub_norm(attn_sub, q_width)?,
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
                sub_norm: sub_norm(ffn_sub, c.intermediate_size)?,
                activation: c.activation,
            },
        })
    }

    /// A float matrix `[rows, cols]` on the device.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>> {
        let values = self.store.float(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(values, [rows, cols]),
            self.device,
        ))
    }

    /// An RMSNorm whose gain is `{prefix}.weight`.
    fn norm(&self, prefix: &str, width: usize, eps: f64) -> Result<RmsNorm> {
        let values = self.store.float(&format!("{prefix}.weight"), &[width])?;
        let weight = Tensor::from_data(TensorData::new(values, [width]), self.device);
        Ok(RmsNorm::from_weight(weight, eps))
    }

    /// A ternary projection `[n, k]` from packed u8 + `weight_scale`, or from latent weights.
    fn linear(&self, prefix: &str, n: usize, k: usize) -> Result<BitLinear> {
        let name = format!("{prefix}.weight");
        let ternary = |source: TernaryError| ImportError::Ternary {
            name: name.clone(),
            source,
        };
        let weights = if self.family.packed_weights() {
            let packed = self.store.bytes(&name, &[n.div_ceil(4), k])?;
            let scale_name = format!("{prefix}.weight_scale");
            let scale = self.store.float(&scale_name, &[1])?[0];
            I2sWeights::from_hf_packed(packed, n, k, scale, self.config.linear.convention)
                .map_err(ternary)?
        } else {
            let latent = self.store.float(&name, &[n, k])?;
            I2sWeights::from_latent(&latent, n, k).map_err(ternary)?
        };
        let norm = self
            .config
            .linear
            .rms_norm_eps
            .map(|eps| self.norm(&format!("{prefix}.rms_norm"), k, eps))
            .transpose()?;
        Ok(BitLinear::from_i2s(
            &weights,
            &self.config.linear,
            norm,
            self.device,
        )?)
    }
}
