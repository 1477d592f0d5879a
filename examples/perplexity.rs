//! Perplexity of a text file, like llama.cpp's `llama-perplexity`.
//!
//! ```text
//! cargo run --release --example perplexity -- -m DIR -f TEXT [--ctx 512] [--stride N] [--chunks N] [--json]
//! ```
//! Without `--stride` the text is cut into chunks of `--ctx` tokens and the second half of each
//! is scored (llama-perplexity's rule); with it, windows slide by `N` tokens and every token
//! after the first is scored once. `--chunks N` stops after the first N windows (llama-perplexity's
//! quick estimate). The result (PPL ± its standard error) goes to stdout; with
//! `--json`, an object with the per-window NLL that evaluation scripts read.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bitnet_model::{perplexity, token_nll_with_cache, windows};
use burn::tensor::Device;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod common;
use common::{ModelArgs, RunArgs};

/// Perplexity of a ternary model on a text file.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Tokens per window (default: the model's trained context, at most 512).
    #[arg(short = 'c', long = "ctx")]
    ctx: Option<usize>,
    /// Slide windows by this many tokens and score each token once.
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N windows (llama-perplexity's `--chunks`; default: all).
    #[arg(long)]
    chunks: Option<usize>,
    /// Print a JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
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
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let model_dir = args.model.path();
    let model = args.model.load(&device)?;
    let tokenizer = args.model.tokenizer()?;
    let tokens = tokenizer.encode(&text, true)?;
    let ctx = args
        .ctx
        .unwrap_or(model.config.max_position_embeddings.min(512));
    common::warn_past_training_context(&model, ctx, "--ctx");
    let mut windows = windows(tokens.len(), ctx, args.stride)
        .with_context(|| format!("{} with --ctx {ctx}", args.file.display()))?;
    let all_windows = windows.len();
    if let Some(chunks) = args.chunks {
        windows.truncate(chunks);
    }

    let bar = ProgressBar::new(windows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} windows, eta {eta} | {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // One cache for every window (the longest is the first), as llama-perplexity keeps one
    // context: a new one per window would be allocated and faulted in again.
    let mut cache = model.new_cache(1, windows[0].len)?;
    let mut all = Vec::new();
    let mut per_window = Vec::new();
    for window in &windows {
        let slice = &tokens[window.start..window.start + window.len];
        let nll = token_nll_with_cache(&model, &mut cache, slice, window.first)?;
        per_window.push(json!({
            "start": window.start,
            "tokens": window.len,
            "scored": nll.len(),
            "nll": nll.iter().sum::<f64>(),
        }));
        all.extend(nll);
        bar.inc(1);
        bar.set_message(format!("PPL so far {:.4}", perplexity(&all).0));
    }
    bar.finish_and_clear();

    let (ppl, se) = perplexity(&all);
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    if args.json {
        let out = json!({
            "model": model_dir,
            "file": args.file,
            "ctx": ctx,
            "stride": args.stride,
            "chunks": args.chunks,
            "windows_in_text": all_windows,
            "tokens": tokens.len(),
            "scored": all.len(),
            "nll_mean": mean,
            "ppl": ppl,
            "ppl_se": se,
            "windows": per_window,
        });
        common::print_line(serde_json::to_string_pretty(&out)?)?;
    } else {
        let of_all = if windows.len() < all_windows {
            format!(" (the first of {all_windows})")
        } else {
            String::new()
        };
        common::print_line(format_args!(
            "perplexity: {ppl:.4} ± {se:.4} (mean NLL {mean:.4} nats/token) over {} scored of {} \
             tokens in {} window{}{of_all} of {ctx}",
            all.len(),
            tokens.len(),
            windows.len(),
            if windows.len() == 1 { "" } else { "s" },
        ))?;
    }
    Ok(())
}
