//! Exact int8 x ternary matrix products, one file per instruction set behind one dispatch point.
//!
//! Every path computes `raw[r][t] = sum_c code(r, c) * q[t][c]` with the unsigned I2_S codes
//! (0, 1, 2); the driver subtracts the token's `sum(q)` once to recover `sum_c w(r, c) * q[t][c]`
//! for `w = code - 1`. All arithmetic is integer, so every path gives the same bits.
//!
//! Decode (one token) streams each packed row once. For prefill (several tokens) the scalar,
//! NEON and AVX2 paths unpack a block of rows into bytes once and reuse them for every token,
//! in tiles of two rows x four tokens, a block of tokens (16 KiB of activations, so they stay
//! in L1) at a time ([`unpacking`]); the AVX-512 path unpacks in registers and
//! computes tiles of rows x tokens from the packed rows directly. Either way a weight is
//! decoded once per tile, not once per product.
//!
//! On the rayon pool, one token's rows are split across tasks that each finish their own
//! outputs, and layers sharing an input go in one call ([`ternary_linear_group_quantized`]); a
//! prefill of at least 16 tokens per thread is split into bands of tokens instead, each task
//! running every row for its band. A few tokens in between split rows and finish afterwards.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
mod decode;
mod finish;
mod isa;
#[cfg(target_arch = "aarch64")]
mod neon;
mod prefetch;
mod scalar;
#[cfg(test)]
mod tests;
mod unpacking;

pub(crate) use decode::{DecodeRows, gemv_group};
pub(crate) use finish::finish_linear;
use finish::finish_tokens;
pub use isa::Isa;
pub(crate) use prefetch::prefetch;
#[cfg(target_arch = "x86_64")]
pub(crate) use prefetch::prefetch_distance;

use std::cell::Cell;

use rayon::prelude::*;

use crate::error::{Result, TernaryError};
use crate::i2s::{I2sView, TernaryLayout};
use crate::quant::{ActivationSource, QuantizedActivations};

/// Every rayon task gets a multiple of this many rows, so no kernel's row tile is split.
const TASK_ROWS: usize = 4;
/// Tokens per rayon task when finishing sums stored by row (16 i32 share a cache line of sums),
/// and the fewest tokens per thread for which prefill is split into bands of tokens.
const BAND_TOKENS: usize = 16;
/// Rows per block when turning a band's sums into outputs: the sums stay in L1 while every
/// token of the band uses them.
const FINISH_ROWS: usize = 64;

/// What one instruction set provides. Implementations are zero-sized markers; their functions
/// are `unsafe` because they may only run on a CPU that has the instruction set.
trait TernaryKernel {
    /// `out[layout.index(r, t)] = sum_c code(r, c) * q[t][c]` for every packed row in `codes`
    /// and each of the `m` tokens in `q`.
    ///
    /// # Safety
    /// The CPU supports the instruction set; `codes.len() * m == out.len() * row_bytes`,
    /// `q.len() == m * 4 * row_bytes`, a multiple of the block per token, and `layout` maps
    /// every row and token into `out`, with row `r` of token 0 at `r` when `m == 1`.
    unsafe fn raw_dots(
        codes: &[u8],
        row_bytes: usize,
        q: &[i8],
        m: usize,
        layout: SumLayout,
        out: &mut [i32],
    );
}

/// Where a kernel stores the sum of row `r` and token `t`: `r * row_stride + t * token_stride`.
#[derive(Debug, Clone, Copy)]
struct SumLayout {
    row_stride: usize,
    token_stride: usize,
}

impl SumLayout {
    /// `[rows, m]`: a row's sums for all tokens together, so tasks splitting rows own slices.
    fn by_row(m: usize) -> Self {
        Self {
            row_stride: m,
            token_stride: 1,
        }
    }

    /// `[m, rows]`: a token's sums in row order, as its outputs are; finishing needs no transpose.
    fn by_token(rows: usize) -> Self {
        Self {
            row_stride: 1,
            token_stride: rows,
        }
    }

    #[inline(always)]
    fn index(self, r: usize, t: usize) -> usize {
        r * self.row_stride + t * self.token_stride
    }
}

