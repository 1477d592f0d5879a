//! A Hugging Face checkpoint directory (config.json + safetensors) -> [`BitNetModel`].

use std::path::Path;

use bitnet_backend::{I2sWeights, ScaleConvention, TernaryError};
use bitnet_model::BitNetModel;
use burn::tensor::Device;

use crate::builder::{WeightSource, build_model};
use crate::error::{ImportError, Result};
use crate::hf_config::{Family, read_config};
use crate::store::TensorStore;

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
    // HF ties the head even when a copy is saved, and caches RoPE frequencies: neither is used.
    if config.tie_word_embeddings {
        store.ignore("lm_head.weight");
    }
    for i in 0..config.num_hidden_layers {
        store.ignore(&format!("model.layers.{i}.self_attn.rotary_emb.inv_freq"));
    }
    let source = HfSource {
        store: &store,
        family,
        convention: config.linear.convention,
    };
    build_model(&source, &config, device)
}

/// An HF checkpoint answering for the canonical names.
struct HfSource<'a> {
    store: &'a TensorStore,
    family: Family,
    convention: ScaleConvention,
}

impl HfSource<'_> {
    /// The checkpoint's name for a canonical one (1bitLLM names its sub-norms differently).
    fn name(&self, canonical: &str) -> String {
        match self.family.sub_norm_names() {
            Some((attn, ffn)) => canonical
                .replace("self_attn.attn_sub_norm", attn)
                .replace("mlp.ffn_sub_norm", ffn),
            None => canonical.to_string(),
        }
    }
}

impl WeightSource for HfSource<'_> {
    fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.store.float(&self.name(name), shape)
    }

    fn ternary(&self, prefix: &str, n: usize, k: usize) -> Result<I2sWeights> {
        let name = format!("{prefix}.weight");
        let ternary = |source: TernaryError| ImportError::Ternary {
            name: name.clone(),
            source,
        };
        if self.family.packed_weights() {
            let packed = self.store.bytes(&name, &[n.div_ceil(4), k])?;
            let scale = self.store.float(&format!("{prefix}.weight_scale"), &[1])?[0];
            I2sWeights::from_hf_packed(packed, n, k, scale, self.convention).map_err(ternary)
        } else {
            let latent = self.store.float(&name, &[n, k])?;
            I2sWeights::from_latent(&latent, n, k).map_err(ternary)
        }
    }

    fn unused(&self) -> Vec<String> {
        self.store.unused()
    }

    fn total_bytes(&self) -> usize {
        self.store.total_bytes()
    }
}
