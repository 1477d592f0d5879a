//! Which kernel family runs a layer: `BITNET_KERNEL=i2s|lut|base3|lut3|auto`, where `auto`
//! times I2_S and LUT on each distinct weight shape and token-count class once and keeps the
//! faster. `base3` and `lut3` (I2_S plus a 1.6- or 1.67-bit copy for decode, [`crate::base3`]
//! for AVX-512, [`crate::lut3`] for AVX2) trade memory for decode bandwidth, which a timing of
//! one layer in cache cannot see, so they are only ever asked for.

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
            "lut3" | "i2s+lut3" => Ok(Self::Forced(PackedFormat::I2sLut3)),
            "auto" | "" => Ok(Self::Auto),
            other => Err(TernaryError::Dispatch(format!(
                "BITNET_KERNEL={other:?} is not one of i2s, lut, base3, lut3, auto"
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

/// How much faster LUT must be, in every class, for `auto` to keep it. Both formats read two bits
/// per weight, so where neither kernel wins clearly their timings in cache differ by less than a
/// shared machine's noise: on an AVX2-only Zen 3 VM, where one token ran at 0.9x-1.2x of I2_S's
/// speed on LUT and sixteen at 0.54x-0.96x, close calls went to LUT in some processes, and a
/// 700M prefill then ran a layer at about half speed (LUT's `gemm128` there: 0.52x-0.67x).
const LUT_MARGIN: f64 = 0.9;

/// A layer holds one format, so `auto` keeps LUT only where it is clearly faster for every
/// token-count class (no class gets slower than I2_S); results are kept per `(n, k)` so each
/// distinct shape is measured once per process.
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
    let mut classes = Vec::new();
    for m in TOKEN_CLASSES {
        let x: Vec<f32> = (0..m * layout.k)
            .map(|c| ((c * 7919) % 255) as f32 - 127.0)
            .collect();
        let xq = QuantizedActivations::new(&x, m, layout.k, layout.k_padded(), layout.activation);
        let (i2s_time, lut_time) = fastest_of_two(
            || ternary_linear_quantized(isa, weights.view(), &xq).map(drop),
            || lut_linear_quantized(isa, lut.view(), &xq).map(drop),
        )?;
        classes.push(ClassTiming {
            m,
            i2s_time,
            lut_time,
        });
    }
    let format = if lut_clearly_wins(&classes) {
        PackedFormat::Lut
    } else {
        PackedFormat::I2s
    };
    log::debug!(
        "kernel for {}x{} ({isa}): {} -> {format}",
        layout.n,
        layout.k,
        classes
            .iter()
            .map(ClassTiming::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    choices
        .lock()
        .expect("no panics while held")
        .insert(key, format);
    Ok(format)
}

/// Both kernels' best time on one token-count class.
struct ClassTiming {
    m: usize,
    i2s_time: Duration,
    lut_time: Duration,
}

impl fmt::Display for ClassTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            m,
            i2s_time,
            lut_time,
        } = self;
        write!(f, "m={m}: i2s {i2s_time:?}, lut {lut_time:?}")
    }
}

/// LUT is kept only if it beats I2_S by [`LUT_MARGIN`] in every class.
fn lut_clearly_wins(classes: &[ClassTiming]) -> bool {
    classes
        .iter()
        .all(|c| c.lut_time.as_secs_f64() < LUT_MARGIN * c.i2s_time.as_secs_f64())
}

/// The best of a few timed runs of each after one warm-up, the two taking turns, so neither is
/// timed only in a slower stretch of a shared machine and a cold cache decides nothing.
fn fastest_of_two(
    mut first: impl FnMut() -> Result<()>,
    mut second: impl FnMut() -> Result<()>,
) -> Result<(Duration, Duration)> {
    first()?;
    second()?;
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let start = Instant::now();
        first()?;
        best.0 = best.0.min(start.elapsed());
        let start = Instant::now();
        second()?;
        best.1 = best.1.min(start.elapsed());
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
    fn lut_is_kept_only_when_clearly_faster_in_every_class() {
        let class = |m, i2s_us, lut_us| ClassTiming {
            m,
            i2s_time: Duration::from_micros(i2s_us),
            lut_time: Duration::from_micros(lut_us),
        };
        // Within the margin (5% faster): noise, not a win.
        assert!(!lut_clearly_wins(&[
            class(1, 100, 95),
            class(16, 1000, 800)
        ]));
        // Clearly faster in one class only: the other would get slower.
        assert!(!lut_clearly_wins(&[
            class(1, 100, 80),
            class(16, 1000, 1100)
        ]));
        assert!(lut_clearly_wins(&[class(1, 100, 85), class(16, 1000, 800)]));
        assert_eq!(
            class(16, 318, 586).to_string(),
            "m=16: i2s 318µs, lut 586µs"
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