/// `dst[i]` = the f32 of the f16 with bits `src[i]` (exact; NaNs quieted, as `half` does): one
/// `vcvtph2ps` per sixteen values on the AVX-512 path, a branch-free loop otherwise.
///
/// # Panics
/// If the lengths differ.
#[inline(always)]
pub(crate) fn widen_halves(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "one f32 per f16");
    #[cfg(target_arch = "x86_64")]
    let done = if isa == Isa::Avx512Vnni && isa.is_supported() {
        // SAFETY: the CPU was just checked to support AVX-512.
        unsafe { avx512::widen_halves(src, dst) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let _ = isa;
    for (wide, &half) in dst[done..].iter_mut().zip(&src[done..]) {
        *wide = scalar::f16_to_f32(half);
    }
}

/// Independent `vpdpbusd` chains in [`multiply_roofline`]: enough to hide its latency.
const ROOFLINE_CHAINS: usize = 16;

/// What [`multiply_roofline`] runs on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roofline {
    /// The multiply of the path's prefill kernel.
    pub instruction: &'static str,
    /// Products per step: every chain's instruction (sixteen `vpdpbusd` of 64; eight
    /// `vpmaddubsw` of 32).
    pub products_per_step: usize,
}

/// The roofline of `isa`'s prefill kernel, or `None` for a path without one.
pub fn roofline_of(isa: Isa) -> Option<Roofline> {
    let (instruction, products_per_step) = match isa {
        Isa::Avx512Vnni => ("vpdpbusd", ROOFLINE_CHAINS * 64),
        Isa::Avx2 => ("vpmaddubsw", 8 * 32),
        Isa::Scalar | Isa::Neon => return None,
    };
    Some(Roofline {
        instruction,
        products_per_step,
    })
}

