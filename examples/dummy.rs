//! Random but valid ternary models in the layouts of bitnet.cpp's
//! `generate-dummy-bitnet-model.py`, so engines can be timed on the very same weights.
//!
//! ```text
//! cargo run --release --example dummy -- --size 700M --out dummy-700m.bitnet [--gguf dummy-700m.gguf] [--seed S]
//! ```
//! Writes our converted format and, with `--gguf`, a bitnet.cpp I2_S GGUF of the same weights
//! (F16 embedding, as bitnet.cpp's files have, and a placeholder vocabulary of the model's size,
//! without which llama.cpp-family engines refuse the file). Tensors are generated and written
//! one at a time, so a 13B model needs about one embedding's worth of memory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bitnet_backend::{ActivationScale, I2sWeights, ScaleConvention, TernaryLayout};
use bitnet_import::converted::f32_bytes;
use bitnet_import::ggml::{GgmlType, encode_i2s};
use bitnet_import::gguf_write::{gguf_architecture, gguf_metadata, placeholder_vocab};
use bitnet_import::{ConvertedWriter, GgufTensorPlan, GgufWriter, StoredKind};
use bitnet_model::{BitNetConfig, FfnActivation, TernaryLinearSpec};
use clap::{Parser, ValueEnum};
use half::f16;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[allow(dead_code)] // `dummy` needs only `run_main`.
mod common;

/// (name, hidden, FFN, layers, heads): bitnet.cpp's table, plus the 700M and 3B layouts of its
/// published benchmarks.
const LAYOUTS: [(&str, usize, usize, usize, usize); 13] = [
    ("125M", 768, 3072, 11, 12),
    ("350M", 1024, 3072, 24, 16),
    ("700M", 1536, 4096, 24, 16),
    ("1B", 2048, 3584, 24, 32),
    ("1.5B", 1536, 9216, 28, 32),
    ("2.7B", 3072, 7680, 24, 32),
    ("3B", 3200, 8640, 26, 32),
    ("3.8B", 3840, 8192, 24, 32),
    ("7B", 4096, 12032, 32, 32),
    ("13B", 5120, 13824, 40, 40),
    ("30B", 6656, 16384, 60, 52),
    ("70B", 8192, 24576, 80, 64),
    ("100B", 8192, 45568, 72, 64),
];
/// The Llama 2 vocabulary plus two tokens, as the script's base model (bitnet_b1_58-large).
const VOCAB: usize = 32002;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// 1bitLLM's graph (SiLU, sub-norms), which bitnet.cpp's generator writes.
    Bitnet,
    /// BitNet b1.58 2B4T's graph (ReLU², sub-norms).
    #[value(name = "bitnet-b1.58")]
    BitnetB158,
}

/// Generate a random ternary model of a bitnet.cpp benchmark layout.
#[derive(Debug, Parser)]
struct Args {
    /// Layout: 125M, 350M, 700M, 1B, 1.5B, 2.7B, 3B, 3.8B, 7B, 13B, 30B, 70B or 100B.
    #[arg(long)]
    size: String,
    /// The converted model file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the same weights as a bitnet.cpp I2_S GGUF here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Graph to declare.
    #[arg(long, value_enum, default_value_t = Arch::Bitnet)]
    arch: Arch,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() {
    common::run_main(std::env::args(), run);
}

fn config(args: &Args) -> Result<BitNetConfig> {
    let Some(&(_, hidden, ffn, layers, heads)) = LAYOUTS
        .iter()
        .find(|l| l.0.eq_ignore_ascii_case(&args.size))
    else {
        let names: Vec<&str> = LAYOUTS.iter().map(|l| l.0).collect();
        bail!("--size {}: not one of {}", args.size, names.join(", "));
    };
    let linear = TernaryLinearSpec::new(ScaleConvention::Multiply)
        .with_activation_scale(ActivationScale::Quotient);
    let activation = match args.arch {
        Arch::Bitnet => FfnActivation::Silu,
        Arch::BitnetB158 => FfnActivation::Relu2,
    };
    Ok(
        BitNetConfig::new(VOCAB, hidden, ffn, layers, heads, heads, linear)
            .with_activation(activation)
            .with_sub_norms(true)
            .with_tie_word_embeddings(true),
    )
}

/// One tensor to generate: a float tensor (constant or random) or a ternary projection.
enum Planned {
    Norm(usize),
    Embedding(usize, usize),
    Ternary(TernaryLayout),
}

/// The tensors of `config` in load order, by canonical name.
fn plan(config: &BitNetConfig) -> Result<Vec<(String, Planned)>> {
    let (h, ffn) = (config.hidden_size, config.intermediate_size);
    let ternary = |n, k| -> Result<Planned> {
        // A scale of the size trained models have keeps activations in a sane range.
        let scale = 1.0 / (k as f32).sqrt();
        Ok(Planned::Ternary(TernaryLayout::new(
            n,
            k,
            scale,
            ScaleConvention::Multiply,
        )?))
    };
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        Planned::Embedding(config.vocab_size, h),
    )];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), Planned::Norm(h)));
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push((format!("{p}.self_attn.{name}.weight"), ternary(h, h)?));
        }
        out.push((
            format!("{p}.self_attn.attn_sub_norm.weight"),
            Planned::Norm(h),
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            Planned::Norm(h),
        ));
        out.push((format!("{p}.mlp.gate_proj.weight"), ternary(ffn, h)?));
        out.push((format!("{p}.mlp.up_proj.weight"), ternary(ffn, h)?));
        out.push((format!("{p}.mlp.down_proj.weight"), ternary(h, ffn)?));
        out.push((format!("{p}.mlp.ffn_sub_norm.weight"), Planned::Norm(ffn)));
    }
    out.push(("model.norm.weight".to_string(), Planned::Norm(h)));
    Ok(out)
}

