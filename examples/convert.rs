//! Converts a model once so later runs load it fast (or for bitnet.cpp).
//!
//! ```text
//! cargo run --release --example convert -- --input HF_DIR_OR_GGUF --output model.bitnet
//! cargo run --release --example convert -- --input HF_DIR --output model.gguf --format gguf
//! ```
//! The converted format memory-maps and uploads the I2_S codes as they are (no repacking) and
//! carries the tokenizer; `--format gguf` writes a bitnet.cpp I2_S GGUF instead.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bitnet_import::{TokenizerFiles, save_converted, save_gguf};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[allow(dead_code)] // `convert` needs only `run_main` and `load_model`.
mod common;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Our memory-mappable format (see the README's "Model files").
    Converted,
    /// bitnet.cpp's GGUF with I2_S projections.
    Gguf,
    /// A Hugging Face directory in BitNet b1.58 2B4T's packed layout (2B4T-layout models only).
    Hf,
}

/// Convert a model: HF directory, GGUF or converted file in; converted file or GGUF out.
#[derive(Debug, Parser)]
struct Args {
    /// The model to read: an HF directory, a GGUF file or a converted file.
    #[arg(short, long)]
    input: PathBuf,
    /// The file to write (replaced only once the new one is complete).
    #[arg(short, long)]
    output: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = Format::Converted)]
    format: Format,
}

fn main() {
    common::run_main(std::env::args(), run);
}

fn run(args: Args) -> Result<()> {
    if args.output.is_dir() {
        bail!(
            "--output {} is a directory; give a file name",
            args.output.display()
        );
    }
    if args.output == args.input {
        bail!("--output must differ from --input");
    }
    let device = burn::tensor::Device::flex();
    let start = Instant::now();
    let model = common::load_model(&args.input, &device)?;
    let tokenizer = TokenizerFiles::read(&args.input)
        .with_context(|| format!("reading the tokenizer of {}", args.input.display()))?;
    eprintln!(
        "loaded {} in {:.2} s",
        args.input.display(),
        start.elapsed().as_secs_f64()
    );
    if tokenizer.is_none() {
        eprintln!(
            "note: {} has no tokenizer; the output will carry none",
            args.input.display()
        );
    }
    let start = Instant::now();
    let progress = progress_bar();
    match args.format {
        Format::Converted => save_converted(&model, tokenizer.as_ref(), &args.output, &progress),
        Format::Gguf => save_gguf(&model, tokenizer.as_ref(), &args.output, &progress),
        Format::Hf => save_hf_dir(&model, tokenizer.as_ref(), &args.output),
    }
    .with_context(|| format!("writing {}", args.output.display()))?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {} in {:.2} s",
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The HF export with the source's tokenizer files beside it (BOS/EOS default to the Llama 2
/// ids 1 and 2 when the source has no tokenizer, as bitnet.cpp's dummy models do).
fn save_hf_dir(
    model: &bitnet_model::BitNetModel,
    tokenizer: Option<&TokenizerFiles>,
    dir: &std::path::Path,
) -> bitnet_import::Result<()> {
    let (mut bos, mut eos) = (1, 2);
    if let Some(files) = tokenizer {
        let special = files.tokenizer(dir)?.special().clone();
        bos = special.bos.unwrap_or(bos);
        eos = special.eos.first().copied().unwrap_or(eos);
    }
    bitnet_import::save_hf_model(model, dir, bos, eos)?;
    if let Some(TokenizerFiles::Hf { files }) = tokenizer {
        for (name, text) in files {
            // config.json and generation_config.json are the export's own.
            if name.starts_with("tokenizer") || name == "chat_template.jinja" {
                std::fs::write(dir.join(name), text).map_err(|source| {
                    bitnet_import::ImportError::Write {
                        path: dir.join(name),
                        source,
                    }
                })?;
            }
        }
    }
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("writing {bytes} {binary_bytes_per_sec}") {
        bar.set_style(style);
    }
    bar
}
