//! End-to-end speed like llama-bench and bitnet.cpp's e2e_benchmark.py: prompt processing
//! (`ppP`: one batched prefill of P tokens) and text generation (`tgN`: N one-token decode
//! steps), per thread count, after a warm-up; with `-d D` both at a depth of D positions
//! already in the cache (llama-bench's `-d`: `pp128 @ d512`), where attention reads more.
//!
//! ```text
//! cargo run --release --example bench -- -m MODEL -p 128 -n 64 -t 1,2 -r 5 [-d 512] [--json]
//! ```
//! As in llama-bench, `-p`, `-n`, `-d` and `-t` each take a comma-separated list
//! (`-p 128,512 -d 0,512`): every prompt and generation length runs at every depth, per thread
//! count.
//! The markdown table (or, with `--json` or `-o json`, an array of
//! `{"test", "threads", "mean_tps", "sd_tps", "reps", ...}`; with `-o jsonl` the same objects one
//! per line, with `-o csv` one CSV row each under a header of their keys) goes to stdout. Decode
//! rows also give the bytes a step reads (`read_bytes_per_token`: packed weights, norms, the LM
//! head in its decode format, the KV cache) and the bandwidth that draws (`read_gbps`, GB/s).
//! `BITNET_KERNEL=base3` (AVX-512) and `lut3` (AVX2) decode from a 1.6- or 1.67-bit copy of the
//! weights (`kernel` column).
//! `--cache-type f16` keeps the KV cache in f16 (`cache` column), as llama.cpp does by default.
//! `--profile` splits each row's time per token into the forward's phases (`*_ms` keys, and a
//! second table).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bitnet_backend::{Isa, KernelChoice};
use bitnet_model::{BitNetModel, ForwardProfile, KvCache};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use rayon::prelude::*;
use serde_json::{Value, json};

// Shared by all examples; this one takes a list of thread counts instead of `RunArgs`.
#[allow(dead_code)]
mod common;
use common::{Backend, ModelArgs};

/// Prefill and decode throughput of a ternary model.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens of the prefill tests, e.g. 128,512 (0: none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_prompt: Vec<usize>,
    /// Generated tokens of the decode tests, e.g. 64 (0: none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "64"
    )]
    n_gen: Vec<usize>,
    /// Positions already in the cache when each test starts (prefilled untimed with one
    /// batched prefill), as llama-bench's `-d`: the rows are named `pp128 @ d512`.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_depth: Vec<usize>,
    /// Thread counts to test, e.g. 1,2.
    #[arg(short, long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(short, long, default_value_t = 5)]
    repetitions: usize,
    /// Output format, as llama-bench's `-o`: md (the markdown table), json (one array), jsonl
    /// (one object per line) or csv (a header of the objects' keys, one line per row).
    #[arg(short, long, value_enum, default_value = "md")]
    output: Output,
    /// Print a JSON array instead of the markdown table (`-o json`).
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Also measure the machine's read bandwidth per thread count (a sum over 1 GiB, like
    /// STREAM's read test): the limit the decode rows' read GB/s compare to, in the same run.
    /// Its buffer is allocated after the peak RSS is taken.
    #[arg(long)]
    mem_read: bool,
    /// Also time each phase of the forward passes (attention projections, RoPE and the cache
    /// writes, attention, feed-forward, LM head, and the rest), in ms per token over the timed
    /// runs: the `*_ms` keys, and a second table.
    #[arg(long)]
    profile: bool,
    /// Burn backend.
    #[arg(long, value_enum, default_value = "flex")]
    device: Backend,
}

fn main() {
    common::run_main(std::env::args(), run);
}