/// Runs `steps` rounds of independent multiplies of `isa`'s prefill kernel (AVX-512: sixteen
/// `vpdpbusd` on registers; AVX2: the inner loop's eight `vpmaddubsw` + `vpaddw` pairs and six
/// loads, from L1) and returns a sum of their lanes, or `None` for a path without a
/// roofline or a CPU without the path: the peak the ternary kernels are measured against
/// (`cargo bench --bench kernels -- roofline`).
pub fn multiply_roofline(isa: Isa, steps: usize) -> Option<i32> {
    if !isa.is_supported() {
        return None;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = steps;
    match isa {
        // SAFETY: checked just before that the CPU has the instruction set.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Some(unsafe { avx512::vpdpbusd_chains(steps, 1, 2) }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(unsafe { avx2::maddubs_chains(steps, 1, 2) }),
        _ => None,
    }
}

/// Exact accumulators `acc[t][r] = sum_c q[t][c] * w[r][c]`, row-major `[m, n]`, on the calling
/// thread with the sums stored by token, as a prefill band stores them.
pub fn ternary_matmul_i32(isa: Isa, w: I2sView<'_>, x: &QuantizedActivations) -> Result<Vec<i32>> {
    isa.check_supported()?;
    check_activations(&w.layout, x)?;
    let (m, n) = (x.m, w.layout.n);
    let mut acc = vec![0i32; m * n];
    if m > 0 {
        let rb = w.layout.row_bytes();
        dots(isa, w.codes, rb, &x.q, m, SumLayout::by_token(n), &mut acc);
    }
    for (row, offset) in acc.chunks_exact_mut(n).zip(&x.sums) {
        row.iter_mut().for_each(|a| *a -= offset);
    }
    Ok(acc)
}

/// The float output of a ternary linear layer for `m` tokens of quantized activations,
/// row-major `[m, n]`, following the layout's scale convention exactly.
pub fn ternary_linear_quantized(
    isa: Isa,
    w: I2sView<'_>,
    x: &QuantizedActivations,
) -> Result<Vec<f32>> {
    let mut outputs = ternary_linear_group_quantized(isa, &[w], x)?;
    Ok(outputs.swap_remove(0))
}

/// [`ternary_linear_quantized`] for several layers that read the same activations, e.g. the
/// query, key and value projections: the rows of all of them go to the rayon pool in one call,
/// so a decode step wakes the pool once instead of once per layer. Outputs are in the order of
/// `ws`, each `[m, n]` and bit for bit what the layer gives alone.
pub fn ternary_linear_group_quantized(
    isa: Isa,
    ws: &[I2sView<'_>],
    x: &QuantizedActivations,
) -> Result<Vec<Vec<f32>>> {
    isa.check_supported()?;
    for w in ws {
        check_activations(&w.layout, x)?;
    }
    if x.m == 1 {
        return Ok(gemv_group(isa, ws, x));
    }
    if x.m >= rayon::current_num_threads() * BAND_TOKENS {
        return Ok(ws.iter().map(|w| banded_linear(isa, *w, x)).collect());
    }
    thread_local! {
        // Reused across calls: a fresh buffer per layer costs page faults.
        static RAW: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    }
    // Taken rather than borrowed, so a nested call on this thread (rayon work stealing) gets
    // a buffer of its own instead of a borrow error.
    let mut raw = RAW.take();
    let outputs = raw_dots(isa, ws, x, &mut raw).map(|()| {
        let mut sums = raw.as_slice();
        ws.iter()
            .map(|w| {
                let (mine, rest) = sums.split_at(w.layout.n * x.m);
                sums = rest;
                finish_linear(&w.layout, x, mine, Some(&x.sums))
            })
            .collect()
    });
    RAW.set(raw);
    outputs
}

/// Prefill: each rayon task runs every row for its own band of tokens and turns the sums into
/// outputs. Splitting rows instead would leave megabytes of sums to read back (and fault in)
/// afterwards; with one band per thread, each thread reads the layer's weights once.
fn banded_linear(isa: Isa, w: I2sView<'_>, x: &QuantizedActivations) -> Vec<f32> {
    thread_local! {
        static BAND_RAW: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    }
    let (n, rb) = (w.layout.n, w.layout.row_bytes());
    let kp = rb * 4;
    // One band per thread: each band streams the layer's weights from memory once (a 3B
    // layer's matrices do not fit in L2), so bands of 16 tokens read them 8 times in pp128.
    let band_tokens = x.m.div_ceil(rayon::current_num_threads());
    // Not zeroed first: every value is written once below, and zeroing megabytes per layer on
    // the calling thread was a twentieth of a 2-thread prefill.
    let mut y = Vec::with_capacity(x.m * n);
    y.spare_capacity_mut()[..x.m * n]
        .par_chunks_mut(band_tokens * n)
        .enumerate()
        .for_each(|(band, y)| {
            let (t0, tokens) = (band * band_tokens, y.len() / n);
            let q = &x.q[t0 * kp..(t0 + tokens) * kp];
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512Vnni {
                assert_eq!(w.codes.len(), n * rb, "one packed row per output");
                // SAFETY: the caller checked the CPU supports the path; `codes` holds the `n`
                // rows and `q` the band's tokens, `kp = 4 * rb` activations each.
                unsafe { avx512::finished_band(w.codes, rb, q, (&w.layout, x, t0), y) };
                return;
            }
            let mut raw = BAND_RAW.take();
            // `dots` overwrites every sum, so the buffer only grows: resizing it to each
            // layer's width zeroed the widened part again whenever a wider layer followed a
            // narrower one (up to megabytes per layer in prefill).
            if raw.len() < n * tokens {
                raw.resize(n * tokens, 0);
            }
            let raw_band = &mut raw[..n * tokens];
            dots(
                isa,
                w.codes,
                rb,
                q,
                tokens,
                SumLayout::by_token(n),
                raw_band,
            );
            finish_tokens(&w.layout, x, raw_band, t0, y);
            BAND_RAW.set(raw);
        });
    // SAFETY: the bands cover all `m * n` values, and `finish_tokens` (or the AVX-512 kernel's
    // finishing sink) writes every value of its band (`tokens` rows of `n`, one per sum).
    unsafe { y.set_len(x.m * n) };
    y
}

/// Fails unless `x` was quantized for weights of this layout (same `k`, same padding).
pub(crate) fn check_activations(layout: &TernaryLayout, x: &QuantizedActivations) -> Result<()> {
    if x.k != layout.k || x.k_padded != layout.k_padded() {
        return Err(TernaryError::Shape(format!(
            "activations have k={} (padded {}), weights have k={} (padded {})",
            x.k,
            x.k_padded,
            layout.k,
            layout.k_padded()
        )));
    }
    Ok(())
}

/// Quantizes `x` (`[m, k]`, row-major) per token and applies the ternary layer: `[m, n]`.
pub fn ternary_linear(isa: Isa, w: I2sView<'_>, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let mut outputs = ternary_linear_group(isa, &[w], x, m)?;
    Ok(outputs.swap_remove(0))
}

/// Quantizes `x` (`[m, k]`, row-major) once and applies every layer of `ws` to it (see
/// [`ternary_linear_group_quantized`]). The layers must share `k` and the activation rule.
pub fn ternary_linear_group(
    isa: Isa,
    ws: &[I2sView<'_>],
    x: &[f32],
    m: usize,
) -> Result<Vec<Vec<f32>>> {
    let layouts: Vec<TernaryLayout> = ws.iter().map(|w| w.layout).collect();
    let xq = quantize_for_group(&layouts, &ActivationSource::Plain(x), m)?;
    ternary_linear_group_quantized(isa, ws, &xq)
}

/// Quantizes the `m` rows `source` gives once for a group of layers, which must share `k` and
/// the activation rule.
///
/// # Errors
/// If the group is empty or its layers differ in `k` or rule, or the source does not give `m`
/// rows of `k` values.
pub fn quantize_for_group(
    layouts: &[TernaryLayout],
    source: &ActivationSource<'_>,
    m: usize,
) -> Result<QuantizedActivations> {
    let Some(layout) = layouts.first() else {
        return Err(TernaryError::Shape(
            "a group of ternary layers needs at least one layer".into(),
        ));
    };
    if let Some(other) = layouts
        .iter()
        .find(|l| l.k != layout.k || l.activation != layout.activation)
    {
        return Err(TernaryError::Shape(format!(
            "layers applied to one input must share k and the activation rule: k={} ({:?}) and \
             k={} ({:?})",
            layout.k, layout.activation, other.k, other.activation
        )));
    }
    source.check_rows(m, layout.k)?;
    Ok(QuantizedActivations::from_source(
        source,
        m,
        layout.k,
        layout.k_padded(),
        layout.activation,
    ))
}

/// `raw[r * m + t]` for all rows and tokens of every layer in `ws`, one layer after another;
/// the rows of all layers are split across the rayon pool in one call.
fn raw_dots(
    isa: Isa,
    ws: &[I2sView<'_>],
    x: &QuantizedActivations,
    raw: &mut Vec<i32>,
) -> Result<()> {
    isa.check_supported()?;
    for w in ws {
        check_activations(&w.layout, x)?;
    }
    let m = x.m;
    let rows: usize = ws.iter().map(|w| w.layout.n).sum();
    // Every value is overwritten below, so only a longer buffer needs initializing.
    raw.resize(rows * m, 0);
    if m == 0 {
        return Ok(());
    }
    let rows_per_task = rows_per_task(rows);
    let mut tasks = Vec::new();
    let mut rest = raw.as_mut_slice();
    for w in ws {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(w.layout.n * m);
        rest = tail;
        let chunks = mine.chunks_mut(rows_per_task * m).enumerate();
        tasks.extend(chunks.map(|(i, out)| (*w, i * rows_per_task, out)));
    }
    tasks.into_par_iter().for_each(|(w, r0, out)| {
        let rb = w.layout.row_bytes();
        let codes = &w.codes[r0 * rb..(r0 + out.len() / m) * rb];
        dots(isa, codes, rb, &x.q, m, SumLayout::by_row(m), out);
    });
    Ok(())
}

/// `out[r * m + t]` for the packed rows in `codes` and the `m` tokens in `q`, on `isa`'s kernel
/// (checked as supported by the caller).
fn dots(isa: Isa, codes: &[u8], rb: usize, q: &[i8], m: usize, layout: SumLayout, out: &mut [i32]) {
    match isa {
        Isa::Scalar => run::<scalar::Scalar>(codes, rb, q, m, layout, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => run::<avx2::Avx2>(codes, rb, q, m, layout, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => run::<avx512::Avx512Vnni>(codes, rb, q, m, layout, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => run::<neon::Neon>(codes, rb, q, m, layout, out),
        _ => unreachable!("check_supported rejects the other architecture's paths"),
    }
}

/// Enough tasks for rayon to balance the pool, each a whole number of row tiles.
fn rows_per_task(n: usize) -> usize {
    let tasks = rayon::current_num_threads() * 8;
    n.div_ceil(tasks).next_multiple_of(TASK_ROWS).max(8)
}

fn run<K: TernaryKernel>(
    codes: &[u8],
    rb: usize,
    q: &[i8],
    m: usize,
    layout: SumLayout,
    out: &mut [i32],
) {
    assert_eq!(
        q.len(),
        m * rb * 4,
        "activations must be padded like the weights"
    );
    assert_eq!(
        codes.len() * m,
        out.len() * rb,
        "one output per row and token"
    );
    let rows = codes.len() / rb;
    if rows > 0 && m > 0 {
        assert!(
            layout.index(rows - 1, m - 1) < out.len() && (m > 1 || layout.row_stride == 1),
            "the sum layout must fit the output"
        );
    }
    // SAFETY: `dots`' callers checked the CPU supports K's instruction set; lengths and the
    // layout asserted above.
    unsafe { K::raw_dots(codes, rb, q, m, layout, out) };
}
