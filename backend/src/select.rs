//! Which kernel family runs a layer: `BITNET_KERNEL=i2s|lut|base3|auto`, where `auto` times I2_S
//! and LUT on each distinct weight shape and token-count class once and keeps the faster.
//! `base3` (I2_S plus a 1.6-bit copy for decode, [`crate::base3`]) trades memory for decode
//! bandwidth, which a timing of one layer in cache cannot see, so it is only ever asked for.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Result, TernaryError};
use crate::i2s::{I2sWeights, PackedFormat};
use crate::kernels::{Isa, ternary_linear_quantized};
use crate::lut::{LutWeights, lut_linear_quantized};
use crate::quant::QuantizedActivations;

/// The `BITNET_KERNEL` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// Always this format.
    Forced(PackedFormat),
    /// Measure both on each distinct shape and keep the faster.
    Auto,
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forced(format) => write!(f, "{format}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl KernelChoice {
    /// Parses a `BITNET_KERNEL` value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "i2s" | "i2_s" => Ok(Self::Forced(PackedFormat::I2s)),
            "lut" | "tl" => Ok(Self::Forced(PackedFormat::Lut)),
            "base3" | "i2s+base3" => Ok(Self::Forced(PackedFormat::I2sBase3)),
            "auto" | "" => Ok(Self::Auto),
            other => Err(TernaryError::Dispatch(format!(
                "BITNET_KERNEL={other:?} is not one of i2s, lut, base3, auto"
            ))),
        }
    }

    /// The choice made once per process: `BITNET_KERNEL` if set, else `auto`.
    pub fn selected() -> Result<Self> {
        static SELECTED: OnceLock<Result<KernelChoice>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var("BITNET_KERNEL") {
                Ok(value) => Self::parse(&value),
                Err(_) => Ok(Self::Auto),
            })
            .clone()
    }

    /// The format `weights` should be stored in under this choice.
    pub fn format_for(self, weights: &I2sWeights) -> Result<PackedFormat> {
        match self {
            Self::Forced(format) => Ok(format),
            Self::Auto => measured_format(weights),
        }
    }
}

/// Token-count classes `auto` times: decode (one token) and prefill (a batch of tokens).
const TOKEN_CLASSES: [usize; 2] = [1, 16];

/// A layer holds one format, so `auto` keeps LUT only where it is faster for every token-count
/// class (no class gets slower than I2_S); results are kept per `(n, k)` so each distinct shape
/// is measured once per process.
fn measured_format(weights: &I2sWeights) -> Result<PackedFormat> {
    static CHOICES: OnceLock<Mutex<HashMap<(usize, usize), PackedFormat>>> = OnceLock::new();
    let layout = weights.layout();
    let key = (layout.n, layout.k);
    let choices = CHOICES.get_or_init(Default::default);
    if let Some(format) = choices.lock().expect("no panics while held").get(&key) {
        return Ok(*format);
    }
    let isa = Isa::selected()?;
    let lut = LutWeights::from_i2s(weights.view());
    let mut lut_wins = true;
    let mut timings = Vec::new();
    for m in TOKEN_CLASSES {
        let x: Vec<f32> = (0..m * layout.k)
            .map(|c| ((c * 7919) % 255) as f32 - 127.0)
            .collect();
        let xq = QuantizedActivations::new(&x, m, layout.k, layout.k_padded(), layout.activation);
        let i2s_time = fastest(|| ternary_linear_quantized(isa, weights.view(), &xq).map(drop))?;
        let lut_time = fastest(|| lut_linear_quantized(isa, lut.view(), &xq).map(drop))?;
        lut_wins &= lut_time < i2s_time;
        timings.push(format!("m={m}: i2s {i2s_time:?}, lut {lut_time:?}"));
    }
    let format = if lut_wins {
        PackedFormat::Lut
    } else {
        PackedFormat::I2s
    };
    log::debug!(
        "kernel for {}x{} ({isa}): {} -> {format}",
        layout.n,
        layout.k,
        timings.join("; ")
    );
    choices
        .lock()
        .expect("no panics while held")
        .insert(key, format);
    Ok(format)
}

/// The best of a few timed runs after one warm-up, so a cold cache does not decide.
fn fastest(mut run: impl FnMut() -> Result<()>) -> Result<Duration> {
    run()?;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choices_parse_and_unknown_ones_are_named() {
        assert_eq!(
            KernelChoice::parse("I2S").unwrap(),
            KernelChoice::Forced(PackedFormat::I2s)
        );
        assert_eq!(
            KernelChoice::parse(" lut ").unwrap(),
            KernelChoice::Forced(PackedFormat::Lut)
        );
        assert_eq!(KernelChoice::parse("auto").unwrap(), KernelChoice::Auto);
        let err = KernelChoice::parse("tl9").unwrap_err().to_string();
        assert!(
            err.contains("BITNET_KERNEL") && err.contains("tl9"),
            "{err}"
        );
    }

    #[test]
    fn auto_keeps_one_choice_per_shape() {
        let values: Vec<i8> = (0..64 * 300).map(|i| (i % 3) as i8 - 1).collect();
        let weights =
            I2sWeights::from_ternary(&values, 64, 300, 1.0, crate::ScaleConvention::Multiply)
                .unwrap();
        let first = KernelChoice::Auto.format_for(&weights).unwrap();
        assert_eq!(KernelChoice::Auto.format_for(&weights).unwrap(), first);
    }
}
