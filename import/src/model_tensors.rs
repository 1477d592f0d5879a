//! A loaded model read back as named tensors (the canonical names of [`crate::builder`]), for
//! every writer: HF safetensors, GGUF and the converted format.

use bitnet_backend::I2sWeights;
use bitnet_model::{BitLinear, BitNetModel, RmsNorm};
use burn::tensor::Tensor;

use crate::builder::layer_prefix;
use crate::error::{ImportError, Result};

/// One tensor of a model, on the host.
pub enum ModelTensor {
    /// Float values, row-major.
    Float { shape: Vec<usize>, values: Vec<f32> },
    /// A ternary projection in I2_S.
    Ternary(I2sWeights),
}

/// Every tensor of `model` in load order (trainable layers must be packed first).
pub fn model_tensors(model: &BitNetModel) -> Result<Vec<(String, ModelTensor)>> {
    let mut out = vec![float(
        "model.embed_tokens.weight",
        model.embed_tokens.weight.val(),
    )?];
    for (i, layer) in model.layers.iter().enumerate() {
        let p = layer_prefix(i);
        let (attn, mlp) = (&layer.self_attn, &layer.mlp);
        out.push(norm(
            &format!("{p}.input_layernorm"),
            &layer.input_layernorm,
        )?);
        for (name, linear) in [
            ("self_attn.q_proj", &attn.q_proj),
            ("self_attn.k_proj", &attn.k_proj),
            ("self_attn.v_proj", &attn.v_proj),
            ("self_attn.o_proj", &attn.o_proj),
        ] {
            ternary(&mut out, &format!("{p}.{name}"), linear)?;
        }
        if let Some(sub) = &attn.sub_norm {
            out.push(norm(&format!("{p}.self_attn.attn_sub_norm"), sub)?);
        }
        out.push(norm(
            &format!("{p}.post_attention_layernorm"),
            &layer.post_attention_layernorm,
        )?);
        for (name, linear) in [
            ("mlp.gate_proj", &mlp.gate_proj),
            ("mlp.up_proj", &mlp.up_proj),
            ("mlp.down_proj", &mlp.down_proj),
        ] {
            ternary(&mut out, &format!("{p}.{name}"), linear)?;
        }
        if let Some(sub) = &mlp.sub_norm {
            out.push(norm(&format!("{p}.mlp.ffn_sub_norm"), sub)?);
        }
    }
    out.push(norm("model.norm", &model.norm)?);
    if let Some(head) = &model.lm_head {
        out.push(float("lm_head.weight", head.weight.val().transpose())?);
    }
    Ok(out)
}

fn float<const D: usize>(name: &str, tensor: Tensor<D>) -> Result<(String, ModelTensor)> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ImportError::Unsupported(format!("reading {name}: {e:?}")))?;
    Ok((name.to_string(), ModelTensor::Float { shape, values }))
}

fn norm(prefix: &str, norm: &RmsNorm) -> Result<(String, ModelTensor)> {
    float(&format!("{prefix}.weight"), norm.weight.val())
}

/// `{prefix}.weight`, and the projection's own pre-norm when it has one.
fn ternary(out: &mut Vec<(String, ModelTensor)>, prefix: &str, linear: &BitLinear) -> Result<()> {
    out.push((
        format!("{prefix}.weight"),
        ModelTensor::Ternary(linear.to_i2s()?),
    ));
    if let Some(n) = &linear.norm {
        out.push(norm(&format!("{prefix}.rms_norm"), n)?);
    }
    Ok(())
}