fn run(args: Args) -> Result<()> {
    if args.threads.contains(&0) || args.threads.is_empty() {
        bail!("-t/--threads needs thread counts of at least 1");
    }
    if args.repetitions == 0 {
        bail!("-r/--repetitions must be at least 1");
    }
    let tests = tests(&args.n_prompt, &args.n_gen, &args.n_depth)?;
    let device = args.device.device();
    let dir = args.model.path();
    let start = Instant::now();
    let model = args.model.load(&device)?;
    let load_s = start.elapsed().as_secs_f64();
    eprintln!("loaded {} in {load_s:.3} s", dir.display());
    let model_bytes = model_bytes(&dir)?;
    // The kernel family the layers were packed for (`BITNET_KERNEL`, checked by the load).
    let kernel = KernelChoice::selected()?.to_string();
    // The instruction set the kernels dispatch to (`BITNET_ISA`), so that rows of two paths or
    // machines stay apart in a script's comparison.
    let isa = Isa::selected()?.to_string();
    // A cache beyond the trained context would be allocated whole (and, far enough, fail).
    let context = model.config.max_position_embeddings;
    if let Some(test) = tests.iter().find(|t| t.depth + t.tokens > context) {
        bail!(
            "{} needs {} positions but the model's context is {context} \
             (max_position_embeddings): lower -d/--n-depth, -p or -n",
            test.name(),
            test.depth + test.tokens
        );
    }

    let mut rows = Vec::new();
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("building the thread pool")?;
        for test in &tests {
            let Test {
                tokens,
                depth,
                prefill,
            } = *test;
            // One cache per test, emptied before each run (its buffers kept), as llama-bench
            // keeps one context: the warm-up faults the cache's pages in, and the timed runs
            // do not (with a fresh cache per run they took ~120 page faults per 700M decode
            // step).
            let mut cache = model.new_cache(1, depth + tokens)?;
            let mut run_once = || {
                pool.install(|| {
                    fill_to_depth(&model, &mut cache, depth, &device)?;
                    test.time(&model, &mut cache, &device, args.profile)
                })
            };
            run_once()?;
            let runs = (0..args.repetitions)
                .map(|_| run_once())
                .collect::<Result<Vec<_>>>()?;
            let rates: Vec<f64> = runs.iter().map(|(secs, _)| tokens as f64 / secs).collect();
            let (mean, sd) = mean_sd(&rates);
            let mut row = json!({
                "model": dir,
                "model_bytes": model_bytes,
                "load_s": load_s,
                "params": model.config.num_parameters(),
                "head": model.head_format(),
                "kernel": kernel,
                "isa": isa,
                "cache_type": model.cache_type.to_string(),
                "backend": format!("{:?}", args.device).to_lowercase(),
                "test": test.name(),
                "n_depth": depth,
                "threads": threads,
                "mean_tps": mean,
                "sd_tps": sd,
                "reps": args.repetitions,
            });
            if !prefill {
                // Step i attends depth + i + 1 positions: the mean step reads the mean of the
                // ends.
                let bytes =
                    (model.decode_bytes(depth) + model.decode_bytes(depth + tokens - 1)) / 2;
                row["read_bytes_per_token"] = json!(bytes);
                row["read_gbps"] = json!(bytes as f64 * mean / 1e9);
            }
            if args.profile {
                add_profile(&mut row, &runs, tokens);
            }
            rows.push(row);
        }
    }
    let rss = peak_rss_bytes();
    if args.mem_read {
        rows.extend(memory_read_rows(&args.threads, args.repetitions)?);
    }
    let cpu = CpuIdentity::read();
    for row in &mut rows {
        row["peak_rss_bytes"] = json!(rss);
        row["cpu_info"] = json!(cpu.name);
        row["cpu_family"] = json!(cpu.family);
        row["cpu_model"] = json!(cpu.model);
    }
    match if args.json { Output::Json } else { args.output } {
        Output::Md => {
            print_table(&rows, model_bytes, rss)?;
            if args.profile {
                print_profile_table(&rows)?;
            }
        }
        Output::Json => common::print_line(serde_json::to_string_pretty(&rows)?)?,
        Output::Jsonl => {
            for row in &rows {
                common::print_line(serde_json::to_string(row)?)?;
            }
        }
        Output::Csv => print_csv(&rows)?,
    }
    Ok(())
}

/// How the results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Md,
    Json,
    Jsonl,
    Csv,
}

/// One row of the table: a prefill (`ppN`) or decode (`tgN`) of `tokens` tokens after `depth`
/// cached positions.
#[derive(Debug, Clone, Copy)]
struct Test {
    tokens: usize,
    depth: usize,
    prefill: bool,
}

impl Test {
    /// llama-bench's name: `pp128`, `tg64 @ d512`.
    fn name(&self) -> String {
        let kind = if self.prefill { "pp" } else { "tg" };
        match self.depth {
            0 => format!("{kind}{}", self.tokens),
            depth => format!("{kind}{} @ d{depth}", self.tokens),
        }
    }

