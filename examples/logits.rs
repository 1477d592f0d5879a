//! The evaluation primitive: logits of a token sequence from a model directory.
//!
//! ```text
//! cargo run --release --example logits -- --model DIR --tokens 1,2,3 [--out FILE.safetensors]
//! ```
//! Prints the argmax of every position; with `--out`, writes the f32 logits `[T, vocab]` under
//! the key `logits` for evaluation scripts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bitnet_import::load_hf_model;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Parser;

mod common;
use common::Backend;
use safetensors::{Dtype, tensor::TensorView};

/// Logits of a token sequence (one forward pass, batch 1).
#[derive(Debug, Parser)]
struct Args {
    /// HF model directory (config.json + model.safetensors); default: the bundled demo model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    tokens: Vec<i64>,
    /// Write the logits [T, vocab] (f32) to this safetensors file under the key `logits`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Threads for the kernels and float parts (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Burn backend.
    #[arg(long, value_enum, default_value = "flex")]
    device: Backend,
}

fn main() {
    common::init_logging();
    common::exit_on_error(run(Args::parse()));
}

fn run(args: Args) -> Result<()> {
    common::init_threads(args.threads)?;
    let device = args.device.device();
    let model_dir = args.model.unwrap_or_else(common::demo_model_dir);
    let model = load_hf_model(&model_dir, &device)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let len = args.tokens.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(args.tokens, [1, len]), &device);
    let logits = model.forward_full(tokens)?;
    let vocab = model.config.vocab_size;
    let values: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    for (position, row) in values.chunks_exact(vocab).enumerate() {
        let (best, logit) = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        println!("{position}\t{best}\t{logit}");
    }
    if let Some(out) = args.out {
        if out.is_dir() {
            bail!("--out {} is a directory", out.display());
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![len, vocab], &bytes)?;
        safetensors::serialize_to_file([("logits", view)], None, &out)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote logits [{len}, {vocab}] to {}", out.display());
    }
    Ok(())
}
