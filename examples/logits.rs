//! The evaluation primitive: logits of a token sequence from a model directory.
//!
//! ```text
//! cargo run --release --example logits -- --model DIR --tokens 1,2,3 [--out FILE.safetensors]
//! cargo run --release --example logits -- --text "ROMEO:"
//! ```
//! Prints the argmax of every position; with `--out`, writes the f32 logits `[T, vocab]` under
//! the key `logits` for evaluation scripts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;

mod common;
use common::{ModelArgs, RunArgs};
use safetensors::{Dtype, tensor::TensorView};

/// Logits of a token sequence (one forward pass, batch 1).
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', num_args = 1.., required_unless_present = "text", conflicts_with = "text")]
    tokens: Vec<i64>,
    /// Text to tokenize with the model's tokenizer instead of `--tokens`.
    #[arg(long)]
    text: Option<String>,
    /// Write the logits [T, vocab] (f32) to this safetensors file under the key `logits`.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

fn main() {
    common::run_main(std::env::args(), |args: Args| {
        args.run.clone().install(|device| run(args, device))
    });
}

/// The example on `device`, on a thread of the `-t` pool.
fn run(args: Args, device: Device) -> Result<()> {
    let model = args.model.load(&device)?;
    let ids = match &args.text {
        Some(text) => {
            let ids = args.model.tokenizer()?.encode(text, true)?;
            ids.into_iter().map(i64::from).collect()
        }
        None => args.tokens,
    };
    let len = ids.len();
    if len == 0 {
        anyhow::bail!("--text gives no tokens");
    }
    common::warn_past_training_context(&model, len, "the token sequence");
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
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
        common::print_line(format_args!("{position}\t{best}\t{logit}"))?;
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
