//! Text generation, with the flags of llama.cpp's llama-cli and bitnet.cpp's run_inference.py.
//!
//! ```text
//! cargo run --release --example infer -- -m DIR -p "Once upon a time" -n 64
//! cargo run --release --example infer -- -m DIR -p "You are helpful." -cnv
//! ```
//! Text streams to stdout; logs and the statistics line go to stderr.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use bitnet_model::{
    BitNetConfig, ChatTemplate, Conversation, FfnActivation, GenerateOptions, Sampler,
    SamplerConfig, Session, Tokenizer, TurnText,
};
use burn::tensor::Device;
use clap::Parser;

mod common;
use common::{ModelArgs, RunArgs};

/// Generate text with a ternary model.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (in conversation mode: the system prompt); the demo model's default is
    /// `ROMEO:`.
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Maximum number of new tokens (per turn in conversation mode).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Context size in tokens (default: the model's trained context, at most 2048).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_hyphen_values = true)]
    temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: random, printed to stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Interactive chat: -p becomes the system prompt.
    #[arg(long = "conversation", visible_alias = "cnv", short_alias = 'C')]
    conversation: bool,
    /// Chat template: `bitnet`, `llama3` or a Jinja file (default: the model's own).
    #[arg(long)]
    chat_template: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// What the demo model continues when no prompt is given.
const DEMO_PROMPT: &str = "ROMEO:";

fn main() {
    // llama-cli spells conversation mode `-cnv`; clap takes single-dash long flags only as
    // short clusters, so the spelling is rewritten before parsing.
    let argv = std::env::args().map(|a| {
        if a == "-cnv" {
            "--conversation".into()
        } else {
            a
        }
    });
    common::run_main(argv, |args: Args| {
        args.run.clone().install(|device| run(args, device))
    });
}

/// The example on `device`, on a thread of the `-t` pool.
fn run(args: Args, device: Device) -> Result<()> {
    let mut args = args;
    if args.model.model.is_none() && args.prompt.is_empty() && !args.conversation {
        args.prompt = DEMO_PROMPT.into();
    }
    if args.ctx_size == Some(0) {
        bail!("--ctx-size must be at least 1");
    }
    let model = args.model.load(&device)?;
    let ctx_size = args
        .ctx_size
        .unwrap_or(model.config.max_position_embeddings.min(2048));
    common::warn_past_training_context(&model, ctx_size, "--ctx-size");
    let tokenizer = args.model.tokenizer()?;
    let seed = args.seed.unwrap_or_else(rand_seed);
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..SamplerConfig::default()
    })?;
    eprintln!("seed: {seed}");
    let options = GenerateOptions {
        max_new_tokens: args.n_predict,
        stop_strings: args.stop.clone(),
    };
    let mut session = Session::new(&model, ctx_size)?;
    if args.conversation {
        let template = chat_template(&args, &model.config, &tokenizer)?;
        let system = (!args.prompt.is_empty()).then(|| args.prompt.clone());
        return chat(
            Conversation::new(template, system),
            &mut session,
            &tokenizer,
            &mut sampler,
            &options,
        );
    }
    let prompt = tokenizer.encode(&args.prompt, true)?;
    if prompt.is_empty() {
        bail!("the prompt is empty and the tokenizer adds no BOS: pass -p TEXT");
    }
    if prompt.len() >= ctx_size {
        bail!(
            "the prompt is {} tokens but the context holds {}: raise -c/--ctx-size or shorten -p",
            prompt.len(),
            ctx_size
        );
    }
    common::print_out(&args.prompt)?;
    let out = session.generate(&prompt, &tokenizer, &mut sampler, &options, print_flush)?;
    common::print_line("")?;
    eprintln!("stop: {:?} | {}", out.stop, out.stats);
    Ok(())
}

/// Streams generated text (a callback that cannot return an error: a failed write ends the
/// run here, quietly if the reader has gone).
fn print_flush(text: &str) {
    if let Err(e) = common::print_out(text) {
        common::exit_on_error(Err(e.into()));
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether the model has BitNet b1.58 2B4T's graph (ReLU², sub-norms, multiplying scales).
fn is_2b4t(config: &BitNetConfig) -> bool {
    config.activation == FfnActivation::Relu2
        && config.sub_norms
        && config.linear.convention == bitnet_backend::ScaleConvention::Multiply
}

/// The `--chat-template` choice, else the model's own, else bitnet.cpp's for 2B4T and Llama 3's
/// for a vocabulary with Llama 3 headers.
fn chat_template(
    args: &Args,
    config: &BitNetConfig,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate> {
    let source = match &args.chat_template {
        Some(name) => match ChatTemplate::builtin(name) {
            Some(source) => source.to_string(),
            None => std::fs::read_to_string(name).with_context(|| {
                format!("--chat-template {name}: not `bitnet`, `llama3` or a readable file")
            })?,
        },
        // bitnet.cpp formats 2B4T chats with its built-in template, not the one in the files.
        None if is_2b4t(config) => bitnet_model::chat::BITNET_TEMPLATE.to_string(),
        None => match tokenizer.chat_template() {
            Some(own) => own.to_string(),
            None if tokenizer.token_id("<|start_header_id|>").is_some() => {
                bitnet_model::chat::LLAMA3_TEMPLATE.to_string()
            }
            None => bitnet_model::chat::BITNET_TEMPLATE.to_string(),
        },
    };
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_text(id))
            .unwrap_or_default()
    };
    let special = tokenizer.special();
    Ok(ChatTemplate::new(
        source,
        text(special.bos),
        text(special.eos.first().copied()),
    )?)
}

fn chat(
    mut conversation: Conversation,
    session: &mut Session,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    options: &GenerateOptions,
) -> Result<()> {
    let stdin = std::io::stdin();
    loop {
        eprint!("\n> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let text = match conversation.user(line)? {
            TurnText::Continue(text) => text,
            TurnText::Restart(text) => {
                session.reset();
                text
            }
        };
        let bos = conversation.template().bos_token();
        let add_bos = session.tokens().is_empty() && (bos.is_empty() || !text.starts_with(bos));
        let prompt = tokenizer.encode(&text, add_bos)?;
        let out = session.generate(&prompt, tokenizer, sampler, options, print_flush)?;
        common::print_line("")?;
        eprintln!("[{}]", out.stats);
        conversation.assistant(out.text)?;
    }
}