    /// Seconds for the timed part on `cache`, filled to the test's depth: one forward of all
    /// its tokens (prefill) or one forward per token (decode); with `profile`, its time per
    /// phase too.
    fn time(
        &self,
        model: &BitNetModel,
        cache: &mut KvCache,
        device: &Device,
        profile: bool,
    ) -> Result<(f64, Option<ForwardProfile>)> {
        let step = if self.prefill { self.tokens } else { 1 };
        if profile {
            cache.start_profile();
        }
        let start = Instant::now();
        for first in (self.depth..self.depth + self.tokens).step_by(step) {
            model
                .forward_last(prompt(model, first, step, device), cache)?
                .into_data();
        }
        Ok((start.elapsed().as_secs_f64(), cache.stop_profile()))
    }
}

/// The tests of one thread count, in llama-bench's order: per depth, every prefill, then every
/// decode; lengths of 0 are skipped.
fn tests(prompts: &[usize], gens: &[usize], depths: &[usize]) -> Result<Vec<Test>> {
    let tests: Vec<Test> = depths
        .iter()
        .flat_map(|&depth| {
            let prefills = prompts.iter().map(move |&tokens| (tokens, depth, true));
            let decodes = gens.iter().map(move |&tokens| (tokens, depth, false));
            prefills.chain(decodes)
        })
        .filter(|&(tokens, ..)| tokens > 0)
        .map(|(tokens, depth, prefill)| Test {
            tokens,
            depth,
            prefill,
        })
        .collect();
    if tests.is_empty() {
        bail!("nothing to run: every -p and -n is 0");
    }
    Ok(tests)
}

/// The timed runs' time per phase as `{phase}_ms` keys of `row`, in ms per token (their mean
/// over the runs), and `other_ms`: the rest of a token's time (embedding, residual adds, the
/// final norm, tensors between phases, the prompt's ids).
fn add_profile(row: &mut Value, runs: &[(f64, Option<ForwardProfile>)], tokens: usize) {
    let per_token = |secs: f64| secs * 1e3 / (tokens * runs.len()) as f64;
    let mut sum = ForwardProfile::default();
    for profile in runs.iter().filter_map(|(_, profile)| *profile) {
        sum += profile;
    }
    for (phase, time) in sum.phases() {
        row[format!("{phase}_ms")] = json!(per_token(time.as_secs_f64()));
    }
    let wall: f64 = runs.iter().map(|(secs, _)| secs).sum();
    row["other_ms"] = json!(per_token(wall - sum.total().as_secs_f64()));
}

/// The rows' time per phase (`--profile`): ms per token and its share of the token's time.
fn print_profile_table(rows: &[Value]) -> Result<()> {
    let phases: Vec<String> = ForwardProfile::default()
        .phases()
        .iter()
        .map(|(phase, _)| phase.to_string())
        .chain(["other".to_string()])
        .collect();
    common::print_line("")?;
    common::print_line(format_args!(
        "| threads | test | ms/token | {} |",
        phases.join(" | ")
    ))?;
    common::print_line(format_args!(
        "|---:|---|---:|{}",
        "---:|".repeat(phases.len())
    ))?;
    for row in rows {
        let times: Option<Vec<f64>> = phases
            .iter()
            .map(|phase| row[format!("{phase}_ms")].as_f64())
            .collect();
        let Some(times) = times else { continue };
        let total: f64 = times.iter().sum();
        let cells: Vec<String> = times
            .iter()
            .map(|ms| format!("{ms:.3} ({:.1}%)", 100.0 * ms / total))
            .collect();
        common::print_line(format_args!(
            "| {} | {} | {total:.3} | {} |",
            row["threads"],
            row["test"].as_str().unwrap_or("-"),
            cells.join(" | ")
        ))?;
    }
    Ok(())
}

/// Empties `cache` and fills its first `depth` positions (untimed).
fn fill_to_depth(
    model: &BitNetModel,
    cache: &mut KvCache,
    depth: usize,
    device: &Device,
) -> Result<()> {
    cache.clear();
    if depth > 0 {
        model
            .forward_last(prompt(model, 0, depth, device), cache)?
            .into_data();
    }
    Ok(())
}

/// `len` token ids of a fixed pseudo-random text, from position `first` of it: `[1, len]`.
fn prompt(model: &BitNetModel, first: usize, len: usize, device: &Device) -> Tensor<2, Int> {
    let vocab = model.config.vocab_size as i64;
    let ids: Vec<i64> = (first as i64..(first + len) as i64)
        .map(|i| (i * 7 + 1) % vocab)
        .collect();
    Tensor::from_data(TensorData::new(ids, [1, len]), device)
}

