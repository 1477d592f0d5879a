//! What the examples share: where the work runs (`-t`, `--device`), the demo model, logging and
//! one-line errors.

use std::path::PathBuf;

use bitnet_model::{BitNetModel, CacheType, Tokenizer};
use burn::tensor::Device;
use clap::ValueEnum;

/// Every layer of a forward pass allocates multi-MiB outputs. glibc's malloc hands such blocks
/// back to the kernel when they are freed, so each pass faulted its memory in again (a tenth
/// of prefill); mimalloc keeps freed pages for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Burn backend to run on.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    Flex,
    Ndarray,
}

impl Backend {
    /// The device of this backend (NdArray is deprecated in Burn but still supported here).
    pub fn device(self) -> Device {
        #[allow(deprecated)]
        match self {
            Backend::Flex => Device::flex(),
            Backend::Ndarray => Device::ndarray(),
        }
    }
}

/// `-t/--threads` and `--device`, flattened into every example's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Threads for the kernels and float parts (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Burn backend.
    #[arg(long, value_enum, default_value = "flex")]
    pub device: Backend,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            threads: None,
            device: Backend::Flex,
        }
    }
}

impl RunArgs {
    /// Runs `work` on the device on a thread of a pool of `-t` threads (default: all cores),
    /// which the kernels and Burn's CPU backends then share. The work runs on one of the pool's
    /// own threads, not on `main`: a call from outside the pool would hand every parallel step
    /// over to the pool and sleep until it ends, two thread wake-ups per step, which cost a
    /// quarter of a 1-thread decode.
    pub fn install<T: Send>(
        &self,
        work: impl FnOnce(Device) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.unwrap_or(0))
            .build()
            .map_err(|e| anyhow::anyhow!("setting up the thread pool: {e}"))?;
        let device = self.device.device();
        pool.install(|| work(device))
    }
}

/// Where the bundled demo model lives (trained by the `train` example, see its model card).
pub fn demo_model_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-shakespeare")
}

/// Prints a failed run's error chain on one line and exits with status 1; a write to a stdout
/// whose reader has gone (`| head`) ends the run quietly with status 0 instead, as the reader
/// asked for no more.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        let closed_pipe = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// Writes `text` to stdout and flushes it, returning the error where `print!` would panic (a
/// reader that has gone, a full disk), for `?` to take to [`exit_on_error`].
pub fn print_out(text: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()
}

/// [`print_out`] of `line` and a newline.
pub fn print_line(line: impl std::fmt::Display) -> std::io::Result<()> {
    print_out(format_args!("{line}\n"))
}

/// `e` and its causes joined by `: ` (as `{e:#}` gives them), leaving out a cause whose text
/// the line already ends with: some errors, such as safetensors' I/O error, print their source
/// themselves and also return it as the next cause, which `{e:#}` then printed twice.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings only by default); `RUST_LOG=debug` shows,
/// for instance, which kernel family each weight shape runs.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}

/// `-m/--model` and `--tokenizer`, for the examples that turn text into tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model: an HF directory (config.json + model.safetensors + tokenizer.json), a GGUF file
    /// (bitnet.cpp / llama.cpp) or a converted file (`convert` example); default: the bundled
    /// demo model (a byte-level BitNet trained on Tiny Shakespeare).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Tokenizer to use instead of the model's: a directory, tokenizer.json or GGUF file.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Decode with an int8 copy of the LM head: fewer bytes read per token, logits within
    /// about 1% of their largest magnitude (not lossless; the default head is).
    #[arg(long)]
    pub int8_head: bool,
    /// What the KV cache stores: f32 (exact) or f16 (half its memory and of what decode reads
    /// from it; llama.cpp's default, not lossless).
    #[arg(long, default_value = "f32")]
    pub cache_type: CacheType,
}

impl ModelArgs {
    /// The model path: `-m`, else the demo model.
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(demo_model_dir)
    }

    /// Loads the model (see [`load_model`]), with the int8 head and the cache type asked for.
    pub fn load(&self, device: &Device) -> anyhow::Result<BitNetModel> {
        let model = load_model(&self.path(), device)?;
        let model = if self.int8_head {
            model.with_int8_head()?
        } else {
            model
        };
        Ok(model.with_cache_type(self.cache_type)?)
    }

    /// `--tokenizer`, else the model's own (its directory's, GGUF metadata or the one stored in a
    /// converted file).
    pub fn tokenizer(&self) -> anyhow::Result<Tokenizer> {
        Ok(bitnet_import::load_tokenizer(
            &self.tokenizer.clone().unwrap_or_else(|| self.path()),
        )?)
    }
}

/// Warns, as llama.cpp does, when `what` (a flag or the input) needs `positions` positions, past
/// the context the model was trained on: it runs, but what it computes there is extrapolation,
/// and far past it (say `--ctx 100000` on a 128-position model) it is slow, as attention is
/// quadratic.
pub fn warn_past_training_context(model: &BitNetModel, positions: usize, what: &str) {
    let trained = model.config.max_position_embeddings;
    if positions > trained {
        eprintln!(
            "warning: {what} needs {positions} positions, past the model's training context of \
             {trained} (max_position_embeddings): output beyond it is unreliable"
        );
    }
}

/// Loads an HF directory, GGUF file or converted file onto `device`, naming it in any error.
pub fn load_model(path: &std::path::Path, device: &Device) -> anyhow::Result<BitNetModel> {
    use anyhow::Context;
    bitnet_import::load_model(path, device).with_context(|| format!("loading {}", path.display()))
}

/// The example's `main`: logging set up, `argv` parsed, errors printed on one line.
pub fn run_main<A: clap::Parser>(
    argv: impl IntoIterator<Item = String>,
    run: impl FnOnce(A) -> anyhow::Result<()>,
) {
    init_logging();
    exit_on_error(run(A::parse_from(argv)));
}