/// SplitMix64: fast, seedable, and the same stream on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random I2_S codes for `layout`: code 3 (invalid) is turned into 1 (zero), so weights are
/// -1, 0, +1 with probabilities 1/4, 1/2, 1/4.
fn random_ternary(layout: TernaryLayout, rng: &mut Rng) -> Result<I2sWeights> {
    if layout.k.is_multiple_of(128) {
        let mut codes = vec![0u8; layout.packed_len()];
        for chunk in codes.chunks_mut(8) {
            let bytes = rng.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        for b in &mut codes {
            let threes = *b & (*b >> 1) & 0x55;
            *b ^= threes << 1;
        }
        return Ok(I2sWeights::from_codes(layout, codes)?);
    }
    // Rows with padding: pack values so the padding holds zero weights.
    let values: Vec<i8> = (0..layout.n * layout.k)
        .map(|_| match rng.next() & 3 {
            0 => -1,
            3 => 1,
            _ => 0,
        })
        .collect();
    Ok(I2sWeights::from_ternary(
        &values,
        layout.n,
        layout.k,
        layout.scale,
        layout.convention,
    )?)
}

fn run(args: Args) -> Result<()> {
    let config = config(&args)?;
    if args.gguf.as_ref() == Some(&args.out) {
        bail!("--gguf must differ from --out");
    }
    let tensors = plan(&config)?;
    let converted_plan = tensors
        .iter()
        .map(|(name, t)| {
            let kind = match t {
                Planned::Norm(w) => StoredKind::F32 { shape: vec![*w] },
                Planned::Embedding(r, c) => StoredKind::F32 {
                    shape: vec![*r, *c],
                },
                Planned::Ternary(layout) => StoredKind::I2s { layout: *layout },
            };
            (name.clone(), kind)
        })
        .collect();
    let mut converted = ConvertedWriter::create(&args.out, &config, None, converted_plan)?;
    let mut gguf = match &args.gguf {
        None => None,
        Some(path) => {
            let arch = gguf_architecture(&config)?;
            let plan = tensors
                .iter()
                .map(|(name, t)| gguf_plan(name, t))
                .collect::<Result<Vec<_>>>()?;
            let mut metadata = gguf_metadata(&config, arch);
            metadata.extend(placeholder_vocab(config.vocab_size)?);
            Some(GgufWriter::create(path, &metadata, plan)?)
        }
    };
    let progress = progress_bar(tensors.len() as u64);
    let mut rng = Rng(args.seed);
    for (name, tensor) in &tensors {
        let (ours, theirs) = match tensor {
            Planned::Norm(width) => {
                let bytes = f32_bytes(&vec![1.0; *width]);
                (bytes.clone(), bytes)
            }
            Planned::Embedding(rows, cols) => {
                // f16 values, so the F32 copy and bitnet.cpp's F16 copy are the same numbers.
                let values: Vec<f16> = (0..rows * cols)
                    .map(|_| {
                        f16::from_f32(((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1)
                    })
                    .collect();
                let floats: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
                let halves = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (f32_bytes(&floats), halves)
            }
            Planned::Ternary(layout) => {
                let weights = random_ternary(*layout, &mut rng)?;
                let gguf_bytes = if gguf.is_some() {
                    encode_i2s(&weights).map_err(anyhow::Error::msg)?
                } else {
                    Vec::new()
                };
                (weights.codes().to_vec(), gguf_bytes)
            }
        };
        converted.write_next(name, &ours)?;
        if let Some(gguf) = &mut gguf {
            gguf.write_next(&bitnet_import::gguf_model::gguf_name(name), &theirs)?;
        }
        progress.inc(1);
    }
    converted.finish().context("finishing the converted file")?;
    if let Some(gguf) = gguf {
        gguf.finish().context("finishing the GGUF file")?;
    }
    progress.finish_and_clear();
    eprintln!(
        "wrote {} ({} parameters){}",
        args.out.display(),
        config.num_parameters(),
        args.gguf
            .map(|g| format!(" and {}", g.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn gguf_plan(name: &str, tensor: &Planned) -> Result<GgufTensorPlan> {
    let (dims, ty, len) = match tensor {
        Planned::Norm(w) => (vec![*w as u64], GgmlType::F32, 4 * *w as u64),
        Planned::Embedding(r, c) => (
            vec![*c as u64, *r as u64],
            GgmlType::F16,
            2 * (r * c) as u64,
        ),
        Planned::Ternary(l) => {
            let elements = (l.n * l.k) as u64;
            let len = GgmlType::I2S
                .byte_len(elements, l.k as u64)
                .map_err(anyhow::Error::msg)?;
            (vec![l.k as u64, l.n as u64], GgmlType::I2S, len)
        }
    };
    Ok(GgufTensorPlan {
        name: bitnet_import::gguf_model::gguf_name(name),
        dims,
        ty,
        len,
    })
}

fn progress_bar(tensors: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(tensors), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("generating {bar:40} {pos}/{len} tensors {eta}")
    {
        bar.set_style(style);
    }
    bar
}