/// Words of the buffer the read bandwidth is measured on: 1 GiB, far beyond any cache.
const READ_WORDS: usize = 1 << 27;

/// One `mem-read` row per thread count: GB/s of a sum over [`READ_WORDS`] words split across
/// a pool of that many threads, mean ± sd of `repetitions` after a warm-up.
fn memory_read_rows(threads: &[usize], repetitions: usize) -> Result<Vec<Value>> {
    let buffer: Vec<u64> = (0..READ_WORDS as u64).collect();
    let read_once = || {
        let start = Instant::now();
        let sum = buffer
            .par_chunks(1 << 16)
            .map(|chunk| chunk.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        (READ_WORDS * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
    };
    let mut rows = Vec::new();
    for &threads in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("building the thread pool")?;
        pool.install(read_once);
        let rates: Vec<f64> = (0..repetitions).map(|_| pool.install(read_once)).collect();
        let (mean, sd) = mean_sd(&rates);
        rows.push(json!({
            "test": "mem-read",
            "threads": threads,
            "read_gbps": mean,
            "sd_gbps": sd,
            "reps": repetitions,
        }));
    }
    Ok(rows)
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Bytes of the weights: the file, or a directory's safetensors files.
fn model_bytes(path: &Path) -> Result<u64> {
    if path.is_file() {
        return Ok(path.metadata()?.len());
    }
    let dir = path;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".safetensors") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// What `/proc/cpuinfo` (Linux) says of the first CPU: its model name, as llama-bench's
/// `cpu_info`, and its family and model numbers, which tell generations apart where a VM
/// names every CPU alike ("AMD EPYC" for a Zen 1, a Zen 3 and a Zen 4 alike).
struct CpuIdentity {
    name: Option<String>,
    family: Option<u32>,
    model: Option<u32>,
}

impl CpuIdentity {
    fn read() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim() == key)
                .map(|(_, value)| value.trim().to_string())
        };
        Self {
            name: field("model name"),
            family: field("cpu family").and_then(|v| v.parse().ok()),
            model: field("model").and_then(|v| v.parse().ok()),
        }
    }
}

/// `VmHWM` of this process (Linux), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The rows as CSV, as llama-bench's `-o csv`: a header of every key (sorted by name), then
/// one line per row, empty where a row has no such key (prefill rows have no bytes read).
fn print_csv(rows: &[Value]) -> Result<()> {
    let mut columns: Vec<&str> = rows
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|row| row.keys().map(String::as_str))
        .collect();
    columns.sort_unstable();
    columns.dedup();
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(&columns)?;
    for row in rows {
        out.write_record(columns.iter().map(|&key| match &row[key] {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            value => value.to_string(),
        }))?;
    }
    out.flush()?;
    Ok(())
}

fn print_table(rows: &[Value], model_bytes: u64, rss: Option<u64>) -> Result<()> {
    common::print_line(
        "| model | size | params | head | kernel | cache | backend | threads | test | t/s | read GB/s |",
    )?;
    common::print_line("|---|---:|---:|---|---|---|---|---:|---|---:|---:|")?;
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let spread = |mean: &Value, sd: &Value, digits: usize| match (mean.as_f64(), sd.as_f64()) {
        (Some(mean), Some(sd)) => format!("{mean:.digits$} ± {sd:.digits$}"),
        (Some(mean), None) => format!("{mean:.digits$}"),
        _ => "-".into(),
    };
    for row in rows {
        // Model rows name the model; `mem-read` rows measure the machine alone.
        let model = row["model"].as_str().map(|path| {
            let name = Path::new(path).file_name().unwrap_or_default();
            (
                name.to_string_lossy().into_owned(),
                format!("{:.2} MiB", model_bytes as f64 / (1 << 20) as f64),
                row["params"].to_string(),
            )
        });
        let (model, size, params) = model.unwrap_or(("-".into(), "-".into(), "-".into()));
        common::print_line(format_args!(
            "| {model} | {size} | {params} | {} | {} | {} | {} | {} | {} | {} | {} |",
            text(&row["head"]),
            text(&row["kernel"]),
            text(&row["cache_type"]),
            text(&row["backend"]),
            row["threads"],
            text(&row["test"]),
            spread(&row["mean_tps"], &row["sd_tps"], 2),
            spread(&row["read_gbps"], &row["sd_gbps"], 1),
        ))?;
    }
    if let Some(rss) = rss {
        eprintln!("peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    Ok(())
}
