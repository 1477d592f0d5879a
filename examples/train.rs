//! Quantization-aware training of a small byte-level BitNet b1.58 2B4T-style model.
//!
//! ```text
//! cargo run --release --example train -- --data ../shared/data/tinyshakespeare.txt --out DIR
//! ```
//! The last 10% of the file is held out for validation. Every `--eval-every` steps the
//! validation loss is printed and a checkpoint written to `DIR/checkpoint` (`--resume` continues
//! from it); at the end the packed model is exported to `DIR` as an HF checkpoint
//! (config.json + model.safetensors + tokenizer.json) that `infer -m DIR` runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use bitnet_backend::ScaleConvention;
use bitnet_import::{BYTE_LEVEL_END_OF_TEXT, save_byte_level_tokenizer, save_hf_model, write_json};
use bitnet_model::{
    BitNetConfig, BitNetModel, FfnActivation, TernaryLinearSpec, WarmupCosine, next_token_loss,
};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

// Shared by all examples; this one has no use for the demo model's location.
#[allow(dead_code)]
mod common;
use common::RunArgs;

/// Train a ternary byte-level language model with the straight-through estimator.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
struct Args {
    /// Training text (bytes are the tokens).
    #[arg(long)]
    data: PathBuf,
    /// Output directory: the exported model, and its checkpoint under `checkpoint/`.
    #[arg(long, default_value = "trained-model")]
    out: PathBuf,
    /// Continue from `OUT/checkpoint` (the model shape and schedule come from the checkpoint).
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence (also the model's context).
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Width of the feed-forward block.
    #[arg(long, default_value_t = 640)]
    ffn: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Peak learning rate (ternary weights want a higher rate than float ones).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f32,
    /// Steps between validation passes and checkpoints.
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Validation batches per pass.
    #[arg(long, default_value_t = 16)]
    eval_batches: usize,
    /// Seed of the initialization and of the batch order.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Where to run (the device gets autodiff); not part of the checkpoint.
    #[command(flatten)]
    #[serde(skip)]
    run: RunArgs,
}

/// What a checkpoint records besides the model and optimizer tensors.
#[derive(Debug, Serialize, Deserialize)]
struct TrainState {
    args: Args,
    /// Steps completed.
    step: usize,
    /// Validation loss after each pass: `(step, nats per byte)`.
    history: Vec<(usize, f64)>,
    /// Wall-clock seconds spent training, over all runs.
    seconds: f64,
}

fn main() {
    common::run_main(std::env::args(), |args: Args| {
        args.run.clone().install(|device| run(args, device))
    });
}

/// The example on `device`, on a thread of the `-t` pool.
fn run(args: Args, device: Device) -> Result<()> {
    let device = device.autodiff();
    let checkpoint = args.out.join("checkpoint");
    let (args, mut state) = if args.resume {
        let state: TrainState = read_json(&checkpoint.join("state.json"))?;
        let resumed = Args {
            data: args.data,
            out: args.out,
            resume: true,
            run: args.run,
            ..state.args.clone()
        };
        (resumed, state)
    } else {
        let state = TrainState {
            args: args.clone(),
            step: 0,
            history: Vec::new(),
            seconds: 0.0,
        };
        (args, state)
    };
    check_args(&args)?;
    let text = std::fs::read(&args.data)
        .with_context(|| format!("reading the training data {}", args.data.display()))?;
    let corpus = Corpus::split(text, args.seq)?;
    let config = model_config(&args);
    device.seed(args.seed);

    let mut model = config.init_trainable(&device)?;
    let mut optimizer = AdamWConfig::new()
        .with_beta_2(0.95)
        .with_weight_decay(args.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    if args.resume {
        model = model
            .try_load_file(checkpoint.join("model.bpk"))
            .with_context(|| format!("loading the checkpoint in {}", checkpoint.display()))?;
        let record = OptimizerRecord::load(checkpoint.join("optimizer.bpk"))
            .with_context(|| format!("loading the optimizer state in {}", checkpoint.display()))?;
        optimizer = optimizer.load_record(record);
        eprintln!("resuming at step {}", state.step);
    }
    eprintln!(
        "model: {} parameters ({} layers, hidden {}, ffn {}), {} training / {} validation bytes",
        model.num_params(),
        args.layers,
        args.hidden,
        args.ffn,
        corpus.train.len(),
        corpus.valid.len()
    );

    let schedule = WarmupCosine {
        peak: args.lr,
        floor: args.lr / 10.0,
        warmup: args.warmup,
        total: args.steps,
    };
    let bar = ProgressBar::new(args.steps as u64).with_position(state.step as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, eta {eta} | {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let (first_step, seconds_before) = (state.step, state.seconds);
    while state.step < args.steps {
        let step = state.step;
        let lr = schedule.at(step);
        let mut rng = StdRng::seed_from_u64(args.seed ^ (step as u64).wrapping_mul(0x9e37_79b9));
        let (inputs, targets) = corpus.batch(&corpus.train, args.batch, &mut rng, &device);
        let loss = next_token_loss(model.forward_full(inputs)?, targets);
        let loss_value = scalar(loss.clone())?;
        ensure!(
            loss_value.is_finite(),
            "the training loss became {loss_value} at step {step}: lower --lr"
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
        state.step += 1;
        bar.inc(1);
        let per_sec = (state.step - first_step) as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {loss_value:.3}, lr {lr:.2e}, {per_sec:.2} steps/s"
        ));
        if state.step.is_multiple_of(args.eval_every) || state.step == args.steps {
            let valid = validation_loss(&model.valid(), &corpus, &args)?;
            state.history.push((state.step, valid));
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            bar.suspend(|| {
                eprintln!(
                    "step {}: train loss {loss_value:.4}, validation loss {valid:.4} nats/byte",
                    state.step
                )
            });
            save_checkpoint(&checkpoint, &model, &optimizer, &state)?;
        }
    }
    bar.finish();

    let packed = model.valid().pack()?;
    let valid = validation_loss(&packed, &corpus, &args)?;
    eprintln!(
        "packed (I2_S) model: validation loss {valid:.4} nats/byte after {} steps",
        state.step
    );
    save_hf_model(
        &packed,
        &args.out,
        BYTE_LEVEL_END_OF_TEXT,
        BYTE_LEVEL_END_OF_TEXT,
    )?;
    save_byte_level_tokenizer(&args.out)?;
    write_json(
        &args.out.join("training.json"),
        &serde_json::json!({
            "args": state.args,
            "steps": state.step,
            "validation_history": state.history,
            "training_seconds": state.seconds.round(),
            "packed_validation_loss": valid,
        }),
    )?;
    eprintln!(
        "exported to {} (run it: cargo run --release --example infer -- -m {})",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn check_args(args: &Args) -> Result<()> {
    for (flag, value) in [
        ("--steps", args.steps),
        ("--batch", args.batch),
        ("--seq", args.seq),
        ("--hidden", args.hidden),
        ("--ffn", args.ffn),
        ("--layers", args.layers),
        ("--heads", args.heads),
        ("--eval-every", args.eval_every),
        ("--eval-batches", args.eval_batches),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    if !args.hidden.is_multiple_of(args.heads) || !(args.hidden / args.heads).is_multiple_of(2) {
        bail!(
            "--hidden {} must split into --heads {} heads of even width",
            args.hidden,
            args.heads
        );
    }
    Ok(())
}

/// The 2B4T layout (ReLU², sub-norms, multiply scale convention, tied embedding) over bytes.
fn model_config(args: &Args) -> BitNetConfig {
    BitNetConfig::new(
        BYTE_LEVEL_END_OF_TEXT as usize + 1,
        args.hidden,
        args.ffn,
        args.layers,
        args.heads,
        args.heads,
        TernaryLinearSpec::new(ScaleConvention::Multiply),
    )
    .with_activation(FfnActivation::Relu2)
    .with_sub_norms(true)
    .with_tie_word_embeddings(true)
    .with_max_position_embeddings(args.seq)
}

/// The training text split into a training and a held-out part.
struct Corpus {
    train: Vec<u8>,
    valid: Vec<u8>,
    seq: usize,
}

impl Corpus {
    fn split(mut text: Vec<u8>, seq: usize) -> Result<Self> {
        let cut = text.len() - text.len() / 10;
        let valid = text.split_off(cut);
        if valid.len() <= seq + 1 {
            bail!(
                "the training data is too short: its last 10% ({} bytes) must exceed --seq {} + 1",
                valid.len(),
                seq
            );
        }
        Ok(Self {
            train: text,
            valid,
            seq,
        })
    }

    /// `batch` random windows of `part`: inputs and the same bytes shifted by one.
    fn batch(
        &self,
        part: &[u8],
        batch: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..part.len() - self.seq - 1))
            .collect();
        self.windows(part, &starts, device)
    }

    fn windows(
        &self,
        part: &[u8],
        starts: &[usize],
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let tensor = |offset: usize| {
            let ids: Vec<i32> = starts
                .iter()
                .flat_map(|&s| {
                    part[s + offset..s + offset + self.seq]
                        .iter()
                        .map(|&b| b as i32)
                })
                .collect();
            Tensor::from_data(TensorData::new(ids, [starts.len(), self.seq]), device)
        };
        (tensor(0), tensor(1))
    }
}

/// Mean loss over fixed, evenly spaced validation windows (the same ones every pass).
fn validation_loss(model: &BitNetModel, corpus: &Corpus, args: &Args) -> Result<f64> {
    let device = model.embed_tokens.weight.val().device();
    let count = args.eval_batches * args.batch;
    let span = corpus.valid.len() - args.seq - 1;
    let starts: Vec<usize> = (0..count).map(|i| i * span / count).collect();
    let mut total = 0.0;
    for chunk in starts.chunks(args.batch) {
        let (inputs, targets) = corpus.windows(&corpus.valid, chunk, &device);
        total += scalar(next_token_loss(model.forward_full(inputs)?, targets))?;
    }
    Ok(total / args.eval_batches as f64)
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    let values = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a loss value: {e:?}"))?;
    Ok(values[0] as f64)
}

fn save_checkpoint(
    dir: &Path,
    model: &BitNetModel,
    optimizer: &ModuleOptimizer,
    state: &TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Written beside the old checkpoint and renamed over it, so an interrupted save never
    // leaves a half-written checkpoint behind.
    let model_path = dir.join("model.bpk");
    let optimizer_path = dir.join("optimizer.bpk");
    let state_path = dir.join("state.json");
    let staged = |path: &Path| path.with_extension("partial");
    model
        .clone()
        .save_file(staged(&model_path))
        .context("saving the model checkpoint")?;
    optimizer
        .to_record()
        .save(staged(&optimizer_path))
        .context("saving the optimizer state")?;
    std::fs::write(
        staged(&state_path),
        serde_json::to_string_pretty(state).expect("the state serializes"),
    )?;
    for path in [&model_path, &optimizer_path, &state_path] {
        std::fs::rename(staged(path), path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no checkpoint to resume from: cannot read {}",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("invalid checkpoint state {}", path.display()))
}
