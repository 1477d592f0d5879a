//! What the examples share: the `--device` choice.

use burn::tensor::Device;
use clap::ValueEnum;

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

/// Sizes the global rayon pool that the kernels and Burn's CPU backends share (`None`: all
/// cores).
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let Some(threads) = threads else {
        return Ok(());
    };
    if threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("setting up the thread pool: {e}"))
}

/// Where the bundled demo model lives (trained by the `train` example, see its model card).
pub fn demo_model_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-shakespeare")
}

/// Prints a failed run's error chain on one line and exits with status 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings only by default); `RUST_LOG=debug` shows,
/// for instance, which kernel family each weight shape runs.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}
